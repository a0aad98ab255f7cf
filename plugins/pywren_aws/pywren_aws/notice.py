"""Completion notices: the function tells the client a call ended, through an SQS queue of the client's own.

Lambda's asynchronous invoke answers 202 and says nothing more, so without help the client learns
of a finished call only by listing the bucket. Instead, each client session creates a queue
``pywren-notice-<id>`` (in the background, when its executor opens) and puts its URL in every
invocation. Once the harness has written the calls' statuses, the handler sends one message naming
them (:func:`message`, sent by ``pywren_aws.handler.send_notice``). The client long-polls the queue
and hands each call to the core as a ``"done"`` event, which reads that one status at once.

A notice carries ids only, never the payload or its secret. It is a hint, not a result: the core
reads the status object and verifies it against the job's secret, so a forged or replayed notice
costs one GET and changes nothing. A notice that never comes (the queue could not be created, a
send failed) costs only time: the core's listing finds the status as before.

The queue is deleted when the session closes. A client killed outright leaves an empty queue
behind; its messages expire after ``RETENTION_SECONDS``.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from botocore.config import Config
from botocore.exceptions import NoCredentialsError
from pywren_core.backend import CallEvent, done_events
from pywren_core.protocol import new_id

log = logging.getLogger("pywren_aws")

QUEUE_PREFIX = "pywren-notice-"
#: One receive waits this long for a message (SQS allows 20); the thread ends at most this long after close.
WAIT_SECONDS = 5
#: Notices nobody read are dropped after this long (SQS's minimum is 60 s).
RETENTION_SECONDS = 3600
#: The payload key that holds the notice queue's URL (the core's ``payload["notice"]``: the core hands it
#: on to the invocations a fan-out invoker makes).
PAYLOAD_KEY = "notice"


class NoticeQueue:
    """The client's side: create the queue, long-poll it from a thread, hand out events, delete it."""

    def __init__(self, boto: Any, notify: Callable[[], None]):
        # No botocore retries beyond one: a failed receive is simply made again by the loop.
        self.sqs = boto.client("sqs", config=Config(retries={"mode": "standard", "total_max_attempts": 2},
                                                    connect_timeout=5, read_timeout=WAIT_SECONDS + 10))
        self.notify = notify
        #: The queue's URL once created; until then invocations carry none and the core lists.
        self.url: str | None = None
        self._events: deque[CallEvent] = deque()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="pywren-aws-notices", daemon=True)

    def start(self) -> None:
        if self._thread.ident is None:
            self._thread.start()

    def events(self) -> list[CallEvent]:
        events = []
        while self._events:
            events.append(self._events.popleft())
        return events

    def _run(self) -> None:
        try:
            url = self.sqs.create_queue(
                QueueName=f"{QUEUE_PREFIX}{new_id()}",
                Attributes={"MessageRetentionPeriod": str(RETENTION_SECONDS)},
            )["QueueUrl"]
        except NoCredentialsError:  # the client's first storage request says so, with what to do
            return
        except Exception as exc:
            log.warning("pywren: no completion notices for this client (it lists the bucket instead; aws.notices: "
                        "false turns them off): could not create its SQS queue: %s", exc)
            return
        with self._lock:
            if self._closed.is_set():
                self._delete(url)
                return
            self.url = url
        while not self._closed.is_set():
            try:
                messages = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                                    WaitTimeSeconds=WAIT_SECONDS).get("Messages", [])
            except Exception as exc:
                if self._closed.is_set():
                    return
                log.warning("pywren: reading completion notices failed (will retry): %s", exc)
                self._closed.wait(1.0)
                continue
            for received in messages:
                self._events.extend(done_events(received.get("Body", "")))
            if messages:
                self.notify()
                entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
                try:
                    self.sqs.delete_message_batch(QueueUrl=url, Entries=entries)
                except Exception as exc:  # seen again after the visibility timeout: a second hint is harmless
                    log.debug("pywren: deleting completion notices failed: %s", exc)

    def close(self) -> None:
        """Delete the queue and close the client; a receive under way fails, and the thread ends."""
        with self._lock:
            self._closed.set()
            url, self.url = self.url, None
        if url is not None:
            self._delete(url)
        self.sqs.close()

    def _delete(self, url: str) -> None:
        try:
            self.sqs.delete_queue(QueueUrl=url)
        except Exception as exc:
            log.warning("pywren: could not delete completion-notice queue %s: %s", url, exc)
