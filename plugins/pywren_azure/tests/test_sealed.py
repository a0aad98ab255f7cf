"""The job secret is sealed with the payload key in every message, and the function app runs only
what was sealed with its key. Read as someone with the storage account key: they can read and
write the queue, the poison queue and the container."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient
from conftest import PAYLOAD_KEY, QUEUE, Azurite, FunctionsHost
from queues import (
    MARKS,
    assert_no_clear_secret,
    encoded,
    job_secrets,
    leave_mark,
    payload_of,
    raw_queue,
    take_all_when_there,
    wait_for_messages,
    wait_host_idle,
)

import pywren_core as pw
from pywren_core.protocol import JobKeys, load_status, seal, secret_context, unseal

CONTAINER = "pywren-sealed"


@pytest.fixture
def section(queue_section: dict[str, Any]) -> dict[str, Any]:
    return {**queue_section, "container": CONTAINER}


@pytest.fixture
def container(azurite: Azurite) -> Any:
    return BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(CONTAINER)


def test_a_whole_map_runs_with_a_payload_key(section: dict[str, Any], container: Any) -> None:
    with pw.executor({"backend": "azure", "azure": section}, progress=False, cleanup=False) as ex:
        futures = ex.map(leave_mark, range(20))
        assert ex.get_result(futures) == list(range(20))
    assert all(f.stats["runs"] == 1 for f in futures)
    # The worker saw each message's dequeue count, as the platform hands it to the function.
    keys = JobKeys(futures[0].executor_id, futures[0].job_id)
    (secret,) = job_secrets()
    for f in futures:
        blob = container.download_blob(keys.status(f.call_id, 0)).readall()
        assert load_status(secret, keys, f.call_id, 0, blob)["stats"]["delivery"] == 1


def test_no_message_holds_the_job_secret_in_the_clear(section: dict[str, Any], azurite: Azurite,
                                                      functions_host: FunctionsHost) -> None:
    """Messages read raw where they rest (in a queue no function reads) and every message the host
    received. (The poison queue: see test_delivery.)"""
    idle = f"pywren-idle-{secrets.token_hex(4)}"
    traced_before = len(functions_host.trace_path.read_text().splitlines())
    with pw.executor({"backend": "azure", "azure": section}, progress=False, cleanup=False) as ex:
        assert ex.get_result(ex.map(leave_mark, range(5))) == list(range(5))
    resting = pw.executor({"backend": "azure", "azure": {**section, "queue": idle}}, progress=False, retries=0)
    try:
        resting.map(leave_mark, range(3))
        messages = wait_for_messages(raw_queue(azurite, idle), 3)
        found = job_secrets()
        assert len(found) == 2
        for message in messages:
            assert_no_clear_secret(message.content, found)
        traced = functions_host.trace_path.read_text().splitlines()[traced_before:]
        assert len(traced) >= 5
        for line in traced:
            assert_no_clear_secret(json.loads(line)["body"], found)
    finally:
        resting.shutdown(cancel_futures=True)
        raw_queue(azurite, idle).delete_queue()


def test_a_message_without_the_key_runs_nothing_and_writes_nothing(
    section: dict[str, Any], azurite: Azurite, functions_host: FunctionsHost, container: Any
) -> None:
    """Someone who can write to the queue and the container replays a real job's message with a
    secret in the clear, and sealed with another key: neither runs. Sealed with the app's key (the
    control), the same message runs."""
    idle, other_key = f"pywren-idle-{secrets.token_hex(4)}", bytes(range(32))
    config = {"backend": "azure", "azure": {**section, "queue": idle, "payload_key": other_key.hex()}}
    with pw.executor(config, progress=False, retries=0, cleanup=False) as ex:
        future = ex.call_async(leave_mark, 7)
        content = take_all_when_there(azurite, idle)
        payload = payload_of(content)
        keys = JobKeys.from_payload(payload)
        secret = unseal(other_key, payload["sealed_secret"], secret_context(keys))
        clear = {k: v for k, v in payload.items() if k != "sealed_secret"} | {"secret": secret.hex()}
        host_queue = raw_queue(azurite, QUEUE)
        before = functions_host.status()["invocations"]
        host_queue.send_message(content)
        host_queue.send_message(encoded(clear))
        wait_host_idle(functions_host, before + 2)
        assert not list(container.list_blob_names(name_starts_with=f"{MARKS}{keys.executor_id}/"))
        assert sorted(n.removeprefix(keys.prefix) for n in container.list_blob_names(name_starts_with=keys.prefix)) \
            == ["func.pickle"]
        assert not future.done()

        sealed = {**clear, "sealed_secret": seal(bytes.fromhex(PAYLOAD_KEY), secret, secret_context(keys))}
        del sealed["secret"]
        host_queue.send_message(encoded(sealed))
        assert future.result(timeout=60) == 7
    assert len(list(container.list_blob_names(name_starts_with=f"{MARKS}{keys.executor_id}/"))) == 1
    raw_queue(azurite, idle).delete_queue()
