"""Data where it lives: storage URLs, a storage API for user code, and maps over objects in pieces.

``ex.map(f, "s3://logs/2026/", obj_chunk_size=64 * 2**20)`` lists the objects on the client (keys and
sizes, never their bytes), cuts each into pieces of about that many bytes, and runs one call per
piece. Each call gets a :class:`DataPiece` and reads its bytes straight from storage, by range.

Pieces are aligned to lines without any coordination between them: a piece ``[start, end)`` owns
exactly the lines that *begin* inside it. A line begins at 0 and after every ``\\n``. So a worker
skips to the first line beginning at or after ``start`` and reads on until the first line beginning
at or after ``end`` (or the end of the object): each line of the object lands in exactly one piece,
whatever the piece size, CRLF (it ends in ``\\n`` too) or a last line without a newline. A line
longer than a piece leaves the pieces it covers empty.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

import attrs

from pywren_core.backend import Session
from pywren_core.errors import NotFoundError, ObjectChangedError, StorageError, URLError

#: Schemes of the backends this project publishes, for an error that names who serves a URL.
KNOWN_SCHEMES = {"s3": "aws", "gs": "gcp", "az": "azure", "abfs": "azure", "file": "local"}
_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.IGNORECASE)
#: Bytes a piece's stream reaches past its end, so that its last line usually ends inside it.
_TAIL_ROOM = 64 * 2**10
#: Bytes of a read looking for a line boundary (a ranged read's first size, doubled while no line ends in it).
_PROBE = 64 * 2**10
#: The buffer of ``DataPiece.open()``: a read of this much or more goes from the stream straight into
#: the bytes returned; smaller reads and lines go through the buffer.
_BUFFER = 64 * 2**10


def scheme_of(text: Any) -> str | None:
    """The URL scheme of ``text`` (lower case), or None when it is not a ``scheme://`` string."""
    match = _SCHEME.match(text) if isinstance(text, str) else None
    return match.group(1).lower() if match else None


@attrs.frozen
class ObjectInfo:
    """One object in storage: its URL and size in bytes."""

    url: str
    size: int


