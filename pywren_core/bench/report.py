"""``pywren bench report``: run files side by side, as Markdown tables and PNG plots.

Every table has one row per run (per run and kind, for latency), so runs on different backends
read across. The plots need matplotlib (``pip install 'pywren-core[plot]'``); without it the
report still holds every table and says the plots were skipped. Each run is labelled with its
file's name, so name the files after what differs (``aws.json``, ``gcp.json``).
"""

from __future__ import annotations

import bisect
import math
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
        for span in ("to_start", "to_client", "total"):
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
            "Seconds from submit to the worker starting the call, from the worker's end to the client noticing "
            "its result (the completion notice: a listing's pace, or a platform's push), and from submit to the "
            "client seeing its result. A call is cold when it was its worker's first; warm calls ran one after "
            "another.",
            [
                "run",
                "kind",
                "calls",
                *(f"to start {p}" for p in percentile_names),
                *(f"notice {p}" for p in percentile_names),
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
# Each plot is drawn from a series computed by a function of its own, so tests check what a plot
# shows on its data, not on pixels.

#: Workloads whose calls the timeline shows, one row each.
TIMELINE_WORKLOADS = ("scaleout", "throughput")
#: Up to this many calls a timeline panel draws each call as a line; beyond, lines thinner than a
#: pixel merge into a grey wedge, so the panel counts calls by state over time instead.
TIMELINE_MAX_CALLS = 100
#: The concurrency plot draws the most calls running at once in each of this many slices of the
#: longest run: about two pixels each.
CONCURRENCY_SLICES = 400
#: A latency CDF with at most this many calls marks each one, so one or two calls still show.
CDF_MARKERS_MAX = 100


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


def timeline_panels(runs: Sequence[Run]) -> list[tuple[str, list[tuple[int, str, Mapping[str, Any] | None]]]]:
    """The timeline's grid: one row per workload any run has calls of, one column per run, so a
    row compares runs on the same workload; ``(colour index, label, entry)``, entry None where the
    run did not run that workload."""
    rows = []
    for name in TIMELINE_WORKLOADS:
        cells = [(i, label, run["workloads"].get(name)) for i, (label, run) in enumerate(runs)]
        if any(entry and entry["calls"] for _, _, entry in cells):
            rows.append((name, cells))
    return rows


def calls_by_state(calls: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """How many calls had been submitted, started, finished and seen by the client at each instant
    anything changed (``t``: seconds since the first submit); the gaps between the curves are the
    calls waiting and running."""
    t0 = min(c["submitted"] for c in calls)
    moments = {name: sorted(c[name] - t0 for c in calls if c.get(name) is not None)
               for name in ("submitted", "start", "end", "done")}
    times = sorted({t for values in moments.values() for t in values})
    series: dict[str, list[float]] = {"t": times}
    for name, values in moments.items():
        series[name] = [bisect.bisect_right(values, t) for t in times]
    return series


def _timeline(figure: Any, runs: Sequence[Run]) -> bool:
    """Rows by workload, columns by run. Few calls: a line per call, grey while it waits to start,
    in the run's colour while it runs. Many calls: how many are waiting and running over time."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    rows = timeline_panels(runs)
    if not rows:
        return False
    axes = figure.subplots(len(rows), len(runs), squeeze=False, sharex="row")
    for row, (workload, cells) in zip(axes, rows, strict=True):
        per_call = all(entry is None or len(entry["calls"]) <= TIMELINE_MAX_CALLS for _, _, entry in cells)
        for column, (ax, (i, label, entry)) in enumerate(zip(row, cells, strict=True)):
            if not (entry and entry["calls"]):
                why = "not run" if entry is None else f"skipped: {entry['skipped'] or 'no calls'}"
                ax.text(0.5, 0.5, f"{workload} {why}", ha="center", va="center", transform=ax.transAxes)
                ax.set_title(label, fontsize="medium")
                ax.axis("off")
                continue
            (_per_call if per_call else _by_state)(ax, entry["calls"], f"C{i}")
            ax.set_title(f"{label}: {len(entry['calls'])} calls", fontsize="medium")
            ax.set_xlabel("seconds since first submit")
            if column == 0:
                ax.set_ylabel(f"{workload}\n{'call' if per_call else 'calls'}")
    figure.suptitle("Calls over time, by workload: a line per call, or with many calls the count in each state")
    figure.legend(
        handles=[
            Patch(color="0.75", label="waiting to start"),
            Patch(color="C0", label="running (each run its colour)"),
            Line2D([], [], color="black", linestyle=":", label="result seen by the client"),
        ],
        loc="outside lower center",
        ncols=3,
    )
    return True


def _per_call(ax: Any, calls: Sequence[Mapping[str, Any]], colour: str) -> None:
    t0 = min(c["submitted"] for c in calls)
    timed = [c for c in calls if c["start"] is not None and c["end"] is not None]
    rows = [c["index"] for c in timed]
    ax.hlines(rows, [c["submitted"] - t0 for c in timed], [c["start"] - t0 for c in timed], color="0.75", linewidth=1)
    ax.hlines(rows, [c["start"] - t0 for c in timed], [c["end"] - t0 for c in timed], color=colour, linewidth=2)


def _by_state(ax: Any, calls: Sequence[Mapping[str, Any]], colour: str) -> None:
    series = calls_by_state(calls)
    t = series["t"]
    ax.fill_between(t, series["start"], series["submitted"], step="post", color="0.75")
    ax.fill_between(t, series["end"], series["start"], step="post", color=colour)
    ax.step(t, series["end"], where="post", color=colour, linewidth=1.5)
    ax.step(t, series["done"], where="post", color="black", linewidth=1, linestyle=":")
    ax.set_ylim(0, len(calls) * 1.05)


def concurrency_series(calls: Sequence[Mapping[str, Any]], width: float) -> tuple[list[float], list[int]]:
    """The concurrency plot's steps: seconds since the first submit, and the most calls running at
    once in each ``width``-second slice from there, ending at 0 after the last call.

    The most per slice, not the count at an instant: a worker that finishes one call and starts the
    next a millisecond later is busy throughout, and an instantaneous count would drop to zero at
    every such hand-over. A drop shorter than a slice (under two pixels) is not drawn.
    """
    steps = results.concurrency(calls)
    if not steps:
        return [], []
    t0 = min(c["submitted"] for c in calls)
    slices = max(1, math.ceil((steps[-1][0] - t0) / width))
    times, peaks, running, k = [], [], 0, 0
    for b in range(slices):
        top, limit = running, t0 + (b + 1) * width
        while k < len(steps) and steps[k][0] < limit:
            running = steps[k][1]
            top = max(top, running)
            k += 1
        times.append(b * width)
        peaks.append(top)
    return times + [steps[-1][0] - t0], peaks + [0]


def _concurrency(figure: Any, runs: Sequence[Run]) -> bool:
    from matplotlib.ticker import MaxNLocator

    shown = _runs_with_calls(runs, "scaleout")
    spans = [max(c["end"] or c["submitted"] for c in calls) - min(c["submitted"] for c in calls)
             for _, _, _, calls in shown]
    if not spans:
        return False
    width = max(max(spans), 1e-3) / CONCURRENCY_SLICES
    ax = figure.subplots()
    top = 0
    for i, label, _, calls in shown:
        times, peaks = concurrency_series(calls, width)
        if times:
            ax.step(times, peaks, where="post", color=f"C{i}", linewidth=2, label=f"{label}: running")
        ax.axhline(len(calls), color=f"C{i}", linestyle=":", linewidth=1.5, label=f"{label}: calls submitted")
        top = max(top, len(calls), *peaks)
    ax.set(
        title=f"Scale-out: calls running at once (the most in each {_duration(width)})",
        xlabel="seconds since first submit",
        ylabel="calls running",
        ylim=(0, top * 1.1 + 1),
    )
    ax.set_xlim(left=0)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    figure.legend(loc="outside right upper")
    return True


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def cdf_points(values: Sequence[float]) -> tuple[list[float], list[float]]:
    """An empirical CDF as steps from 0 at the smallest value: one call draws a rise from 0 to 1."""
    ordered = sorted(values)
    return [ordered[0], *ordered], [0.0, *((k + 1) / len(ordered) for k in range(len(ordered)))]


def _latency_cdf(figure: Any, runs: Sequence[Run]) -> bool:
    ax = figure.subplots()
    drawn = False
    for i, label, _, calls in _runs_with_calls(runs, "latency"):
        for kind, group in latency_groups(calls).items():
            values = results.spans(group, "submitted", "done")
            if values:
                xs, ys = cdf_points(values)
                marked = len(values) <= CDF_MARKERS_MAX  # each call a point: one or two calls show too
                ax.plot(xs, ys, drawstyle="steps-post", color=f"C{i}", linestyle=LINESTYLES[kind], linewidth=1.5,
                        marker="o" if marked else None, markersize=5, markevery=list(range(1, len(xs))),
                        label=f"{label} {kind} ({len(values)} call{'s' if len(values) != 1 else ''})")
                drawn = True
    ax.set(
        title="Invocation latency, submit to result seen (each point a call)",
        xlabel="seconds (log scale)",
        ylabel="fraction of calls done by then",
        xscale="log",
        ylim=(0, 1.05),
    )
    figure.legend(loc="outside right upper")
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
        labels, heights = [label for _, label, _ in values], [v for _, _, v in values]
        bars = ax.bar(labels, heights, color=[f"C{i}" for i, _, _ in values])
        ax.bar_label(bars, labels=[_cell(v) for _, _, v in values])
        ax.set_title(title)
        ax.tick_params(axis="x", labelrotation=30)
    figure.suptitle("Aggregate throughput (higher is better)")
    return True
