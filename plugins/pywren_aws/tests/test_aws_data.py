"""Objects at s3:// URLs: the data hooks against moto's S3 (a data bucket apart from the job bucket),
and maps over them run by the real handler through the Lambda stand-in."""

from __future__ import annotations

import collections
import concurrent.futures
from collections.abc import Iterator
from typing import Any

import pytest
import pywren_core as pw
from pywren_core.data import DataPiece
from pywren_core.errors import AccessDeniedError, NotFoundError, StorageError, ThrottledError
from pywren_core.protocol import new_id
from pywren_core.testing import DataConformance, LocalServer

from pywren_aws.errors import DATA_NOT_FOUND, from_code

MISSING_BUCKET = "pywren-no-such-data-bucket"


class TestData(DataConformance):
    """The core's data kit: listing, ranges, missing objects and buckets, maps in line-aligned pieces."""

    #: The issue's corpus: about two dozen objects from 0 bytes to 40 MB, in pieces of 4 MiB.
    largest_object_bytes = 40 * 2**20
    piece_sizes = (None, 4 * 2**20)

    @pytest.fixture
    def pywren_config(self, pywren_config: dict[str, Any], lambda_server: LocalServer) -> dict[str, Any]:
        return pywren_config


@pytest.fixture
def storage(pywren_config: dict[str, Any]) -> Iterator[Any]:
    store = pw.storage(pywren_config)
    yield store
    store.session.close()


@pytest.fixture
def prefix(storage: Any, pywren_data_url: str) -> Iterator[str]:
    url = f"{pywren_data_url}aws-{new_id()}/"
    yield url
    storage.delete([o.url for o in storage.list(url)])


def s3_requests(storage: Any, operation: str) -> list[dict[str, Any]]:
    """The parameters of every ``operation`` request the session's S3 client makes from now on."""
    seen: list[dict[str, Any]] = []
    storage.session.handle.s3.meta.events.register(f"before-parameter-build.s3.{operation}",
                                                  lambda params, **_: seen.append(params))
    return seen


def test_list_gives_sizes_across_pages(storage: Any, prefix: str, s3: Any, data_bucket: str) -> None:
    keys = {f"{prefix[len(f's3://{data_bucket}/'):]}many/{i:05d}": b"x" * (i % 13) for i in range(1050)}
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda item: s3.put_object(Bucket=data_bucket, Key=item[0], Body=item[1]), keys.items()))
    pages = s3_requests(storage, "ListObjectsV2")
    listed = storage.list(prefix + "many/")
    assert len(pages) == 2, "1,050 keys are two pages of ListObjectsV2"
    assert sorted((o.url, o.size) for o in listed) == sorted(
        (f"s3://{data_bucket}/{key}", len(data)) for key, data in keys.items())
    # A plain string prefix, not a folder: many/010 is 01000 to 01049, and not 00010.
    assert {o.url[-5:] for o in storage.list(prefix + "many/010")} == {f"0{i}" for i in range(1000, 1050)}
    assert storage.list(prefix + "nothing/") == []


def test_ranged_gets_ask_s3_for_the_range_only(storage: Any, prefix: str) -> None:
    data = bytes(range(256)) * 4
    storage.put(prefix + "bytes", data)
    ranges = s3_requests(storage, "GetObject")
    for start, end in [(0, 10), (1000, 1024), (1020, 2000), (1024, 1030), (5000, 6000), (7, 7)]:
        assert storage.get(prefix + "bytes", (start, end)) == data[start:end], (start, end)
    assert [r["Range"] for r in ranges][:2] == ["bytes=0-9", "bytes=1000-1023"]
    assert storage.get(prefix + "bytes") == data
    with pytest.raises(NotFoundError, match=f"{prefix}missing.*NoSuchKey"):
        storage.get(prefix + "missing", (0, 10))