class Storage:
    """Objects at URLs of the backend's schemes: the same API on the client (``pw.storage()``,
    ``Executor.storage``) and in a call (``current_call().storage``).

    ``local`` serves ``file://`` URLs and plain paths; cloud backends their own schemes (``s3://``,
    ``gs://``, ``az://``), in any bucket their credentials reach.
    """

    def __init__(self, session: Session):
        self.session = session
        self.schemes = tuple(s.lower() for s in session.info.data_schemes)
        self.block_size = max(1, session.info.data_block_size)

    def __repr__(self) -> str:
        return f"<pywren Storage of the {self.session.name} backend: {', '.join(self.schemes) or 'no'} URLs>"

    @property
    def fs(self) -> Any:
        """These objects as an fsspec filesystem (``pip install fsspec``), for pandas, pyarrow, dask."""
        try:
            from pywren_core.filesystem import PywrenFileSystem
        except ImportError as exc:
            raise ImportError(f"Storage.fs needs fsspec: pip install fsspec ({exc})") from exc
        return PywrenFileSystem(self)

    def parse(self, url: str) -> tuple[str, str, str]:
        """``(scheme, bucket, key)`` of a URL this backend serves; a clear error for any other."""
        if not isinstance(url, str):
            raise URLError(f"a storage URL must be a string, got {url!r}")
        scheme = scheme_of(url)
        name = self.session.name
        if not self.schemes:
            raise URLError(
                f"{url}: the {name} backend cannot read objects from storage URLs (it declares no data_schemes)"
            )
        if scheme is None and "file" in self.schemes:
            return "file", "", os.path.abspath(os.path.expanduser(url)) + ("/" if url.endswith("/") else "")
        if scheme is None or scheme not in self.schemes:
            served = ", ".join(f"{s}://" for s in self.schemes)
            message = f"{url}: the {name} backend serves {served} URLs"
            owner = KNOWN_SCHEMES.get(scheme or "")
            if owner and owner != name:
                install = "" if owner == "local" else f" (pip install pywren-{owner})"
                message += f"; {scheme}:// URLs are served by the {owner} backend{install}"
            raise URLError(message)
        rest = url[len(scheme) + 3 :]
        if scheme == "file":
            return "file", "", os.path.abspath(rest) + ("/" if rest.endswith("/") else "")
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise URLError(f"{url}: no bucket in the URL (expected {scheme}://BUCKET/KEY)")
        return scheme, bucket, key

    @staticmethod
    def url(scheme: str, bucket: str, key: str) -> str:
        return f"file://{key}" if scheme == "file" else f"{scheme}://{bucket}/{key}"

    def put(self, url: str, data: bytes) -> None:
        """Store ``data`` at ``url``, replacing what is there, atomically."""
        _, bucket, key = self.parse(url)
        self.session.data_put(bucket, key, data)

    def get(self, url: str, byte_range: tuple[int, int] | None = None) -> bytes:
        """The object's bytes, or bytes ``[start, end)`` of it."""
        _, bucket, key = self.parse(url)
        return self.session.data_get(bucket, key, tuple(byte_range) if byte_range is not None else None)

    def list(self, url: str) -> list[ObjectInfo]:
        """Every object whose URL starts with ``url`` (a plain string prefix), with its size."""
        scheme, bucket, prefix = self.parse(url)
        return [ObjectInfo(self.url(scheme, bucket, key), size) for key, size in self.session.data_list(bucket, prefix)]

    def delete(self, urls: str | Iterable[str]) -> None:
        """Delete the objects; missing ones are ignored."""
        by_bucket: dict[str, list[str]] = {}
        for url in [urls] if isinstance(urls, str) else urls:
            _, bucket, key = self.parse(url)
            by_bucket.setdefault(bucket, []).append(key)
        for bucket, keys in by_bucket.items():
            self.session.data_delete(bucket, keys)

    def stream(self, url: str, byte_range: tuple[int, int], block: int | None = None) -> Any:
        """Bytes ``[start, end)`` of the object as a readable binary file object, read as it is
        consumed: one ranged GET (the backend's ``pywren_data_open``), or for a backend without that
        hook ranged reads of ``block`` bytes (``data_block_size``) one after another. Close it."""
        _, bucket, key = self.parse(url)
        start, end = byte_range
        if end <= start:  # still NotFoundError for a missing object
            return io.BytesIO(self.session.data_get(bucket, key, (start, end)))
        stream = self.session.data_open(bucket, key, (start, end))
        return BlockStream(self, url, start, end, block or self.block_size) if stream is None else stream

    def open(self, url: str, size: int | None = None) -> io.BufferedReader:
        """A binary file object over the whole object, streamed (see :meth:`stream`)."""
        if size is None:
            scheme, bucket, key = self.parse(url)
            found = [s for k, s in self.session.data_list(bucket, key) if k == key]
            if not found:
                raise NotFoundError(f"{url} does not exist")
            size = found[0]
        return DataPiece(url, size, (0, size), storage=self).open(aligned=False)


@attrs.frozen
class DataPiece:
    """One piece of one object: what a call of a map over storage URLs receives.

    ``byte_range`` is the piece's share of the object, ``[start, end)``; ``open()``, ``read()``
    and ``lines()`` give the lines that begin inside it, whole (see the module's docstring).
    Only the URL and the numbers travel to the worker; it reads through its own session.
    """

    url: str
    size: int
    byte_range: tuple[int, int]
    #: This piece's index among its object's pieces, and how many there are.
    part: int = 0
    parts: int = 1
    storage: Storage | None = attrs.field(default=None, eq=False, repr=False)

    def __getstate__(self) -> tuple:
        return (self.url, self.size, self.byte_range, self.part, self.parts)

    def __setstate__(self, state: tuple) -> None:
        for name, value in zip(("url", "size", "byte_range", "part", "parts", "storage"), (*state, None), strict=True):
            object.__setattr__(self, name, value)

    @property
    def bucket(self) -> str:
        return self._storage().parse(self.url)[1]

    @property
    def key(self) -> str:
        return self._storage().parse(self.url)[2]

    def _storage(self) -> Storage:
        if self.storage is not None:
            return self.storage
        from pywren_core.worker import current_call

        call = current_call()
        if call is None:
            raise StorageError(f"{self.url}: read this piece inside a call, or plan it with pw.storage()")
        return call.storage

    def open(self, aligned: bool = True) -> io.BufferedReader:
        """A binary file object over exactly this piece's lines, streamed from storage as it is read
        (one ranged GET where the backend has ``pywren_data_open``); closing it closes the stream."""
        return io.BufferedReader(_PieceReader(self, self._storage(), aligned), _BUFFER)

    def read(self) -> bytes:
        """All of this piece's bytes.

        A piece of at most ``data_block_size`` bytes is one ranged read, cut to its lines (a copy of
        at most a block). A larger one first finds where its lines begin and end, with a small read
        at each end that is inside its object, then reads exactly those bytes: the bytes the store
        returns are the result, never copied, and never held twice.
        """
        storage = self._storage()
        start, end = self.byte_range
        if end - start <= storage.block_size:
            with _PieceReader(self, storage, True, block=end - start + 1 + _TAIL_ROOM) as reader:
                return reader.readall()
        reader = _PieceReader(self, storage, True)
        low = reader.line_start(start, end)
        if low >= end:
            return b""  # the first line beginning here belongs to a later piece
        return reader.fetch(low, reader.line_start(end, self.size))

    def lines(self, encoding: str | None = "utf-8", errors: str = "strict") -> Iterator[Any]:
        """This piece's lines without their ending (``\\n`` or ``\\r\\n``), decoded (``encoding=None``: bytes)."""
        with self.open() as stream:
            for raw in stream:
                line = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1] if raw.endswith(b"\n") else raw
                yield line if encoding is None else line.decode(encoding, errors)


