"""The worker harness, end to end: an executor whose backend hands each payload to harness.serve in
a thread, as a platform's handler does, with the job's objects in the local backend's storage."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import attrs
import pytest

import pywren_core as pw
from pywren_core import harness, hookimpl, plugins, worker
from pywren_core.backends import local
from pywren_core.errors import CallTimeoutError, WorkerDiedError
from pywren_core.protocol import PAYLOAD_KEY_ENV, JobKeys, delete_jobs, seal, secret_context


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


# --- a warm worker's requests per call -----------------------------------------------------------


class CountRequests:
    """A wrapper plugin that counts a session's storage requests, by kind and by the key's last part."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []

    def _count(self, kind: str, key: str) -> Any:
        self.requests.append((kind, key.rsplit("/", 1)[-1]))
        return (yield)

    @hookimpl(wrapper=True)
    def pywren_storage_put(self, session, key, data):
        return (yield from self._count("put", key))

    @hookimpl(wrapper=True)
    def pywren_storage_get(self, session, key, byte_range):
        return (yield from self._count("get", key))

    @hookimpl(wrapper=True)
    def pywren_storage_list(self, session, prefix):
        return (yield from self._count("list", prefix))

    @hookimpl(wrapper=True)
    def pywren_storage_delete(self, session, keys):
        return (yield from self._count("delete", ",".join(keys)))


class RecordPayloads:
    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []

    @hookimpl(wrapper=True)
    def pywren_invoke(self, session, payload):
        self.payloads.append(json.loads(json.dumps(payload)))
        return (yield)


@pytest.fixture
def recorded_job(pywren_config):
    """The payloads of a finished five-call job whose objects are kept, and a worker session that
    counts its requests."""
    recorder = RecordPayloads()
    with pw.executor(pywren_config, cleanup=False, progress=False, wrappers=[recorder]) as ex:
        assert ex.get_result(ex.map(abs, range(-5, 0))) == [5, 4, 3, 2, 1]
        counter = CountRequests()
        session = plugins.load_backend("local").open(ex.section, role="worker", wrappers=[counter])
        yield recorder.payloads, session, counter


def test_a_warm_worker_reads_a_jobs_function_once_then_writes_and_fences_each_status(recorded_job):
    """Per call, a status (PUT) and the fence against a job deleted meanwhile (LIST of the
    function's key); the function is read and verified by the first payload of the job only."""
    payloads, session, counter = recorded_job
    for payload in payloads:
        (status,) = worker.run_payload(payload, session, isolate_cwd=False)
        assert status["kind"] == "success"
    kinds = Counter(kind for kind, _ in counter.requests)
    assert kinds == {"put": 5, "list": 5, "get": 1}, counter.requests
    assert ("get", "func.pickle") in counter.requests and ("list", "func.pickle") in counter.requests


def test_a_cached_function_never_runs_for_a_payload_its_job_did_not_sign(recorded_job):
    payloads, session, counter = recorded_job
    worker.run_payload(payloads[0], session, isolate_cwd=False)  # the function is cached now
    forged = {**payloads[1], "secret": secrets.token_bytes(32).hex()}
    (status,) = worker.run_payload(forged, session, isolate_cwd=False)
    assert status["kind"] == "refused" and "signature" in status["error"]["message"].lower()
    assert counter.requests.count(("get", "func.pickle")) == 2, "the forged payload's function was not read again"


def test_a_cached_run_of_a_deleted_job_leaves_nothing_behind(recorded_job, pywren_config):
    payloads, session, counter = recorded_job
    worker.run_payload(payloads[0], session, isolate_cwd=False)  # the function is cached now
    prefix = JobKeys.from_payload(payloads[1]).prefix
    delete_jobs(session, prefix)
    worker.run_payload(payloads[1], session, isolate_cwd=False)  # a late redelivery, straight from the client
    assert session.list(prefix) == [], "a run of a job deleted meanwhile left objects behind"


def test_a_sealed_payload_of_a_deleted_job_runs_nothing_though_its_function_is_cached(recorded_job, monkeypatch):
    """A sealed payload rests in a queue and may come back after its job is gone: a warm worker
    checks the job is still there before running it, even with the job's function cached."""
    payload_key = secrets.token_bytes(32)
    monkeypatch.setenv(PAYLOAD_KEY_ENV, payload_key.hex())
    monkeypatch.setattr(worker, "_payload_key", lambda: payload_key)
    payloads, session, counter = recorded_job

    def sealed(payload):  # and a second attempt, as the calls have answered already
        keys = JobKeys.from_payload(payload)
        secret = bytes.fromhex(payload["secret"])
        rest = {k: v for k, v in payload.items() if k != "secret"}
        calls = [{**call, "attempt": call["attempt"] + 1} for call in payload["calls"]]
        return {**rest, "calls": calls, "sealed_secret": seal(payload_key, secret, secret_context(keys))}

    assert [s["kind"] for s in worker.run_payload(sealed(payloads[0]), session, isolate_cwd=False)] == ["success"]
    delete_jobs(session, JobKeys.from_payload(payloads[1]).prefix)
    assert worker.run_payload(sealed(payloads[1]), session, isolate_cwd=False) == []
