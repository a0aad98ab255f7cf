"""Running pywren payloads inside a function instance: a bounded number at once, each in a worker process.

Azure runs many invocations in one sandbox process. Each payload is handed to the core's worker
harness (:func:`pywren_core.harness.serve`) from a thread of a bounded pool
(``PYWREN_AZURE_MAX_CONCURRENCY``, set at deploy), and the harness runs it in a warm worker process
of its own, reused for later payloads (never a new process per call). A call that crashes its
interpreter or overruns its time takes only that process down: it is reported within seconds, and
the host process and the other invocations of this instance carry on. Once a payload's statuses
are written, the client's notice queue hears of it (:mod:`pywren_azure.notice`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from pywren_azure import notice
from pywren_core import harness

log = logging.getLogger("pywren_azure")

DEFAULT_MAX_CONCURRENCY = 16
#: host.json's functionTimeout, in seconds (the consumption plan's maximum).
DEFAULT_TIME_LIMIT = 600.0
_SLOT_POLL = 0.02


class Runner:
    """A bounded pool of threads, each serving one payload; a payload starts only when a slot is free."""

    def __init__(self, max_concurrency: int, time_limit: float):
        self.max_concurrency = max_concurrency
        harness.MAX_WORKERS = max(harness.MAX_WORKERS, max_concurrency)  # a worker process for each slot
        self.time_limit = time_limit
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._pool = ThreadPoolExecutor(max_concurrency, thread_name_prefix="pywren-call")

    async def start(self, payload: dict[str, Any], wait_for_slot: float, delivery: int | None = None) -> Future | None:
        """Start ``payload`` once a slot is free (waiting at most ``wait_for_slot`` seconds).

        Returns the running future, or None when no slot came free. The platform's time limit
        counts from now, the start of the invocation. The wait polls instead of blocking, so the
        function host's event loop stays free meanwhile.
        """
        platform_deadline = time.time() + self.time_limit
        give_up = time.monotonic() + wait_for_slot
        while not self._slots.acquire(blocking=False):
            if time.monotonic() >= give_up:
                return None
            await asyncio.sleep(_SLOT_POLL)
        try:
            return self._pool.submit(self._run, payload, platform_deadline, delivery)
        except BaseException:
            self._slots.release()
            raise

    def _run(self, payload: dict[str, Any], platform_deadline: float, delivery: int | None) -> list[dict[str, Any]]:
        """Serve ``payload``, then tell the client's notice queue, if the invocation names one."""
        notice_queue = payload.get(notice.PAYLOAD_KEY)
        try:
            summary = harness.serve(payload, platform_deadline=platform_deadline, delivery=delivery)
        finally:
            self._slots.release()
        if notice_queue and summary:  # a fan-out invoker runs no call of its own
            notice.send(payload.get("config") or {}, notice_queue, payload, summary)
        return summary


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


async def run_to_completion(payload: dict[str, Any], delivery: int | None = None) -> None:
    """For a queue message: run the payload and return once its calls are over.

    The harness returns by the payload's deadline, killing a call that overruns it. Raising makes
    the platform deliver the message again; that happens only when no slot came free within half
    the time limit (the call keeps the other half) or not even a failure status could be written
    (storage unreachable), never for a user's exception or a crash.
    """
    pool = runner()
    future = await pool.start(payload, wait_for_slot=pool.time_limit / 2, delivery=delivery)
    if future is None:
        raise RuntimeError(f"no free call slot for {describe(payload)}; the message will be delivered again")
    await asyncio.wrap_future(future)


async def start_soon(payload: dict[str, Any], wait_for_slot: float) -> bool:
    """For an HTTP request: start the payload and return at once; False when the instance is full."""
    future = await runner().start(payload, wait_for_slot)
    if future is None:
        return False
    future.add_done_callback(_log_failure(payload))
    return True


def _log_failure(payload: dict[str, Any]) -> Any:
    what = describe(payload)

    def check(future: Future) -> None:
        if future.exception() is not None:
            log.error("pywren runtime failed on %s: %r", what, future.exception())

    return check
