"""``pywren bench report``: run files side by side, as Markdown tables and PNG plots.

Every table has one row per run (per run and kind, for latency), so runs on different backends
read across. The plots need matplotlib (``pip install 'pywren-core[plot]'``); without it the
report still holds every table and says the plots were skipped. Each run is labelled with its
file's name, so name the files after what differs (``aws.json``, ``gcp.json``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pywren_core.bench import results
from pywren_core.bench.workloads import PERCENTILES, latency_groups

#: Every plot is this many inches at this many dots per inch: 900 x 500 pixels.
FIGSIZE = (9.0, 5.0)
DPI = 100
LINESTYLES = {"cold": "--", "warm": "-"}
PLOT_SKIPPED = "Plots skipped: matplotlib is not installed (`pip install 'pywren-core[plot]'`)."

Run = tuple[str, Mapping[str, Any]]


def write_report(paths: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write ``report.md`` (and the PNGs, when matplotlib is installed) into ``out_dir``."""
    runs = list(zip(_labels(paths), (results.load(p) for p in paths), strict=True))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        plots = write_plots(runs, out)
    except ImportError:
        plots = None
    (out / "report.md").write_text(markdown(runs, plots))
    return [out / "report.md", *(plots or [])]


def _labels(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    stems = [Path(p).stem for p in paths]
    return [stem if stems.count(stem) == 1 else str(p) for stem, p in zip(stems, paths, strict=True)]


# --- tables -------------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value).replace("|", "\\|")


def _workload_rows(
    runs: Sequence[Run], name: str, width: int, row: Callable[[Mapping[str, Any]], list[list[Any]]]
) -> list[list[Any]]:
    """Rows for one workload, one or more per run; a run that skipped or lacks it says so."""
    rows = []
    for label, run in runs:
        entry = run["workloads"].get(name)
        if entry is None:
            rows.append([label, "not run", *[None] * (width - 2)])
        elif entry["skipped"]:
            rows.append([label, f"skipped: {entry['skipped']}", *[None] * (width - 2)])
        else:
            rows += [[label, *cells] for cells in row(entry)]
    return rows


def _latency(entry: Mapping[str, Any]) -> list[list[Any]]:
    rows = []
    for kind in ("cold", "warm"):
        group = entry["summary"][kind]
        cells = [kind, group["calls"]]
        for span in ("to_start", "total"):
            cells += [group[span][f"p{q}"] for q in PERCENTILES]
        rows.append(cells)
    return rows


def markdown(runs: Sequence[Run], plots: Sequence[Path] | None) -> str:
    """The report's text: a table of runs, one table per workload, then the plots."""
    parts = ["# pywren bench report", ""]
    parts.append(
        _table(
            ["run", "backend", "plugin", "version", "suite", "size", "created", "client", "failed calls"],
            [
                [
                    label,
                    run["backend"]["name"],
                    run["backend"]["distribution"],
                    run["backend"]["version"],
                    run["suite"],
                    run["size"],
                    run["created"],
                    f"{run['machine'].get('cpus')} CPUs, {run['machine'].get('platform')}",
                    sum(not c["ok"] for w in run["workloads"].values() for c in w["calls"]),
                ]
                for label, run in runs
            ],
        )
    )
    percentile_names = [f"p{q}" for q in PERCENTILES]
    sections = [
        (
            "latency",
            "Invocation latency",
            "Seconds from submit to the worker starting the call, and from submit to the client seeing its "
            "result. A call is cold when it was its worker's first; warm calls ran one after another.",
            [
                "run",
                "kind",
                "calls",
                *(f"to start {p}" for p in percentile_names),
                *(f"total {p}" for p in percentile_names),
            ],
            _latency,
        ),
        (
            "scaleout",
            "Scale-out",
            "N calls that each sleep: the most running at once, and seconds from the first submit until then.",
            ["run", "calls", "sleep s", "peak running", "time to peak s", "time until all running s", "start spread s"],
            lambda e: [
                [
                    e["summary"][k]
                    for k in (
                        "calls",
                        "sleep",
                        "peak_concurrency",
                        "time_to_peak",
                        "time_to_all_running",
                        "start_spread",
                    )
                ]
            ],
        ),
        (
            "storage",
            "Storage throughput",
            "Each call writes then reads its own object through the backend's storage. Per worker: the median "
            "call; aggregate: all bytes over the span from the first write to the last.",
            [
                "run",
                "calls",
                "MB per call",
                "write MB/s per worker",
                "read MB/s per worker",
                "aggregate write MB/s",
                "aggregate read MB/s",
            ],
            lambda e: [
                [
                    e["summary"]["calls"],
                    e["summary"]["megabytes"],
                    e["summary"].get("worker_write_mbps", {}).get("p50"),
                    e["summary"].get("worker_read_mbps", {}).get("p50"),
                    e["summary"].get("aggregate_write_mbps"),
                    e["summary"].get("aggregate_read_mbps"),
                ]
            ],
        ),
        (
            "compute",
            "Compute",
            "float64 numpy matrix multiplies; per worker: the median call; aggregate: all calls' FLOPs over the "
            "span from the first multiply to the last.",
            ["run", "calls", "n", "GFLOPS per worker", "aggregate GFLOPS"],
            lambda e: [
                [
                    e["summary"]["calls"],
                    e["summary"]["n"],
                    e["summary"].get("worker_gflops", {}).get("p50"),
                    e["summary"].get("aggregate_gflops"),
                ]
            ],
        ),
        (
            "throughput",
            "No-op throughput",
            "N calls that return their argument, from the first submit to the last result seen by the client.",
            ["run", "calls", "wall s", "calls/s"],
            lambda e: [[e["summary"]["calls"], e["summary"]["wall"], e["summary"]["calls_per_second"]]],
        ),
    ]
    for name, title, explanation, header, row in sections:
        if any(name in run["workloads"] for _, run in runs):
            parts += [
                "",
                f"## {title}",
                "",
                explanation,
                "",
                _table(header, _workload_rows(runs, name, len(header), row)),
            ]
    parts += ["", "## Plots", ""]
    if plots is None:
        parts.append(PLOT_SKIPPED)
    else:
        parts += [f"![{p.stem}]({p.name})" for p in plots] or ["No run holds calls to plot."]
    return "\n".join(parts) + "\n"


# --- plots --------------------------------------------------------------------------------------


def _runs_with_calls(runs: Sequence[Run], *names: str) -> list[tuple[int, str, str, list[Mapping[str, Any]]]]:
    """(colour index, label, workload, calls) for each run holding calls of one of ``names``, the first found."""
    shown = []
    for i, (label, run) in enumerate(runs):
        for name in names:
            entry = run["workloads"].get(name)
            if entry and entry["calls"]:
                shown.append((i, label, name, entry["calls"]))
                break
    return shown


def write_plots(runs: Sequence[Run], out: Path) -> list[Path]:
    """Draw every plot the runs have data for; raises ImportError without matplotlib."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    written = []
    for name, draw in (
        ("timeline", _timeline),
        ("concurrency", _concurrency),
        ("latency_cdf", _latency_cdf),
        ("throughput", _throughput),
    ):
        figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
        if draw(figure, runs):
            path = out / f"{name}.png"
            figure.savefig(path, dpi=DPI)
            written.append(path)
    return written


def _timeline(figure: Any, runs: Sequence[Run]) -> bool:
    """Per call: waiting (submit to start) in grey, running (start to end) in the run's colour."""
    shown = _runs_with_calls(runs, "scaleout", "throughput")
    if not shown:
        return False
    axes = figure.subplots(1, len(shown), squeeze=False)[0]
    for ax, (i, label, workload, calls) in zip(axes, shown, strict=True):
        t0 = min(c["submitted"] for c in calls)
        timed = [c for c in calls if c["start"] is not None and c["end"] is not None]
        ax.hlines(
            [c["index"] for c in timed],
            [c["submitted"] - t0 for c in timed],
            [c["start"] - t0 for c in timed],
            color="0.75",
            linewidth=1,
        )
        ax.hlines(
            [c["index"] for c in timed],
            [c["start"] - t0 for c in timed],
            [c["end"] - t0 for c in timed],
            color=f"C{i}",
            linewidth=1.5,
        )
        ax.set(title=f"{label}: {workload}", xlabel="seconds since first submit", ylabel="call")
    figure.suptitle("Per-call timeline (grey: waiting to start, colour: running)")
    return True


def _concurrency(figure: Any, runs: Sequence[Run]) -> bool:
    from matplotlib.ticker import MaxNLocator

    ax = figure.subplots()
    drawn = False
    for i, label, _, calls in _runs_with_calls(runs, "scaleout"):
        steps = results.concurrency(calls)
        if not steps:
            continue
        t0 = min(c["submitted"] for c in calls)
        ax.step(
            [0.0] + [t - t0 for t, _ in steps],
            [0] + [n for _, n in steps],
            where="post",
            color=f"C{i}",
            label=label,
        )
        drawn = True
    ax.set(title="Scale-out: calls running at once", xlabel="seconds since first submit", ylabel="running calls")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="best")
    return drawn


