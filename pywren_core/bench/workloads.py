"""The benchmark workloads: the same measurements on any backend, a third party's included.

Each workload runs calls on an executor and returns its raw calls (see
:func:`pywren_core.bench.results.call_record`) plus a summary computed from them. Its parameters
come in two presets: ``laptop``, small enough for the ``local`` backend on a few cores, and
``cloud``, large enough to show how far a platform scales. Run one directly::

    import pywren_core as pw
    from pywren_core.bench import workloads

    with pw.executor(backend="mycloud", progress=False) as ex:
        outcome = workloads.WORKLOADS["scaleout"].run(ex, calls=200, sleep=10)

or a whole suite with :func:`run_suite`, which is what ``pywren bench run`` does.

The functions that run remotely are defined in this module, so a worker imports them by name:
the same code runs on every backend and nothing but their arguments travels.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from pywren_core.bench.results import call_record, concurrency, percentile, spans
from pywren_core.errors import ConfigError

PERCENTILES = (50, 90, 99)
#: Called with each batch of futures a workload submits (the progress bar counts them).
Track = Callable[[Sequence[concurrent.futures.Future]], None]


def _untracked(futures: Sequence[concurrent.futures.Future]) -> None:
    pass


# --- what runs on the workers -------------------------------------------------------------------


def noop(x: Any) -> Any:
    return x


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def storage_round_trip(index: int, prefix: str, nbytes: int) -> dict[str, float]:
    """Write then read ``nbytes`` through the storage session the worker itself uses.

    That session is the running call's (``current_call().session``): no config and no credential
    travels as an argument, and the bytes take the same path as the worker's own objects.
    """
    from pywren_core.worker import current_call

    call = current_call()
    if call is None:
        raise RuntimeError("storage_round_trip runs only as a pywren call")
    key = f"{prefix}{index:05d}.{call.attempt}"
    data = os.urandom(nbytes)
    write_start = time.time()
    call.session.put(key, data)
    write_end = time.time()
    read = call.session.get(key)
    read_end = time.time()
    call.session.delete([key])
    if read != data:
        raise RuntimeError(f"storage returned {len(read)} bytes that differ from the {nbytes} written")
    return {"bytes": nbytes, "write_start": write_start, "write_end": write_end, "read_end": read_end}


def matmul(seed: int, n: int, loops: int) -> dict[str, float] | None:
    """Multiply two n x n float64 matrices ``loops`` times; None when the worker has no numpy."""
    try:
        import numpy as np
    except ImportError:
        return None
    rng = np.random.default_rng(seed)
    a, b = rng.random((n, n)), rng.random((n, n))
    start = time.time()
    for _ in range(loops):
        a @ b
    end = time.time()
    return {"flops": 2.0 * n**3 * loops, "compute_start": start, "compute_end": end}


# --- the workloads ------------------------------------------------------------------------------


def _collect(futures: Sequence[Any], phase: str, first_index: int = 0) -> list[dict[str, Any]]:
    concurrent.futures.wait(futures)
    return [call_record(f, first_index + i, phase) for i, f in enumerate(futures)]


def _last(calls: Sequence[Mapping[str, Any]], name: str) -> float | None:
    return max((c[name] for c in calls if c[name] is not None), default=None)


def _percentiles(values: Sequence[float]) -> dict[str, float | None]:
    return {f"p{q}": percentile(values, q) for q in PERCENTILES}


def latency_groups(calls: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """The latency workload's calls that count as cold, and those that count as warm."""
    return {
        "cold": [c for c in calls if c["cold"]],
        "warm": [c for c in calls if c["phase"] == "sequential" and c["cold"] is False],
    }


