"""Completion notices: the function app tells the client a call ended, through a storage queue of
the client's own.

Neither trigger reports a finished call (the queue trigger takes a message, the HTTP trigger
answers 202 before the calls run), so without help the client learns of one only by listing the
job container. Instead, each client session creates a queue ``pywren-notice-<id>`` in the
storage account (in the background, when its executor opens) and names it in every invocation;
once the harness has written the calls' statuses, the function app sends one message naming them
(:func:`send`). The client reads the queue from a thread, often while calls are out and not at all
otherwise (storage queues have no long polling), and hands each call to the core as a ``"done"``
event, which reads that one status at once.

A notice carries ids only, never the payload or its secret. It is a hint, not a result: the core
reads the status object and verifies it against the job's secret, so a forged or repeated notice
costs one GET and changes nothing. A notice that never comes costs only time: the core's listing
finds the status as before. The queue is deleted when the session closes; a client killed outright
leaves an empty queue behind, whose messages expire after ``RETENTION_SECONDS``.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueClient, QueueServiceClient

from pywren_core.backend import CallEvent, done_events, done_notice
from pywren_core.protocol import new_id

log = logging.getLogger("pywren_azure")

QUEUE_PREFIX = "pywren-notice-"
#: The payload key that names the notice queue (the core's ``payload["notice"]``: the core hands it on
#: to the invocations a fan-out invoker makes).
PAYLOAD_KEY = "notice"
#: Notices nobody read expire after this long.
RETENTION_SECONDS = 3600
#: While calls are out, the client reads the queue this often: at once again after a notice, then
#: backing off to the longest interval. With no call out it does not read it at all.
READ_INTERVAL = (0.05, 0.2)
#: A call not noticed this long after the last invocation is left to the listing: reading stops.
EXPECT_SECONDS = 660.0
_NAME = re.compile(r"pywren-notice-[0-9a-f]{16}")


# --- in the function app ----------------------------------------------------------------------

#: The app's queue service, made on the first notice of this process; each notice queue's client
#: shares its connections.
_service: QueueServiceClient | None = None
_service_lock = threading.Lock()


def send(config: Mapping[str, Any], queue: str, payload: Mapping[str, Any],
         summary: Iterable[Mapping[str, Any]]) -> None:
    """Post a notice of ``summary``'s calls to the client's queue ``queue``, in the app's own account.

    Only to a pywren notice queue, whatever the invocation says. Best effort: a failure is logged
    (ids only) and the client's listing finds the statuses.
    """
    if not isinstance(queue, str) or not _NAME.fullmatch(queue):
        log.warning("pywren: not sending a completion notice to %r: not a pywren notice queue", queue)
        return
    global _service
    try:
        with _service_lock:
            if _service is None:
                _service = _worker_service(config)
        _service.get_queue_client(queue).send_message(done_notice(payload, summary), time_to_live=RETENTION_SECONDS)
    except Exception as exc:
        log.warning("pywren: could not send the completion notice of job %s/%s (the client will list instead): %s",
                    payload.get("executor_id"), payload.get("job_id"), type(exc).__name__)


def _worker_service(config: Mapping[str, Any]) -> QueueServiceClient:
    from pywren_azure import session  # the app's credentials, as its worker sessions find them

    connection_string, credential = session.credentials(config, "worker")
    if connection_string:
        return QueueServiceClient.from_connection_string(connection_string)
    return QueueServiceClient(session.endpoint(config, "queue"), credential=credential)


# --- on the client ----------------------------------------------------------------------------


class NoticeQueue:
    """The client's side: create the queue, read it while calls are out, hand out events, delete it."""

    def __init__(self, make_client: Callable[[str], QueueClient], notify: Callable[[], None]):
        self.name = f"{QUEUE_PREFIX}{new_id()}"
        self.client = make_client(self.name)
        self.notify = notify
        #: Whether the queue exists: invocations name it only then (before, the core lists).
        self.ready = False
        self._events: deque[CallEvent] = deque()
        self._closed = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        #: Calls out and not noticed yet; -1: an unknown number (a fan-out invoker's).
        self._out = 0
        self._last_sent = 0.0
        self._thread = threading.Thread(target=self._run, name="pywren-azure-notices", daemon=True)

    def start(self) -> None:
        if self._thread.ident is None:
            self._thread.start()

    def target(self) -> str | None:
        """What an invocation names as its notice queue, or None while there is none."""
        return self.name if self.ready and not self._closed.is_set() else None

    def sent(self, calls: int | None) -> None:
        """``calls`` more calls are out: read the queue until they are noticed. None: an unknown
        number (a fan-out invoker's), so read it until EXPECT_SECONDS after the last invocation."""
        with self._lock:
            self._out = -1 if calls is None or self._out < 0 else self._out + calls
            self._last_sent = time.monotonic()
        self._wake.set()

    def events(self) -> list[CallEvent]:
        events = []
        while self._events:
            events.append(self._events.popleft())
        return events

    def _expecting(self) -> bool:
        with self._lock:
            if time.monotonic() - self._last_sent >= EXPECT_SECONDS:
                self._out = 0  # the rest is the listing's
            return self._out != 0

    def _run(self) -> None:
        try:
            self.client.create_queue()
        except ResourceExistsError:
            pass
        except Exception as exc:
            log.warning("pywren: no completion notices for this client (it lists the container instead): could "
                        "not create queue %s: %s", self.name, type(exc).__name__)
            return
        with self._lock:
            self.ready = not self._closed.is_set()
        if not self.ready:  # closed while the queue was being created
            self._delete()
            return
        interval = READ_INTERVAL[0]
        while not self._closed.is_set():
            if not self._expecting():
                self._wake.wait()
                self._wake.clear()
                continue
            try:
                received = list(self.client.receive_messages(messages_per_page=32, max_messages=32,
                                                             visibility_timeout=60))
            except Exception as exc:
                if self._closed.is_set():
                    return
                log.warning("pywren: reading completion notices failed (will retry): %s", type(exc).__name__)
                received = []
            events = [event for m in received for event in done_events(m.content)]
            if events:
                self._events.extend(events)
                with self._lock:
                    if self._out > 0:
                        self._out = max(0, self._out - len(events))
                self.notify()
            for m in received:
                try:
                    self.client.delete_message(m)
                except Exception as exc:  # seen again after its visibility timeout: a second hint is harmless
                    log.debug("pywren: deleting a completion notice failed: %s", exc)
            interval = READ_INTERVAL[0] if received else min(READ_INTERVAL[1], interval * 1.5)
            self._closed.wait(interval)

    def close(self) -> None:
        """Delete the queue and stop reading it."""
        with self._lock:
            self._closed.set()
            ready, self.ready = self.ready, False
        self._wake.set()
        if ready:
            self._delete()
        self.client.close()

    def _delete(self) -> None:
        try:
            self.client.delete_queue()
        except Exception as exc:
            log.warning("pywren: could not delete completion-notice queue %s: %s", self.name, type(exc).__name__)
