"""Maps over storage URLs on the local backend: the line-aligned splitter (a property test), a word
count over a corpus up to 40 MB, and the URL rules. The same behaviour on every backend is checked
by ``pywren_core.testing.DataConformance`` (tests/test_conformance_local.py runs it on local)."""

from __future__ import annotations

import collections
import io
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pywren_core as pw
from pywren_core.data import BlockStream, DataPiece, Storage, is_data, plan
from pywren_core.errors import NotFoundError, ObjectChangedError, URLError
from pywren_core.testing import count_words, expected_words, sum_counters, word_corpus


class Trickle(io.RawIOBase):
    """A stream over bytes that gives at most ``most`` bytes a read, as a network body may."""

    def __init__(self, data: bytes, most: int):
        self.data, self.most = memoryview(data), most

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.most, len(self.data))
        buffer[:n] = self.data[:n]
        self.data = self.data[n:]
        return n


class BytesStorage:
    """One object in memory, read the way the core reads storage: by byte range, whole or in blocks,
    and streamed (one stream a range, or, with ``streams=False``, ranged reads of a block)."""

    def __init__(self, data: bytes, block_size: int, streams: bool = True):
        self.data, self.block_size, self.streams, self.reads, self.last = data, block_size, streams, 0, b""
        self.opened: list[Trickle] = []

    def get(self, url: str, byte_range: tuple[int, int]) -> bytes:
        self.reads += 1
        self.last = self.data[byte_range[0] : byte_range[1]]
        return self.last

    def stream(self, url: str, byte_range: tuple[int, int], block: int | None = None) -> io.RawIOBase:
        if not self.streams:
            return BlockStream(self, url, *byte_range, block or self.block_size)
        self.reads += 1
        self.opened.append(Trickle(self.data[byte_range[0] : byte_range[1]], self.block_size))
        return self.opened[-1]


def pieces_of(data: bytes, piece_size: int, block_size: int, streams: bool = True) -> list[DataPiece]:
    store = BytesStorage(data, block_size, streams)
    starts = range(0, len(data), piece_size) if data else [0]
    return [DataPiece("mem://o", len(data), (s, min(len(data), s + piece_size)), storage=store) for s in starts]


def owned(data: bytes, start: int, end: int) -> bytes:
    """By brute force: the bytes of the lines that begin at an offset in [start, end)."""
    line_starts = [0] + [i + 1 for i, byte in enumerate(data) if byte == ord("\n") and i + 1 < len(data)]
    begin = next((p for p in line_starts if p >= start), len(data))
    stop = next((p for p in line_starts if p >= end), len(data))
    return data[begin:stop] if begin < end else b""


@settings(max_examples=400, deadline=None)
@given(
    data=st.binary(max_size=300).map(lambda b: bytes(b"ab\r\n "[x % 5] for x in b)),
    piece_size=st.integers(1, 80),
    block_size=st.integers(1, 40),
    streams=st.booleans(),
)
def test_every_line_lands_in_exactly_one_piece(data: bytes, piece_size: int, block_size: int, streams: bool) -> None:
    pieces = pieces_of(data, piece_size, block_size, streams)
    streamed = [p.open().read() for p in pieces]
    assert streamed == [owned(data, *p.byte_range) for p in pieces]
    assert b"".join(streamed) == data
    assert [p.read() for p in pieces] == streamed
    *ended, last = data.split(b"\n")  # a line ends with "\n" or "\r\n"; the last may have no ending
    lines = [line.removesuffix(b"\r") for line in ended] + ([last] if last else [])
    assert [line for p in pieces for line in p.lines(encoding=None)] == lines


def test_without_a_stream_hook_a_piece_is_read_a_block_at_a_time() -> None:
    data = b"".join(b"%06d\n" % i for i in range(20_000))  # 140 kB
    (piece,) = pieces_of(data, len(data), 4096, streams=False)
    raw = piece.open().raw
    sizes = [len(chunk) for chunk in iter(lambda: raw.read(1 << 20), b"")]
    assert sum(sizes) == len(data) and max(sizes) <= 4096, max(sizes)
    assert sum(1 for _ in piece.lines()) == 20_000


def test_a_piece_streams_through_one_request_that_its_file_closes() -> None:
    data = b"".join(b"%06d\n" % i for i in range(20_000))  # 140 kB
    store = BytesStorage(data, 4096)
    piece = DataPiece("mem://o", len(data), (50_000, 100_001), storage=store)
    with piece.open() as f:
        assert f.readline() == b"007143\n"
        assert f.readline() + f.read() == owned(data, 50_007, 100_001)
    # The byte before the piece to a little past its end (its last line ends inside that), in one stream.
    assert store.reads == 1 and store.opened[0].closed
    # Its last line ended in the first read past its end (4 KiB here): the rest was never read.
    assert bytes(store.opened[0].data) == data[100_000 + 4096 : 100_001 + 64 * 2**10]
    # A last line that runs past the stream's end is read on in small ranged reads.
    long_tail = b"x\n" + b"y" * 200_000 + b"\nz\n"
    store = BytesStorage(long_tail, 8 * 2**20)
    first, second = (DataPiece("mem://o", len(long_tail), r, storage=store) for r in [(0, 10), (10, len(long_tail))])
    assert first.open().read() == long_tail[:-2] and second.open().read() == b"z\n"
    assert store.opened[0].closed and store.reads == 1 + 2 + 1  # a stream of 64 KiB, reads of 64 and 128 KiB, a stream


