"""Blob Storage through the plugin, against Azurite: the core's conformance kit, the ways to give
credentials, and how service errors reach users."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from azure.storage.blob import BlobServiceClient
from pywren_azure import plugin
from pywren_azure.invoke import QueueInvoker
from pywren_azure.session import (
    SDK_RETRIES,
    SINGLE_PUT_BYTES,
    AzureSession,
    _http_session,
    _sdk_options,
    connect,
    open_queues,
)

from pywren_core.backend import Pacer
from pywren_core.errors import (
    AccessDeniedError,
    AmbiguousInvokeError,
    ConfigError,
    NotFoundError,
    StorageError,
    ThrottledError,
)
from pywren_core.testing import StorageConformance, free_port, open_session


def defaults() -> dict[str, Any]:
    """Every setting at its default, as a worker receives the public config."""
    return {field.name: field.default for field in plugin.CONFIG}


@pytest.fixture
def pywren_config(storage_section: dict[str, Any]) -> dict[str, Any]:
    return {"backend": "azure", "azure": storage_section}


class TestAzureStorage(StorageConformance):
    pass


def test_large_object_is_committed_from_staged_blocks(pywren_config: dict[str, Any], azurite: Any) -> None:
    session = open_session(pywren_config)
    data = bytes(range(256)) * ((SINGLE_PUT_BYTES + SINGLE_PUT_BYTES // 2) // 256)
    session.put("blocks/big", data)
    raw = BlobServiceClient.from_connection_string(azurite.connection_string)
    blocks = raw.get_blob_client(pywren_config["azure"]["container"], "blocks/big").get_block_list("committed")[0]
    assert len(blocks) > 1
    assert session.get("blocks/big") == data
    session.delete(["blocks/big"])
    session.close()


def test_account_name_and_key_with_explicit_endpoints(azurite: Any) -> None:
    section = {"storage_account": azurite.account, "account_key": azurite.key, "container": "pywren-keyed",
               "blob_endpoint": azurite.blob_endpoint, "queue_endpoint": azurite.queue_endpoint}
    session = open_session({"backend": "azure", "azure": section})
    session.put("k", b"v")
    assert session.get("k") == b"v"
    session.delete(["k"])
    session.close()


def test_missing_key_is_not_found_and_a_file_not_found_error(pywren_config: dict[str, Any]) -> None:
    session = open_session(pywren_config)
    with pytest.raises(NotFoundError) as info:
        session.get("no/such/key")
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(NotFoundError):
        session.get("no/such/key", (0, 0))
    session.close()


def test_wrong_key_is_access_denied_without_showing_the_key(azurite: Any) -> None:
    wrong = "V1JPTkctS0VZLVdST05HLUtFWQ=="
    section = {"connection_string": azurite.connection_string.replace(azurite.key, wrong), "container": "x-denied"}
    with pytest.raises(AccessDeniedError) as info:
        open_session({"backend": "azure", "azure": section})
    assert isinstance(info.value, PermissionError)
    assert wrong not in str(info.value)


def test_unreachable_endpoint_is_a_storage_error() -> None:
    section = {"connection_string": f"DefaultEndpointsProtocol=http;AccountName=a;AccountKey=QUJD;"
                                    f"BlobEndpoint=http://127.0.0.1:{free_port()}/a;", "container": "gone"}
    with pytest.raises(StorageError, match="could not reach"):
        open_session({"backend": "azure", "azure": section})


def test_no_credentials_at_all_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="storage_account"):
        open_session({"backend": "azure", "azure": {}})


def test_function_url_must_not_carry_the_key(storage_section: dict[str, Any]) -> None:
    section = {**storage_section, "trigger": "http", "function_url": "https://app.azurewebsites.net/api/pywren?code=SECRET"}
    with pytest.raises(ConfigError, match="function_key") as info:
        open_session({"backend": "azure", "azure": section})
    assert "SECRET" not in str(info.value)


@pytest.mark.parametrize("setting", ["PYWREN_AZURE_CONNECTION_STRING", "AzureWebJobsStorage"])
def test_worker_takes_credentials_from_the_app_settings(
    setting: str, azurite: Any, storage_section: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    open_session({"backend": "azure", "azure": storage_section}).close()  # a client creates the container
    monkeypatch.setenv(setting, azurite.connection_string)
    public = {k: v for k, v in storage_section.items() if k != "connection_string"}
    session = connect({**defaults(), **public, "storage_account": azurite.account}, role="worker")
    plugin.pywren_storage_put(session=session, key="worker/k", data=b"w")
    assert plugin.pywren_storage_get(session=session, key="worker/k", byte_range=None) == b"w"
    plugin.pywren_storage_delete(session=session, keys=["worker/k"])
    plugin.pywren_close(session=session)


def test_worker_refuses_app_settings_for_another_account(azurite: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    with pytest.raises(ConfigError, match="PYWREN_AZURE_CONNECTION_STRING"):
        connect({**defaults(), "storage_account": "someotheraccount"}, role="worker")


class _Busy(BaseHTTPRequestHandler):
    """Answers everything as an overloaded Azure service does, and counts the requests."""

    requests = 0

    def _busy(self) -> None:
        type(self).requests += 1
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(503)
        self.send_header("x-ms-error-code", "ServerBusy")
        self.send_header("Retry-After", "3")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_PUT = do_POST = do_HEAD = _busy

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _HangUp(BaseHTTPRequestHandler):
    """Reads each request, then drops the connection without an answer (a transport error)."""

    requests = 0

    def _hang_up(self) -> None:
        type(self).requests += 1
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.close_connection = True

    do_GET = do_PUT = do_POST = do_HEAD = _hang_up

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(params=[_Busy, _HangUp], ids=["busy", "hang-up"])
def bad_server(request: pytest.FixtureRequest) -> Iterator[tuple[type, AzureSession]]:
    """A session of the plugin's own SDK settings on a server that answers badly, and its handler."""
    handler = type(request.param.__name__, (request.param,), {"requests": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    http = _http_session()
    service = BlobServiceClient(f"http://127.0.0.1:{server.server_address[1]}/acct",
                                credential={"account_name": "acct", "account_key": "QUJD"}, **_sdk_options(http))
    yield handler, AzureSession({"container": "c"}, "worker", http, service, ())
    server.shutdown()
    server.server_close()


def test_the_sdk_retries_transport_errors_only(bad_server: tuple[type, AzureSession],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A throttled answer reaches the core at once (it retries with backoff), with the service's
    hint; a dropped connection is tried 1 + SDK_RETRIES times, then is a storage error."""
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # the SDK's pause between tries
    handler, session = bad_server
    with pytest.raises((StorageError, ThrottledError)) as info:
        plugin.pywren_storage_get(session=session, key="k", byte_range=None)
    if handler.__name__ == "_Busy":
        assert isinstance(info.value, ThrottledError) and info.value.retry_after == 3.0
        assert handler.requests == 1
    else:
        assert not isinstance(info.value, ThrottledError)
        assert handler.requests == 1 + SDK_RETRIES


def test_a_queue_message_whose_answer_was_lost_is_sent_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sending it again could run its calls twice: the core decides, knowing it may be a duplicate."""
    handler = type("_HangUp", (_HangUp,), {"requests": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    connection = (f"DefaultEndpointsProtocol=http;AccountName=acct;AccountKey=QUJD;"
                  f"QueueEndpoint=http://127.0.0.1:{server.server_address[1]}/acct;")
    queue, poison = open_queues({"queue": "calls"}, connection, None, _http_session())
    invoker = QueueInvoker(queue, poison, Pacer(None), ())
    try:
        with pytest.raises(AmbiguousInvokeError, match="calls"):
            invoker.send({"executor_id": "e", "job_id": "j", "sealed_secret": "x", "calls": []})
        assert handler.requests == 1
    finally:
        server.shutdown()
        server.server_close()
