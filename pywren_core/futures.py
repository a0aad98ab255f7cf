"""Futures for remote calls, and waiting on many of them.

A :class:`ResponseFuture` is a real ``concurrent.futures.Future``: ``concurrent.futures.wait``,
``as_completed`` and ``asyncio.wrap_future`` work on it. The executor's monitor thread completes it
when the worker's status record appears in storage.
"""

from __future__ import annotations

import concurrent.futures
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

ALL_COMPLETED = "ALL_COMPLETED"
ANY_COMPLETED = "ANY_COMPLETED"
FIRST_EXCEPTION = "FIRST_EXCEPTION"
ALWAYS = "ALWAYS"
#: Longest a waiting thread sleeps at once: how soon Ctrl-C and the progress bar are served.
WAKE_INTERVAL = 0.1

_RUN_STATE = {"new": "new", "invoked": "invoked", "running": "running"}
# concurrent.futures.Future's states, read without its lock where a stale answer is harmless.
_FINISHED = concurrent.futures._base.FINISHED
_DONE = frozenset({concurrent.futures._base.CANCELLED, concurrent.futures._base.CANCELLED_AND_NOTIFIED, _FINISHED})


class ResponseFuture(concurrent.futures.Future):
    """The future result of one remote call.

    ``stats`` holds the call's timeline (``submitted``, ``invoked``, the worker's ``start`` and
    ``end``, ``done`` when the client saw it; all ``time.time()`` seconds), the worker's
    ``worker_id`` and whether it was a ``cold`` start, ``attempts`` invoked, ``runs`` reported
    (a platform's redelivery counts), and, when they happened, ``invoke_retries`` (throttled
    invocations), ``ambiguous_invokes`` (invocations whose answer was lost, so the call may have
    run once more) and ``speculated``. ``stdout`` and ``stderr`` hold the tail of what it printed.

    ``cancel()`` works until the call has settled: a call not yet invoked never will be, and the
    backend is asked to stop one that is running.

    The futures of one job share one ``condition`` (a ``Condition`` of its own, with its lock, wait
    queue and bound methods, was a third of a call's memory): so a wake-up may be for another
    future of the job, and ``result`` and ``exception`` wait on until this one is done.
    """

    def __init__(
        self,
        executor_id: str,
        job_id: str,
        call_id: str,
        condition: threading.Condition | None = None,
        submitted: float | None = None,
    ):
        if condition is None:
            super().__init__()
        else:  # concurrent.futures.Future.__init__ (the same from Python 3.10 to 3.13), sharing the condition
            self._condition = condition
            self._state = concurrent.futures._base.PENDING
            self._result = None
            self._exception = None
            self._waiters: list[Any] = []
            self._done_callbacks: list[Any] | tuple[()] = ()  # a list once a callback is added
        self.executor_id = executor_id
        self.job_id = job_id
        self.call_id = call_id
        self.attempt = 0
        self.stats: dict[str, Any] = {"submitted": time.time() if submitted is None else submitted, "attempts": 1}
        self.stdout = ""
        self.stderr = ""
        #: The executor's call tracker and this call's record in it, until the call settles.
        self._tracker: Any = None
        self._call: Any = None

    @property
    def status(self) -> str:
        """``new`` (not yet invoked), ``invoked``, ``running``, ``success``, ``error`` or ``cancelled``."""
        if self.cancelled():
            return "cancelled"
        if self.done():
            return "error" if self.exception() is not None else "success"
        call = self._call
        if call is not None:
            return _RUN_STATE.get(call.state.value, "invoked")
        return "invoked" if "invoked" in self.stats else "new"

    def running(self) -> bool:
        return self.status in ("invoked", "running")

    def add_done_callback(self, fn: Any) -> None:
        with self._condition:  # few futures get a callback: a shared empty tuple until one does
            if not isinstance(self._done_callbacks, list):
                self._done_callbacks = []
        super().add_done_callback(fn)

    def result(self, timeout: float | None = None) -> Any:
        self._wait_done(timeout)
        return super().result(0)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait_done(timeout)
        return super().exception(0)

    def _wait_done(self, timeout: float | None) -> None:
        """Wait until this future is done or ``timeout`` passed, through wake-ups meant for the
        job's other futures."""
        if self._state in _DONE:
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._condition:
            while self._state not in _DONE:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return
                self._condition.wait(left)

    def cancel(self) -> bool:
        tracker, call = self._tracker, self._call
        if tracker is not None and call is not None:
            return tracker.cancel(call)
        return self._settle_cancelled()

    # Called by the call tracker only.
    def _settle_cancelled(self) -> bool:
        if self.cancelled():
            return True
        if not super().cancel():
            return False
        self.set_running_or_notify_cancel()  # wakes concurrent.futures.wait and as_completed
        self._release()
        return True

    def _settle(self, result: Any = None, exception: BaseException | None = None) -> None:
        try:
            if exception is not None:
                self.set_exception(exception)
            else:
                self.set_result(result)
        except concurrent.futures.InvalidStateError:  # cancelled meanwhile
            pass
        self._release()

    def _release(self) -> None:
        """A settled future keeps no reference to its job, so holding results holds nothing else."""
        self._tracker = self._call = None

    def __repr__(self) -> str:
        return f"<ResponseFuture {self.job_id}/{self.call_id} {self.status}>"


