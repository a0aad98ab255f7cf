"""What the worker harness costs per payload: harness.serve against worker.handle, same payloads.

    python benchmarks/bench_harness.py              # 1,000 no-op payloads, 5 alternating rounds

A map of no-op calls runs once on the local backend (its objects kept), with a wrapper that records
the invoke payloads. The same payloads then run again, in rounds that alternate between calling
``pywren_core.worker.handle`` in this process (what handlers did before the harness) and
``pywren_core.harness.serve`` (a warm worker process per payload). Both load the function and
arguments from storage and write a status for every call; the difference is the harness's cost.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

import pywren_core as pw
from pywren_core import harness, hookimpl, worker


class RecordPayloads:
    """A wrapper plugin that keeps every payload invoked (and lets the invocation through)."""

    def __init__(self) -> None:
        self.payloads: list[dict] = []

    @hookimpl(wrapper=True)
    def pywren_invoke(self, session, payload):
        self.payloads.append(dict(payload))
        return (yield)


def noop(x):
    return x


def run_direct(payloads: list[dict]) -> float:
    start = time.perf_counter()
    for payload in payloads:
        worker.handle(payload, deadline=harness.deadline_for(payload, time.time()))
    return time.perf_counter() - start


def run_served(payloads: list[dict]) -> float:
    start = time.perf_counter()
    for payload in payloads:
        harness.serve(payload)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--payloads", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    storage = tempfile.mkdtemp(prefix="bench-harness-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        recorder = RecordPayloads()
        with pw.executor(
            backend="local", local={"storage_dir": storage}, cleanup=False, progress=False, wrappers=[recorder]
        ) as ex:
            ex.get_result(ex.map(noop, range(args.payloads)))
        payloads = recorder.payloads

        start = time.perf_counter()
        harness.serve(payloads[0])
        cold = time.perf_counter() - start
        run_direct(payloads[:50])  # warm both paths: imports, sessions, the function cache
        run_served(payloads[:50])

        direct, served = [], []
        for _ in range(args.rounds):
            direct.append(run_direct(payloads) / len(payloads))
            served.append(run_served(payloads) / len(payloads))
        d, s = statistics.median(direct), statistics.median(served)
        print(f"{len(payloads)} no-op payloads, median of {args.rounds} alternating rounds, storage in {storage}")
        print(f"  worker.handle in process : {d * 1e6:8.0f} µs per payload")
        print(f"  harness.serve, warm      : {s * 1e6:8.0f} µs per payload")
        print(f"  harness overhead         : {(s - d) * 1e6:8.0f} µs per payload ({s / d:.2f}x)")
        print(f"  first serve (cold start) : {cold * 1e3:8.0f} ms")
    finally:
        shutil.rmtree(storage, ignore_errors=True)


if __name__ == "__main__":
    main()