def _latency_cdf(figure: Any, runs: Sequence[Run]) -> bool:
    ax = figure.subplots()
    drawn = False
    for i, label, _, calls in _runs_with_calls(runs, "latency"):
        for kind, group in latency_groups(calls).items():
            values = sorted(results.spans(group, "submitted", "done"))
            if values:
                fractions = [(k + 1) / len(values) for k in range(len(values))]
                ax.step(
                    values, fractions, where="post", color=f"C{i}", linestyle=LINESTYLES[kind], label=f"{label} {kind}"
                )
                drawn = True
    ax.set(
        title="Invocation latency, submit to result seen",
        xlabel="seconds",
        ylabel="fraction of calls",
        xscale="log",
        ylim=(0, 1.02),
    )
    ax.legend(loc="lower right")
    return drawn


_BARS = (
    ("throughput", "calls_per_second", "no-op calls/s"),
    ("storage", "aggregate_write_mbps", "storage write MB/s"),
    ("storage", "aggregate_read_mbps", "storage read MB/s"),
    ("compute", "aggregate_gflops", "GFLOPS"),
)


def _throughput(figure: Any, runs: Sequence[Run]) -> bool:
    """One panel per figure (units differ), one bar per run."""
    panels = []
    for workload, key, title in _BARS:
        values = [
            (i, label, run["workloads"].get(workload, {}).get("summary", {}).get(key))
            for i, (label, run) in enumerate(runs)
        ]
        if any(v is not None for _, _, v in values):
            panels.append((title, [(i, label, v) for i, label, v in values if v is not None]))
    if not panels:
        return False
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, values) in zip(axes, panels, strict=True):
        ax.bar([label for _, label, _ in values], [v for _, _, v in values], color=[f"C{i}" for i, _, _ in values])
        ax.set_title(title)
        ax.tick_params(axis="x", labelrotation=30)
    figure.suptitle("Aggregate throughput (higher is better)")
    return True
