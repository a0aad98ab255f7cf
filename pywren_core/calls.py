"""Every call's state and the only transitions between states: the one place a call can end.

A call moves through these states (after dask.distributed's task states)::

    new ──> invoked ──> running ──> done
     │  ^      │           │    └─> failed
     │  └──────┴───────────┘        cancelled
     └─> failed / cancelled

``TRANSITIONS`` lists every allowed move and why it happens. The invoker and the monitor report
events (:meth:`CallTracker.invoked`, :meth:`~CallTracker.settle`, :meth:`~CallTracker.lost`, ...);
the tracker decides the next state (a retry is a move back to ``new`` with the next attempt), and
nothing else changes a call's state. Side effects (completing a future, invoking again, retiring
a finished job) are returned from the lock and run outside it, so a future's callbacks may call
back into the executor. Times are ``time.monotonic()``; the futures' ``stats`` keep wall-clock
times for people.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import functools
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs

from pywren_core.errors import CallFailedError, CallTimeoutError, VersionMismatchError, WorkerDiedError
from pywren_core.protocol import JobKeys, group_of


class State(enum.Enum):
    NEW = "new"
    INVOKED = "invoked"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    #: Members are singletons: hash them by identity, in C (``Enum`` hashes by name, in Python),
    #: since every event looks a state up in ``TRANSITIONS`` or ``TERMINAL``.
    __hash__ = object.__hash__


NEW, INVOKED, RUNNING, DONE, FAILED, CANCELLED = State
TERMINAL = frozenset({DONE, FAILED, CANCELLED})

#: Every move a call can make, and why. A move not listed here is a bug and raises.
TRANSITIONS: dict[tuple[State, State], str] = {
    (NEW, INVOKED): "the platform accepted the invocation",
    (NEW, FAILED): "the platform refused the invocation, or the job's storage failed",
    (NEW, CANCELLED): "cancelled before it was invoked: it never will be",
    (INVOKED, RUNNING): "the platform reported that a worker started it",
    (INVOKED, DONE): "its worker reported a result",
    (INVOKED, FAILED): "its worker reported an exception, or it failed past its last retry",
    (INVOKED, CANCELLED): "cancelled while invoked: the platform is asked to stop it",
    (INVOKED, NEW): "its worker died, timed out or was lost: retried with the next attempt",
    (RUNNING, DONE): "its worker reported a result",
    (RUNNING, FAILED): "its worker reported an exception, or it failed past its last retry",
    (RUNNING, CANCELLED): "cancelled while running: the platform is asked to stop it",
    (RUNNING, NEW): "its worker died, timed out or was lost: retried with the next attempt",
}

#: One INFO record for every run or invocation beyond the first (a retry, a backup, a lost answer,
#: a redelivery), with ``pywren_event`` and ``pywren_call`` attributes: how a user (with
#: ``logging.basicConfig(level=logging.INFO)``) or the conformance kit sees every extra run.
log = logging.getLogger("pywren_core.calls")


def _extra_work(call: Call, event: str, message: str) -> None:
    name = f"{call.job.keys.job_id}/{call.call_id}"
    log.info("call %s: %s", name, message, extra={"pywren_event": event, "pywren_call": name})


#: Outcomes that mean the call never ran to an answer: worth another attempt.
RETRYABLE = {"died": WorkerDiedError, "timeout": CallTimeoutError, "error": CallFailedError}
#: The error each outcome that is not the call's own answer raises on the client.
FAILURES = {**RETRYABLE, "refused": VersionMismatchError}


@attrs.define(eq=False)
class Call:
    job: Job
    call_id: str
    future: Any  # ResponseFuture: typed loosely to keep this module free of the futures module
    #: How the worker finds the arguments (inline, or a byte range of the job's args object).
    args: dict[str, Any]
    state: State = NEW
    #: The newest attempt; attempts are numbered from 0.
    attempt: int = 0
    #: Attempts that may still report: one, or two while a speculative backup races the original.
    #: (Tuples, not sets: a few bytes where a set costs 216 per call, and one shared default.)
    live: tuple[int, ...] = (0,)
    invoked_at: float | None = None
    #: Attempts whose status record was seen, so one record is counted once.
    reported: tuple[int, ...] = ()
    #: Its status group (set by :meth:`Job.add`).
    group: str = ""

    @property
    def settled(self) -> bool:
        return self.state in TERMINAL


@attrs.define(eq=False)
class Job:
    keys: JobKeys
    secret: bytes
    base_payload: dict[str, Any]
    timeout: float
    calls: dict[str, Call] = attrs.field(factory=dict)
    #: Calls not yet settled, by status group: what the monitor still lists.
    pending: dict[str, set[str]] = attrs.field(factory=dict)
    #: Status groups with a call invoked at some time: the monitor looks no further into the others.
    invoked_groups: set[str] = attrs.field(factory=set)
    #: How many calls have not settled yet.
    open: int = 0
    #: Last time (monotonic) a worker reported on one of its calls.
    last_progress: float = attrs.field(factory=time.monotonic)
    #: Collected by a new client (``Executor.attach``): arguments unknown, so never invoked again.
    attached: bool = False
    #: Seconds from invocation to completion of the calls done so far, for speculation.
    durations: list[float] = attrs.field(factory=list)

    def add(self, call: Call) -> None:
        self.calls[call.call_id] = call
        call.group = sys.intern(group_of(call.call_id))  # one string per group, not per call
        self.pending.setdefault(call.group, set()).add(call.call_id)
        self.open += 1

    @property
    def finished(self) -> bool:
        return self.open == 0

    def payload(self, sent: Iterable[tuple[Call, int]]) -> dict[str, Any]:
        """The invoke payload of these calls, each at the attempt given."""
        entries = [{"call_id": c.call_id, "attempt": attempt, "args": c.args} for c, attempt in sent]
        return {**self.base_payload, "calls": entries}


@attrs.define
class Outcome:
    """What one attempt of a call came to, as read from its status record (or decided by the client).
    (Not frozen: one is made per call, and a frozen class's ``__init__`` costs twice as much.)"""

    #: ``success``, ``exception``, ``died``, ``timeout``, ``error`` or ``refused``.
    kind: str
    value: Any = None
    error: BaseException | None = None
    stats: dict[str, Any] = attrs.field(factory=dict)
    stdout: str = ""
    stderr: str = ""


class TransitionError(RuntimeError):
    """A move that ``TRANSITIONS`` does not allow: a bug in whoever reported the event."""


Effect = Callable[[], object]


class CallTracker:
    """Owns the state of every call of one executor.

    ``reinvoke(job, calls)`` queues invocations of the calls' current attempts; ``retired(job)``
    is told once every call of a job has settled; ``stop_remote(job, call_ids)`` asks the backend to
    stop calls that were cancelled after being invoked. ``retries`` is how many times a call that
    died, timed out or was lost is invoked again.
    """

    def __init__(
        self,
        retries: int,
        reinvoke: Callable[[Job, list[Call]], None],
        retired: Callable[[Job], None],
        stop_remote: Callable[[Job, list[str]], None],
    ):
        self.retries = retries
        self._reinvoke = reinvoke
        self._retired = retired
        self._stop_remote = stop_remote
        self._lock = threading.RLock()
        #: Invocations the platform accepted, not yet noted: see :meth:`invoked`.
        self._accepted: collections.deque[tuple[Iterable[tuple[Call, int]], tuple[float, float], int]] = (
            collections.deque()
        )
        self.jobs: list[Job] = []

    # --- events ------------------------------------------------------------------------------

    def add_job(self, job: Job) -> None:
        with self._locked():
            self.jobs.append(job)
            for call in job.calls.values():
                call.future._tracker = self

    def invoked(self, sent: Iterable[tuple[Call, int]], issued: tuple[float, float], throttled: int = 0) -> None:
        """The platform accepted one invocation carrying these calls at these attempts, sent at
        ``issued`` (``time.monotonic()``, ``time.time()``) after ``throttled`` refusals.

        Never waits for the lock: the note is queued and applied now if the lock is free, else by
        the thread that holds it, before it lets go. (Invoker threads that waited for the lock the
        monitor holds through a round of statuses queued up behind it, a thread switch each.)
        """
        self._accepted.append((sent, issued, throttled))
        self._apply_if_free()

    def _note_invoked(self, sent: Iterable[tuple[Call, int]], issued: tuple[float, float], throttled: int) -> None:
        now, wall = issued
        for call, attempt in sent:
            # The stats say what happened even when the call has moved on meanwhile (a fan-out
            # invoker's report can come after the call's own result).
            stats = call.future.stats
            stats.setdefault("invoked", wall)
            stats["invoke_retries"] = stats.get("invoke_retries", 0) + throttled
            if call.attempt != attempt or call.settled:
                continue
            call.invoked_at = now
            call.job.invoked_groups.add(call.group)
            if call.state is NEW:
                self._move(call, INVOKED)

    def ambiguous(self, calls: Iterable[Call]) -> None:
        """An invocation of ``calls`` was sent and its answer lost: each may run once more than asked."""
        with self._locked():
            for call in calls:
                stats = call.future.stats
                stats["ambiguous_invokes"] = stats.get("ambiguous_invokes", 0) + 1
                lost = f"the answer to an invocation of attempt {call.attempt} was lost: it may run twice"
                _extra_work(call, "ambiguous", lost)

    def invoke_failed(self, sent: Iterable[tuple[Call, int]], error: BaseException) -> None:
        """The platform refused the invocation of these calls at these attempts for good: they fail with ``error``."""
        effects: list[Effect] = []
        with self._locked():
            for call, attempt in sent:
                if call.attempt == attempt and not call.settled:
                    effects += self._fail(call, error)
        _run(effects)

    def running(self, call: Call, attempt: int) -> None:
        with self._locked():
            if call.state is INVOKED and attempt == call.attempt:
                self._move(call, RUNNING)

    def settle(self, call: Call, attempt: int, outcome: Outcome) -> None:
        """One attempt reported ``outcome`` (a status record, or a platform's event)."""
        self.settle_all([(call, attempt, outcome)])

    def settle_all(self, reports: Iterable[tuple[Call, int, Outcome]]) -> None:
        """What :meth:`settle` does for each ``(call, attempt, outcome)``, under one hold of the lock."""
        effects: list[Effect] = []
        now, wall = time.monotonic(), time.time()
        with self._locked():
            for call, attempt, outcome in reports:
                effects += self._report(call, attempt, outcome, now, wall)
        _run(effects)

    def _report(self, call: Call, attempt: int, outcome: Outcome, now: float, wall: float) -> list[Effect]:
        if call.settled or attempt not in call.live or attempt in call.reported:
            return []
        call.reported += (attempt,)
        if call.state is NEW:  # the report beat the invoker's note that the platform accepted it
            self._move(call, INVOKED)
        stats = call.future.stats
        delivery = max(1, int(outcome.stats.get("delivery") or 1))
        stats["runs"] = stats.get("runs", 0) + delivery
        if delivery > 1:
            _extra_work(call, "redelivered", f"attempt {attempt} was delivered {delivery} times")
        answered = outcome.kind in ("success", "exception")
        if answered:
            call.job.last_progress = now
        elif call.live != (attempt,):
            call.live = tuple(a for a in call.live if a != attempt)  # the other attempt may still answer
            return []
        stats.update(outcome.stats)
        stats.pop("delivery", None)
        stats["done"] = wall
        call.future.stdout, call.future.stderr = outcome.stdout, outcome.stderr
        if outcome.kind == "success":
            if call.invoked_at is not None:
                call.job.durations.append(now - call.invoked_at)
            self._move(call, DONE)
            return [functools.partial(call.future._settle, outcome.value), *self._after_settling(call)]
        if outcome.kind == "exception":
            return self._fail(call, outcome.error or CallFailedError("the call raised an exception"))
        return self._failed_attempt(call, outcome)

    def lost(self, calls: Iterable[Call], message: str) -> None:
        """No worker reported on these calls within their timeout and grace: all declared together."""
        effects: list[Effect] = []
        with self._locked():
            for call in calls:
                if call.settled:
                    continue
                call.live = (call.attempt,)
                error = CallTimeoutError(message.format(call=f"{call.job.keys.job_id}/{call.call_id}"))
                effects += self._failed_attempt(call, Outcome("timeout", error=error))
        _run(effects)

    def speculate(self, call: Call) -> None:
        """Invoke a backup attempt of a straggler; whichever attempt answers first wins."""
        with self._locked():
            if call.settled or len(call.live) > 1:
                return
            call.future.stats["speculated"] = True
            _extra_work(call, "speculated", f"a straggler: invoking a backup of attempt {call.attempt}")
            self._next_attempt(call, keep_running=True)
            effects = [lambda: self._reinvoke(call.job, [call])]
        _run(effects)

    def cancel(self, call: Call) -> bool:
        """Cancel one call; False when it had already settled."""
        effects: list[Effect] = []
        with self._locked():
            if call.settled:
                return False
            was_invoked = call.state is not NEW or call.invoked_at is not None
            self._move(call, CANCELLED)
            effects.append(call.future._settle_cancelled)
            if was_invoked and not call.job.attached:
                effects.append(lambda: self._stop_remote(call.job, [call.call_id]))
            effects += self._after_settling(call)
        _run(effects)
        return True

    def cancel_all(self, calls: Iterable[Call]) -> int:
        """Cancel many calls, asking the backend to stop each job's invoked ones in one request."""
        effects: list[Effect] = []
        to_stop: dict[int, tuple[Job, list[str]]] = {}
        count = 0
        with self._locked():
            for call in calls:
                if call.settled:
                    continue
                count += 1
                if (call.state is not NEW or call.invoked_at is not None) and not call.job.attached:
                    to_stop.setdefault(id(call.job), (call.job, []))[1].append(call.call_id)
                self._move(call, CANCELLED)
                effects.append(call.future._settle_cancelled)
                effects += self._after_settling(call)
        stops = [lambda job=job, ids=ids: self._stop_remote(job, ids) for job, ids in to_stop.values()]
        _run(stops + effects)
        return count

    def fail_job(self, job: Job, error: BaseException) -> None:
        """Something the whole job depends on failed for good (its storage): every open call fails."""
        effects: list[Effect] = []
        with self._locked():
            for call in job.calls.values():
                if not call.settled:
                    effects += self._fail(call, error)
        _run(effects)

    # --- queries -----------------------------------------------------------------------------

    def open_calls(self) -> list[Call]:
        with self._locked():
            return [c for job in self.jobs for c in job.calls.values() if not c.settled]

    def active_jobs(self) -> list[Job]:
        with self._locked():
            return list(self.jobs)

    def drop_jobs(self) -> list[Job]:
        """Forget every job (the executor is stopping); return them, so their objects can go."""
        with self._locked():
            jobs, self.jobs = self.jobs, []
        return jobs

    # --- the lock ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the lock, with every invocation noted so far applied; and those queued meanwhile
        applied on the way out (their invoker found the lock taken and left them to this thread)."""
        try:
            with self._lock:
                self._apply_accepted()
                yield
        finally:
            self._apply_if_free()

    def _apply_if_free(self) -> None:
        while self._accepted and self._lock.acquire(blocking=False):
            try:
                self._apply_accepted()
            finally:
                self._lock.release()

    def _apply_accepted(self) -> None:
        while self._accepted:
            self._note_invoked(*self._accepted.popleft())

    # --- moves (called with the lock held) -----------------------------------------------------

    def _move(self, call: Call, to: State) -> None:
        if (call.state, to) not in TRANSITIONS:
            raise TransitionError(
                f"call {call.job.keys.job_id}/{call.call_id}: no transition {call.state.value} -> {to.value}"
            )
        call.state = to

    def _fail(self, call: Call, error: BaseException) -> list[Effect]:
        self._move(call, FAILED)
        return [functools.partial(call.future._settle, None, error), *self._after_settling(call)]

    def _failed_attempt(self, call: Call, outcome: Outcome) -> list[Effect]:
        """An attempt that never ran to an answer: retry it while retries last, else fail the call."""
        if outcome.kind in RETRYABLE and call.attempt < self.retries and not call.job.attached:
            _extra_work(call, "retried", f"attempt {call.attempt} ended {outcome.kind!r} ({outcome.error}): retrying")
            self._next_attempt(call, keep_running=False)
            return [lambda: self._reinvoke(call.job, [call])]
        error = outcome.error or FAILURES.get(outcome.kind, CallFailedError)(
            f"call ended with status {outcome.kind!r}"
        )
        if outcome.kind in RETRYABLE and self.retries:
            error.add_note(f"gave up after {call.attempt + 1} attempts (retries={self.retries})")
        return self._fail(call, error)

    def _next_attempt(self, call: Call, keep_running: bool) -> None:
        call.attempt += 1
        call.future.attempt = call.attempt
        call.future.stats["attempts"] = call.attempt + 1
        call.live = (*call.live, call.attempt) if keep_running else (call.attempt,)
        if not keep_running:
            self._move(call, NEW)
            call.invoked_at = None

    def _after_settling(self, call: Call) -> list[Effect]:
        job = call.job
        job.pending[call.group].discard(call.call_id)
        job.open -= 1
        if not job.finished or job not in self.jobs:
            return []
        self.jobs.remove(job)
        return [lambda: self._retired(job)]


def _run(effects: list[Effect]) -> None:
    """Run every effect, even when one raises (a second Ctrl-C, say): a future left unsettled or a
    job left unretired would make whoever waits on it wait forever. The first error is re-raised."""
    first: BaseException | None = None
    for effect in effects:
        try:
            effect()
        except BaseException as exc:
            first = first or exc
    if first is not None:
        raise first