class _PieceReader(io.RawIOBase):
    """The bytes of a piece (see the module's docstring for which), read from one stream.

    Aligned, the stream covers the byte before the piece's start (where the line before ends) to
    ``_TAIL_ROOM`` past its end, where its last line usually ends. The middle passes straight from
    the stream into the caller's buffer; only the two ends are read in small chunks and cut. A last
    line that runs past the stream is read on in small ranged reads.
    """

    def __init__(self, piece: DataPiece, storage: Storage, aligned: bool, block: int | None = None):
        self._stream: Any = None
        self.piece, self.storage, self.block = piece, storage, block
        start, end = piece.byte_range
        #: The object's offset of the next byte the stream gives, and where the stream ends.
        self.pos = start - 1 if aligned and start > 0 else start
        self.stop = min(piece.size, end + _TAIL_ROOM) if aligned else end
        #: Looking for the first line beginning at or after start: just past the first "\n" at or after start - 1.
        self.skipping = aligned and start > 0
        #: Bytes before this offset are the piece's once skipping is over: its last line ends just past
        #: the first "\n" at or after end - 1.
        self.open_until = end - 1 if aligned else end
        self.done = self.pos >= self.stop
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
        super().close()

    def _source(self) -> Any:
        if self._stream is None:
            self._stream = self.storage.stream(self.piece.url, (self.pos, self.stop), self.block)
        return self._stream

    def _passing(self) -> int:
        """How many bytes may pass from the stream uncut, now."""
        return 0 if self.skipping or self._pending else max(0, self.open_until - self.pos)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while True:
            if len(self._pending):
                n = min(len(view), len(self._pending))
                view[:n] = self._pending[:n]
                self._pending = self._pending[n:]
                return n
            if self.done or not len(view):
                return 0
            passing = self._passing()
            if passing:
                source = self._source()
                readinto = getattr(source, "readinto", None)
                n = readinto(view[:passing]) if readinto else _copy(source.read(min(passing, len(view))), view)
                self._advance(n or 0, passing)
                return n or 0
            self._cut_next()

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        while not len(self._pending) and not self.done:
            passing = self._passing()
            if passing:
                data = self._source().read(min(size, passing))
                self._advance(len(data), passing)
                return data
            self._cut_next()
        data = self._pending[:size].tobytes()
        self._pending = self._pending[size:]
        return data

    def readall(self) -> bytes:
        """The rest of the piece: its middle in one read from the stream, joined to its ends (one copy)."""
        parts = []
        while True:
            if len(self._pending):
                parts.append(self._pending)
                self._pending = memoryview(b"")
            if self.done:
                return b"".join(parts)
            passing = self._passing()
            if passing:
                data = self._source().read(passing)
                self._advance(len(data), passing)
                parts.append(data)
            else:
                self._cut_next()

    def _advance(self, n: int, wanted: int) -> None:
        if not n and wanted:
            self._ended()
        self.pos += n

    def _ended(self) -> None:
        """The stream ended at ``pos``: the object shrank, or the piece's last line runs past the stream."""
        if self.pos < self.stop:
            raise ObjectChangedError(
                f"{self.piece.url} changed since the map was planned: it was {self.piece.size} bytes, "
                f"and its bytes {self.pos}-{self.stop} could not be read"
            )
        if self.stop >= self.piece.size or self.open_until == self.piece.byte_range[1]:
            self.done = True  # the end of the object, or of an unaligned range
            return
        self._stream.close()
        self._stream = _LineEnd(self.storage, self.piece.url, self.pos, self.piece.size)
        self.stop = self.piece.size

    def _cut_next(self) -> None:
        """Read a small chunk at either end of the piece and keep what belongs to it in ``_pending``."""
        data = self._source().read(_PROBE)
        if not data:
            self._ended()
            return
        base = self.pos
        self.pos += len(data)
        low = 0
        if self.skipping:
            newline = data.find(b"\n")
            if newline < 0:
                self.done = self.pos >= self.piece.byte_range[1]  # no line begins inside the piece
                return
            low, self.skipping = newline + 1, False
            if base + low >= self.piece.byte_range[1]:
                self.done = True  # the first line beginning here belongs to a later piece
                return
        newline = data.find(b"\n", max(low, self.open_until - base)) if self.pos > self.open_until else -1
        if newline >= 0:
            self._pending, self.done = memoryview(data)[low : newline + 1], True
        else:
            self._pending = memoryview(data)[low:]

    def line_start(self, pos: int, stop: int) -> int:
        """Where the first line beginning at or after ``pos`` begins (just past the first "\\n" at or
        after ``pos - 1``), or ``stop`` when none begins before it: small reads, growing to a block."""
        if pos <= 0:
            return 0
        at, step = pos - 1, min(_PROBE, self.storage.block_size)
        while at < stop - 1:
            data = self.fetch(at, min(stop - 1, at + step))
            newline = data.find(b"\n")
            if newline >= 0:
                return at + newline + 1
            at, step = at + len(data), min(2 * step, self.storage.block_size)
        return stop

    def fetch(self, start: int, end: int) -> bytes:
        data = self.storage.get(self.piece.url, (start, end))
        if len(data) != end - start:
            raise ObjectChangedError(
                f"{self.piece.url} changed since the map was planned: it was {self.piece.size} bytes, "
                f"and bytes {start}-{end} now read as {len(data)}"
            )
        return data


