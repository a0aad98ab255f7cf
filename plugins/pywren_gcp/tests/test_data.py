"""Data where it lives: the core's data conformance kit, and ``gs://`` URLs through the data hooks,
against a data bucket of fake-gcs-server that is not the job bucket, with maps over them on the
functions-framework stand-in."""

from __future__ import annotations

import collections
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import pywren_core as pw
import pywren_core.data
from pywren_core.data import DataPiece, Storage
from pywren_core.errors import AccessDeniedError, NotFoundError, ThrottledError
from pywren_core.testing import DataConformance, open_session

from conftest import gcp_config
from servers import BUCKET


class TestData(DataConformance):
    """The kit's ``pywren_config`` is conftest's (functions-framework and fake-gcs-server), its
    ``pywren_data_url`` the data bucket."""

    #: The issue's corpus: about two dozen objects from 0 bytes to 40 MB, in pieces of 4 MiB.
    largest_object_bytes = 40 * 2**20
    piece_sizes = (None, 4 * 2**20)


@pytest.fixture
def storage(storage_url: str) -> Iterator[Storage]:
    """The client's ``pw.storage()``: storage only, no function needed."""
    store = pw.storage(gcp_config(storage_url, "http://127.0.0.1:9/unused"))
    yield store
    store.session.close()


@pytest.fixture
def prefix(storage: Storage, pywren_data_url: str) -> Iterator[str]:
    """A fresh folder in the data bucket, emptied afterwards."""
    url = f"{pywren_data_url}t-{uuid.uuid4().hex[:12]}/"
    yield url
    storage.delete([o.url for o in storage.list(url)])


def test_the_backend_serves_gs_urls(storage: Storage, pywren_data_url: str) -> None:
    assert storage.schemes == ("gs",)
    assert storage.parse(pywren_data_url + "a/b") == ("gs", pywren_data_url[5:-1], "a/b")
    assert storage.parse(pywren_data_url)[1] != BUCKET  # data lives in a bucket of its own


def test_list_has_sizes_and_follows_every_page(storage: Storage, prefix: str) -> None:
    """1,050 objects: two pages of 1,000 keys. Each comes back once, with its own size."""
    sizes = {f"many/{i:05d}": i % 13 for i in range(1050)}
    store = storage.session.handle.store
    bucket, folder = storage.parse(prefix)[1:]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda item: store.put(bucket, folder + item[0], b"x" * item[1]), sizes.items()))
    pages: list[str] = []
    store.client._http.hooks["response"].append(lambda r, *a, **k: pages.append(r.url) if "/o?" in r.url else None)
    try:
        listed = storage.list(prefix + "many/")
    finally:
        store.client._http.hooks["response"].pop()
    assert len(listed) == 1050 and len({o.url for o in listed}) == 1050
    assert {o.url: o.size for o in listed} == {prefix + k: v for k, v in sizes.items()}
    assert len(pages) == 2, f"expected two list pages of up to 1,000 keys, saw {len(pages)}"
    assert storage.list(prefix + "many/0104") == [pywren_core.data.ObjectInfo(prefix + f"many/0104{i}", (1040 + i) % 13)
                                                  for i in range(10)]
    assert storage.list(prefix + "nothing/") == []


def test_ranged_gets(storage: Storage, prefix: str) -> None:
    data = bytes(range(256)) * 40
    storage.put(prefix + "bytes", data)
    assert storage.get(prefix + "bytes") == data
    for start, end in [(0, 1), (5, 300), (10239, 10240), (10000, 99999), (10240, 10300), (7, 7), (0, 10240)]:
        assert storage.get(prefix + "bytes", (start, end)) == data[start:end], (start, end)
    storage.put(prefix + "empty", b"")
    assert storage.get(prefix + "empty") == b""
    assert storage.get(prefix + "empty", (0, 10)) == b""
    with storage.open(prefix + "bytes") as stream:  # looks the size up by listing, then streams
        assert stream.read() == data


def test_missing_bucket_or_object_is_not_found_naming_the_url(storage: Storage, prefix: str) -> None:
    bucket = f"pywren-no-such-bucket-{uuid.uuid4().hex[:8]}"
    for operation, url in [(storage.list, f"gs://{bucket}/logs/"), (storage.get, f"gs://{bucket}/logs/a"),
                           (storage.get, prefix + "missing")]:
        with pytest.raises(NotFoundError, match=url) as info:
            operation(url)
        assert isinstance(info.value, FileNotFoundError) and info.value.__cause__ is None
    with pytest.raises(NotFoundError, match=f"gs://{bucket}/k"):
        storage.get(f"gs://{bucket}/k", (0, 10))
    for url in (f"gs://{bucket}/k", prefix + "missing"):
        with pytest.raises(NotFoundError, match=url):
            storage.stream(url, (0, 10))
    storage.delete([f"gs://{bucket}/k", prefix + "never-was"])  # deleting what is not there is not an error


@pytest.mark.parametrize(("status", "error"), [(403, AccessDeniedError), (401, AccessDeniedError),
                                               (429, ThrottledError), (503, ThrottledError), (404, NotFoundError)])
