"""Scale runs: a map of many no-op calls on each backend's emulators, with the client's and the
emulators' cost.

    python benchmarks/bench_scale.py                         # local aws gcp azure, 10,000 calls
    python benchmarks/bench_scale.py local --calls 100000

Each backend runs in a fresh process on its own emulators with real workers (the stacks of
``bench_data.py``, the plugin's nox virtualenv, this tree's core and plugin first on the path), 4
calls at a time. One untimed map of 8 calls warms the workers; then ``--calls`` no-op calls are
mapped and collected, timed from ``map`` to the last result. Reported: calls per second, the
client's CPU per call (this process, every thread), its peak memory, and the CPU the platform
used meanwhile: every process below this one (emulators, function hosts, worker processes), read
from /proc, so a figure bound by the emulator shows as such.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from bench_data import backend_parser, platform_here, run_elsewhere  # noqa: E402

BACKENDS = ("local", "aws", "gcp", "azure")
TICKS = os.sysconf("SC_CLK_TCK")


def noop(x: int) -> int:
    return x


def _descendants_cpu() -> float:
    """CPU seconds of every live process below this one (user + system, children it waited for too)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = sum(int(f) for f in fields[11:15]) / TICKS  # utime stime cutime cstime
    me, total = os.getpid(), 0.0
    for pid in times:
        ancestor = parents.get(pid)
        while ancestor and ancestor != me:
            ancestor = parents.get(ancestor)
        if ancestor == me:
            total += times[pid]
    return total


def measure(config: dict[str, Any], calls: int) -> dict[str, float]:
    import pywren_core as pw

    with pw.executor(config, progress=False) as ex:
        ex.get_result(ex.map(noop, range(8)))
        cpu, platform_cpu, started = time.process_time(), _descendants_cpu(), time.perf_counter()
        futures = ex.map(noop, range(calls))
        results = ex.get_result(futures)
        wall = time.perf_counter() - started
        cpu, platform_cpu = time.process_time() - cpu, _descendants_cpu() - platform_cpu
    assert results == list(range(calls))
    runs = sum(f.stats.get("runs", 1) for f in futures)
    return {"calls": calls, "seconds": wall, "calls_per_s": calls / wall, "client_cpu_us": cpu / calls * 1e6,
            "platform_cpu_us": platform_cpu / calls * 1e6, "runs": runs,
            "client_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_here(backend: str, args: argparse.Namespace) -> None:
    with platform_here(backend, args, "scale") as (platform, result):
        cases = [case for case in platform.cases if args.case in (None, case.name)]
        result["cases"] = {case.name: measure(case.config, args.calls) for case in cases}


def main() -> None:
    parser = backend_parser(__doc__, BACKENDS)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--case", help="one setup of the backend's, by name (e.g. 'azure http'; default: all)")
    args = parser.parse_args()
    if args.here:
        run_here(args.backends[0], args)
        return
    print("| backend | calls | seconds | calls/s | client CPU µs/call | platform CPU µs/call | runs | "
          "client peak MB | load |\n|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for backend in args.backends or BACKENDS:
        result = run_elsewhere(__file__, backend, args)
        if result is None:
            continue
        load = "-".join(f"{x:.1f}" for x in result["load"])
        for name, r in result["cases"].items():
            print(f"| {name} | {r['calls']:,} | {r['seconds']:.1f} | {r['calls_per_s']:,.0f} | "
                  f"{r['client_cpu_us']:.0f} | {r['platform_cpu_us']:.0f} | {r['runs']:,} | "
                  f"{r['client_peak_mb']:.0f} | {load} |", flush=True)


if __name__ == "__main__":
    main()