def _copy(data: bytes, view: memoryview) -> int:
    view[: len(data)] = data
    return len(data)


class BlockStream(io.RawIOBase):
    """Bytes ``[start, end)`` of an object in ranged reads of ``block`` bytes, one after another: the
    stream of a backend without ``pywren_data_open``. Each ``read`` gives at most what is left of a block."""

    def __init__(self, storage: Any, url: str, start: int, end: int, block: int):
        self.storage, self.url, self.pos, self.end, self.block = storage, url, start, end, block
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def _current(self) -> memoryview:
        if not len(self._pending) and self.pos < self.end:
            data = self.storage.get(self.url, (self.pos, min(self.end, self.pos + self._next_size())))
            self.pos += len(data)
            self.end = self.pos if not data else self.end  # the object ends early: the reader says so
            self._pending = memoryview(data)
        return self._pending

    def _next_size(self) -> int:
        return self.block

    def readinto(self, buffer: Any) -> int:
        pending = self._current()
        n = min(len(buffer), len(pending))
        memoryview(buffer).cast("B")[:n] = pending[:n]
        self._pending = pending[n:]
        return n

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        pending = self._current()
        self._pending = pending[size:]
        return pending[:size].tobytes()

    def readall(self) -> bytes:
        parts = []
        while len(self._current()):
            parts.append(self._pending)
            self._pending = memoryview(b"")
        return b"".join(parts)


class _LineEnd(BlockStream):
    """The rest of a line that runs past a piece's stream: ranged reads from ``_PROBE`` bytes, doubling
    up to ``data_block_size``, so that a long line costs a few requests and a short one a small one."""

    def __init__(self, storage: Any, url: str, start: int, end: int):
        super().__init__(storage, url, start, end, _PROBE)

    def _next_size(self) -> int:
        size, self.block = self.block, min(2 * self.block, self.storage.block_size)
        return size


class FileRange(io.RawIOBase):
    """Bytes ``[start, end)`` of a file as a stream: what ``pywren_data_open`` returns for objects
    that are files (``local``, the folder example). Reads go from the file into the caller's buffer."""

    def __init__(self, path: str, byte_range: tuple[int, int]):
        self.file = open(path, "rb", buffering=0)  # noqa: SIM115 (closed with this stream)
        self.file.seek(byte_range[0])
        self.left = max(0, byte_range[1] - byte_range[0])

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self.file.readinto(memoryview(buffer).cast("B")[: self.left]) or 0
        self.left -= n
        return n

    def read(self, size: int | None = -1) -> bytes:
        wanted = self.left if size is None or size < 0 else min(size, self.left)
        data = self.file.read(wanted) or b""
        self.left -= len(data)
        return data

    def readall(self) -> bytes:
        return self.read()

    def close(self) -> None:
        self.file.close()
        super().close()


