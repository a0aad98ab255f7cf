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
ALWAYS = "ALWAYS"


class ResponseFuture(concurrent.futures.Future):
    """The future result of one remote call.

    ``stats`` holds the call's timeline (``submitted``, ``invoked``, the worker's ``start`` and
    ``end``, ``done`` when the client saw it; all ``time.time()`` seconds), the worker's
    ``worker_id`` and whether it was a ``cold`` start, and ``attempts`` made. ``stdout`` and
    ``stderr`` hold the tail of what the call printed.
    """

    def __init__(self, executor_id: str, job_id: str, call_id: str):
        super().__init__()
        self.executor_id = executor_id
        self.job_id = job_id
        self.call_id = call_id
        self.attempt = 0
        self.stats: dict[str, Any] = {"submitted": time.time(), "attempts": 1}
        self.stdout = ""
        self.stderr = ""

    @property
    def status(self) -> str:
        """``new`` (not yet invoked), ``invoked``, ``success``, ``error`` or ``cancelled``."""
        if self.cancelled():
            return "cancelled"
        if self.done():
            return "error" if self.exception() is not None else "success"
        return "invoked" if "invoked" in self.stats else "new"

    def __repr__(self) -> str:
        return f"<ResponseFuture {self.job_id}/{self.call_id} {self.status}>"


def _progress_bar(total: int, enabled: bool | None) -> Any:
    show = sys.stderr.isatty() if enabled is None else enabled
    if not show or total < 2:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="call", leave=False, file=sys.stderr)


def wait(
    fs: Iterable[concurrent.futures.Future],
    return_when: str = ALL_COMPLETED,
    timeout: float | None = None,
    progress: bool | None = None,
) -> tuple[list[concurrent.futures.Future], list[concurrent.futures.Future]]:
    """Wait for futures; return ``(done, not_done)`` as lists in the order given.

    ``ALL_COMPLETED`` waits for every one (or the timeout), ``ANY_COMPLETED`` for at least one,
    ``ALWAYS`` does not wait at all. ``progress`` shows a bar (default: when stderr is a terminal).
    """
    futures = list(fs)
    if return_when in (ANY_COMPLETED, concurrent.futures.FIRST_COMPLETED):
        concurrent.futures.wait(futures, timeout, concurrent.futures.FIRST_COMPLETED)
    elif return_when == ALL_COMPLETED:
        _wait_all(futures, timeout, progress)
    elif return_when != ALWAYS:
        raise ValueError(f"return_when must be ALL_COMPLETED, ANY_COMPLETED or ALWAYS, not {return_when!r}")
    done = [f for f in futures if f.done()]
    return done, [f for f in futures if not f.done()]


def _wait_all(futures: Sequence[concurrent.futures.Future], timeout: float | None, progress: bool | None) -> None:
    """Block until every future is done, counting completions with callbacks (not by rescanning)."""
    condition = threading.Condition()
    remaining = [len(futures)]

    def one_done(_: concurrent.futures.Future) -> None:
        with condition:
            remaining[0] -= 1
            condition.notify_all()

    bar = _progress_bar(len(futures), progress)
    for f in futures:
        f.add_done_callback(one_done)  # runs at once for futures already done
    deadline = None if timeout is None else time.monotonic() + timeout
    shown = 0
    try:
        with condition:
            while remaining[0] > 0:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                condition.wait(0.1 if bar is not None else left)
                if bar is not None:
                    bar.update(len(futures) - remaining[0] - shown)
                    shown = len(futures) - remaining[0]
    finally:
        if bar is not None:
            bar.update(len(futures) - remaining[0] - shown)
            bar.refresh()
            bar.close()


def get_result(
    fs: Sequence[concurrent.futures.Future], timeout: float | None = None, progress: bool | None = None
) -> list[Any]:
    """Results of ``fs`` in order; raises the first failed call's exception, or TimeoutError."""
    done, not_done = wait(fs, ALL_COMPLETED, timeout, progress)
    if not_done:
        raise TimeoutError(f"{len(not_done)} of {len(fs)} calls were not done after {timeout} s")
    return [f.result() for f in fs]
