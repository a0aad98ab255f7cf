"""Data where it lives, on Azure: az:// and abfs:// URLs in a container of their own in Azurite (not
the job container), listed on the client and read by range on the test host's workers. The core's
data conformance kit first, then what is particular to Blob Storage."""

from __future__ import annotations

import collections
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from azure.storage.blob import AccountSasPermissions, BlobServiceClient, ResourceTypes, generate_account_sas
from conftest import ACCOUNT, DATA_CONTAINER, Azurite
from pywren_azure import plugin
from pywren_azure.session import AzureSession, _http_session, _sdk_options, connect

import pywren_core as pw
from pywren_core.data import DataPiece, Storage, plan
from pywren_core.errors import AccessDeniedError, NotFoundError, ThrottledError, URLError
from pywren_core.testing import DataConformance, open_session

MANY = 1100
PAGE = 400


class TestData(DataConformance):
    """The core's kit through the queue trigger, the test host and Azurite."""

    #: The issue's corpus: about two dozen objects from 0 bytes to 40 MB, in pieces of 4 MiB.
    largest_object_bytes = 40 * 2**20
    piece_sizes = (None, 4 * 2**20)

    @pytest.fixture
    def pywren_config(self, queue_section: dict[str, Any]) -> dict[str, Any]:
        return {"backend": "azure", "azure": queue_section}


class TestDataHttp(DataConformance):
    """The same through the HTTP trigger."""

    @pytest.fixture
    def pywren_config(self, http_section: dict[str, Any]) -> dict[str, Any]:
        return {"backend": "azure", "azure": http_section}


@pytest.fixture
def storage(storage_section: dict[str, Any], pywren_data_url: str) -> Iterator[Storage]:
    session = open_session({"backend": "azure", "azure": storage_section})
    yield Storage(session)
    session.close()


@pytest.fixture
def prefix(pywren_data_url: str, storage: Storage) -> Iterator[str]:
    """A fresh az:// folder in the data container, emptied afterwards."""
    url = f"{pywren_data_url}{uuid.uuid4().hex[:12]}/"
    yield url
    storage.delete([o.url for o in storage.list(url)])


@pytest.fixture
def raw(azurite: Azurite, pywren_data_url: str) -> Iterator[Any]:
    """The data container through the SDK itself, to set up what the plugin must then find."""
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    yield service.get_container_client(DATA_CONTAINER)
    service.close()


def key_of(url: str) -> str:
    return url.removeprefix(f"az://{DATA_CONTAINER}/")


def test_the_backend_declares_both_schemes(storage: Storage) -> None:
    assert set(storage.schemes) == {"az", "abfs"}