class SDKStream(io.RawIOBase):
    """An SDK's response body as the stream ``pywren_data_open`` returns: what reading raises goes
    through ``errors`` (the plugin's mapping of its SDK's errors to pywren's, a context manager),
    and closing this closes the body. Given the range's ``length``, closing with at most
    ``_TAIL_ROOM`` bytes unread reads them first, so that the connection can serve the next request."""

    def __init__(self, body: Any, errors: Callable[[], AbstractContextManager[Any]], length: int | None = None):
        self.body, self.errors, self.left = body, errors, length

    def readable(self) -> bool:
        return True

    def _count(self, n: int) -> int:
        if self.left is not None:
            self.left -= n
        return n

    def readinto(self, buffer: Any) -> int:
        with self.errors():
            return self._count(self.body.readinto(buffer))

    def read(self, size: int | None = -1) -> bytes:
        with self.errors():
            data = self.body.read(None if size is None or size < 0 else size)
        self._count(len(data))
        return data

    def readall(self) -> bytes:
        return self.read()

    def close(self) -> None:
        if self.closed:
            return
        with contextlib.suppress(Exception):  # a body closed mid-way may complain: it is closed all the same
            if self.left is not None and 0 < self.left <= _TAIL_ROOM:
                self.read()
            self.body.close()
        super().close()


def plan(
    storage: Storage, urls: str | Sequence[str], chunk_size: int | None = None, chunk_number: int | None = None
) -> list[DataPiece]:
    """The pieces of every object under ``urls``, in URL order then key order.

    A URL ending in ``/`` (or naming only a bucket) is a prefix; any other names one object, or,
    when no object has exactly that key, the folder ``url + "/"``. Keys ending in ``/`` (folder
    markers) are skipped. Without a chunk option each object is one piece.
    """
    if chunk_size is not None and chunk_number is not None:
        raise ValueError("give obj_chunk_size or obj_chunk_number, not both")
    for name, value in (("obj_chunk_size", chunk_size), ("obj_chunk_number", chunk_number)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"{name} must be a positive whole number, got {value!r}")
    pieces: list[DataPiece] = []
    for url in [urls] if isinstance(urls, str) else urls:
        for obj in _objects(storage, url):
            pieces.extend(_cut(obj, chunk_size, chunk_number, storage))
    return pieces


def _objects(storage: Storage, url: str) -> list[ObjectInfo]:
    scheme, bucket, key = storage.parse(url)
    listed = sorted(storage.session.data_list(bucket, key))
    if key and not key.endswith("/"):
        exact = [(k, s) for k, s in listed if k == key]
        listed = exact or [(k, s) for k, s in listed if k.startswith(key + "/")]
    objects = [ObjectInfo(storage.url(scheme, bucket, k), s) for k, s in listed if not k.endswith("/")]
    if not objects:
        raise NotFoundError(f"{url}: no objects there to map over")
    return objects


def _cut(obj: ObjectInfo, chunk_size: int | None, chunk_number: int | None, storage: Storage) -> list[DataPiece]:
    if chunk_number is not None:
        chunk_size = max(1, math.ceil(obj.size / chunk_number))
    if chunk_size is None or obj.size <= chunk_size:
        return [DataPiece(obj.url, obj.size, (0, obj.size), storage=storage)]
    starts = range(0, obj.size, chunk_size)
    return [
        DataPiece(obj.url, obj.size, (s, min(obj.size, s + chunk_size)), i, len(starts), storage)
        for i, s in enumerate(starts)
    ]


def is_data(iterdata: Any, schemes: Iterable[str] = ()) -> bool:
    """Whether a map's ``iterdata`` names objects in storage: a string, or a list of URLs that all
    have a storage scheme (``s3://``, ``gs://``, or one of ``schemes``). Anything else is mapped
    item by item."""
    if isinstance(iterdata, str):
        return True
    if isinstance(iterdata, (list, tuple)) and iterdata:
        known = {*KNOWN_SCHEMES, *schemes}
        return all(scheme_of(item) in known for item in iterdata)
    return False
