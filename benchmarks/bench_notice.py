"""Completion notice: how long after a worker ends its call the client's future is done.

    python benchmarks/bench_notice.py                  # local aws gcp azure, 8 calls of 0.5-8 s x 3 rounds
    python benchmarks/bench_notice.py gcp --calls 40 --longest 3

Each backend runs on its own emulators with real workers, the stacks of ``bench_data.py`` (the
plugin's nox virtualenv, this tree's core and plugin first on the path), 4 calls at a time. A
round maps ``--calls`` calls sleeping from 0.5 s to ``--longest`` (spread evenly, in shuffled
order: completions far enough apart for the listing interval to grow, as in real jobs), twice on
one warm executor: as the plugin ships (listing, plus whatever the platform pushes as "done"
events), and with "done" events dropped before the core sees them (listing alone): the same-run
baseline. The notice is ``stats["done"] - stats["end"]`` (client and workers share this
machine's clock); the storage requests are the status listings the client's monitor made, per
call. Medians over all rounds' calls.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from bench_data import backend_parser, platform_here, run_elsewhere  # noqa: E402

BACKENDS = ("local", "aws", "gcp", "azure")


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def measure(config: dict[str, Any], calls: int, longest: float, push: bool) -> dict[str, Any]:
    import pywren_core as pw

    with pw.executor(config, progress=False) as ex:
        session = ex.session
        listings = [0]
        real_list, real_events = session.list, session.poll_events
        if not push:  # from the start: the monitor must not have seen a notice come, even the warm-up's
            session.poll_events = lambda: [e for e in real_events() if e.kind != "done"]  # type: ignore[method-assign]
        ex.get_result(ex.map(nap, [0.01] * 4))  # warm workers and connections

        def counting_list(prefix: str) -> list[str]:
            if "/status/" in prefix:
                listings[0] += 1
            return real_list(prefix)

        session.list = counting_list  # type: ignore[method-assign]
        naps = [0.5 + (longest - 0.5) * i / max(1, calls - 1) for i in range(calls)]
        random.Random(calls).shuffle(naps)
        futures = ex.map(nap, naps)
        ex.get_result(futures)
        notices = [f.stats["done"] - f.stats["end"] for f in futures]
    return {"notices": notices, "listings_per_call": listings[0] / calls}


def run_here(backend: str, args: argparse.Namespace) -> None:
    with platform_here(backend, args, "notice") as (platform, results):
        results["cases"] = {}
        for case in platform.cases:
            runs: dict[str, list[dict[str, Any]]] = {"push": [], "listing": []}
            for _ in range(args.rounds):
                for kind in ("push", "listing"):
                    runs[kind].append(measure(case.config, args.calls, args.longest, kind == "push"))
            results["cases"][case.name] = runs


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\n# completion notice: maps of {args.calls} calls of 0.5-{args.longest:g} s x {args.rounds} rounds, "
          "medians over all calls\n")
    print("| backend | shipped: notice p50 / p90 | listings per call | listing only: notice p50 / p90 "
          "| listings per call | load |")
    print("|---|---:|---:|---:|---:|---:|")
    for result in results:
        for name, runs in result["cases"].items():
            cells = []
            for kind in ("push", "listing"):
                notices = sorted(n for run in runs[kind] for n in run["notices"])
                p90 = notices[math.ceil(0.9 * (len(notices) - 1))]
                per_call = statistics.median(run["listings_per_call"] for run in runs[kind])
                cells += [f"{statistics.median(notices) * 1000:.0f} / {p90 * 1000:.0f} ms", f"{per_call:.2f}"]
            load = "-".join(f"{x:.1f}" for x in result["load"])
            print(f"| {name} | {' | '.join(cells)} | {load} |")


def main() -> None:
    parser = backend_parser(__doc__, BACKENDS)
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--longest", type=float, default=8.0, help="the longest call's sleep, in seconds")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.here:
        run_here(args.backends[0], args)
        return
    results = [r for r in (run_elsewhere(__file__, backend, args) for backend in args.backends or BACKENDS) if r]
    report(results, args)


if __name__ == "__main__":
    main()
