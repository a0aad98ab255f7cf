"""``pywren bench run`` and ``pywren bench report``.

Only argparse is imported at module level: :func:`add_bench_command` runs on every ``pywren``
start, and the workloads, tqdm and matplotlib are loaded only when a bench command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_bench_command(subparsers: Any) -> None:
    """Register ``bench run`` and ``bench report`` on the ``pywren`` command's subparsers."""
    bench = subparsers.add_parser(
        "bench", help="compare backends on the same workloads", description="Compare backends on the same workloads."
    )
    commands = bench.add_subparsers(dest="bench_command", required=True)

    run = commands.add_parser(
        "run",
        help="run a benchmark suite on one backend and write a JSON run file",
        description="Run a benchmark suite on one backend and write a JSON run file (raw per-call timings).",
    )
    run.set_defaults(func=cmd_run)
    run.add_argument("--backend", help="use this backend instead of the configured one")
    run.add_argument(
        "--suite", choices=("quick", "standard"), default="standard", help="quick: latency and throughput only"
    )
    run.add_argument("--size", choices=("laptop", "cloud"), default="laptop", help="parameter preset (default: laptop)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="WORKLOAD.PARAM=VALUE",
        help="change one preset parameter, e.g. --set scaleout.calls=3000 (repeatable)",
    )
    run.add_argument("-o", "--output", required=True, help="the JSON run file to write")

    report = commands.add_parser(
        "report",
        help="render run files as Markdown tables and PNG plots, side by side",
        description="Render run files as Markdown tables and PNG plots (plots need pywren-core[plot]).",
    )
    report.set_defaults(func=cmd_report)
    report.add_argument("files", nargs="+", help="run files written by `pywren bench run`")
    report.add_argument("-o", "--output", required=True, help="directory for report.md and the PNGs")


def _overrides(settings: list[str]) -> dict[str, dict[str, Any]]:
    import yaml

    from pywren_core.errors import ConfigError

    overrides: dict[str, dict[str, Any]] = {}
    for setting in settings:
        name, _, value = setting.partition("=")
        workload, _, param = name.partition(".")
        if not (workload and param and value):
            raise ConfigError(f"--set {setting}: expected WORKLOAD.PARAM=VALUE, e.g. scaleout.calls=100")
        overrides.setdefault(workload, {})[param] = yaml.safe_load(value)  # numbers as numbers
    return overrides


def cmd_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    import pywren_core as pw
    from pywren_core.bench import results, workloads
    from pywren_core.errors import ConfigError

    overrides = _overrides(args.set)
    unknown = set(overrides) - set(workloads.SUITES[args.suite])
    if unknown:
        raise ConfigError(f"--set names {', '.join(sorted(unknown))}, not in suite {args.suite!r}")
    for name in workloads.SUITES[args.suite]:  # a bad value is refused before anything starts
        workloads.WORKLOADS[name].params(args.size, overrides.get(name))
    ex = pw.executor(**({"backend": args.backend} if args.backend else {}))
    show = ex.config.progress and sys.stderr.isatty()
    try:
        with tqdm(unit="call", disable=not show, file=sys.stderr) as bar:
            entries = workloads.run_suite(ex, args.suite, args.size, overrides, progress=bar)
    except BaseException:  # Ctrl-C or a failure: do not wait for calls still out there
        ex.shutdown(wait=False, cancel_futures=True)
        raise
    ex.shutdown()  # waits for the last job's objects to be cleaned up
    run = results.new_run(ex, args.suite, args.size, entries)
    results.save(run, args.output)
    print(f"wrote {args.output}: suite {args.suite!r} ({args.size}) on backend {ex.info.name!r}")
    for name, entry in entries.items():
        failed = [c for c in entry["calls"] if not c["ok"]]
        if entry["skipped"]:
            print(f"  {name}: skipped: {entry['skipped']}")
        elif failed:
            print(f"  {name}: {len(failed)} of {len(entry['calls'])} calls failed; first: {failed[0]['error']}")
    for kind, group in entries.get("latency", {}).get("summary", {}).items():
        notice = group["to_client"]
        if group["calls"] and notice["p50"] is not None:
            print(f"  completion notice ({kind} calls): median {notice['p50'] * 1000:.0f} ms, "
                  f"p90 {notice['p90'] * 1000:.0f} ms after the worker ended")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pywren_core.bench import report

    written = report.write_report(args.files, args.output)
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0