def progress_bar(total: int, enabled: bool | None, desc: str | None = None, delay: float = 0.0) -> Any:
    """A tqdm bar counting ``total`` calls, or None when progress is off (``enabled`` False) or, by
    default (None), when stderr is no terminal and no notebook runs. ``delay``: seconds before it shows."""
    show = (sys.stderr.isatty() or "ipykernel" in sys.modules) if enabled is None else enabled  # a notebook
    if not show or total < 2:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="call", leave=False, file=sys.stderr, desc=desc, delay=delay)


class _Waiter:
    """Counts completions the way ``concurrent.futures.wait`` does: futures call it as they finish.

    It is added to each future's waiter list and removed afterwards, so a timed wait leaves
    nothing behind on the futures (a done-callback could never be removed).
    """

    def __init__(self, total: int, return_when: str):
        self.remaining = total
        self.return_when = return_when
        self.event = threading.Event()
        self._lock = threading.Lock()
        if total == 0:
            self.event.set()

    def _one(self, failed: bool) -> None:
        with self._lock:
            self.remaining -= 1
            if (
                self.remaining <= 0
                or self.return_when == ANY_COMPLETED
                or (failed and self.return_when == FIRST_EXCEPTION)
            ):
                self.event.set()

    def add_result(self, future: concurrent.futures.Future) -> None:
        self._one(False)

    def add_exception(self, future: concurrent.futures.Future) -> None:
        self._one(True)

    def add_cancelled(self, future: concurrent.futures.Future) -> None:
        self._one(False)


def wait(
    fs: Iterable[concurrent.futures.Future],
    return_when: str = ALL_COMPLETED,
    timeout: float | None = None,
    progress: bool | None = None,
) -> tuple[list[concurrent.futures.Future], list[concurrent.futures.Future]]:
    """Wait for futures; return ``(done, not_done)`` as lists in the order given.

    ``ALL_COMPLETED`` waits for every one (or the timeout), ``ANY_COMPLETED`` for at least one,
    ``FIRST_EXCEPTION`` until one fails (or all are done), ``ALWAYS`` does not wait at all.
    ``progress`` shows a bar (default: when stderr is a terminal, or in a notebook). Ctrl-C while
    waiting cancels the futures not yet done, then raises ``KeyboardInterrupt``.
    """
    futures = list(fs)
    if return_when == concurrent.futures.FIRST_COMPLETED:
        return_when = ANY_COMPLETED
    if return_when not in (ALL_COMPLETED, ANY_COMPLETED, FIRST_EXCEPTION, ALWAYS):
        raise ValueError(
            f"return_when must be ALL_COMPLETED, ANY_COMPLETED, FIRST_EXCEPTION or ALWAYS, not {return_when!r}"
        )
    if return_when != ALWAYS:
        try:
            _wait(futures, return_when, timeout, progress)
        except KeyboardInterrupt:
            cancel(futures)
            raise
    done = [f for f in futures if f._state in _DONE]  # type: ignore[attr-defined]
    return done, [f for f in futures if f._state not in _DONE]  # type: ignore[attr-defined]


