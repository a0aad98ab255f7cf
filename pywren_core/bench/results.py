"""The run file: one JSON document per ``pywren bench run``, and what can be computed from it.

A run file keeps the raw per-call timestamps, not only summaries, so a report made later (or by
someone else, from a file they were sent) can draw its own plots. It names the backend, the
plugin distribution and version that ran it, the machine the client ran on, and the config with
its secrets masked: enough to tell two runs apart, nothing that grants access.

Timestamps are ``time.time()`` seconds. ``submitted`` and ``done`` come from the client's clock,
``start`` and ``end`` from the worker's, so on a cloud they differ by the two clocks' skew.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pywren_core import __version__
from pywren_core.errors import PywrenError

FORMAT = "pywren-bench"
#: Bumped when a field changes meaning or goes away; adding a field keeps the version.
SCHEMA_VERSION = 1
#: The timeline of one call, as :attr:`ResponseFuture.stats` holds it.
TIMESTAMPS = ("submitted", "invoked", "start", "end", "done")


class BenchFileError(PywrenError, ValueError):
    """A run file that cannot be read or does not follow the schema; the message says where."""


def machine_info() -> dict[str, Any]:
    """The client machine, so figures from a laptop and from a cloud VM are not mistaken."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }
    try:
        info["memory_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not every OS exposes these
        pass
    if hasattr(os, "getloadavg"):
        info["load_average"] = list(os.getloadavg())
    return info


def call_record(future: Any, index: int, phase: str = "") -> dict[str, Any]:
    """One call as the run file keeps it: its timeline, where it ran, and what it measured."""
    stats = future.stats
    record: dict[str, Any] = {"index": index, "phase": phase}
    record.update({name: stats.get(name) for name in TIMESTAMPS})
    record.update(worker_id=stats.get("worker_id"), cold=stats.get("cold"), attempts=stats.get("attempts", 1))
    error = future.exception()
    record["ok"] = error is None
    record["error"] = None if error is None else f"{type(error).__name__}: {error}"
    record["value"] = future.result() if error is None else None
    return record


def new_run(executor: Any, suite: str, size: str, workloads: Mapping[str, Any]) -> dict[str, Any]:
    """The run document for ``workloads`` measured with ``executor``."""
    entry, info = executor.backend.entry, executor.info
    limits = info.limits
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "core_version": __version__,
        "backend": {
            "name": info.name,
            "distribution": entry.distribution,
            "version": entry.version,
            "limits": {
                "max_payload_bytes": limits.max_payload_bytes,
                "max_runtime": limits.max_runtime,
                "max_concurrency": limits.max_concurrency,
                "max_invoke_rate": limits.max_invoke_rate,
            },
            "features": dict(info.features),
        },
        "machine": machine_info(),
        "config": executor.config.masked(info),
        "suite": suite,
        "size": size,
        "workloads": dict(workloads),
    }


def save(run: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    validate(run)
    Path(path).write_text(json.dumps(run, indent=1) + "\n")


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a run file."""
    try:
        run = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise BenchFileError(f"{path}: cannot read it as JSON: {exc}") from exc
    validate(run, str(path))
    return run


# --- the schema --------------------------------------------------------------------------------
# Each field maps to a check of its value. Written out here rather than as a JSON Schema document
# so reading a run file needs no extra dependency; every problem found is named by its path.

Check = Callable[[Any], bool]
_number: Check = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
_optional_number: Check = lambda v: v is None or _number(v)
_string: Check = lambda v: isinstance(v, str)
_optional_string: Check = lambda v: v is None or isinstance(v, str)
_integer: Check = lambda v: isinstance(v, int) and not isinstance(v, bool)
_mapping: Check = lambda v: isinstance(v, dict)
_list: Check = lambda v: isinstance(v, list)

RUN_FIELDS: dict[str, Check] = {
    "format": lambda v: v == FORMAT,
    "schema_version": lambda v: v == SCHEMA_VERSION,
    "created": _string,
    "core_version": _string,
    "backend": _mapping,
    "machine": _mapping,
    "config": _mapping,
    "suite": _string,
    "size": _string,
    "workloads": _mapping,
}
BACKEND_FIELDS: dict[str, Check] = {
    "name": _string,
    "distribution": _string,
    "version": _string,
    "limits": _mapping,
    "features": _mapping,
}
WORKLOAD_FIELDS: dict[str, Check] = {
    "title": _string,
    "params": _mapping,
    "started": _number,
    "finished": _number,
    "skipped": _optional_string,
    "summary": _mapping,
    "calls": _list,
}
CALL_FIELDS: dict[str, Check] = {
    "index": _integer,
    "phase": _string,
    **{name: _optional_number for name in TIMESTAMPS},
    "worker_id": _optional_string,
    "cold": lambda v: v is None or isinstance(v, bool),
    "attempts": _integer,
    "ok": lambda v: isinstance(v, bool),
    "error": _optional_string,
}


def _check(value: Any, fields: Mapping[str, Check], where: str, problems: list[str]) -> None:
    if not isinstance(value, dict):
        problems.append(f"{where}: expected an object, got {type(value).__name__}")
        return
    for name, check in fields.items():
        if name not in value:
            problems.append(f"{where}.{name}: missing")
        elif not check(value[name]):
            problems.append(f"{where}.{name}: unexpected value {value[name]!r:.80}")


def validate(run: Any, source: str = "run") -> None:
    """Raise :class:`BenchFileError` listing every way ``run`` departs from the schema."""
    problems: list[str] = []
    _check(run, RUN_FIELDS, source, problems)
    if isinstance(run, dict) and not problems:
        _check(run["backend"], BACKEND_FIELDS, f"{source}.backend", problems)
        for name, workload in run["workloads"].items():
            where = f"{source}.workloads.{name}"
            _check(workload, WORKLOAD_FIELDS, where, problems)
            for i, call in enumerate(workload.get("calls", []) if isinstance(workload, dict) else []):
                _check(call, CALL_FIELDS, f"{where}.calls[{i}]", problems)
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise BenchFileError(f"not a valid {FORMAT} v{SCHEMA_VERSION} run file:\n  {shown}")


# --- figures computed from raw calls -----------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation; None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def spans(calls: Iterable[Mapping[str, Any]], first: str, last: str) -> list[float]:
    """Seconds from timestamp ``first`` to ``last`` for every call that has both."""
    return [c[last] - c[first] for c in calls if c.get(first) is not None and c.get(last) is not None]


def concurrency(calls: Iterable[Mapping[str, Any]]) -> list[tuple[float, int]]:
    """Calls running at once over time: ``(time, count)`` steps from the workers' start and end."""
    events = []
    for c in calls:
        if c.get("start") is not None and c.get("end") is not None:
            events += [(c["start"], 1), (c["end"], -1)]
    steps, running = [], 0
    for t, change in sorted(events, key=lambda e: (e[0], e[1])):  # an end before a start at the same instant
        running += change
        steps.append((t, running))
    return steps