def test_a_listing_follows_every_page_and_gives_sizes(storage: Storage, prefix: str, raw: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    expected = {f"{key_of(prefix)}k{i:05d}": i % 13 for i in range(MANY)}
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda item: raw.upload_blob(item[0], b"x" * item[1]), expected.items()))
    raw.upload_blob(f"{key_of(prefix)[:-1]}-beside/k", b"not under the prefix")
    monkeypatch.setattr(plugin, "LIST_PAGE_SIZE", PAGE)
    pages = []
    http = storage.session.handle.http
    request = http.request

    def counting(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if "comp=list" in url:
            pages.append(url)
        return request(method, url, *args, **kwargs)

    monkeypatch.setattr(http, "request", counting)
    listed = storage.list(prefix)
    assert {key_of(o.url): o.size for o in listed} == expected
    assert len(listed) == MANY
    assert len(pages) == -(-MANY // PAGE)  # every page, each asked for once
    raw.delete_blob(f"{key_of(prefix)[:-1]}-beside/k")


def test_a_prefix_with_nothing_under_it_lists_nothing(storage: Storage, prefix: str) -> None:
    assert storage.list(prefix) == []


def test_ranged_gets(storage: Storage, prefix: str) -> None:
    data = bytes(range(256)) * 4
    url = f"{prefix}bytes"
    storage.put(url, data)
    assert storage.get(url) == data
    assert storage.get(url, (0, 10)) == data[:10]
    assert storage.get(url, (100, 356)) == data[100:356]
    assert storage.get(url, (1000, 1100)) == data[1000:]  # past the end: what exists
    assert storage.get(url, (1024, 2000)) == b""
    assert storage.get(url, (2000, 3000)) == b""  # Azure answers 416: nothing there, as slicing gives
    assert storage.get(url, (5, 5)) == b""
    with storage.open(url) as stream:
        assert stream.read() == data
    storage.put(f"{prefix}empty", b"")
    assert storage.get(f"{prefix}empty", (0, 10)) == b""
    assert storage.get(f"{prefix}empty") == b""


def test_a_range_of_a_missing_blob_is_not_found(storage: Storage, prefix: str) -> None:
    for byte_range in [None, (0, 10), (3, 3)]:
        with pytest.raises(NotFoundError, match=f"{prefix}missing"):
            storage.get(f"{prefix}missing", byte_range)
    with pytest.raises(NotFoundError, match=f"{prefix}missing"):
        storage.stream(f"{prefix}missing", (0, 10))


def test_a_missing_container_is_not_found_naming_the_url(storage: Storage) -> None:
    url = "az://no-such-container/logs/"
    with pytest.raises(NotFoundError, match=url):
        storage.list(url)
    with pytest.raises(NotFoundError, match=f"{url}a"):
        storage.get(f"{url}a", (0, 10))
    with pytest.raises(NotFoundError, match=f"{url}a"):
        storage.stream(f"{url}a", (0, 10))
    with pytest.raises(NotFoundError, match=f"{url}a"):
        storage.put(f"{url}a", b"data")  # never created for the user
    with pytest.raises(NotFoundError, match=url):
        plan(storage, url, chunk_size=100)  # what a map over the URL does first, on the client
    storage.delete([f"{url}a"])  # deleting is idempotent, even there


def test_delete_ignores_missing_blobs(storage: Storage, prefix: str) -> None:
    storage.put(f"{prefix}a", b"a")
    storage.delete([f"{prefix}a", f"{prefix}never-was"])
    storage.delete([f"{prefix}a"])
    assert storage.list(prefix) == []


def test_abfs_urls_name_the_same_blobs(storage: Storage, prefix: str) -> None:
    url = f"{prefix}shared"
    storage.put(url, b"one object, two schemes")
    abfs = url.replace("az://", "abfs://", 1)
    assert storage.get(abfs) == b"one object, two schemes"
    assert [o.url for o in storage.list(abfs)] == [abfs]
    # The long form abfs:// URLs often take, when it names this account:
    long = url.replace(f"az://{DATA_CONTAINER}/", f"abfs://{DATA_CONTAINER}@{ACCOUNT}.dfs.core.windows.net/")
    assert storage.get(long, (0, 3)) == b"one"
    other = url.replace(f"az://{DATA_CONTAINER}/", f"abfs://{DATA_CONTAINER}@elsewhere.dfs.core.windows.net/")
    with pytest.raises(URLError, match="elsewhere"):
        storage.get(other)


def test_directories_of_a_hierarchical_namespace_are_not_objects(storage: Storage, prefix: str, raw: Any) -> None:
    """ADLS Gen2 lists a directory as an empty blob with metadata hdi_isfolder=true (Azurite has
    no hierarchical namespace, so the test makes one such blob itself)."""
    raw.upload_blob(f"{key_of(prefix)}dir", b"", metadata={"hdi_isfolder": "true"})
    storage.put(f"{prefix}dir/file", b"x\n")
    assert [(o.url, o.size) for o in storage.list(prefix)] == [(f"{prefix}dir/file", 2)]
    raw.delete_blob(f"{key_of(prefix)}dir")


def test_a_worker_session_reads_data_containers(azurite: Azurite, storage_section: dict[str, Any],
                                                storage: Storage, prefix: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """As on the function app: credentials from its settings, none from the payload."""
    storage.put(f"{prefix}w", b"from the client\n")
    monkeypatch.setenv("AzureWebJobsStorage", azurite.connection_string)
    public = {k: v for k, v in storage_section.items() if k != "connection_string"}
    defaults = {field.name: field.default for field in plugin.CONFIG}
    session = connect({**defaults, **public, "storage_account": azurite.account}, role="worker")
    try:
        key = f"{key_of(prefix)}w"
        assert plugin.pywren_data_list(session=session, bucket=DATA_CONTAINER, prefix=key_of(prefix)) == [(key, 16)]
        got = plugin.pywren_data_get(session=session, bucket=DATA_CONTAINER, key=key, byte_range=(5, 15))
        assert got == b"the client"
        plugin.pywren_data_put(session=session, bucket=DATA_CONTAINER, key=f"{key}2", data=b"from a worker")
        plugin.pywren_data_delete(session=session, bucket=DATA_CONTAINER, keys=[key])
    finally:
        plugin.pywren_close(session=session)
    assert [o.url for o in storage.list(prefix)] == [f"{prefix}w2"]


def test_denied_access_names_the_url(azurite: Azurite, storage: Storage, prefix: str) -> None:
    """An identity that may read and list but not write, as a function app's often is."""
    storage.put(f"{prefix}r", b"readable")
    sas = generate_account_sas(azurite.account, azurite.key, ResourceTypes(container=True, object=True),
                               AccountSasPermissions(read=True, list=True),
                               datetime.now(timezone.utc) + timedelta(hours=1))
    http = _http_session()
    service = BlobServiceClient(azurite.blob_endpoint, credential=sas, **_sdk_options(http))
    session = AzureSession({"container": "unused"}, "worker", http, service, (sas,))
    bucket, key = DATA_CONTAINER, f"{key_of(prefix)}r"
    try:
        assert plugin.pywren_data_get(session=session, bucket=bucket, key=key, byte_range=None) == b"readable"
        with pytest.raises(AccessDeniedError, match=f"az://{bucket}/{key}") as info:
            plugin.pywren_data_put(session=session, bucket=bucket, key=key, data=b"overwritten")
        assert sas not in str(info.value)
    finally:
        plugin.pywren_close(session=session)
    assert storage.get(f"{prefix}r") == b"readable"


class _Busy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(503)
        self.send_header("x-ms-error-code", "ServerBusy")
        self.send_header("Retry-After", "2")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_throttling_reaches_the_core_as_throttled() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    http = _http_session()
    service = BlobServiceClient(f"http://127.0.0.1:{server.server_address[1]}/acct",
                                credential={"account_name": "acct", "account_key": "QUJD"}, **_sdk_options(http))
    session = AzureSession({"container": "c"}, "worker", http, service, ())
    try:
        with pytest.raises(ThrottledError, match="az://logs/2026/") as info:
            plugin.pywren_data_list(session=session, bucket="logs", prefix="2026/")
        assert info.value.retry_after == 2.0
        with pytest.raises(ThrottledError, match="az://logs/2026/a"):
            plugin.pywren_data_get(session=session, bucket="logs", key="2026/a", byte_range=(0, 4))
        with pytest.raises(ThrottledError, match="az://logs/2026/a"):
            plugin.pywren_data_open(session=session, bucket="logs", key="2026/a", byte_range=(0, 4))
    finally:
        plugin.pywren_close(session=session)
        server.shutdown()
        server.server_close()


# --- end to end: a word count over az:// URLs, on the test host ------------------------------------

PIECE = 1000
CORPUS = {
    "crlf.txt": b"".join(f"w{i % 37} w{i % 11}  w{i}\r\n".encode() for i in range(300)),
    "no-final-newline.txt": b"".join(f"alpha w{i} beta\n".encode() for i in range(150)) + b"last words here",
    "empty.txt": b"",
    "long-line.txt": b"short one\n" + b" ".join(b"long%d" % (i % 50) for i in range(1200)) + b"\nafter\n",
    "sub/unicode.txt": "ünïcode wörds\tand tabs\n\n\nblank lines above\n".encode() * 40,
}


def count_words(piece: DataPiece) -> tuple[str, collections.Counter[str]]:
    return piece.url, collections.Counter(word for line in piece.lines() for word in line.split())


def code_paths(_: Any = None) -> tuple[str, str]:
    return sys.modules["pywren_core"].__file__ or "", sys.modules["pywren_azure"].__file__ or ""


@pytest.mark.parametrize("section", ["queue_section", "http_section"])
def test_a_word_count_over_az_urls_matches_a_local_count(section: str, request: pytest.FixtureRequest,
                                                          storage: Storage, prefix: str) -> None:
    for name, data in CORPUS.items():
        storage.put(f"{prefix}{name}", data)
    config = {"backend": "azure", "azure": request.getfixturevalue(section)}
    with pw.executor(config, progress=False) as ex:
        # The worker runs the code this test runs (the tree's, when that is what is imported here).
        assert ex.call_async(code_paths, None).result(timeout=120) == code_paths()
        futures = ex.map(count_words, prefix, obj_chunk_size=PIECE)
        results = ex.get_result(futures, timeout=300)
    expected_pieces = sum(max(1, -(-len(data) // PIECE)) for data in CORPUS.values())
    assert len(futures) == expected_pieces
    counted: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for url, counter in results:
        counted[url] += counter
    assert dict(counted) == {f"{prefix}{name}": collections.Counter(data.decode().split())
                             for name, data in CORPUS.items()}