def test_a_piece_streams_through_one_ranged_get(storage: Any, prefix: str) -> None:
    data = b"".join(b"line %d\n" % i for i in range(100_000))
    storage.put(prefix + "lines", data)
    ranges = s3_requests(storage, "GetObject")
    with DataPiece(prefix + "lines", len(data), (100_000, 400_000), storage=storage).open() as piece:
        got = piece.read()
    # The piece's lines: from the first beginning at or after its start to the first at or after its end.
    assert got == data[data.index(b"\n", 99_999) + 1 : data.index(b"\n", 399_999) + 1]
    assert [r["Range"] for r in ranges] == [f"bytes=99999-{400_000 + 64 * 2**10 - 1}"]
    with pytest.raises(NotFoundError, match=f"{prefix}missing.*NoSuchKey"):
        storage.stream(prefix + "missing", (0, 10))


def test_missing_bucket_is_not_found_naming_the_url(storage: Any, pywren_config: dict[str, Any]) -> None:
    url = f"s3://{MISSING_BUCKET}/logs/"
    for operation in (lambda: storage.list(url), lambda: storage.get(url + "a"), lambda: storage.get(url + "a", (0, 5)),
                      lambda: storage.stream(url + "a", (0, 5)),
                      lambda: storage.put(url + "a", b"x"), lambda: storage.delete([url + "a"])):
        with pytest.raises(NotFoundError, match=f"s3://{MISSING_BUCKET}/.*NoSuchBucket") as info:
            operation()
        assert isinstance(info.value, FileNotFoundError)
    ex = pw.executor(pywren_config, progress=False)  # no function answers: the map must stop before invoking
    try:
        with pytest.raises(NotFoundError, match=f"s3://{MISSING_BUCKET}/logs/"):
            ex.map(len, url, obj_chunk_size=100)
    finally:
        ex.shutdown(wait=False)


@pytest.mark.parametrize(("code", "status", "expected"), [
    ("NoSuchBucket", 404, NotFoundError),
    ("NoSuchKey", 404, NotFoundError),
    ("AccessDenied", 403, AccessDeniedError),
    ("AllAccessDisabled", 403, AccessDeniedError),
    ("SlowDown", 503, ThrottledError),
    ("InvalidBucketName", 400, StorageError),
])
def test_data_bucket_errors_map_to_core_errors(code: str, status: int, expected: type) -> None:
    """A data bucket differs from the job bucket only in that a missing bucket is NotFoundError."""
    assert type(from_code(code, status, "message", missing=DATA_NOT_FOUND)) is expected


def word_count(piece: DataPiece) -> collections.Counter[bytes]:
    return collections.Counter(piece.read().split())


def where_the_worker_runs_from(_: Any) -> tuple[str, str]:
    import pywren_core

    import pywren_aws

    return pywren_core.__file__, pywren_aws.__file__


def test_word_count_on_lambda_equals_a_local_count(pywren_config: dict[str, Any], lambda_server: LocalServer,
                                                   storage: Any, prefix: str, data_bucket: str) -> None:
    piece_size = 64
    objects = {
        "crlf": b"alpha beta\r\ngamma  alpha\r\n\r\n" * 20,
        "no-final-newline": b"one two\nthree four five\nsix",
        "empty": b"",
        "long-line": b"short line\n" + b" ".join(b"w%d" % i for i in range(100)) + b"\nend of it\n",
        "nested/unicode": "naïve café\ncafé\tnaïve\n".encode() * 9,
    }
    assert len(objects["long-line"].splitlines()[1]) > 4 * piece_size
    for name, data in objects.items():
        storage.put(prefix + name, data)
    with pw.executor(pywren_config, progress=False) as ex:
        assert ex.call_async(where_the_worker_runs_from, 0).result(timeout=60) == (
            pw.__file__, __import__("pywren_aws").__file__), "the function runs another copy of pywren than the tests"
        reads = s3_requests(ex.storage, "GetObject")
        futures = ex.map(word_count, prefix, obj_chunk_size=piece_size)
        counts = ex.get_result(futures, timeout=120)
    assert not [r for r in reads if r["Bucket"] == data_bucket], "the client read data: only workers may"
    assert len(futures) == sum(max(1, -(-len(data) // piece_size)) for data in objects.values())
    expected = collections.Counter(word for data in objects.values() for word in data.split())
    assert sum(counts, collections.Counter()) == expected