def cancel(fs: Iterable[concurrent.futures.Future]) -> None:
    """Cancel many futures at once: one request per job to stop the calls already invoked."""
    by_tracker: dict[int, tuple[Any, list[Any]]] = {}
    for f in fs:
        tracker, call = getattr(f, "_tracker", None), getattr(f, "_call", None)
        if tracker is not None and call is not None:
            by_tracker.setdefault(id(tracker), (tracker, []))[1].append(call)
        else:
            f.cancel()
    for tracker, calls in by_tracker.values():
        tracker.cancel_all(calls)


def _wait(
    futures: Sequence[concurrent.futures.Future], return_when: str, timeout: float | None, progress: bool | None
) -> None:
    waiter = _Waiter(len(futures), return_when)
    watched = []
    for f in futures:
        with f._condition:  # type: ignore[attr-defined]
            if f._state == _FINISHED:  # type: ignore[attr-defined]
                waiter._one(f._exception is not None)  # type: ignore[attr-defined]
            elif f._state in _DONE:  # type: ignore[attr-defined]
                waiter._one(False)
            else:
                f._waiters.append(waiter)  # type: ignore[attr-defined]
                watched.append(f)
    bar = progress_bar(len(futures), progress) if return_when == ALL_COMPLETED else None
    deadline = None if timeout is None else time.monotonic() + timeout
    shown = 0
    try:
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            # Wake at least every WAKE_INTERVAL: a SIGINT the OS hands to another thread only
            # raises KeyboardInterrupt here once this thread runs again.
            if waiter.event.wait(WAKE_INTERVAL if left is None else min(WAKE_INTERVAL, left)):
                break
            if bar is not None:
                bar.update(len(futures) - waiter.remaining - shown)
                shown = len(futures) - waiter.remaining
    finally:
        for f in watched:
            with f._condition:  # type: ignore[attr-defined]
                try:
                    f._waiters.remove(waiter)  # type: ignore[attr-defined]
                except ValueError:
                    pass
        if bar is not None:
            bar.update(len(futures) - waiter.remaining - shown)
            bar.refresh()
            bar.close()


def get_result(
    fs: Sequence[concurrent.futures.Future],
    timeout: float | None = None,
    progress: bool | None = None,
    throw_except: bool = True,
) -> list[Any]:
    """Results of ``fs`` in order; raises the first failed call's exception, or TimeoutError.

    With ``throw_except=False`` a failed call's exception (a cancelled one's ``CancelledError``)
    stands in its place in the list instead of being raised.
    """
    done, not_done = wait(fs, ALL_COMPLETED, timeout, progress)
    if not_done:
        raise TimeoutError(f"{len(not_done)} of {len(fs)} calls were not done after {timeout} s")
    if throw_except:
        # A finished future's result without taking its lock: thousands are collected at once.
        return [f._result if f._state == _FINISHED and f._exception is None else f.result() for f in fs]  # type: ignore[attr-defined]
    return [_result_or_exception(f) for f in fs]


def _result_or_exception(f: concurrent.futures.Future) -> Any:
    if f.cancelled():
        return concurrent.futures.CancelledError(f"call {getattr(f, 'call_id', '')} was cancelled")
    return f.exception() if f.exception() is not None else f.result()
