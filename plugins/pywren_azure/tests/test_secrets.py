"""Secrets stay on the client: the planted account key, connection string, function key and payload
key appear in no queue message, no HTTP body, no stored blob and no line the function host logged."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient
from conftest import PAYLOAD_KEY, QUEUE, Azurite, FunctionsHost

import pywren_core as pw
from pywren_core.testing import echo_and_print, fail_with

CONTAINER = "pywren-secrets"


def planted(azurite: Azurite, functions_host: FunctionsHost) -> list[bytes]:
    # The account key's base64 text, the bytes it stands for, the whole connection string, the function key,
    # the payload key (as configured and as bytes).
    return [azurite.key.encode(), base64.b64decode(azurite.key), azurite.connection_string.encode(),
            functions_host.key.encode(), b"PLANTED-", PAYLOAD_KEY.encode(), bytes.fromhex(PAYLOAD_KEY)]


def run_jobs(config: dict[str, Any]) -> None:
    with pw.executor(config, progress=False, cleanup=False) as ex:
        assert ex.get_result(ex.map(echo_and_print, range(5))) == list(range(5))
        with pytest.raises(KeyError):
            ex.call_async(fail_with, "boom").result(timeout=120)


def test_secrets_never_leave_the_client(azurite: Azurite, functions_host: FunctionsHost,
                                        queue_section: dict[str, Any], http_section: dict[str, Any]) -> None:
    keyed = {"storage_account": azurite.account, "account_key": azurite.key, "blob_endpoint": azurite.blob_endpoint,
             "queue_endpoint": azurite.queue_endpoint, "queue": QUEUE, "payload_key": PAYLOAD_KEY}
    traced_before = len(functions_host.trace_path.read_text().splitlines())
    for section in (queue_section, http_section, keyed):
        run_jobs({"backend": "azure", "azure": {**section, "container": CONTAINER}})

    secrets = planted(azurite, functions_host)
    bodies = [json.loads(line) for line in functions_host.trace_path.read_text().splitlines()]
    assert len(bodies) - traced_before >= 3 * 6 and {b["via"] for b in bodies} == {"queue", "http"}
    for entry in bodies:
        texts = [entry["body"].encode()]
        if entry["via"] == "queue":
            texts.append(base64.b64decode(entry["body"]))
        for text in texts:
            assert not [s for s in secrets if s in text], f"a secret travelled in a {entry['via']} body"

    container = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(CONTAINER)
    names = list(container.list_blob_names())
    assert any(n.endswith("func.pickle") for n in names) and any("/status/" in n for n in names)
    for name in names:
        data = container.download_blob(name).readall()
        assert not [s for s in secrets if s in data], f"a secret is stored in blob {name}"

    log = functions_host.log_path.read_bytes()
    assert not [s for s in secrets if s in log], "a secret reached the function host's log"
