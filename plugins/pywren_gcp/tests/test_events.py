"""Failures the worker cannot report itself reach the client through the held-open request, at once:
an error line from the handler, a response that breaks mid-call, an acknowledgement that is lost."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pywren_core as pw
from pywren_core.errors import CallFailedError
from pywren_core.testing import LocalServer, free_port, sleep_then_return, square

from conftest import gcp_config
from servers import RecordingProxy, start_function


@pytest.fixture(scope="module")
def credentialless_function(log_dir: Path, package_dir: Path, storage_url: str,
                            tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The function where a worker finds neither an emulator nor Google credentials (and never asks the
    metadata server, which is pointed at a closed local port): opening storage fails in the worker."""
    closed = f"127.0.0.1:{free_port()}"
    overrides = {"STORAGE_EMULATOR_HOST": None, "GOOGLE_APPLICATION_CREDENTIALS": None, "NO_GCE_CHECK": "True",
                 "GCE_METADATA_HOST": closed, "GCE_METADATA_IP": closed,
                 "CLOUDSDK_CONFIG": str(tmp_path_factory.mktemp("gcloud"))}
    service, url = start_function(log_dir, package_dir / "main.py", storage_url, threads=8, overrides=overrides,
                                  name="functions-framework-no-credentials")
    yield url
    service.stop()


def test_a_worker_runtime_failure_fails_the_call_at_once(storage_url: str, credentialless_function: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The client reaches the emulator through STORAGE_EMULATOR_HOST, which the worker lacks: the
    worker's storage client raises DefaultCredentialsError, and the handler's error line says so."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", storage_url)
    with pw.executor(gcp_config("", credentialless_function), progress=False, retries=0, timeout=600) as ex:
        started = time.monotonic()
        future = ex.call_async(square, 3)
        with pytest.raises(CallFailedError, match="DefaultCredentialsError"):
            future.result(timeout=120)
        assert time.monotonic() - started < 30


@pytest.fixture
def killable_function(log_dir: Path, package_dir: Path, storage_url: str) -> Iterator[tuple[LocalServer, str]]:
    service, url = start_function(log_dir, package_dir / "main.py", storage_url, threads=8,
                                  name="functions-framework-killed")
    yield service, url
    service.stop()


def _kill_workers(service: LocalServer) -> None:
    """SIGKILL functions-framework's gunicorn workers, as an instance that crashes: their responses
    break mid-call, and the gunicorn master starts a fresh worker on the same socket."""
    master = str(service.process.pid)
    workers = [int(pid) for pid in os.listdir("/proc") if pid.isdigit() and _parent(pid) == master]
    assert workers, "functions-framework runs no worker process"
    for pid in workers:
        os.kill(pid, signal.SIGKILL)


def _parent(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[1]
    except OSError:
        return ""


@pytest.mark.parametrize("retries", [0, 1])
def test_a_broken_response_fails_or_retries_the_calls_at_once(storage_url: str, retries: int,
                                                              killable_function: tuple[LocalServer, str]) -> None:
    service, url = killable_function
    with pw.executor(gcp_config(storage_url, url), progress=False, retries=retries, timeout=600) as ex:
        futures = ex.map(sleep_then_return, [6.0] * 4)
        dispatcher = ex.session.handle.dispatcher()
        give_up = time.monotonic() + 60
        while dispatcher.stats.accepted < len(futures):  # every call is running in the worker
            assert time.monotonic() < give_up, "the function did not accept the calls"
            time.sleep(0.05)
        killed = time.monotonic()
        _kill_workers(service)
        if retries:
            assert ex.get_result(futures, timeout=120) == [6.0] * 4
            assert [f.stats["attempts"] for f in futures] == [2] * 4
            assert time.monotonic() - killed < 40
        else:
            for future in futures:
                with pytest.raises(CallFailedError, match="broke .* before the call reported"):
                    future.result(timeout=120)
            assert time.monotonic() - killed < 15


def test_lost_acknowledgements_are_invoked_again_and_counted(storage_url: str, function_url: str) -> None:
    """The function took the first three requests, but their answers were lost on the way: the core
    invokes those calls again and counts a possible duplicate run for each."""
    proxy = RecordingProxy(int(function_url.rsplit(":", 1)[1]), drop=3)
    try:
        with pw.executor(gcp_config(storage_url, proxy.url), progress=False) as ex:
            futures = ex.map(square, range(6))
            assert ex.get_result(futures, timeout=120) == [x * x for x in range(6)]
        assert proxy.dropped == 3
        assert sum(f.stats.get("ambiguous_invokes", 0) for f in futures) == 3
    finally:
        proxy.close()


def test_a_finished_call_is_noticed_from_its_response_line_not_a_listing(pywren_config: dict) -> None:
    """Each payload's line on the held-open response becomes a "done" event: the client reads the
    call's status at once. With the listing held at 30 s, calls ending one after another are still
    noticed within milliseconds of their worker's end, and no listing beyond the job's first runs."""
    with pw.executor(pywren_config, progress=False) as ex:
        monitor = ex._engine.monitor
        monitor.min_interval = monitor.max_interval = 30.0
        delays = [0.1 * i for i in range(8)]
        started = time.monotonic()
        futures = ex.map(sleep_then_return, delays)
        assert ex.get_result(futures, timeout=25) == delays
        took = time.monotonic() - started
        stats = ex.session.handle.dispatcher().stats
    assert took < 10, f"took {took:.1f} s: the calls waited for a listing, not for their response lines"
    assert stats.done == stats.invocations == 8 and stats.events == 0
    notices = sorted(f.stats["done"] - f.stats["end"] for f in futures)
    assert notices[len(notices) // 2] < 0.3, notices
