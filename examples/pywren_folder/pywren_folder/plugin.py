"""The ``folder`` backend: objects are files in a folder, and every invocation is a fresh Python process.

It is the example that ``docs/writing-a-backend.md`` walks through. A cloud plugin has the same
shape: replace the file operations with the storage SDK's calls and the process with the
platform's asynchronous invoke API.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote, unquote

import attrs
from pywren_core import hookimpl
from pywren_core.backend import BackendInfo, ConfigField, Limits
from pywren_core.data import FileRange
from pywren_core.errors import AccessDeniedError, NotFoundError, StorageError, ThrottledError


# --8<-- [start:info]
@hookimpl
def pywren_backend_info() -> BackendInfo:
    return BackendInfo(
        name="folder",
        limits=Limits(
            max_payload_bytes=256 * 1024,  # a payload is written to a file; larger arguments go through storage
            max_runtime=900.0,
            max_concurrency=64,  # invoke requests in flight at once (each is quick: write a file, start a process)
        ),
        config=(
            ConfigField("root", str, help="folder that holds the objects; the client and its workers share it"),
            ConfigField("processes", int, os.cpu_count() or 1, help="invocations that may run at once"),
            ConfigField("data_dir", str, "", help="its sub-folders are the folder:// buckets; default ROOT/buckets"),
        ),
        handler="pywren_folder.handler:main",
        poll_interval=(0.01, 0.5),  # listing a folder is cheap: look often
        data_schemes=("folder",),  # folder://BUCKET/KEY URLs, served by the pywren_data_* hooks below
        features={"trigger": "a new process per invocation", "isolation": "a process per invocation"},
    )


# --8<-- [end:info]


# --8<-- [start:connect]
@attrs.define
class FolderSession:
    """What the other hooks need: the folders, and the invocations this client started."""

    objects: str  # one file per object, named after its key
    staging: str  # where a put writes before renaming the file into place
    invocations: str  # one payload file per invocation, until its process has read it
    data: str  # the folder whose sub-folders are the buckets of folder:// URLs
    processes: int
    running: list[subprocess.Popen] = attrs.field(factory=list)
    lock: threading.Lock = attrs.field(factory=threading.Lock)


@hookimpl
def pywren_connect(config: Mapping[str, Any], role: str) -> FolderSession:
    # A cloud plugin builds its SDK clients here; on a worker (role "worker") it takes credentials
    # from the platform's environment, since secret config fields never reach workers.
    root = os.path.abspath(os.path.expanduser(config["root"]))
    folders = [os.path.join(root, name) for name in ("objects", "staging", "invocations")]
    data = os.path.abspath(os.path.expanduser(config["data_dir"] or os.path.join(root, "buckets")))
    for folder in [*folders, data]:
        os.makedirs(folder, exist_ok=True)
    return FolderSession(*folders, data=data, processes=config["processes"])


# --8<-- [end:connect]


# --8<-- [start:errors]
@contextlib.contextmanager
def _errors(key: str) -> Iterator[None]:
    """Turn the operating system's errors into pywren's, as a cloud plugin maps its SDK's."""
    try:
        yield
    except FileNotFoundError:
        raise NotFoundError(f"no object at key {key!r}") from None
    except PermissionError as exc:
        raise AccessDeniedError(f"access to {key!r} denied: {exc}") from exc
    except OSError as exc:
        raise StorageError(f"storage failed for {key!r}: {exc}") from exc


def _path(session: FolderSession, key: str) -> str:
    """The file of ``key``: the key quoted into one file name, so no key can point outside the folder."""
    if not key:
        raise StorageError("the empty string is not a key")
    return os.path.join(session.objects, quote(key, safe="").replace(".", "%2E"))


# --8<-- [end:errors]


# --8<-- [start:storage]
@hookimpl
def pywren_storage_put(session: FolderSession, key: str, data: bytes) -> None:
    path = _path(session, key)
    with _errors(key):
        fd, staged = tempfile.mkstemp(dir=session.staging)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(staged, path)  # atomic: a reader sees the old object or all of the new one
        except BaseException:
            os.unlink(staged)
            raise


def _read(path: str, byte_range: tuple[int, int] | None) -> bytes:
    with open(path, "rb") as f:
        if byte_range is None:
            return f.read()
        start, end = byte_range
        f.seek(start)
        return f.read(max(0, end - start))


@hookimpl
def pywren_storage_get(session: FolderSession, key: str, byte_range: tuple[int, int] | None) -> bytes:
    path = _path(session, key)
    with _errors(key):
        return _read(path, byte_range)


@hookimpl
def pywren_storage_list(session: FolderSession, prefix: str) -> list[str]:
    with _errors(prefix):
        names = os.listdir(session.objects)
    return [key for key in map(unquote, names) if key.startswith(prefix)]


@hookimpl
def pywren_storage_delete(session: FolderSession, keys: Sequence[str]) -> None:
    for key in keys:
        path = _path(session, key)
        with _errors(key), contextlib.suppress(FileNotFoundError):  # deleting is idempotent
            os.unlink(path)


# --8<-- [end:storage]


