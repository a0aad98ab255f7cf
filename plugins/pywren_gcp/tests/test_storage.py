"""The core's storage conformance kit against fake-gcs-server, and the mapping of Cloud Storage errors."""

from __future__ import annotations

from typing import Any

import pytest

from pywren_core.errors import AccessDeniedError, NotFoundError, StorageError, ThrottledError
from pywren_core.testing import HangUpServer, StorageConformance, open_session
from pywren_gcp.storage import TRIES, GcsStore, make_client

from conftest import gcp_config
from servers import BUCKET


@pytest.fixture
def pywren_config(storage_url: str) -> dict[str, Any]:
    return gcp_config(storage_url, "http://127.0.0.1:9/unused")


class TestGcsStorage(StorageConformance):
    pass


@pytest.mark.parametrize(("status", "error"), [
    (404, NotFoundError), (403, AccessDeniedError), (401, AccessDeniedError),
    (429, ThrottledError), (503, ThrottledError), (500, ThrottledError), (400, StorageError),
])
def test_sdk_errors_become_pywren_errors(refusing_endpoint: Any, status: int, error: type) -> None:
    refusing_endpoint.status = status
    store = GcsStore(make_client("p", f"http://127.0.0.1:{refusing_endpoint.server_port}", None))
    operations = [lambda: store.get("b", "k", None), lambda: store.get("b", "k", (0, 5)),
                  lambda: store.put("b", "k", b"x"), lambda: store.list("b", "k"), lambda: store.list_sizes("b", "k")]
    for operation in operations:
        refusing_endpoint.requests = 0
        with pytest.raises(error) as info:
            operation()
        assert info.value.__cause__ is None  # no SDK error (nor the request it holds) rides along
        assert str(status) in str(info.value) or status == 401  # 401: the SDK's own refresh attempt fails first
        if error is ThrottledError:
            assert refusing_endpoint.requests == 1  # the SDK never retries a status: the core does
    if status == 404:
        store.delete("b", ["k"])  # deleting a missing key is not an error
    else:
        with pytest.raises(error):
            store.delete("b", ["k"])


def test_missing_key_is_also_a_builtin_error(storage_url: str) -> None:
    store = GcsStore(make_client("p", storage_url, None))
    with pytest.raises(FileNotFoundError):
        store.get(BUCKET, "no/such/key", None)
    with pytest.raises(NotFoundError):
        store.get(BUCKET, "no/such/key", (3, 3))


def test_range_past_the_end_and_empty_range(storage_url: str) -> None:
    store = GcsStore(make_client("p", storage_url, None))
    store.put(BUCKET, "ranges/ten", b"0123456789")
    assert store.get(BUCKET, "ranges/ten", (10, 20)) == b""
    assert store.get(BUCKET, "ranges/ten", (4, 4)) == b""
    assert store.get(BUCKET, "ranges/ten", (8, 1000)) == b"89"
    store.delete(BUCKET, ["ranges/ten"])


def test_delete_falls_back_when_the_endpoint_has_no_batch_api(storage_url: str) -> None:
    store = GcsStore(make_client("p", storage_url, None))
    keys = [f"batch/{i:03d}" for i in range(150)]
    for key in keys:
        store.put(BUCKET, key, b"x")
    store.delete(BUCKET, keys + ["batch/never-existed"])
    assert store.list(BUCKET, "batch/") == []
    assert store.batch_supported is False  # fake-gcs-server answers the batch endpoint without multipart


def test_a_broken_connection_is_tried_three_times_then_is_a_storage_error() -> None:
    """Transport failures are urllib3's to retry, a few times per request; the core adds none on top."""
    with HangUpServer() as server:
        session = open_session(gcp_config(server.url, "http://127.0.0.1:9/unused"))
        try:
            for operation in (lambda: session.get("k"), lambda: session.put("k", b"x"), lambda: session.list("k")):
                before = server.connections
                with pytest.raises(StorageError, match="the connection failed"):
                    operation()
                assert server.connections - before == TRIES
        finally:
            session.close()
