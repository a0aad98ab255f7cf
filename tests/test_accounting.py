"""Every call accounted for, on the local backend: no stranded job, no silent rerun, no hang, no leak."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import pywren_core as pw
from pywren_core import manifests
from pywren_core.errors import AccessDeniedError, AmbiguousInvokeError, CallTimeoutError, InvokeError, StorageError


def sleepy(seconds):
    time.sleep(seconds)
    return seconds


def fail_on_odd(x):
    if x % 2:
        raise ValueError(f"odd {x}")
    time.sleep(0.5)
    return x


class CountInvocations:
    def __init__(self):
        self.calls: list[tuple[str, int]] = []
        self.lock = threading.Lock()

    @pw.hookimpl(wrapper=True)
    def pywren_invoke(self, session, payload):
        with self.lock:
            self.calls += [(c["call_id"], c["attempt"]) for c in payload["calls"]]
        return (yield)


def job_objects(ex):
    return ex.session.list(f"pywren.jobs/{ex.executor_id}/")


def test_a_refused_invocation_fails_its_call_and_the_job_is_still_cleaned_up(pywren_config):
    class Refuse:
        @pw.hookimpl(wrapper=True)
        def pywren_invoke(self, session, payload):
            if payload["calls"][0]["call_id"] == "00001":
                raise InvokeError("the function does not exist")
            return (yield)

    ex = pw.executor(pywren_config, wrappers=[Refuse()], progress=False)
    futures = ex.map(abs, [-1, -2, -3])
    pw.wait(futures, timeout=30)
    assert [f.status for f in futures] == ["success", "error", "success"]
    with pytest.raises(InvokeError, match="does not exist"):
        futures[1].result()
    ex.shutdown()
    assert job_objects(ex) == []
    assert not list(manifests.manifest_dir().glob(f"{ex.executor_id}/*.json")), "the manifest holds the secret"


def test_an_ambiguous_invoke_is_retried_and_counted(pywren_config):
    """The platform accepted the invocation but the answer was lost: the call may run twice."""
    counter = CountInvocations()

    class DropAnswers:
        seen: set[str] = set()

        @pw.hookimpl(wrapper=True)
        def pywren_invoke(self, session, payload):
            result = yield
            call_id = payload["calls"][0]["call_id"]
            if call_id not in self.seen:
                self.seen.add(call_id)
                raise AmbiguousInvokeError("connection closed before the answer")
            return result

    ex = pw.executor(pywren_config, wrappers=[counter, DropAnswers()], progress=False)
    futures = ex.map(abs, range(-10, 0))
    assert ex.get_result(futures, timeout=60) == list(range(10, 0, -1))
    assert all(f.stats["ambiguous_invokes"] == 1 and f.stats["attempts"] == 1 for f in futures)
    # Invoked again unless its result arrived first (the lost answer's invocation did run).
    assert 10 < len(counter.calls) <= 20
    ex.shutdown()
    wait_for_local_workers_idle()  # a duplicate run may outlive the job: what it writes must not stay
    assert job_objects(ex) == []


def wait_for_local_workers_idle(timeout=10.0):
    from pywren_core.backends.local import WorkerPool

    deadline = time.monotonic() + timeout
    while any(p.pending or any(w.inflight for w in p.workers) for p in WorkerPool._shared.values()):
        assert time.monotonic() < deadline, f"the local workers were still busy after {timeout} s"
        time.sleep(0.02)


def clean_up_own_job_if_asked(x):
    """Stands for the client cleaning up the job while this (duplicate) run is under way."""
    from pywren_core.protocol import JobKeys, delete_jobs
    from pywren_core.worker import current_call

    call = current_call()
    if os.environ.get("PYWREN_TEST_CLEAN_WHILE_RUNNING"):
        delete_jobs(call.session, JobKeys(call.executor_id, call.job_id).prefix)
    return x


def test_a_run_that_outlives_its_job_leaves_nothing_behind(monkeypatch):
    """A duplicate run still under way when its job is cleaned up withdraws what it wrote."""
    from pywren_fixture import backend as fixture

    from pywren_core import worker
    from pywren_core.protocol import JobKeys

    fixture.INVOKED.clear()
    ex = pw.executor({"backend": "fixture", "fixture": {"store": "outlived"}}, progress=False, cleanup=False)
    assert ex.get_result(ex.map(clean_up_own_job_if_asked, [1, 2], chunksize=2)) == [1, 2]
    prefix = JobKeys.from_payload(fixture.INVOKED[0]).prefix
    assert ex.session.list(prefix)
    monkeypatch.setenv("PYWREN_TEST_CLEAN_WHILE_RUNNING", "1")
    statuses = worker.handle(fixture.INVOKED[0], isolate_cwd=False)  # the platform runs it again
    assert [s["kind"] for s in statuses] == ["success", "success"]
    assert ex.session.list(prefix) == [], "a run that outlived its job left objects behind"
    ex.shutdown()


def test_denied_listing_fails_the_job_without_rerunning_anything(pywren_config):
    counter = CountInvocations()

    class DenyListing:
        @pw.hookimpl(wrapper=True)
        def pywren_storage_list(self, session, prefix):
            if "/status/" in prefix:
                raise AccessDeniedError("AccessDenied: the credentials expired")
            return (yield)

    ex = pw.executor(pywren_config, wrappers=[counter, DenyListing()], progress=False, timeout=2, lost_grace=1)
    futures = ex.map(abs, [-1, -2])
    started = time.monotonic()
    done, not_done = pw.wait(futures, timeout=30)
    assert not not_done and time.monotonic() - started < 15
    for f in futures:
        with pytest.raises(StorageError, match="cannot be listed.*AccessDenied"):
            f.result()
    time.sleep(3)  # past timeout + lost_grace: still nothing invoked again
    assert sorted(counter.calls) == [("00000", 0), ("00001", 0)]
    ex.shutdown()


def test_a_clock_step_reruns_nothing(pywren_config, monkeypatch):
    counter = CountInvocations()
    ex = pw.executor(pywren_config, wrappers=[counter], progress=False, timeout=5, lost_grace=1)
    futures = ex.map(sleepy, [0.5] * 4)
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)  # the wall clock jumps an hour ahead
    assert ex.get_result(futures, timeout=60) == [0.5] * 4
    assert all(f.stats["attempts"] == 1 for f in futures) and len(counter.calls) == 4
    ex.shutdown()


def test_shutdown_without_waiting_orphans_no_future(pywren_config):
    ex = pw.executor(pywren_config, progress=False)
    futures = ex.map(sleepy, [0.3, 0.3])
    ex.shutdown(wait=False)
    assert [f.result(timeout=30) for f in futures] == [0.3, 0.3]
    deadline = time.monotonic() + 10
    while job_objects(ex) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job_objects(ex) == []


def test_queued_calls_are_cancelled_at_once_and_free_the_workers(pywren_config):
    """The notebook case: after an interrupted cell, the next cell's calls do not wait behind the old ones."""
    ex = pw.executor(pywren_config, progress=False, local={**pywren_config["local"], "workers": 1})
    old = ex.map(sleepy, [5] * 20)
    while old[0].stats.get("invoked") is None:
        time.sleep(0.01)
    time.sleep(0.3)
    assert all(f.cancel() for f in old)
    assert all(f.status == "cancelled" for f in old)
    started = time.monotonic()
    assert ex.get_result(ex.map(abs, [-1, -2, -3]), timeout=30) == [1, 2, 3]
    assert time.monotonic() - started < 4, "the new calls waited behind cancelled ones"
    ex.shutdown()
    assert job_objects(ex) == []


