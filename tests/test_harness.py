"""The worker harness, end to end: an executor whose backend hands each payload to harness.serve in
a thread, as a platform's handler does, with the job's objects in the local backend's storage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import attrs
import pytest

import pywren_core as pw
from pywren_core import harness, hookimpl, plugins
from pywren_core.backends import local
from pywren_core.errors import CallTimeoutError, WorkerDiedError


class ServedBackend:
    """Local storage; every invocation is served by the harness in a thread of the client process.

    The payloads name the ``local`` backend, which has the same config fields: the worker processes
    load the backend by name, and this one exists in the test process only.
    """

    pywren_storage_put = staticmethod(local.pywren_storage_put)
    pywren_storage_get = staticmethod(local.pywren_storage_get)
    pywren_storage_list = staticmethod(local.pywren_storage_list)
    pywren_storage_delete = staticmethod(local.pywren_storage_delete)

    @staticmethod
    @hookimpl
    def pywren_backend_info():
        return attrs.evolve(local.pywren_backend_info(), name="served", data_schemes=())

    @staticmethod
    @hookimpl
    def pywren_connect(config, role):
        return local.pywren_connect(config, role="worker", runtime=None)  # storage only: no local worker pool

    @staticmethod
    @hookimpl
    def pywren_invoke(session, payload):
        served = {**payload, "backend": "local"}
        threading.Thread(target=harness.serve, args=(served,), daemon=True).start()


@pytest.fixture
def served_config(storage_dir, monkeypatch):
    monkeypatch.setitem(plugins.BUILTIN_BACKENDS, "served", f"{__name__}:ServedBackend")
    return {"backend": "served", "served": {"storage_dir": storage_dir}, "progress": False}


def pid_of(future) -> int:
    return int(future.stats["worker_id"].rpartition(":")[2])


def process_id(_=None):
    return os.getpid()


def exit_with(code):
    os._exit(code)


def kill_self(signum):
    os.kill(os.getpid(), signum)


def sleep_then_pid(seconds):
    time.sleep(seconds)
    return os.getpid()


def crash_or_wait(what):
    if what == "crash":
        time.sleep(0.5)
        os._exit(1)
    time.sleep(5)
    return what


def crash_on_first_attempt(x):
    from pywren_core.worker import current_call

    if current_call().attempt == 0:
        os._exit(1)
    return x * 10


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie not yet reaped by its new parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def wait_until(condition, seconds=10.0) -> bool:
    give_up = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > give_up:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize(
    "func, arg, said",
    [(exit_with, 3, "exited with code 3"), (kill_self, signal.SIGSEGV, r"was killed by signal 11 \(SIGSEGV\)")],
)
def test_a_crashed_interpreter_is_reported_as_died_within_seconds(served_config, func, arg, said):
    with pw.executor(served_config, retries=0) as ex:
        started = time.monotonic()
        future = ex.call_async(func, arg)
        with pytest.raises(WorkerDiedError, match=rf"worker process \d+ {said} while running the call"):
            future.result(timeout=10)
        assert time.monotonic() - started < 10


def test_a_crash_on_the_first_attempt_is_retried(served_config):
    with pw.executor(served_config, retries=1) as ex:
        future = ex.call_async(crash_on_first_attempt, 4)
        assert future.result(timeout=30) == 40
    assert future.stats["attempts"] == 2


def test_an_overrun_is_reported_as_timed_out_and_its_process_replaced(served_config):
    with pw.executor(served_config, retries=0, timeout=1) as ex:
        overrun = ex.call_async(sleep_then_pid, 60)
        with pytest.raises(CallTimeoutError):
            overrun.result(timeout=10)
        overrun_pid = pid_of(overrun)  # from the timeout status the worker itself wrote
        assert wait_until(lambda: gone(overrun_pid)), "the overrunning worker process was not killed"
        assert ex.call_async(process_id, None).result(timeout=10) != overrun_pid


def test_a_worker_that_cannot_report_its_own_timeout_is_reported_by_the_harness(served_config):
    """A stopped process runs no watchdog: the harness kills it and writes the timeout status itself."""
    with pw.executor(served_config, retries=0, timeout=1) as ex:
        future = ex.call_async(kill_self, signal.SIGSTOP)
        with pytest.raises(CallTimeoutError, match=r"worker process \d+ was still running the call .* killed"):
            future.result(timeout=10)


def test_consecutive_payloads_are_served_by_the_same_warm_process(served_config):
    with pw.executor(served_config) as ex:
        first = ex.call_async(process_id, None)
        first_pid = first.result(timeout=30)
        second = ex.call_async(process_id, None)
        assert second.result(timeout=10) == first_pid == pid_of(first) == pid_of(second)
    assert first_pid != os.getpid()
    assert not second.stats["cold"]


def test_concurrent_payloads_run_in_separate_processes(served_config):
    with pw.executor(served_config) as ex:
        pids = ex.get_result(ex.map(sleep_then_pid, [1.0] * 3), timeout=30)
    assert len(set(pids)) == 3 and os.getpid() not in pids


@pytest.fixture
def two_workers(monkeypatch):
    """A pool of worker processes of its own, of at most two."""
    pool = harness._Pool()
    monkeypatch.setattr(harness, "_pool", pool)
    monkeypatch.setattr(harness, "MAX_WORKERS", 2)
    yield
    pool.close()


def test_payloads_beyond_the_bound_wait_for_a_free_worker_process(served_config, two_workers):
    with pw.executor(served_config) as ex:
        pids = ex.get_result(ex.map(sleep_then_pid, [0.5] * 6), timeout=60)
    assert len(set(pids)) == 2


def test_a_crash_spares_a_concurrent_bystander(served_config):
    with pw.executor(served_config, retries=0) as ex:
        crashed, bystander = ex.map(crash_or_wait, ["crash", "wait"])
        with pytest.raises(WorkerDiedError, match="exited with code 1"):
            crashed.result(timeout=10)
        assert not bystander.done()  # it was running when the other process died
        assert bystander.result(timeout=30) == "wait"


def children_of(pid: int) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[1] == str(pid):
            found.append(int(entry))
    return found


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads the process table from /proc")
@pytest.mark.parametrize("ending", ["exit", "SIGKILL"])
def test_worker_processes_never_outlive_their_parent(ending):
    script = "from pywren_core import harness; harness.prestart('local'); print('ready', flush=True); input()"
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline() == "ready\n"
        children = children_of(parent.pid)
        assert len(children) == 1
        if ending == "exit":
            parent.stdin.write("\n")
            parent.stdin.flush()
        else:
            parent.kill()
        parent.wait(10)
        assert wait_until(lambda: all(gone(c) for c in children)), f"{children} outlived their parent"
    finally:
        parent.kill()
        parent.wait()