def test_data_hooks_map_errors(refusing_endpoint: Any, status: int, error: type) -> None:
    """Each data hook raises the core's error naming the gs:// URL; throttling is left to the core,
    which retries it (the hook is called directly here, so once)."""
    refusing_endpoint.status = status
    session = open_session(gcp_config(f"http://127.0.0.1:{refusing_endpoint.server_port}", "http://127.0.0.1:9/x"))
    call = session._call
    try:
        for hook, arguments in [("pywren_data_list", {"prefix": "logs/"}),
                                ("pywren_data_get", {"key": "logs/a", "byte_range": (0, 10)}),
                                ("pywren_data_get", {"key": "logs/a", "byte_range": None}),
                                ("pywren_data_open", {"key": "logs/a", "byte_range": (0, 10)}),
                                ("pywren_data_put", {"key": "logs/a", "data": b"x"})]:
            refusing_endpoint.requests = 0
            with pytest.raises(error, match="gs://elsewhere/logs/") as info:
                call(hook, bucket="elsewhere", **arguments)
            assert info.value.__cause__ is None
            if error is ThrottledError:
                assert refusing_endpoint.requests == 1  # the core retries throttling, not the plugin
        if error is NotFoundError:
            call("pywren_data_delete", bucket="elsewhere", keys=["logs/a"])
        else:
            with pytest.raises(error, match="gs://elsewhere"):
                call("pywren_data_delete", bucket="elsewhere", keys=["logs/a"])
    finally:
        session.close()


# --- end to end: maps over gs:// URLs, read by the function through the worker's own session -------

#: Every awkward case of cutting text into line-aligned pieces.
CORPUS = {
    "crlf": b"".join(b"alpha beta\tgamma %d\r\n" % (i % 17) for i in range(400)),
    "no-final-newline": b"one two\nthree four five\nsix",
    "empty": b"",
    "long-line": b"short first\n" + b" ".join(b"long%d" % (i % 50) for i in range(3000)) + b"\nlast line here\n",
    "blank-lines": b"\n\n a  b \n\n\nc\n\n",
    "unicode": "ünïcode wörds ☃ snow\nmore ünïcode\n".encode() * 50,
    "text": b"".join(b"w%d w%d the end\n" % (i % 97, i % 13) for i in range(5000)),
}


def count_words(piece: DataPiece) -> collections.Counter[str]:
    return collections.Counter(word for line in piece.lines() for word in line.split())


def where_the_worker_runs(piece: DataPiece) -> tuple[str, int]:
    """The core the function imported, and the piece it read (through current_call().storage)."""
    import pywren_core.data

    return pywren_core.data.__file__, len(piece.read())


def direct_count(objects: dict[str, bytes]) -> collections.Counter[str]:
    return collections.Counter(word for data in objects.values() for line in data.decode().splitlines()
                               for word in line.split())


@pytest.fixture
def corpus(storage: Storage, prefix: str) -> str:
    for name, data in CORPUS.items():
        storage.put(prefix + name, data)
    return prefix


def test_the_function_runs_this_trees_core(pywren_config: dict[str, Any], corpus: str, package_dir: Path) -> None:
    """functions-framework serves the deploy package, which carries the core this process imported:
    here the tree's (with pywren_core.data), not an older installed copy."""
    tree_data = Path(pywren_core.data.__file__)
    assert (package_dir / "pywren_core" / "data.py").read_bytes() == tree_data.read_bytes()
    with pw.executor(pywren_config, progress=False) as ex:
        [(path, size)] = ex.get_result(ex.map(where_the_worker_runs, corpus + "text"))
    assert Path(path).resolve().is_relative_to(package_dir.resolve()), path
    assert size == len(CORPUS["text"])


SMALL = ("no-final-newline", "empty", "blank-lines")


@pytest.mark.parametrize(("chunk_size", "names"), [
    (None, tuple(CORPUS)), (4096, tuple(CORPUS)), (100, tuple(k for k in CORPUS if k != "text")),
    (7, SMALL), (1, SMALL),
])
def test_word_count_over_pieces_equals_a_local_count(pywren_config: dict[str, Any], corpus: str,
                                                     chunk_size: int | None, names: tuple[str, ...]) -> None:
    """A map in pieces of ``chunk_size`` bytes counts exactly the words ``collections.Counter``
    counts over the same bytes: whatever the piece size, with CRLF, an object without a final
    newline, an empty one, and a line longer than the piece (long-line's, at 100 and 4096)."""
    objects = {name: CORPUS[name] for name in names}
    urls: str | list[str] = corpus if len(names) == len(CORPUS) else [corpus + name for name in names]
    with pw.executor(pywren_config, progress=False) as ex:
        futures = ex.map(count_words, urls, obj_chunk_size=chunk_size)
        got = sum(ex.get_result(futures), collections.Counter())
    assert got == direct_count(objects)
    pieces = [max(1, -(-len(data) // chunk_size)) if chunk_size else 1 for data in objects.values()]
    assert len(futures) == sum(pieces)  # the empty object is one (empty) piece


def test_map_over_a_missing_bucket_names_it_before_any_call(pywren_config: dict[str, Any]) -> None:
    with pw.executor(pywren_config, progress=False) as ex:
        with pytest.raises(NotFoundError, match="gs://pywren-no-such-data-bucket/logs/"):
            ex.map(count_words, "gs://pywren-no-such-data-bucket/logs/")