def test_first_exception_and_exceptions_in_place(ex_local):
    futures = ex_local.map(fail_on_odd, range(4))
    done, not_done = pw.wait(futures, return_when=pw.FIRST_EXCEPTION, timeout=30)
    assert futures[1] in done or futures[3] in done
    assert any(f.exception() is not None for f in done)
    results = ex_local.get_result(futures, throw_except=False)
    assert results[0] == 0 and results[2] == 2
    assert isinstance(results[1], ValueError) and isinstance(results[3], ValueError)


def test_collected_results_are_forgotten_and_waits_leave_nothing_behind(ex_local):
    futures = ex_local.map(abs, range(5))
    pw.wait(futures, timeout=0.001)  # a timed wait that gives up
    assert ex_local.get_result(futures) == list(range(5))
    assert ex_local._uncollected == {}
    assert all(not f._waiters and not f._done_callbacks for f in futures)
    assert ex_local.get_result() == []


def test_dropped_executors_leave_no_threads(pywren_config):
    ex = pw.executor(pywren_config, progress=False)
    ex.get_result(ex.map(abs, [1]))
    ex.shutdown()
    baseline = threading.active_count()
    for _ in range(10):
        dropped = pw.executor(pywren_config, progress=False)
        assert dropped.get_result(dropped.map(abs, [-1, -2])) == [1, 2]
        del dropped
    gc.collect()
    deadline = time.monotonic() + 10
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    names = sorted(t.name for t in threading.enumerate())
    assert threading.active_count() <= baseline, names


def test_a_forked_child_runs_calls_of_its_own(pywren_config):
    ex = pw.executor(pywren_config, progress=False)
    assert ex.get_result(ex.map(abs, [-1])) == [1]
    pid = os.fork()
    if pid == 0:  # the child: a pool and threads of its own, within seconds
        try:
            ok = ex.call_async(abs, -5).result(timeout=20) == 5
            fresh = pw.executor(pywren_config, progress=False)
            ok = ok and fresh.get_result(fresh.map(abs, [-6]), timeout=20) == [6]
        except BaseException:
            ok = False
        os._exit(0 if ok else 1)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the forked child hung on its calls")
    assert os.waitstatus_to_exitcode(status) == 0
    assert ex.get_result(ex.map(abs, [-7])) == [7], "the parent's executor still works"
    ex.shutdown()