def latency(ex: Any, track: Track = _untracked, *, burst: int, sequential: int) -> dict[str, Any]:
    """Invocation latency, cold and warm: submit -> worker start -> worker end -> client sees it.

    A burst of parallel calls comes first; on a platform with no warm instance (right after
    ``pywren deploy``, or after it sat idle) these are cold starts. Then calls one after another,
    each waiting for the last, land on a warm instance. A call is cold by its own ``cold`` flag
    (its worker's first call), whatever the phase; warm figures come from the one-after-another
    calls alone, since a burst call that waited for a busy worker measures queueing, not latency
    (scale-out measures that).
    """
    futures = ex.map(noop, range(burst))
    track(futures)
    calls = _collect(futures, "burst")
    for i in range(sequential):
        future = ex.call_async(noop, i)
        track([future])
        calls += _collect([future], "sequential", burst + i)
    summary: dict[str, Any] = {}
    for kind, group in latency_groups(calls).items():
        summary[kind] = {
            "calls": len(group),
            "to_start": _percentiles(spans(group, "submitted", "start")),
            "run": _percentiles(spans(group, "start", "end")),
            "to_client": _percentiles(spans(group, "end", "done")),
            "total": _percentiles(spans(group, "submitted", "done")),
        }
    return {"calls": calls, "summary": summary, "skipped": None}


def scaleout(ex: Any, track: Track = _untracked, *, calls: int, sleep: float) -> dict[str, Any]:
    """N calls that each sleep S seconds: how many run at once, and how soon all N do."""
    futures = ex.map(sleep_for, [sleep] * calls)
    track(futures)
    records = _collect(futures, "sleep")
    t0 = min(c["submitted"] for c in records)
    curve = concurrency(records)
    peak = max((n for _, n in curve), default=0)
    starts = sorted(c["start"] for c in records if c["start"] is not None)
    summary = {
        "calls": calls,
        "sleep": sleep,
        "peak_concurrency": peak,
        "time_to_peak": next((t - t0 for t, n in curve if n == peak), None),
        "time_to_all_running": next((t - t0 for t, n in curve if n >= calls), None),
        "start_spread": starts[-1] - starts[0] if starts else None,
        "wall": (_last(records, "done") or t0) - t0,
    }
    return {"calls": records, "summary": summary, "skipped": None}


def storage(ex: Any, track: Track = _untracked, *, calls: int, megabytes: float) -> dict[str, Any]:
    """Each call writes then reads M MB through the backend's storage: per worker and in aggregate."""
    nbytes = int(megabytes * 2**20)
    prefix = f"pywren.bench/{ex.executor_id}/"
    futures = ex.map(storage_round_trip, range(calls), extra_args=(prefix, nbytes))
    track(futures)
    try:
        records = _collect(futures, "round trip")
    finally:
        ex.session.delete(ex.session.list(prefix))  # objects of calls that failed half way
    values = [c["value"] for c in records if c["ok"]]
    mb = nbytes / 2**20
    summary: dict[str, Any] = {"calls": calls, "megabytes": megabytes}
    if values:
        write_span = max(v["write_end"] for v in values) - min(v["write_start"] for v in values)
        read_span = max(v["read_end"] for v in values) - min(v["write_end"] for v in values)
        summary.update(
            worker_write_mbps=_percentiles([mb / max(v["write_end"] - v["write_start"], 1e-9) for v in values]),
            worker_read_mbps=_percentiles([mb / max(v["read_end"] - v["write_end"], 1e-9) for v in values]),
            aggregate_write_mbps=mb * len(values) / max(write_span, 1e-9),
            aggregate_read_mbps=mb * len(values) / max(read_span, 1e-9),
        )
    return {"calls": records, "summary": summary, "skipped": None}


def compute(ex: Any, track: Track = _untracked, *, calls: int, n: int, loops: int) -> dict[str, Any]:
    """numpy float64 matrix multiplies: FLOPS per call and across all calls at once.

    Skipped when the workers have no numpy: the core does not depend on it.
    """
    futures = ex.map(matmul, range(calls), extra_args=(n, loops))
    track(futures)
    records = _collect(futures, "matmul")
    values = [c["value"] for c in records if c["ok"] and c["value"] is not None]
    no_numpy = any(c["ok"] for c in records) and not values
    summary: dict[str, Any] = {"calls": calls, "n": n, "loops": loops}
    if values:
        span = max(v["compute_end"] for v in values) - min(v["compute_start"] for v in values)
        summary.update(
            worker_gflops=_percentiles(
                [v["flops"] / max(v["compute_end"] - v["compute_start"], 1e-9) / 1e9 for v in values]
            ),
            aggregate_gflops=sum(v["flops"] for v in values) / max(span, 1e-9) / 1e9,
        )
    return {
        "calls": records,
        "summary": summary,
        "skipped": "numpy is not installed on the workers" if no_numpy else None,
    }