# --8<-- [start:data]
# Data where it lives (optional): the file KEY in the sub-folder BUCKET of data_dir is the object
# folder://BUCKET/KEY, so a map can run over folders of files that are already there. Unlike job
# storage, a key's "/" are sub-folders; as on any disk, a key cannot be both an object and a folder.
_PUTTING = ".pywren-put-"  # a put's temporary file, in the object's own folder; listings skip it


def _bucket(session: FolderSession, bucket: str) -> str:
    path = os.path.join(session.data, bucket)  # the core cuts the URL at the first "/": no "/" in bucket
    if bucket in (".", "..") or not os.path.isdir(path):
        raise NotFoundError(f"no bucket folder://{bucket}/: there is no folder {path}")
    return path


def _data_path(session: FolderSession, bucket: str, key: str) -> str:
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):  # so no key points outside its bucket
        raise StorageError(f"folder://{bucket}/{key}: a key has no empty, '.' or '..' path segment")
    return os.path.join(_bucket(session, bucket), *parts)


def _walk(folder: str, key_prefix: str, start: str = "") -> Iterator[tuple[str, int]]:
    """``(key, size)`` of every file below ``folder`` whose name at this level starts with ``start``."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if not entry.name.startswith(start) or entry.name.startswith(_PUTTING):
            continue
        if entry.is_dir():  # a symlink to a folder is a folder, as a bucket may be
            yield from _walk(entry.path, f"{key_prefix}{entry.name}/")
        else:
            with contextlib.suppress(FileNotFoundError):  # deleted while we list
                yield key_prefix + entry.name, entry.stat().st_size


@hookimpl
def pywren_data_list(session: FolderSession, bucket: str, prefix: str) -> list[tuple[str, int]]:
    folder, _, start = prefix.rpartition("/")  # "2026/01-" lists the names starting "01-" in 2026/
    top = _bucket(session, bucket)
    if folder and any(part in ("", ".", "..") for part in folder.split("/")):
        return []  # no key has such a path segment
    with _errors(f"folder://{bucket}/{prefix}"):
        return list(_walk(os.path.join(top, *folder.split("/")), f"{folder}/" if folder else "", start))


@hookimpl
def pywren_data_get(session: FolderSession, bucket: str, key: str, byte_range: tuple[int, int] | None) -> bytes:
    path, url = _data_path(session, bucket, key), f"folder://{bucket}/{key}"
    if not os.path.isfile(path):  # nothing there, or a folder
        raise NotFoundError(f"no object at {url}")
    with _errors(url):
        return _read(path, byte_range)


@hookimpl
def pywren_data_open(session: FolderSession, bucket: str, key: str, byte_range: tuple[int, int]) -> FileRange:
    # Optional: a stream over the range, so a piece is read as it is consumed (a cloud plugin wraps its
    # SDK's response body in SDKStream). Without it the core reads in pywren_data_get blocks.
    path, url = _data_path(session, bucket, key), f"folder://{bucket}/{key}"
    if not os.path.isfile(path):
        raise NotFoundError(f"no object at {url}")
    with _errors(url):
        return FileRange(path, byte_range)


@hookimpl
def pywren_data_put(session: FolderSession, bucket: str, key: str, data: bytes) -> None:
    path = _data_path(session, bucket, key)
    with _errors(f"folder://{bucket}/{key}"):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Staged in the object's own folder: a rename is atomic only within one file system.
        fd, staged = tempfile.mkstemp(dir=os.path.dirname(path), prefix=_PUTTING)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(staged, path)
        except BaseException:
            os.unlink(staged)
            raise


@hookimpl
def pywren_data_delete(session: FolderSession, bucket: str, keys: Sequence[str]) -> None:
    for key in keys:
        path = _data_path(session, bucket, key)
        # Nothing there, a folder, or a file where a folder would be: no such object, nothing to do.
        missing = (FileNotFoundError, IsADirectoryError, NotADirectoryError)
        with _errors(f"folder://{bucket}/{key}"), contextlib.suppress(*missing):
            os.unlink(path)


# --8<-- [end:data]


# --8<-- [start:invoke]
@hookimpl
def pywren_invoke(session: FolderSession, payload: Mapping[str, Any]) -> None:
    with session.lock:
        session.running = [p for p in session.running if p.poll() is None]
        if len(session.running) >= session.processes:
            # What a cloud says with HTTP 429 and a Retry-After header: the core waits and invokes again.
            # A process slot frees as soon as one ends, so ask to be retried soon.
            raise ThrottledError(f"{session.processes} invocations are already running", retry_after=0.05)
        fd, path = tempfile.mkstemp(dir=session.invocations, suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f)
        # Return once the invocation is accepted (the process started), not when it has finished.
        # The process starts in the invocations folder, so it cannot import the user's own files.
        command = [sys.executable, "-m", "pywren_folder.handler", path]
        session.running.append(subprocess.Popen(command, cwd=session.invocations, stdin=subprocess.DEVNULL))


@hookimpl
def pywren_close(session: FolderSession) -> None:
    # The executor shuts down once its calls are over: give their processes a moment to exit, then
    # stop any still running (cancelled calls), so nothing this session started outlives it.
    with session.lock:
        running, session.running = session.running, []
    give_up = time.monotonic() + 5  # for all of them together
    for process in running:
        try:
            process.wait(timeout=max(0.0, give_up - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --8<-- [end:invoke]
