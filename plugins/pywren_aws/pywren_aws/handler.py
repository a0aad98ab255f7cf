"""The Lambda function's entry point: ``pywren_aws.handler.lambda_handler``.

A thin wrapper around :func:`pywren_core.worker.handle`. It gives the worker a deadline a little
before Lambda's own time limit (``context.get_remaining_time_in_millis()``), or the job's per-call
timeout when that comes first, so the worker writes a timeout status rather than vanishing.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import threading
import time
from typing import Any

from pywren_core import worker

from pywren_aws import plugin  # noqa: F401  (imported during Lambda's init phase, not the first call)

#: Seconds kept back before a deadline: time to write a status to S3 once the watchdog fires.
STATUS_MARGIN = 2.0


def lambda_handler(event: dict[str, Any], context: Any) -> list[dict[str, Any]]:
    """Run the calls in ``event`` (an invoke payload) and return a summary of their statuses."""
    now = time.time()
    platform_end = now + context.get_remaining_time_in_millis() / 1000
    deadline = platform_end - STATUS_MARGIN
    if event.get("timeout"):
        deadline = min(deadline, now + event["timeout"] * len(event["calls"]))
    outcome: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        try:
            outcome.set_result(worker.handle(event, deadline=deadline))
        except BaseException as exc:
            outcome.set_exception(exc)

    threading.Thread(target=run, name="pywren-call", daemon=True).start()
    give_up = min(platform_end - 0.25, deadline + STATUS_MARGIN)
    concurrent.futures.wait([outcome], timeout=max(0.0, give_up - time.time()))
    if not outcome.done():
        # The watchdog has reported the overrun call as timed out, but Python cannot stop a thread:
        # end this sandbox's process so the call stops and the next invocation starts clean.
        print("pywren: a call overran its timeout; exiting so the sandbox is recycled", file=sys.stderr, flush=True)
        os._exit(1)
    return [{"call_id": s["call_id"], "attempt": s["attempt"], "kind": s["kind"]} for s in outcome.result()]
