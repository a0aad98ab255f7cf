"""Running pywren payloads inside a function instance: threads in this process, a cap per instance.

Azure runs many invocations in one sandbox process. Forking a Python per call is what made bursts
fail, so calls run here as threads of a bounded pool (``PYWREN_AZURE_MAX_CONCURRENCY``, set at
deploy), each in its own working directory (``pywren_core.worker.current_call().workdir``). Every
payload gets a deadline before the platform's own time limit, so an overrunning call is reported
as timed out rather than silently killed with its instance.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from pywren_core import worker

log = logging.getLogger("pywren_azure")

DEFAULT_MAX_CONCURRENCY = 16
#: host.json's functionTimeout, in seconds (the consumption plan's maximum).
DEFAULT_TIME_LIMIT = 600.0
#: Seconds kept free before the platform's limit, to write the timeout statuses.
LIMIT_MARGIN = 10.0
#: Seconds past a payload's deadline that a queue invocation waits for its statuses to be written.
STATUS_GRACE = 5.0
_SLOT_POLL = 0.02


class Runner:
    """A bounded pool of call threads; a payload starts only when a slot is free."""

    def __init__(self, max_concurrency: int, time_limit: float):
        self.max_concurrency = max_concurrency
        self.time_limit = max(1.0, time_limit - LIMIT_MARGIN)
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="pywren-call")

    async def start(self, payload: dict[str, Any], wait_for_slot: float) -> tuple[Future, float] | None:
        """Start ``payload`` once a slot is free (waiting at most ``wait_for_slot`` seconds).

        Returns the running future and the payload's deadline, or None when no slot came free. The
        wait polls instead of blocking, so the function host's event loop stays free meanwhile.
        """
        give_up = time.monotonic() + wait_for_slot
        while not self._slots.acquire(blocking=False):
            if time.monotonic() >= give_up:
                return None
            await asyncio.sleep(_SLOT_POLL)
        budget = min(float(payload["timeout"]) * max(1, len(payload["calls"])), self.time_limit)
        deadline = time.time() + budget
        try:
            future = self._pool.submit(self._run, payload, deadline)
        except BaseException:
            self._slots.release()
            raise
        return future, deadline

    def _run(self, payload: dict[str, Any], deadline: float) -> None:
        # A call that overruns keeps its thread (Python cannot stop a thread), and so its slot,
        # until it returns: the watchdog has already reported it as timed out by then.
        try:
            worker.handle(payload, deadline=deadline, isolate_cwd=False)
        finally:
            self._slots.release()


_runner: Runner | None = None
_runner_lock = threading.Lock()


def runner() -> Runner:
    """This instance's runner, sized from the app's settings on first use."""
    global _runner
    with _runner_lock:
        if _runner is None:
            _runner = Runner(
                int(os.environ.get("PYWREN_AZURE_MAX_CONCURRENCY", DEFAULT_MAX_CONCURRENCY)),
                float(os.environ.get("PYWREN_AZURE_TIME_LIMIT", DEFAULT_TIME_LIMIT)),
            )
        return _runner


def describe(payload: dict[str, Any]) -> str:
    """Ids for log lines; never the payload itself, which holds the job's signing secret."""
    return f"{payload.get('executor_id')}/{payload.get('job_id')} ({len(payload.get('calls', []))} calls)"


async def run_to_completion(payload: dict[str, Any]) -> None:
    """For a queue message: run the payload and return once it is done or past its deadline.

    Raising makes the platform deliver the message again; that happens only when no slot came
    free in time or the runtime itself failed (storage unreachable), never for a user's exception.
    """
    pool = runner()
    started = await pool.start(payload, wait_for_slot=pool.time_limit)
    if started is None:
        raise RuntimeError(f"no free call slot for {describe(payload)}; the message will be delivered again")
    future, deadline = started
    wrapped = asyncio.wrap_future(future)
    await asyncio.wait({wrapped}, timeout=max(0.0, deadline - time.time()) + STATUS_GRACE)
    if wrapped.done():
        wrapped.result()
    else:
        log.warning("pywren %s is past its deadline; its calls were reported as timed out", describe(payload))


async def start_soon(payload: dict[str, Any], wait_for_slot: float) -> bool:
    """For an HTTP request: start the payload and return at once; False when the instance is full."""
    started = await runner().start(payload, wait_for_slot)
    if started is None:
        return False
    started[0].add_done_callback(_log_failure(payload))
    return True


def _log_failure(payload: dict[str, Any]) -> Any:
    what = describe(payload)

    def check(future: Future) -> None:
        if future.exception() is not None:
            log.error("pywren runtime failed on %s: %r", what, future.exception())

    return check