def test_a_large_piece_is_read_without_a_copy() -> None:
    data = b"".join(b"%06d\n" % i for i in range(20_000))  # 140 kB
    store = BytesStorage(data, 4096)
    piece = DataPiece("mem://o", len(data), (50_000, 100_001), storage=store)
    got = piece.read()
    assert got == owned(data, 50_000, 100_001) and got[:7] == b"007143\n" and got[-7:] == b"014285\n"
    # A small read at each end finds the piece's lines; then one read of exactly them, returned as it came.
    assert store.reads == 3 and got is store.last
    # A piece of at most a block: one read, cut to its lines, streamed or not.
    for streams in (True, False):
        store = BytesStorage(data, 4096, streams)
        assert DataPiece("mem://o", len(data), (7, 4000), storage=store).read() == owned(data, 7, 4000)
        assert store.reads == 1


def test_streamed_reads_of_any_size_give_the_piece() -> None:
    data = b"".join(b"%d\n" % i for i in range(60_000))  # 349 kB, more than the stream's buffer
    pieces = pieces_of(data, 150_000, 10_000)
    for size in (1, 4095, 65_536, 100_000, 1 << 20):
        for piece in pieces:
            with piece.open() as f:
                chunks = list(iter(lambda: f.read(size), b""))  # noqa: B023
            assert b"".join(chunks) == owned(data, *piece.byte_range), size
            assert max(map(len, chunks)) <= size


def test_an_object_that_shrank_since_planning_is_reported() -> None:
    piece = DataPiece("mem://o", 100, (0, 100), storage=BytesStorage(b"short\n", 4096))
    with pytest.raises(ObjectChangedError, match="mem://o changed since the map was planned"):
        piece.read()


def test_is_data_tells_urls_from_items() -> None:
    assert is_data("s3://bucket/prefix/") and is_data("/some/dir") and is_data(["gs://b/k", "az://c/b"])
    assert is_data(["foo://b/k"], schemes=("foo",))
    assert not is_data(["a", "b"]) and not is_data(["https://example.com/x"]) and not is_data(range(3))
    assert not is_data([]) and not is_data(["s3://b/k", 3])


@pytest.fixture
def corpus_dir(tmp_path):
    corpus = word_corpus(40 * 2**20)
    for name, data in corpus.items():
        path = tmp_path / "corpus" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return tmp_path / "corpus", corpus


def test_word_count_of_a_40_mb_corpus_in_pieces(pywren_config, corpus_dir) -> None:
    directory, corpus = corpus_dir
    assert 20 <= len(corpus) <= 40 and max(map(len, corpus.values())) == 40 * 2**20
    expected = expected_words(corpus)
    with pw.executor(pywren_config, progress=False) as ex:
        for size in (None, 3 * 2**20, 700_001):
            futures = ex.map(count_words, f"{directory}/", obj_chunk_size=size)
            assert sum_counters(ex.get_result(futures)) == expected, size
        futures = ex.map(count_words, f"file://{directory}/edge/", obj_chunk_size=5)
        assert sum_counters(ex.get_result(futures)) == expected_words(
            {k: v for k, v in corpus.items() if k.startswith("edge/")}
        )


def test_pieces_cover_each_object_and_carry_their_place(tmp_path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 10)
    (tmp_path / "b").write_bytes(b"")
    store = pw.storage({"backend": "local"})
    pieces = plan(store, f"{tmp_path}/", chunk_size=4)
    assert [(p.url.rsplit("/", 1)[1], p.byte_range, p.part, p.parts) for p in pieces] == [
        ("a", (0, 4), 0, 3),
        ("a", (4, 8), 1, 3),
        ("a", (8, 10), 2, 3),
        ("b", (0, 0), 0, 1),
    ]
    assert [p.byte_range for p in plan(store, str(tmp_path / "a"), chunk_number=3)] == [(0, 4), (4, 8), (8, 10)]
    assert pieces[0].key == str(tmp_path / "a") and pieces[0].bucket == ""


def test_url_rules(tmp_path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "x").write_bytes(b"1\n")
    (tmp_path / "logs-old").write_bytes(b"2\n")
    store = pw.storage({"backend": "local"})
    # A URL that names no object is a folder: the sibling "logs-old" is not in it.
    assert [p.url for p in plan(store, str(tmp_path / "logs"))] == [f"file://{tmp_path}/logs/x"]
    assert [p.url for p in plan(store, f"file://{tmp_path}/logs-old")] == [f"file://{tmp_path}/logs-old"]
    with pytest.raises(URLError, match=r"gs:// URLs are served by the gcp backend \(pip install pywren-gcp\)"):
        store.list("gs://bucket/key")
    with pytest.raises(NotFoundError, match="no objects there"):
        plan(store, str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="not both"):
        plan(store, str(tmp_path), chunk_size=1, chunk_number=1)
    # Relative paths are resolved on the client, so workers in their own directories find them.
    os.chdir(tmp_path)
    assert store.parse("logs/x") == ("file", "", f"{tmp_path}/logs/x")


def test_a_backend_without_data_schemes_says_so() -> None:
    class NoData:
        name = "plain"

        class info:  # noqa: N801
            data_schemes = ()
            data_block_size = 1

    with pytest.raises(URLError, match="the plain backend cannot read objects from storage URLs"):
        Storage(NoData()).parse("s3://b/k")  # type: ignore[arg-type]


def test_reduce_by_key_needs_urls(pywren_config) -> None:
    with pw.executor(pywren_config, progress=False) as ex:
        with pytest.raises(TypeError, match="storage URLs"):
            ex.map_reduce(count_words, [1, 2], sum_counters, reduce_by_key=True)
        total = ex.map_reduce(abs, [-1, -2], sum)
        assert total.result(timeout=60) == 3 and len(total.map_futures) == 2
        assert isinstance(collections.Counter(), collections.Counter)
