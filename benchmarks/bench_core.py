"""The core alone: a map through a null backend, so the client's own cost per call is all there is.

The null backend keeps objects in a dict and answers each invocation at once with the signed
success status a worker would write (no function runs), so what remains is pywren's client:
pickling and signing arguments, building payloads, invoking, listing and reading statuses,
settling futures. Issue 15's goals: at least 20,000 calls/s, at most 50 µs of client CPU per call,
100,000 calls under 500 MB. The baseline, in the same run, is ``ThreadPoolExecutor.submit`` and
``result`` of the same no-op calls: the cheapest futures API in the standard library.

    python benchmarks/bench_core.py                     # 10k and 100k calls, 3 alternating runs each
    python benchmarks/bench_core.py --calls 20000 --repeats 5
    python benchmarks/bench_core.py --profile 20000     # where the client's time goes (cProfile)

Each measurement runs in a fresh process, so peak memory is that run's own.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import resource
import statistics
import subprocess
import sys
import time

import pywren_core as pw
from pywren_core import hookimpl, plugins, serialize
from pywren_core.backend import BackendInfo, Limits
from pywren_core.errors import NotFoundError
from pywren_core.protocol import (
    PROTOCOL_VERSION,
    JobKeys,
    b64,
    dump_status,
    job_secret,
    result_context,
    sign,
)


class NullBackend:
    """Objects in a dict, grouped by folder so a status listing costs what the statuses cost;
    an invocation is answered at once by a success status, as if the call had returned None.

    No locks: each dict operation is atomic under the GIL, and a lock that 64 invoker threads
    contend for would cost the client thread switches that no real backend causes.
    """

    folders: dict[str, dict[str, bytes]] = {}
    #: Each invocation's CPU seconds (appending is atomic; a shared sum would need a lock).
    invoke_seconds: list[float] = []
    #: Per job: its storage keys and secret, read from the first payload.
    jobs: dict[tuple[str, str], tuple[JobKeys, bytes]] = {}

    @staticmethod
    @hookimpl
    def pywren_backend_info():
        return BackendInfo(
            name="null",
            limits=Limits(max_payload_bytes=256 * 1024, max_runtime=900.0, max_concurrency=1000),
            poll_interval=(0.005, 0.05),
        )

    @staticmethod
    @hookimpl
    def pywren_connect(config, role):
        return NullBackend

    @staticmethod
    @hookimpl
    def pywren_storage_put(session, key, data):
        folder, _, name = key.rpartition("/")
        NullBackend.folders.setdefault(folder, {})[name] = data

    @staticmethod
    @hookimpl
    def pywren_storage_get(session, key, byte_range):
        folder, _, name = key.rpartition("/")
        try:
            data = NullBackend.folders[folder][name]
        except KeyError:
            raise NotFoundError(key) from None
        return data if byte_range is None else data[byte_range[0] : byte_range[1]]

    @staticmethod
    @hookimpl
    def pywren_storage_list(session, prefix):
        folder, _, start = prefix.rpartition("/")
        if start == "" and folder in NullBackend.folders:
            return [f"{folder}/{name}" for name in list(NullBackend.folders[folder])]
        keys = (f"{f}/{n}" for f, names in list(NullBackend.folders.items()) for n in list(names))
        return [key for key in keys if key.startswith(prefix)]

    @staticmethod
    @hookimpl
    def pywren_storage_delete(session, keys):
        for key in keys:
            folder, _, name = key.rpartition("/")
            NullBackend.folders.get(folder, {}).pop(name, None)

    @staticmethod
    @hookimpl
    def pywren_invoke(session, payload):
        started = time.thread_time()  # this thread's CPU: what the null backend itself costs
        job = (payload["executor_id"], payload["job_id"])
        if job not in NullBackend.jobs:
            NullBackend.jobs[job] = (JobKeys.from_payload(payload), job_secret(payload, None))
        keys, secret = NullBackend.jobs[job]
        now = time.time()
        for call in payload["calls"]:
            result = sign(secret, result_context(keys, call["call_id"]), RESULT)
            status = {
                "protocol": PROTOCOL_VERSION,
                "call_id": call["call_id"],
                "attempt": call["attempt"],
                "kind": "success",
                "result": b64(result),
                "stats": {"worker_id": "null", "cold": False, "start": now, "end": now},
            }
            key = keys.status(call["call_id"], call["attempt"])
            NullBackend.pywren_storage_put(session, key, dump_status(secret, keys, status))
        NullBackend.invoke_seconds.append(time.thread_time() - started)


RESULT = serialize.dumps(None)


def noop(x):
    return None


def measure_pywren(calls: int) -> dict[str, float]:
    plugins.BUILTIN_BACKENDS["null"] = f"{__name__}:NullBackend"
    ex = pw.executor({"backend": "null"}, progress=False)
    cpu, start = time.process_time(), time.perf_counter()
    results = ex.get_result(ex.map(noop, range(calls)))
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    ex.shutdown()
    assert results == [None] * calls
    backend_seconds = sum(NullBackend.invoke_seconds)
    return {
        "seconds": elapsed,
        "cpu_us": 1e6 * (cpu - backend_seconds) / calls,  # the null backend's own work left out
        "backend_us": 1e6 * backend_seconds / calls,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measure_pool(calls: int) -> dict[str, float]:
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        cpu, start = time.process_time(), time.perf_counter()
        results = [f.result() for f in [pool.submit(noop, i) for i in range(calls)]]
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert results == [None] * calls
    return {"seconds": elapsed, "cpu_us": 1e6 * cpu / calls, "backend_us": 0.0,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # fmt: skip


def in_fresh_process(side: str, calls: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--one", side, str(calls)], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", nargs=2, metavar=("SIDE", "CALLS"), help=argparse.SUPPRESS)
    parser.add_argument("--profile", type=int, metavar="CALLS", help="profile one map of CALLS calls")
    args = parser.parse_args()
    if args.one:
        side, calls = args.one
        print(json.dumps((measure_pywren if side == "pywren" else measure_pool)(int(calls))))
        return
    if args.profile:
        import cProfile
        import pstats

        cProfile.runctx("measure_pywren(args.profile)", globals(), {"args": args, "measure_pywren": measure_pywren},
                        "/tmp/pywren-core.prof")  # fmt: skip
        pstats.Stats("/tmp/pywren-core.prof").sort_stats("cumulative").print_stats(30)
        return
    print(f"{'calls':>8} {'pywren calls/s':>15} {'pool calls/s':>13} {'ratio':>6} {'client CPU µs/call':>19} "
          f"{'null backend µs/call':>21} {'peak MB':>8}   (medians of {args.repeats} alternating runs)")  # fmt: skip
    for calls in args.calls:
        runs = [(in_fresh_process("pywren", calls), in_fresh_process("pool", calls)) for _ in range(args.repeats)]
        ours = {k: statistics.median(r[0][k] for r in runs) for k in runs[0][0]}
        pool = {k: statistics.median(r[1][k] for r in runs) for k in runs[0][1]}
        print(f"{calls:>8,} {calls / ours['seconds']:>15,.0f} {calls / pool['seconds']:>13,.0f} "
              f"{ours['seconds'] / pool['seconds']:>5.1f}x {ours['cpu_us']:>19.1f} {ours['backend_us']:>21.1f} "
              f"{ours['peak_mb']:>8.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
