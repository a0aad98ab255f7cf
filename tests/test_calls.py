"""The call tracker on its own: every transition, without a backend."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import pytest

from pywren_core.calls import (
    CANCELLED,
    DONE,
    FAILED,
    INVOKED,
    NEW,
    RUNNING,
    TRANSITIONS,
    Call,
    CallTracker,
    Job,
    Outcome,
)
from pywren_core.errors import CallTimeoutError, InvokeError, WorkerDiedError
from pywren_core.futures import ResponseFuture
from pywren_core.protocol import JobKeys


class Recorder:
    """Stands in for the engine: records what the tracker asks of it."""

    def __init__(self, retries: int = 1):
        self.reinvoked: list[tuple[str, int]] = []
        self.retired: list[str] = []
        self.stopped: list[list[str]] = []
        self.tracker = CallTracker(
            retries,
            reinvoke=lambda job, calls: self.reinvoked.extend((c.call_id, c.attempt) for c in calls),
            retired=lambda job: self.retired.append(job.keys.job_id),
            stop_remote=lambda job, ids: self.stopped.append(list(ids)),
        )

    def job(self, calls: int = 2) -> tuple[Job, list[Call]]:
        job = Job(JobKeys("e", "j0000"), b"s" * 32, {}, timeout=10.0)
        made = []
        for i in range(calls):
            future = ResponseFuture("e", "j0000", f"{i:05d}")
            call = Call(job, future.call_id, future, {})
            future._call = call
            job.add(call)
            made.append(call)
        self.tracker.add_job(job)
        return job, made

    def invoke(self, *calls: Call) -> None:
        self.tracker.invoked([(c, c.attempt) for c in calls], (time.monotonic(), time.time()))


def test_success_settles_the_future_and_retires_the_job():
    r = Recorder()
    job, (a, b) = r.job()
    r.invoke(a, b)
    assert a.state is INVOKED and a.future.status == "invoked" and a.future.running()
    r.tracker.settle(a, 0, Outcome("success", value=7, stats={"worker_id": "w"}))
    assert a.state is DONE and a.future.result(0) == 7 and a.future.stats["runs"] == 1
    assert r.retired == []
    r.tracker.settle(b, 0, Outcome("exception", error=KeyError("k")))
    assert b.state is FAILED and isinstance(b.future.exception(0), KeyError)
    assert r.retired == ["j0000"] and r.tracker.active_jobs() == []
    assert a.future._call is None, "a settled future keeps no reference to its job"


def test_a_died_attempt_is_retried_then_fails_with_a_note():
    r = Recorder(retries=1)
    _, (a,) = r.job(1)
    r.invoke(a)
    r.tracker.settle(a, 0, Outcome("died", error=WorkerDiedError("killed by signal 9")))
    assert a.state is NEW and a.attempt == 1 and r.reinvoked == [("00000", 1)]
    assert a.future.stats["attempts"] == 2
    r.tracker.settle(a, 0, Outcome("success", value=1))  # a late report of the old attempt: ignored
    assert not a.future.done()
    r.invoke(a)
    r.tracker.settle(a, 1, Outcome("died", error=WorkerDiedError("killed by signal 9")))
    assert a.state is FAILED
    error = a.future.exception(0)
    assert isinstance(error, WorkerDiedError) and "gave up after 2 attempts" in "".join(error.__notes__)
    assert a.future.stats["runs"] == 2


def test_a_refused_invocation_fails_the_call_and_still_retires_the_job():
    r = Recorder()
    _, (a,) = r.job(1)
    r.tracker.invoke_failed([(a, 0)], InvokeError("no such function"))
    assert a.state is FAILED and isinstance(a.future.exception(0), InvokeError)
    assert r.retired == ["j0000"]


def test_lost_calls_are_declared_together_and_do_not_restart_the_clock():
    r = Recorder(retries=0)
    job, calls = r.job(3)
    r.invoke(*calls)
    clock = job.last_progress
    r.tracker.lost(calls[:2], "no worker reported on call {call}")
    assert [c.state for c in calls] == [FAILED, FAILED, INVOKED]
    assert job.last_progress == clock
    assert "call j0000/00000" in str(calls[0].future.exception(0))
    assert isinstance(calls[0].future.exception(0), CallTimeoutError)


def test_cancel_before_and_after_invocation():
    r = Recorder()
    _, (a, b) = r.job()
    assert a.future.cancel() is True
    assert a.state is CANCELLED and a.future.cancelled() and r.stopped == []
    r.invoke(b)
    assert b.future.cancel() is True
    assert r.stopped == [["00001"]], "an invoked call is stopped on the platform"
    assert b.future.cancel() is True, "cancelling twice is still cancelled"
    done, _ = concurrent.futures.wait([a.future, b.future], timeout=0)
    assert len(done) == 2, "concurrent.futures.wait sees cancelled calls as done"
    assert r.retired == ["j0000"]


def test_a_settled_call_cannot_be_cancelled():
    r = Recorder()
    _, (a,) = r.job(1)
    r.invoke(a)
    r.tracker.settle(a, 0, Outcome("success", value=1))
    assert a.future.cancel() is False and a.future.result(0) == 1


def test_speculation_races_two_attempts_and_the_first_answer_wins():
    r = Recorder(retries=0)
    _, (a,) = r.job(1)
    r.invoke(a)
    r.tracker.speculate(a)
    assert a.live == (0, 1) and a.state is INVOKED and r.reinvoked == [("00000", 1)]
    r.tracker.settle(a, 1, Outcome("timeout", error=CallTimeoutError("slow")))
    assert not a.future.done(), "the original may still answer"
    r.tracker.settle(a, 0, Outcome("success", value=5))
    assert a.future.result(0) == 5 and a.future.stats["speculated"]


def test_running_is_reported_by_the_platform():
    r = Recorder()
    _, (a,) = r.job(1)
    r.invoke(a)
    r.tracker.running(a, 0)
    assert a.state is RUNNING and a.future.status == "running"


def test_a_report_before_the_acceptance_note_still_counts():
    r = Recorder()
    _, (a,) = r.job(1)
    r.tracker.settle(a, 0, Outcome("success", value=3))
    assert a.future.result(0) == 3


def test_storage_failure_fails_every_open_call_of_the_job():
    r = Recorder()
    job, (a, b) = r.job()
    r.invoke(a, b)
    r.tracker.settle(a, 0, Outcome("success", value=1))
    r.tracker.fail_job(job, PermissionError("denied"))
    assert a.future.result(0) == 1 and isinstance(b.future.exception(0), PermissionError)


def test_the_table_forbids_moves_out_of_a_final_state():
    for final in (DONE, FAILED, CANCELLED):
        assert not [move for move in TRANSITIONS if move[0] is final]
    r = Recorder()
    _, (a,) = r.job(1)
    r.invoke(a)
    r.tracker.settle(a, 0, Outcome("success", value=1))
    with pytest.raises(RuntimeError, match="no transition done -> invoked"):
        r.tracker._move(a, INVOKED)


def test_storage_throttling_is_retried_a_bounded_number_of_times_with_a_capped_hint(monkeypatch):
    from pywren_core import backend
    from pywren_core.errors import ThrottledError

    slept: list[float] = []
    monkeypatch.setattr(backend.time, "sleep", slept.append)
    tries = []

    def always_throttled():
        tries.append(1)
        raise ThrottledError("SlowDown", retry_after=3600)

    with pytest.raises(ThrottledError):
        backend.retry_throttled(always_throttled)
    assert len(tries) == backend.STORAGE_ATTEMPTS
    assert slept == [backend.RETRY_AFTER_CAP] * (backend.STORAGE_ATTEMPTS - 1)


def test_futures_sharing_a_condition_wait_for_their_own_result():
    condition = threading.Condition()
    first, second = (ResponseFuture("e", "j0000", f"{i:05d}", condition) for i in range(2))
    results: list = []
    waiter = threading.Thread(target=lambda: results.append(second.result()))
    waiter.start()
    time.sleep(0.05)
    first._settle(1)  # wakes every waiter on the shared condition
    time.sleep(0.05)
    assert waiter.is_alive(), "a wake-up for another future is not this one's result"
    second._settle(2)
    waiter.join(5)
    assert results == [2] and first.result(0) == 1



def test_an_invocation_noted_while_the_lock_is_held_is_applied_as_it_is_let_go():
    r = Recorder()
    _, (a,) = r.job(1)
    with r.tracker._locked():  # the monitor, say, settling a round of statuses
        noter = threading.Thread(target=r.invoke, args=(a,))
        noter.start()
        noter.join(5)
        assert not noter.is_alive(), "an invoker never waits for the tracker's lock"
        assert a.state is NEW
    assert a.state is INVOKED and "invoked" in a.future.stats
