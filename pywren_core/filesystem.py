"""The storage API as an fsspec filesystem, for libraries that take one (pandas, pyarrow, dask).

``pw.storage().fs`` (or ``current_call().storage.fs`` in a call) needs ``pip install fsspec``; the
core does not depend on it. Paths are the backend's own URLs (``s3://bucket/key``, or absolute
paths on ``local``), read in ranged requests and written whole, atomically, at close::

    import pandas as pd
    fs = pw.storage().fs
    with fs.open("s3://logs/2026/table.csv") as f:
        frame = pd.read_csv(f)

Folders are what the keys' ``/`` separators make them, as in any object store.
"""

from __future__ import annotations

from typing import Any

from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from pywren_core.data import Storage
from pywren_core.errors import NotFoundError


class PywrenFileSystem(AbstractFileSystem):
    """An fsspec filesystem over one :class:`~pywren_core.data.Storage` (one backend's session)."""

    protocol = ("pywren",)
    #: Instances hold a session: never share one between storages through fsspec's cache.
    cachable = False

    def __init__(self, storage: Storage, **kwargs: Any):
        super().__init__(**kwargs)
        self.storage = storage

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        return path  # paths are the backend's URLs, scheme and all

    def _parent(self, path: str) -> str:
        scheme, _, rest = path.rstrip("/").rpartition("://")
        parent = rest.rpartition("/")[0]
        return f"{scheme}://{parent}" if scheme else parent or "/"

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        base = path.rstrip("/")
        entries: dict[str, dict[str, Any]] = {}
        for obj in self.storage.list(base + "/"):
            head, sep, _ = obj.url[len(base) + 1 :].partition("/")
            name = f"{base}/{head}"
            entries[name] = {"name": name, "size": 0, "type": "directory"} if sep else self._file(obj.url, obj.size)
        if not entries:
            exact = [o for o in self.storage.list(base) if o.url == base]
            if not exact:
                raise FileNotFoundError(path)
            entries[base] = self._file(base, exact[0].size)
        return list(entries.values()) if detail else sorted(entries)

    @staticmethod
    def _file(url: str, size: int) -> dict[str, Any]:
        return {"name": url, "size": size, "type": "file"}

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        base = path.rstrip("/")
        listed = self.storage.list(base)
        exact = [o for o in listed if o.url == base]
        if exact:
            return self._file(base, exact[0].size)
        if any(o.url.startswith(base + "/") for o in listed):
            return {"name": base, "size": 0, "type": "directory"}
        raise FileNotFoundError(path)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        try:
            if start is None and end is None:
                return self.storage.get(path)
            size = self.info(path)["size"]
            start, end = _absolute(start or 0, size), _absolute(size if end is None else end, size)
            return self.storage.get(path, (start, max(start, end)))
        except NotFoundError as exc:
            raise FileNotFoundError(path) from exc

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        self.storage.put(path, value)

    def rm_file(self, path: str) -> None:
        self.storage.delete(path)

    def _rm(self, path: str) -> None:
        self.storage.delete(path)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        pass  # folders exist while objects are under them

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        pass

    def _open(self, path: str, mode: str = "rb", block_size: Any = None, **kwargs: Any) -> AbstractBufferedFile:
        block = block_size or self.storage.block_size
        return _PywrenFile(self, path, mode, block_size=block, **kwargs)


def _absolute(offset: int, size: int) -> int:
    return max(0, size + offset) if offset < 0 else min(offset, size)


class _PywrenFile(AbstractBufferedFile):
    """Reads in ranged requests; writes buffer until close, then one atomic put."""

    def _fetch_range(self, start: int, end: int) -> bytes:
        try:
            return self.fs.storage.get(self.path, (start, end))
        except NotFoundError as exc:
            raise FileNotFoundError(self.path) from exc

    def _initiate_upload(self) -> None:
        self._parts: list[bytes] = []

    def _upload_chunk(self, final: bool = False) -> bool:
        self._parts.append(self.buffer.getvalue())
        if final:
            self.fs.storage.put(self.path, b"".join(self._parts))
        return True
