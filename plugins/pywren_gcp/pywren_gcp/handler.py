"""The Cloud Run function (Cloud Functions gen2, HTTP trigger) that runs pywren calls.

``handler(request)`` is a functions-framework HTTP function. A request carries one or more invoke
payloads (``{"payloads": [...]}``); each is handed to the core's worker harness
(:func:`pywren_core.harness.serve`) from a thread of its own, and the harness runs it in a warm
worker process of its own. So the calls of one request, and of concurrent requests on one
instance, run side by side, and a call that crashes its interpreter or overruns its time takes
only its own worker process down: it is reported within seconds, and the other calls carry on.

The response is streamed: a first line acknowledges the request (the client's invoke returns
there), then one line per payload as it finishes. The response, and so the request, ends only when
every call has finished, because Cloud Run allocates CPU to an instance only while it is answering
a request: replying first and working afterwards would run the calls on a throttled CPU.

Each deployed function carries one runtime (``main.py`` sets :data:`DEPLOYED_RUNTIME`); a request
whose payloads ask for another one is refused (HTTP 409) before anything runs, naming both, so a
URL pointing at the wrong function fails at once instead of in every call's imports.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

from pywren_core import harness

#: The runtime this function carries ("" for the default one), set by the package's ``main.py``;
#: None (the handler imported some other way): payloads are not checked.
DEPLOYED_RUNTIME: str | None = None

harness.prestart("gcp")  # while the instance starts: the first call finds a worker process warm


class _Run:
    """One payload, served by the harness from a thread of its own."""

    def __init__(self, payload: dict[str, Any], started: float):
        self.payload = payload
        self.error = ""
        function_timeout = (payload.get("config") or {}).get("function_timeout")
        self.platform_deadline = started + float(function_timeout) if function_timeout else None
        self.thread = threading.Thread(target=self._run, name="pywren-call", daemon=True)

    def _run(self) -> None:
        try:
            harness.serve(self.payload, platform_deadline=self.platform_deadline)
        except BaseException as exc:  # not even a failure status could be written (storage unreachable)
            self.error = f"{type(exc).__name__}: {exc}"
            # The traceback only: the payload holds the job's signing secret and is never logged.
            print(f"pywren: job {self.payload.get('job_id')} failed in the worker harness:\n"
                  f"{traceback.format_exc()}", file=sys.stderr)

    def line(self) -> bytes:
        record = {"job_id": self.payload.get("job_id"), "calls": len(self.payload.get("calls", ())),
                  "error": self.error}
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
    if DEPLOYED_RUNTIME is not None:
        wanted = sorted({p.get("runtime") or "" for p in payloads} - {DEPLOYED_RUNTIME})
        if wanted:
            mine = f"runtime {DEPLOYED_RUNTIME}" if DEPLOYED_RUNTIME else "the default runtime"
            theirs = f"runtime {wanted[0]}" if wanted[0] else "the default runtime"
            return (f"this function carries {mine}, the calls need {theirs}: point the client at the function "
                    f"deployed for it (`pywren deploy` with that runtime configured)\n", 409)
    runs = [_Run(payload, started) for payload in payloads]
    for run in runs:
        run.thread.start()
    return _respond(runs), 200, {"Content-Type": "application/x-ndjson", "Cache-Control": "no-store"}


def _respond(runs: list[_Run]) -> Iterator[bytes]:
    yield b'{"accepted":' + str(len(runs)).encode() + b"}\n"
    for run in runs:
        run.thread.join()  # the harness returns by the payload's deadline: it kills a call that overruns
        yield run.line()
