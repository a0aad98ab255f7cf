"""What the sealing and delivery tests look at: raw queue messages, read and moved as someone
holding the storage account key would, the clients' job secrets, and marks that calls leave."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

from azure.storage.queue import QueueClient
from conftest import Azurite, FunctionsHost

from pywren_core import manifests
from pywren_core.protocol import b64
from pywren_core.worker import current_call

MARKS = "marks/"


def raw_queue(azurite: Azurite, name: str) -> QueueClient:
    """A queue client that sends and receives message text as is (base64, as the trigger wants)."""
    return QueueClient.from_connection_string(azurite.connection_string, name)


def payload_of(content: str) -> dict[str, Any]:
    return json.loads(base64.b64decode(content))


def encoded(payload: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(payload).encode()).decode()


def wait_for_messages(queue: QueueClient, count: int, timeout: float = 60.0) -> list[Any]:
    """The first ``count`` messages of ``queue``, peeked (left in place) once that many are there."""
    give_up = time.monotonic() + timeout
    while True:
        messages = list(queue.peek_messages(max_messages=32))
        if len(messages) >= count or time.monotonic() > give_up:
            assert len(messages) >= count, f"{queue.queue_name}: {len(messages)} messages, expected {count}"
            return messages[:count]
        time.sleep(0.2)


def take_all(queue: QueueClient) -> list[str]:
    """Receive and delete every visible message; their raw contents."""
    contents = []
    while batch := list(queue.receive_messages(max_messages=32, visibility_timeout=30)):
        for message in batch:
            contents.append(message.content)
            queue.delete_message(message)
    return contents


def wait_host_idle(functions_host: FunctionsHost, invocations: int, timeout: float = 60.0) -> None:
    """Until the host has run at least ``invocations`` invocations and none is running."""
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        status = functions_host.status()
        if status["invocations"] >= invocations and status["running"] == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"the host did not run {invocations} invocations in {timeout} s: {functions_host.status()}")


def leave_mark(x: int) -> int:
    """Writes a blob of its own outside the job, so a run shows even if it reports nothing."""
    call = current_call()
    call.session.put(f"{MARKS}{call.executor_id}/{call.job_id}/{call.call_id}/{uuid.uuid4().hex}", b"")
    return x


def job_secrets() -> list[bytes]:
    """Every job secret this test's clients made, from their private manifests."""
    return [bytes.fromhex(manifests.read(f"{p.parent.name}/{p.stem}")["secret"])
            for p in manifests.manifest_dir().glob("*/*.json")]


def assert_no_clear_secret(content: str, job_secrets: list[bytes]) -> None:
    payload = payload_of(content)
    assert "secret" not in payload and "sealed_secret" in payload
    texts = [content.encode(), json.dumps(payload).encode()]
    for secret in job_secrets:
        for form in (secret, secret.hex().encode(), b64(secret).encode()):
            assert not any(form in text for text in texts), "a job secret is readable in a queue message"


def take_all_when_there(azurite: Azurite, name: str) -> str:
    """The one message the client sent to queue ``name``, taken off it."""
    wait_for_messages(raw_queue(azurite, name), 1)
    (content,) = take_all(raw_queue(azurite, name))
    return content