def test_a_late_redelivery_writes_nothing(pywren_config):
    """A queue may deliver a payload again after its job was cleaned up: the worker writes nothing."""
    from pywren_core.backends.local import WorkerPool

    class Keep:
        payloads: list = []

        @pw.hookimpl(wrapper=True)
        def pywren_invoke(self, session, payload):
            self.payloads.append(json.loads(json.dumps(payload)))
            return (yield)

    keep = Keep()
    ex = pw.executor(pywren_config, wrappers=[keep], progress=False)
    assert ex.get_result(ex.map(abs, [-1])) == [1]
    ex.shutdown()
    assert job_objects(ex) == []
    pool = WorkerPool.shared(ex.session.handle.workers)
    pool.submit(keep.payloads[0])
    time.sleep(1.5)
    assert ex.session.list("pywren.jobs/") == []


SCRIPT_WITHOUT_SHUTDOWN = """
import sys
import pywren_core as pw
ex = pw.executor({"backend": "local", "local": {"storage_dir": sys.argv[1]}})
print(ex.get_result(ex.map(lambda x: x * x, range(50)))[:3])
slow = ex.map(__import__("time").sleep, [30, 30])  # still running at exit: cancelled and cleaned up
"""


def test_a_script_that_never_shuts_down_leaves_nothing(tmp_path, storage_dir):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT_WITHOUT_SHUTDOWN)
    started = time.monotonic()
    run = subprocess.run([sys.executable, str(script), storage_dir], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[0, 1, 4]"
    assert time.monotonic() - started < 20, "exit waited for the calls still running"
    assert run.stderr == "", run.stderr
    leftovers = [os.path.join(d, f) for d, _, files in os.walk(storage_dir) for f in files]
    assert leftovers == []
    assert not list(manifests.manifest_dir().glob("*/*.json"))


SCRIPT_INTERRUPTED = """
import os, signal, sys, time
import pywren_core as pw
signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started from a background job
with pw.executor({"backend": "local", "local": {"storage_dir": sys.argv[1], "workers": 2}}, progress=False) as ex:
    futures = ex.map(time.sleep, [10] * 6)
    from pywren_core.backends.local import WorkerPool
    pool = WorkerPool.shared(2)
    print(" ".join(str(w.process.pid) for w in pool.workers), flush=True)
    ex.get_result(futures)
"""


def test_ctrl_c_inside_a_with_block_is_prompt_and_leaves_nothing(tmp_path, storage_dir):
    script = tmp_path / "interrupted.py"
    script.write_text(SCRIPT_INTERRUPTED)
    client = subprocess.Popen([sys.executable, str(script), storage_dir], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    workers = [int(pid) for pid in client.stdout.readline().split()]
    time.sleep(1.0)  # the calls are running
    client.send_signal(signal.SIGINT)
    interrupted = time.monotonic()
    try:
        _, stderr = client.communicate(timeout=15)
    finally:
        client.kill()
    assert time.monotonic() - interrupted < 5, "Ctrl-C waited for the calls"
    assert "KeyboardInterrupt" in stderr
    leftovers = [os.path.join(d, f) for d, _, files in os.walk(storage_dir) for f in files]
    assert leftovers == []
    time.sleep(0.5)
    alive = [pid for pid in workers if _alive(pid)]
    assert alive == [], "worker processes outlived the client"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for a parent that is gone is not running anything
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_the_timeout_error_names_the_users_timeout(pywren_config):
    local = {**pywren_config["local"], "workers": 1}
    ex = pw.executor(pywren_config, progress=False, retries=0, timeout=1, local=local)
    with pytest.raises(CallTimeoutError, match="past its timeout of 1.0 s"):
        ex.call_async(sleepy, 30).result(timeout=30)
    ex.shutdown()


@pytest.fixture
def ex_local(pywren_config):
    ex = pw.executor(pywren_config, progress=False)
    yield ex
    ex.shutdown()


def test_worker_sessions_are_closed_when_the_worker_exits(tmp_path, monkeypatch):
    """A worker process's sessions get their plugin's pywren_close (role "worker") as it exits,
    and a close that hangs delays the exit by a bounded time only."""
    from pywren_core import worker
    from pywren_core.backend import Session

    worker.close_sessions()  # those earlier tests opened in this process
    closed = []
    real_close = Session.close

    def recording_close(session):
        closed.append(session.name)
        if session.config.get("storage_dir", "").endswith("hangs"):
            time.sleep(60)
        real_close(session)

    monkeypatch.setattr(Session, "close", recording_close)
    from pywren_core import config as config_module
    from pywren_core.plugins import load_backend

    config = config_module.load({"backend": "local", "local": {"storage_dir": str(tmp_path)}})
    payload = {"backend": "local", "config": config.backend_section(load_backend("local").info)}
    first = worker.session_for(payload)
    assert worker.session_for(payload) is first, "a worker process reuses its session"
    worker.close_sessions()
    assert closed == ["local"]
    assert worker.session_for(payload) is not first, "a closed session is not handed out again"
    monkeypatch.setattr(worker, "CLOSE_WAIT", 0.5)
    payload["config"] = {**payload["config"], "storage_dir": str(tmp_path / "hangs")}
    worker.session_for(payload)
    started = time.monotonic()
    worker.close_sessions()
    assert time.monotonic() - started < 5 and closed == ["local", "local", "local"]
