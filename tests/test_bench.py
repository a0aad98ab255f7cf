"""``pywren bench`` on the local backend: each workload, the run file's schema, and the report."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

import pywren_core as pw
from pywren_core.bench import report, results, workloads
from pywren_core.cli import main
from pywren_core.testing import BenchConformance

SHORT = {
    "latency": {"burst": 2, "sequential": 3},
    "scaleout": {"calls": 2, "sleep": 1.0},
    "storage": {"calls": 2, "megabytes": 1.0},
    "compute": {"calls": 2, "n": 64, "loops": 2},
    "throughput": {"calls": 20},
}


@pytest.fixture
def ex(pywren_config):
    pywren_config["local"]["workers"] = 2
    executor = pw.executor(pywren_config, progress=False)
    yield executor
    executor.shutdown(wait=False)


def run_workload(ex, name):
    outcome = workloads.WORKLOADS[name].run(ex, **SHORT[name])
    calls = outcome["calls"]
    assert len(calls) == workloads.WORKLOADS[name].expected_calls(SHORT[name])
    assert all(c["ok"] for c in calls), [c["error"] for c in calls if not c["ok"]]
    for c in calls:
        assert c["submitted"] <= c["invoked"] <= c["start"] <= c["end"] <= c["done"]
    return outcome


def test_latency_splits_cold_from_warm(ex):
    outcome = run_workload(ex, "latency")
    summary = outcome["summary"]
    cold_workers = [c["worker_id"] for c in outcome["calls"] if c["cold"]]
    assert summary["cold"]["calls"] == len(cold_workers) == len(set(cold_workers)) <= 2  # a worker's first call
    sequential = [c for c in outcome["calls"] if c["phase"] == "sequential"]
    assert summary["warm"]["calls"] == sum(not c["cold"] for c in sequential) >= 1
    warm = summary["warm"]
    assert 0 < warm["total"]["p50"] <= warm["total"]["p90"] <= warm["total"]["p99"]
    assert warm["to_start"]["p50"] <= warm["total"]["p50"]


def both_workers_ready(ex):
    """Wait until each of the two local workers has answered, so two calls can run at once."""
    for _ in range(20):
        if len({f.stats["worker_id"] for f in ex.map(workloads.sleep_for, [0.2, 0.2]) if f.result(60)}) == 2:
            return
    pytest.fail("the two local workers never ran calls at the same time")


def test_scaleout_sees_every_call_running_at_once(ex):
    both_workers_ready(ex)
    summary = run_workload(ex, "scaleout")["summary"]
    assert summary["peak_concurrency"] == 2  # two workers, two one-second sleeps
    assert summary["time_to_all_running"] == summary["time_to_peak"] > 0
    assert summary["wall"] >= 1.0


def test_storage_round_trips_through_the_backend(ex, storage_dir):
    summary = run_workload(ex, "storage")["summary"]
    for key in ("aggregate_write_mbps", "aggregate_read_mbps"):
        assert summary[key] > 0
    assert summary["worker_write_mbps"]["p50"] > 0
    assert ex.session.list("pywren.bench/") == []  # every call removed its object


def test_compute_measures_flops(ex):
    pytest.importorskip("numpy")
    outcome = run_workload(ex, "compute")
    assert outcome["skipped"] is None
    assert outcome["summary"]["aggregate_gflops"] > 0
    assert all(c["value"]["flops"] == 2 * 64**3 * 2 for c in outcome["calls"])


def test_throughput_counts_calls_per_second(ex):
    summary = run_workload(ex, "throughput")["summary"]
    assert summary["calls_per_second"] == pytest.approx(20 / summary["wall"])


def test_unknown_parameter_is_refused():
    with pytest.raises(ValueError, match="has no parameter callz; it has calls"):
        workloads.WORKLOADS["throughput"].params("laptop", {"callz": 3})


def bench_run(path: Path, suite: str, monkeypatch, storage_dir: str) -> dict:
    """``pywren bench run`` through the real command line, with short parameters."""
    monkeypatch.setenv("PYWREN_LOCAL_STORAGE_DIR", storage_dir)
    monkeypatch.setenv("PYWREN_LOCAL_WORKERS", "2")
    settings = [f"--set={name}.{k}={v}" for name in workloads.SUITES[suite] for k, v in SHORT[name].items()]
    assert main(["bench", "run", "--backend", "local", "--suite", suite, *settings, "-o", str(path)]) == 0
    return json.loads(path.read_text())


def test_run_file_follows_the_schema(tmp_path, monkeypatch, storage_dir):
    config_file = tmp_path / "pywren.yaml"
    config_file.write_text("gcp:\n  service_account_key: hunter2\n")  # another backend's secret
    monkeypatch.setenv("PYWREN_CONFIG_FILE", str(config_file))
    run = bench_run(tmp_path / "local.json", "standard", monkeypatch, storage_dir)
    results.validate(run)
    assert "hunter2" not in (tmp_path / "local.json").read_text()
    assert run["backend"]["name"] == "local" and run["backend"]["distribution"] == "pywren-core"
    assert run["backend"]["version"] and run["machine"]["cpus"] and run["config"]["backend"] == "local"
    assert list(run["workloads"]) == list(workloads.SUITES["standard"])
    assert len(run["workloads"]["scaleout"]["calls"]) == 2
    assert run["workloads"]["throughput"]["params"] == {"calls": 20}
    broken = json.loads(json.dumps(run))
    del broken["workloads"]["latency"]["calls"][1]["start"]
    broken["backend"]["name"] = 3
    with pytest.raises(results.BenchFileError) as info:
        results.validate(broken)
    assert "run.backend.name" in str(info.value) and "run.workloads.latency.calls[1].start: missing" in str(info.value)


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_report_puts_two_runs_side_by_side(tmp_path, monkeypatch, storage_dir):
    bench_run(tmp_path / "first.json", "standard", monkeypatch, storage_dir)
    bench_run(tmp_path / "second.json", "quick", monkeypatch, storage_dir)
    out = tmp_path / "report"
    assert main(["bench", "report", str(tmp_path / "first.json"), str(tmp_path / "second.json"), "-o", str(out)]) == 0
    text = (out / "report.md").read_text()
    throughput = text.split("## No-op throughput")[1].split("##")[0]
    assert "| first |" in throughput and "| second |" in throughput
    scaleout = text.split("## Scale-out")[1].split("##")[0]
    assert "| second | not run |" in scaleout

    if not _has_matplotlib():
        assert report.PLOT_SKIPPED in text
        return
    image = pytest.importorskip("matplotlib.image")
    expected = (int(report.FIGSIZE[0] * report.DPI), int(report.FIGSIZE[1] * report.DPI))
    for name in ("timeline", "concurrency", "latency_cdf", "throughput"):
        path = out / f"{name}.png"
        assert f"![{name}]({name}.png)" in text
        assert png_size(path) == expected
        pixels = image.imread(path)
        assert pixels.shape[:2] == (expected[1], expected[0]) and pixels.std() > 0  # something was drawn


def test_report_without_matplotlib_keeps_the_tables(tmp_path, monkeypatch, storage_dir):
    run = tmp_path / "only.json"
    bench_run(run, "quick", monkeypatch, storage_dir)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an install without the plot extra sees
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    written = report.write_report([run], tmp_path / "out")
    assert written == [tmp_path / "out" / "report.md"]
    text = written[0].read_text()
    assert report.PLOT_SKIPPED in text and "## Invocation latency" in text and "| only |" in text


def test_report_refuses_a_file_that_is_not_a_run(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something else"}))
    assert main(["bench", "report", str(bad), "-o", str(tmp_path / "out")]) == 1
    assert "bad.json.format: unexpected value 'something else'" in capsys.readouterr().err


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


class TestLocalBench(BenchConformance):
    """The same suite each plugin runs against its emulators (pywren_core.testing.BenchConformance)."""


# --- what the plots show, checked on their data ---------------------------------------------------


def _call(index, submitted, start, end, done=None, cold=False, phase="sleep"):
    return {"index": index, "phase": phase, "submitted": submitted, "invoked": submitted, "start": start,
            "end": end, "done": done if done is not None else end, "worker_id": None, "cold": cold,
            "attempts": 1, "ok": True, "error": None, "value": None}


def _back_to_back(workers=2, per_worker=8, seconds=0.5, hand_over=0.001):
    """Each worker runs its calls one after another, a millisecond between one's end and the next's
    start: the workers are busy throughout, all handing over at the same instants."""
    calls = []
    for w in range(workers):
        for k in range(per_worker):
            start = 100.0 + k * (seconds + hand_over)
            calls.append(_call(w * per_worker + k, 100.0, start, start + seconds))
    return calls


def _entry(calls, skipped=None):
    return {"title": "", "params": {}, "started": 0.0, "finished": 0.0, "skipped": skipped, "summary": {},
            "calls": calls}


def test_concurrency_plot_has_no_zeros_while_workers_hand_over():
    calls = _back_to_back()
    instants = [n for _, n in results.concurrency(calls)[:-1]]
    assert 0 in instants, "the premise: counted at each instant, the running calls drop to zero"
    times, peaks = report.concurrency_series(calls, width=4.0 / report.CONCURRENCY_SLICES)
    assert set(peaks[:-1]) == {2} and peaks[-1] == 0
    assert times[-1] == pytest.approx(max(c["end"] for c in calls) - 100.0)


def test_concurrency_plot_still_shows_a_real_pause():
    calls = [_call(0, 100.0, 100.0, 101.0), _call(1, 100.0, 102.0, 103.0)]
    times, peaks = report.concurrency_series(calls, width=3.0 / report.CONCURRENCY_SLICES)
    idle = [n for t, n in zip(times, peaks, strict=True) if 1.1 < t < 1.9]
    assert idle and set(idle) == {0}
    assert max(peaks) == 1


def test_latency_cdf_draws_one_or_two_calls_as_points():
    assert report.cdf_points([0.3]) == ([0.3, 0.3], [0.0, 1.0])  # a rise from 0 to 1, not a lone point
    assert report.cdf_points([0.2, 0.1]) == ([0.1, 0.1, 0.2], [0.0, 0.5, 1.0])
    if not _has_matplotlib():
        return
    from matplotlib.figure import Figure

    calls = [_call(0, 0.0, 0.1, 0.1, done=0.3, cold=True, phase="burst")]
    calls += [_call(1 + k, 1.0, 1.001, 1.002, done=1.004 + k / 1000, cold=False, phase="sequential") for k in range(5)]
    figure = Figure()
    assert report._latency_cdf(figure, [("run", {"workloads": {"latency": _entry(calls)}})])
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    cold = lines["run cold (1 call)"]
    assert cold.get_marker() == "o" and list(cold.get_ydata()) == [0.0, 1.0]


def _legend_clear_of_axes(figure):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()  # lays the figure out
    renderer = canvas.get_renderer()
    legend = figure.legends[0].get_window_extent(renderer)
    return not any(legend.overlaps(ax.get_window_extent(renderer)) for ax in figure.axes)


@pytest.mark.skipif(not _has_matplotlib(), reason="needs matplotlib")
def test_the_legends_of_the_line_plots_sit_beside_the_lines():
    from matplotlib.figure import Figure

    runs = [("a", {"workloads": {"scaleout": _entry(_back_to_back()),
                                 "latency": _entry([_call(0, 0.0, 0.1, 0.2, cold=True)])}})]
    for draw in (report._concurrency, report._latency_cdf):
        figure = Figure(figsize=report.FIGSIZE, dpi=report.DPI, layout="constrained")
        assert draw(figure, runs)
        assert _legend_clear_of_axes(figure), draw.__name__


def test_timeline_groups_panels_by_workload():
    """A run that skipped scale-out gets an empty scale-out panel, not its throughput panel next to
    another run's scale-out."""
    standard = {"workloads": {"scaleout": _entry(_back_to_back()), "throughput": _entry(_back_to_back(4, 300, 0.001))}}
    quick = {"workloads": {"throughput": _entry(_back_to_back(2, 10, 0.001))}}
    rows = report.timeline_panels([("standard", standard), ("quick", quick)])
    assert [(name, [(label, entry is not None) for _, label, entry in cells]) for name, cells in rows] == [
        ("scaleout", [("standard", True), ("quick", False)]),
        ("throughput", [("standard", True), ("quick", True)]),
    ]
    assert rows[1][1][1][2] is quick["workloads"]["throughput"]
    if not _has_matplotlib():
        return
    from matplotlib.figure import Figure

    figure = Figure(figsize=report.FIGSIZE, dpi=report.DPI, layout="constrained")
    assert report._timeline(figure, [("standard", standard), ("quick", quick)])
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == ["standard: 16 calls", "quick", "standard: 1200 calls", "quick: 20 calls"]
    assert [figure.axes[0].get_ylabel(), figure.axes[2].get_ylabel()] == ["scaleout\ncall", "throughput\ncalls"]
    # 1,200 calls are counted by state (two filled areas), not drawn as 2,400 sub-pixel lines
    assert len(figure.axes[2].collections) == 2


def test_many_calls_are_counted_by_state():
    calls = [_call(k, 0.0, 0.01 * k, 0.01 * k + 0.001, done=0.01 * k + 0.002) for k in range(500)]
    series = report.calls_by_state(calls)
    assert [series[name][-1] for name in ("submitted", "start", "end", "done")] == [500] * 4
    for t, submitted, started, ended, done in zip(*series.values(), strict=True):
        assert submitted >= started >= ended >= done, t
    assert series["start"][series["t"].index(2.5)] == 251  # calls 0..250 have started by 2.5 s
