"""The metrics wrapper, installed as a real distribution: it must apply to every installed backend.

Run these in an environment of their own: an installed wrapper plugin applies to every backend and
every test there.
"""

import json
import os
import subprocess
import sys

import pytest
import pywren_core as pw
from pywren_core.errors import NotFoundError
from pywren_core.plugins import backend_entries
from pywren_core.testing import open_session

import pywren_metrics


@pytest.fixture(autouse=True)
def fresh_figures():
    pywren_metrics.reset()


def config_for(backend, tmp_path):
    setting = {"local": "storage_dir", "folder": "root"}[backend]
    return {"backend": backend, backend: {setting: str(tmp_path / "storage")}}


@pytest.mark.parametrize("backend", ["local", "folder"])
def test_every_backend_is_measured(backend, tmp_path):
    if backend not in backend_entries():
        pytest.skip(f"backend {backend!r} is not installed here")
    with pw.executor(config_for(backend, tmp_path), progress=False) as ex:
        assert ex.get_result(ex.map(abs, [-1, -2, -3])) == [1, 2, 3]
    ops = pywren_metrics.snapshot()["ops"]
    # A throttled invocation (the folder backend runs a few at once) counts as a failed invoke call.
    assert ops["invoke"]["calls"] - ops["invoke"]["errors"] == 3
    assert ops["put"]["calls"] >= 1 and ops["put"]["bytes"] > 0  # at least the pickled function
    assert ops["list"]["calls"] >= 1  # the client learns of completions by listing
    assert all(ops[op]["errors"] == 0 for op in ("put", "get", "list", "delete") if op in ops)


def test_failures_are_counted_and_still_raised(tmp_path):
    storage = open_session(config_for("local", tmp_path))
    storage.put("present", b"12345")
    assert storage.get("present", (1, 3)) == b"23"
    with pytest.raises(NotFoundError):
        storage.get("missing")
    get = pywren_metrics.snapshot()["ops"]["get"]
    assert (get["calls"], get["errors"], get["bytes"]) == (2, 1, 2)


def test_client_and_workers_report_when_they_exit(tmp_path):
    report = tmp_path / "metrics.jsonl"
    script = "import pywren_core as pw; ex = pw.executor(progress=False); print(ex.get_result(ex.map(abs, range(4))))"
    env = {
        **os.environ,
        "PYWREN_METRICS_FILE": str(report),
        "PYWREN_LOCAL_STORAGE_DIR": str(tmp_path / "storage"),
        "PYWREN_LOCAL_WORKERS": "2",
    }
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120)
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    client = [line for line in lines if line["roles"] == ["client"]]
    workers = [line for line in lines if line["roles"] == ["worker"]]
    assert len(client) == 1 and client[0]["ops"]["invoke"]["calls"] == 4
    assert sum(w["ops"]["put"]["calls"] for w in workers) >= 4  # each call's status, written by a worker
