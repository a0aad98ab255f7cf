"""The Cloud Run function (Cloud Functions gen2, HTTP trigger) that runs pywren calls.

``handler(request)`` is a functions-framework HTTP function. A request carries one or more invoke
payloads (``{"payloads": [...]}``); each runs in a thread of its own through
:func:`pywren_core.worker.handle`, so the calls of one request, and of concurrent requests on one
instance, run side by side. Nothing is shared between them but the worker runtime's per-process
caches: each call gets its own working directory (``current_call().workdir``), so the process's
current directory is left alone (``isolate_cwd=False``).

The response is streamed: a first line acknowledges the request (the client's invoke returns
there), then one line per payload as it finishes. The response, and so the request, ends only when
every call has finished, because Cloud Run allocates CPU to an instance only while it is answering
a request: replying first and working afterwards would run the calls on a throttled CPU.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

from pywren_core import worker

#: Seconds the response waits past a payload's deadline (the worker writes its timeout status at
#: the deadline) before it ends anyway, leaving an overrunning call behind.
GRACE = 5.0
#: Seconds kept back from the function's own timeout, to write timeout statuses before the platform
#: cuts the request.
MARGIN = 10.0


class _Run:
    """One payload running in its own thread, with the deadline it must report by."""

    def __init__(self, payload: dict[str, Any], started: float):
        self.payload = payload
        self.error = ""
        calls = max(1, len(payload.get("calls", ())))
        deadline = started + float(payload.get("timeout") or 3600.0) * calls
        function_timeout = (payload.get("config") or {}).get("function_timeout")
        if function_timeout:
            deadline = min(deadline, started + float(function_timeout) - MARGIN)
        self.deadline = deadline
        self.thread = threading.Thread(target=self._run, name="pywren-call", daemon=True)

    def _run(self) -> None:
        try:
            worker.handle(self.payload, deadline=self.deadline, isolate_cwd=False)
        except BaseException as exc:  # the runtime itself failed (storage unreachable, a bad payload)
            self.error = f"{type(exc).__name__}: {exc}"
            # The traceback only: the payload holds the job's signing secret and is never logged.
            print(f"pywren: job {self.payload.get('job_id')} failed in the worker runtime:\n"
                  f"{traceback.format_exc()}", file=sys.stderr)

    def line(self) -> bytes:
        record = {"job_id": self.payload.get("job_id"), "calls": len(self.payload.get("calls", ())),
                  "finished": not self.thread.is_alive(), "error": self.error}
        return json.dumps(record).encode() + b"\n"


def handler(request: Any) -> Any:
    """Run every payload of the request concurrently; stream an acknowledgement, then results."""
    started = time.time()
    try:
        payloads = request.get_json(force=True)["payloads"]
        if not isinstance(payloads, list) or not all(isinstance(p, dict) and "calls" in p for p in payloads):
            raise ValueError("payloads must be a list of invoke payloads")
    except Exception as exc:
        return f"not a pywren invocation ({type(exc).__name__}): expected {{\"payloads\": [...]}}\n", 400
    runs = [_Run(payload, started) for payload in payloads]
    for run in runs:
        run.thread.start()
    return _respond(runs), 200, {"Content-Type": "application/x-ndjson", "Cache-Control": "no-store"}


def _respond(runs: list[_Run]) -> Iterator[bytes]:
    yield b'{"accepted":' + str(len(runs)).encode() + b"}\n"
    for run in runs:
        run.thread.join(max(0.0, run.deadline + GRACE - time.time()))
        yield run.line()
