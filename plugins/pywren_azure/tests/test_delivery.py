"""How queue deliveries end, through the test host and Azurite: a message the platform gave up on
fails its call at once, a redelivery counts as a run, a late redelivery writes nothing, and a
script that never shuts down leaves nothing in the container."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.storage.blob import BlobServiceClient
from conftest import QUEUE, Azurite, FunctionsHost
from pywren_azure.invoke import POISON_INTERVAL
from queues import (
    MARKS,
    assert_no_clear_secret,
    job_secrets,
    leave_mark,
    payload_of,
    raw_queue,
    take_all_when_there,
    wait_host_idle,
)

import pywren_core as pw
from pywren_core.errors import CallFailedError
from pywren_core.protocol import JobKeys

README = Path(__file__).resolve().parents[3] / "README.md"


def blob_names(azurite: Azurite, container: str, prefix: str = "") -> list[str]:
    client = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(container)
    return list(client.list_blob_names(name_starts_with=prefix))


def test_a_message_the_platform_gave_up_on_fails_its_call_at_once(
    queue_section: dict[str, Any], azurite: Azurite, functions_host: FunctionsHost
) -> None:
    """The function app fails on the message at every delivery (its worker refuses a payload for
    another storage account), the host moves it to the poison queue after host.json's
    maxDequeueCount, and the client reports the call failed on its next read of the poison queue.

    The client sends to a queue no function reads, and the test carries the message to the host and,
    once poisoned, back to the client's poison queue: so it can read the poison queue raw first."""
    idle = f"pywren-idle-{secrets.token_hex(4)}"
    config = {"backend": "azure", "azure": {**queue_section, "queue": idle, "storage_account": "notthisaccount"}}
    host_poison, client_poison = raw_queue(azurite, f"{QUEUE}-poison"), raw_queue(azurite, f"{idle}-poison")
    client_poison.create_queue()
    try:
        with pw.executor(config, progress=False, retries=0) as ex:
            future = ex.call_async(leave_mark, 1)
            before = functions_host.status()["invocations"]
            raw_queue(azurite, QUEUE).send_message(take_all_when_there(azurite, idle))
            message = wait_for_poisoned(host_poison, future.executor_id, timeout=120)
            assert functions_host.status()["invocations"] - before == functions_host.queues["maxDequeueCount"]
            assert_no_clear_secret(message.content, job_secrets())
            assert not future.done()

            moved = time.monotonic()
            client_poison.send_message(message.content)
            host_poison.delete_message(message)
            with pytest.raises(CallFailedError, match="poison"):
                future.result(timeout=60)
            assert time.monotonic() - moved < POISON_INTERVAL + 5
        assert not list(client_poison.peek_messages())  # reported, then deleted by the client
    finally:
        raw_queue(azurite, idle).delete_queue()
        client_poison.delete_queue()


def wait_for_poisoned(poison: Any, executor_id: str, timeout: float) -> Any:
    """This executor's message in ``poison``, received (hidden from others for a while)."""
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        for message in poison.receive_messages(max_messages=32, visibility_timeout=60):
            if payload_of(message.content).get("executor_id") == executor_id:
                return message
        time.sleep(0.5)
    raise AssertionError(f"no message of executor {executor_id} reached {poison.queue_name} in {timeout} s")


def test_a_redelivered_message_counts_as_another_run(queue_section: dict[str, Any],
                                                     functions_host: FunctionsHost) -> None:
    """The instance that took the message is lost, so the platform delivers it again (dequeue count
    2) after host.json's visibilityTimeout: the call may have run twice, and its stats say so."""
    requests.post(f"{functions_host.url}/admin/host/lose-deliveries?count=1", timeout=10).raise_for_status()
    with pw.executor({"backend": "azure", "azure": queue_section}, progress=False) as ex:
        future = ex.call_async(leave_mark, 5)
        assert future.result(timeout=120) == 5
    assert future.stats["runs"] == 2


def test_a_late_redelivery_runs_nothing_and_writes_nothing(
    queue_section: dict[str, Any], azurite: Azurite, functions_host: FunctionsHost
) -> None:
    container = "pywren-late"
    traced_before = len(functions_host.trace_path.read_text().splitlines())
    with pw.executor({"backend": "azure", "azure": {**queue_section, "container": container}}, progress=False) as ex:
        future = ex.call_async(leave_mark, 3)
        assert future.result(timeout=60) == 3
    keys = JobKeys(future.executor_id, future.job_id)
    give_up = time.monotonic() + 30
    while blob_names(azurite, container, keys.prefix) and time.monotonic() < give_up:
        time.sleep(0.2)
    assert blob_names(azurite, container, keys.prefix) == []

    traced = [json.loads(line)["body"] for line in functions_host.trace_path.read_text().splitlines()[traced_before:]]
    (content,) = [c for c in traced if payload_of(c)["executor_id"] == keys.executor_id]
    before = functions_host.status()["invocations"]
    raw_queue(azurite, QUEUE).send_message(content)  # the queue delivers it once more, after the job is gone
    wait_host_idle(functions_host, before + 1)
    assert blob_names(azurite, container, keys.prefix) == []
    assert len(blob_names(azurite, container, f"{MARKS}{keys.executor_id}/")) == 1


def test_a_script_that_never_shuts_down_leaves_nothing(queue_section: dict[str, Any], azurite: Azurite,
                                                       tmp_path: Path) -> None:
    """The README's one-liner, as a user runs it, against the emulators."""
    (one_liner,) = re.findall(r'python -c "(import pywren_core as pw; ex = pw.executor\(\);.*)"', README.read_text())
    container = "pywren-one-liner"
    config = tmp_path / "pywren.yaml"
    config.write_text(json.dumps({"backend": "azure", "azure": {**queue_section, "container": container}}))
    result = subprocess.run([sys.executable, "-c", one_liner], capture_output=True, text=True, timeout=900,
                            cwd=tmp_path, env={**os.environ, "PYWREN_CONFIG_FILE": str(config)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str([x * x for x in range(10)])
    assert "polling" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert blob_names(azurite, container) == [], result.stderr