def throughput(ex: Any, track: Track = _untracked, *, calls: int) -> dict[str, Any]:
    """End-to-end throughput of N no-op calls: from the first submit to the last result seen."""
    start = time.time()
    futures = ex.map(noop, range(calls))
    track(futures)
    records = _collect(futures, "no-op")
    wall = (_last(records, "done") or start) - start
    summary = {"calls": calls, "wall": wall, "calls_per_second": calls / max(wall, 1e-9)}
    return {"calls": records, "summary": summary, "skipped": None}


@attrs.frozen
class Workload:
    """A workload, its parameter presets, and which parameters count calls (for progress)."""

    name: str
    title: str
    run: Callable[..., dict[str, Any]]
    sizes: Mapping[str, Mapping[str, Any]]
    counted: tuple[str, ...] = ("calls",)

    def params(self, size: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        params = dict(self.sizes[size])
        unknown = set(overrides or {}) - set(params)
        if unknown:
            raise ConfigError(
                f"workload {self.name!r} has no parameter {', '.join(sorted(unknown))}; it has {', '.join(params)}"
            )
        for name, value in (overrides or {}).items():
            integer = isinstance(params[name], int)
            number = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
            if not (number and value > 0):
                kind = "an integer" if integer else "a number"
                raise ConfigError(
                    f"workload parameter {self.name}.{name}={value!r}: must be {kind} above 0, "
                    f"like the preset's {params[name]}"
                )
        params.update(overrides or {})
        return params

    def expected_calls(self, params: Mapping[str, Any]) -> int:
        return sum(int(params[name]) for name in self.counted)


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "latency",
            "Invocation latency",
            latency,
            {"laptop": {"burst": 4, "sequential": 20}, "cloud": {"burst": 50, "sequential": 50}},
            counted=("burst", "sequential"),
        ),
        Workload(
            "scaleout",
            "Scale-out",
            scaleout,
            {"laptop": {"calls": 16, "sleep": 0.5}, "cloud": {"calls": 1000, "sleep": 30.0}},
        ),
        Workload(
            "storage",
            "Storage throughput",
            storage,
            {"laptop": {"calls": 8, "megabytes": 8.0}, "cloud": {"calls": 100, "megabytes": 64.0}},
        ),
        Workload(
            "compute",
            "Compute (numpy matmul)",
            compute,
            {"laptop": {"calls": 4, "n": 512, "loops": 4}, "cloud": {"calls": 1000, "n": 4096, "loops": 8}},
        ),
        Workload("throughput", "No-op throughput", throughput, {"laptop": {"calls": 1000}, "cloud": {"calls": 10000}}),
    )
}
SUITES: dict[str, tuple[str, ...]] = {
    "quick": ("latency", "throughput"),
    "standard": ("latency", "scaleout", "storage", "compute", "throughput"),
}


def run_suite(
    ex: Any,
    suite: str = "standard",
    size: str = "laptop",
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    progress: Any = None,
) -> dict[str, dict[str, Any]]:
    """Run a suite's workloads one after another; returns each one's entry for the run file.

    ``overrides`` replaces preset parameters by workload (``{"scaleout": {"calls": 3000}}``).
    ``progress`` is a tqdm bar (or None): its total is set here and it counts finished calls.
    """
    names = SUITES[suite]
    params = {name: WORKLOADS[name].params(size, (overrides or {}).get(name)) for name in names}
    track: Track = _untracked
    if progress is not None:
        progress.total = sum(WORKLOADS[name].expected_calls(params[name]) for name in names)
        progress.refresh()

        def track(futures: Sequence[concurrent.futures.Future]) -> None:
            for f in futures:
                f.add_done_callback(lambda _: progress.update(1))

    entries = {}
    for name in names:
        workload = WORKLOADS[name]
        if progress is not None:
            progress.set_description(name)
        started = time.time()
        outcome = workload.run(ex, track, **params[name])
        entries[name] = {"title": workload.title, "params": params[name], "started": started, "finished": time.time()}
        entries[name].update(outcome)
    return entries
