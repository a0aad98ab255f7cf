"""Fixtures: Azurite and the test Functions host, started once per test session on 127.0.0.1.

Azurite runs with one custom account whose key is a planted, recognisable value, and the HTTP
trigger's function key is planted too, so any test can look for them where they must never be.
The host runs the app with the payload key in its settings and with the host.json that
``pywren deploy`` ships, as a deployed function app does; the clients' sections hold the same key.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import requests
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient
from pywren_azure import deploy, plugin
from servers import azurite_binary

from pywren_core.testing import LocalServer, free_port, free_ports, http_status, isolated_pywren  # noqa: F401  (autouse: the machine's pywren setup stays out)

ACCOUNT = "pywrentest"
PLANTED_ACCOUNT_KEY = base64.b64encode(b"PLANTED-ACCOUNT-KEY-" + secrets.token_hex(12).encode()).decode()
PLANTED_FUNCTION_KEY = "PLANTED-FUNCTION-KEY-" + secrets.token_hex(12)
#: The function app's payload key (PYWREN_PAYLOAD_KEY), also in every client section below.
PAYLOAD_KEY = secrets.token_hex(32)
CONTAINER = "pywren-test"
#: Where the data tests keep the objects they map over: a container of its own, not the job container.
DATA_CONTAINER = "pywren-test-data"
QUEUE = "pywren-calls-test"
HOST_CONCURRENCY = 8
HOST_SCRIPT = Path(__file__).with_name("functions_host.py")


@attrs.frozen
class Azurite:
    blob_endpoint: str
    queue_endpoint: str
    account: str = ACCOUNT
    key: str = PLANTED_ACCOUNT_KEY

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={self.account};AccountKey={self.key};"
                f"BlobEndpoint={self.blob_endpoint};QueueEndpoint={self.queue_endpoint};")


@attrs.frozen
class FunctionsHost:
    url: str
    key: str
    trace_path: Path
    log_path: Path
    #: host.json's queue settings: maxDequeueCount, visibilityTimeout (the delay before a retry)...
    queues: dict[str, Any]

    @property
    def function_url(self) -> str:
        return f"{self.url}/api/pywren"

    def status(self) -> dict[str, Any]:
        return requests.get(f"{self.url}/admin/host/status", timeout=10).json()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    binary = azurite_binary()
    blob_port, queue_port, table_port = free_ports(3)
    workdir = tmp_path_factory.mktemp("azurite")
    argv = [
        str(binary), "--blobHost", "127.0.0.1", "--queueHost", "127.0.0.1", "--tableHost", "127.0.0.1",
        "--blobPort", str(blob_port), "--queuePort", str(queue_port), "--tablePort", str(table_port),
        "--inMemoryPersistence", "--skipApiVersionCheck", "--loose", "--disableTelemetry", "--silent",
    ]
    env = {**os.environ, "AZURITE_ACCOUNTS": f"{ACCOUNT}:{PLANTED_ACCOUNT_KEY}"}
    server = LocalServer("azurite", argv, workdir / "azurite.log", env=env, cwd=workdir)
    blob, queue = f"http://127.0.0.1:{blob_port}", f"http://127.0.0.1:{queue_port}"
    server.wait_ready(lambda: http_status(blob) and http_status(queue), "blob and queue ports answer")
    yield Azurite(f"{blob}/{ACCOUNT}", f"{queue}/{ACCOUNT}")
    server.stop()


@pytest.fixture(scope="session")
def functions_host(azurite: Azurite, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FunctionsHost]:
    """The plugin's real FunctionApp, in a host process of its own with HOST_CONCURRENCY slots.

    The worker side gets its storage credentials and payload key from the app's settings
    (environment), as on Azure, and the queue trigger's settings from the deployed host.json. It
    imports pywren_core and pywren_azure from where this process does (a deployed app runs the
    client's versions too), so a run of the tree's code tests the tree's worker, not an installed one.
    """
    workdir = tmp_path_factory.mktemp("functions-host")
    host_json = deploy.host_json({**{f.name: f.default for f in plugin.CONFIG}, "max_concurrency": HOST_CONCURRENCY})
    (workdir / "host.json").write_text(json.dumps(host_json))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYWREN_")}
    env.update({
        "AzureWebJobsStorage": azurite.connection_string,
        "PYWREN_AZURE_CONNECTION_STRING": azurite.connection_string,
        "PYWREN_AZURE_QUEUE": QUEUE,
        "PYWREN_AZURE_MAX_CONCURRENCY": str(HOST_CONCURRENCY),
        "PYWREN_PAYLOAD_KEY": PAYLOAD_KEY,
        "FUNCTIONS_TEST_KEY": PLANTED_FUNCTION_KEY,
        "PYTHONPATH": os.pathsep.join(filter(None, sys.path)),
    })
    trace = workdir / "trace.jsonl"
    argv = [sys.executable, str(HOST_SCRIPT), "--port", str(port), "--concurrency", str(HOST_CONCURRENCY),
            "--trace", str(trace), "--host-json", str(workdir / "host.json")]
    server = LocalServer("functions host", argv, workdir / "host.log", env=env, cwd=workdir)
    url = f"http://127.0.0.1:{port}"
    server.wait_ready(lambda: http_status(f"{url}/admin/host/status") == 200, "GET /admin/host/status")
    yield FunctionsHost(url, PLANTED_FUNCTION_KEY, trace, workdir / "host.log", host_json["extensions"]["queues"])
    server.stop()


@pytest.fixture(scope="session")
def pywren_data_url(azurite: Azurite) -> str:
    """The data tests' az:// prefix (the core's DataConformance uses it): a container created here,
    in the account the clients and the host use."""
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    with contextlib.suppress(ResourceExistsError):
        service.create_container(DATA_CONTAINER)
    service.close()
    return f"az://{DATA_CONTAINER}/"


@pytest.fixture(autouse=True)
def no_machine_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests name Azurite in their config; a connection string the machine sets must not apply."""
    for var in ("AZURE_STORAGE_CONNECTION_STRING", "AzureWebJobsStorage"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def storage_section(azurite: Azurite) -> dict[str, Any]:
    return {"connection_string": azurite.connection_string, "container": CONTAINER}


@pytest.fixture
def queue_section(storage_section: dict[str, Any], functions_host: FunctionsHost) -> dict[str, Any]:
    return {**storage_section, "queue": QUEUE, "trigger": "queue", "payload_key": PAYLOAD_KEY}


@pytest.fixture
def http_section(storage_section: dict[str, Any], functions_host: FunctionsHost) -> dict[str, Any]:
    return {**storage_section, "trigger": "http", "function_url": functions_host.function_url,
            "function_key": functions_host.key, "payload_key": PAYLOAD_KEY, "invoke_rate": 400}
