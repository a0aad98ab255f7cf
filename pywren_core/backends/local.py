"""The embedded ``local`` backend: storage in a directory, calls in a pool of worker processes.

It is registered as a plugin exactly like an outside backend, and its worker processes run the
same :func:`pywren_core.worker.handle` the clouds run, so it is both the quick start and the
reference implementation of the hook contract. The pool is shared by every executor in a process
and kept warm; a supervisor thread hands out payloads, kills calls that overrun their timeout and
reports workers that die mid-call, so the client never waits on a call nobody is running.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import functools
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

import attrs

import pywren_core
from pywren_core import harness, plugins, worker
from pywren_core.backend import BackendInfo, ConfigField, Limits
from pywren_core.config import user_cache_dir
from pywren_core.errors import AccessDeniedError, ConfigError, NotFoundError, StorageError
from pywren_core.hookspecs import hookimpl

_TMP_PREFIX = ".pywren-tmp-"
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


# A memory file system is taken for storage only with this much room, so a small one (Docker
# gives containers a 64 MB /dev/shm) never fills up halfway through a job.
MEMORY_STORAGE_MIN_FREE = 2**30


def default_storage_dir() -> str:
    """Where jobs live unless ``local.storage_dir`` says otherwise: in memory if possible, else on disk.

    Local storage only carries jobs between this machine's client and its workers, so it need not
    outlive a reboot, and a new file costs microseconds in memory where some disks take a
    millisecond: with a file per call, that is most of a short call's cost (benchmarks/README.md).
    The first candidate that is private to this user wins; once made it stays the default, so a
    later process (``attach``, ``pywren clean``) looks in the same place.
    """
    candidates = []
    if os.environ.get("XDG_RUNTIME_DIR"):
        candidates.append(os.path.join(os.environ["XDG_RUNTIME_DIR"], "pywren"))
    if hasattr(os, "getuid") and os.path.isdir("/dev/shm"):
        candidates.append(f"/dev/shm/pywren-{os.getuid()}")
    for candidate in candidates:
        if _private_memory_dir(candidate):
            return candidate
    return str(user_cache_dir() / "pywren" / "storage")


def _private_memory_dir(path: str) -> bool:
    """Whether ``path`` is, or could now be made, a directory that only this user can enter."""
    if not os.path.lexists(path):
        try:
            stats = os.statvfs(os.path.dirname(path))
            if stats.f_bavail * stats.f_frsize < MEMORY_STORAGE_MIN_FREE:
                return False
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass  # another process made it meanwhile: check it like any other
        except OSError:
            return False
    try:
        info = os.lstat(path)  # not stat: a symlink planted by another user must not be followed
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077


@hookimpl
def pywren_backend_info() -> BackendInfo:
    return BackendInfo(
        name="local",
        limits=Limits(max_payload_bytes=64 * 2**20, max_runtime=3600.0, max_concurrency=os.cpu_count() or 1),
        config=(
            ConfigField("storage_dir", str, default_storage_dir(), help="directory that holds the job objects"),
            ConfigField("workers", int, 0, help="worker processes; 0 means one per CPU"),
        ),
        handler="pywren_core.backends.local:worker_main",
        poll_interval=(0.002, 0.02),  # listing a local folder is cheap; a long pause only adds latency
        storage_concurrency=1,
        data_schemes=("file",),
        features={"trigger": "process pool", "isolation": "warm processes, a working directory per call"},
    )


@attrs.define
class LocalSession:
    root: str
    workers: int
    known_dirs: set[str] = attrs.field(factory=set)


@hookimpl
def pywren_connect(config: Mapping[str, Any], role: str) -> LocalSession:
    return LocalSession(_storage_root(config["storage_dir"]), config["workers"] or os.cpu_count() or 1)


def _storage_root(storage_dir: str) -> str:
    """``local.storage_dir`` as an absolute path to a directory this process can write, made if
    missing; else a ConfigError naming the setting and the path."""
    root = os.path.abspath(os.path.expanduser(storage_dir))
    try:
        os.makedirs(root, exist_ok=True)
        problem = None if os.access(root, os.W_OK | os.X_OK) else "you may not write there"
    except FileExistsError:
        problem = "it exists and is not a directory"
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and exc.filename != root else ""
        problem = f"cannot create it: {exc.strerror}{where}"
    if problem:
        raise ConfigError(
            f"local.storage_dir {storage_dir!r}: {problem}; set local.storage_dir (or "
            f"PYWREN_LOCAL_STORAGE_DIR) to a directory you can write, or unset it for the default"
        )
    return root


def _path(session: LocalSession, key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") or p.startswith(_TMP_PREFIX) for p in parts):
        raise StorageError(f"invalid storage key {key!r}")
    return os.path.join(session.root, *parts)


@hookimpl
def pywren_storage_put(session: LocalSession, key: str, data: bytes) -> None:
    path = _path(session, key)
    directory = os.path.dirname(path)
    tmp = os.path.join(directory, f"{_TMP_PREFIX}{os.getpid()}-{threading.get_ident()}")
    for _ in range(3):  # a concurrent delete may remove the directory (or a parent) at any step
        try:
            if directory not in session.known_dirs:
                os.makedirs(directory, exist_ok=True)
                session.known_dirs.add(directory)
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
            return
        except FileNotFoundError:
            session.known_dirs.discard(directory)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            room = " (set local.storage_dir to a directory with more room)" if exc.errno in _NO_ROOM else ""
            raise StorageError(f"could not write {key!r} under {session.root}: {exc.strerror}{room}") from None
    raise StorageError(f"could not write {key!r}: its directory keeps disappearing")


@hookimpl
def pywren_storage_get(session: LocalSession, key: str, byte_range: tuple[int, int] | None) -> bytes:
    try:
        with open(_path(session, key), "rb") as f:
            if byte_range is None:
                return f.read()
            start, end = byte_range
            f.seek(start)
            return f.read(max(0, end - start))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise NotFoundError(f"no object at key {key!r}") from None


def _walk(directory: str, key_prefix: str, start: str = "") -> list[str]:
    """Keys of every file below ``directory`` whose name at this level starts with ``start``."""
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    keys = []
    for entry in entries:
        if not entry.name.startswith(start) or entry.name.startswith(_TMP_PREFIX):
            continue
        if entry.is_dir(follow_symlinks=False):
            keys.extend(_walk(entry.path, f"{key_prefix}{entry.name}/"))
        else:
            keys.append(key_prefix + entry.name)
    return keys


@hookimpl
def pywren_storage_list(session: LocalSession, prefix: str) -> list[str]:
    folder, _, start = prefix.rpartition("/")
    if folder and any(part in ("", ".", "..") for part in folder.split("/")):
        return []  # no valid key has such a path segment (and ".." would leave the storage root)
    directory = os.path.join(session.root, *folder.split("/")) if folder else session.root
    return _walk(directory, f"{folder}/" if folder else "", start)


@hookimpl
def pywren_storage_delete(session: LocalSession, keys: Sequence[str]) -> None:
    directories = set()
    for key in keys:
        path = _path(session, key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        directories.add(os.path.dirname(path))
    # Remove folders left empty, deepest first, so deleted jobs leave nothing behind.
    while directories:
        directory = max(directories, key=len)
        directories.discard(directory)
        if directory == session.root or not directory.startswith(session.root):
            continue
        try:
            os.rmdir(directory)
        except OSError:
            continue
        session.known_dirs.discard(directory)
        directories.add(os.path.dirname(directory))


# --- data: files anywhere on this machine, by absolute path (``bucket`` is always empty) ---------


def _data_path(key: str) -> str:
    if not os.path.isabs(key):
        raise StorageError(f"{key!r}: local data paths are absolute (the core resolves relative ones)")
    return os.path.normpath(key)


@hookimpl
def pywren_data_list(bucket: str, prefix: str) -> list[tuple[str, int]]:
    folder, _, start = _data_path(prefix).rpartition("/") if not prefix.endswith("/") else (prefix[:-1], "", "")
    found = []
    for path in _walk(folder or "/", folder + "/", start):
        with contextlib.suppress(FileNotFoundError):  # deleted while listing
            found.append((path, os.stat(path).st_size))
    return found


@hookimpl
def pywren_data_get(bucket: str, key: str, byte_range: tuple[int, int] | None) -> bytes:
    path = _data_path(key)
    try:
        with open(path, "rb") as f:
            if byte_range is None:
                return f.read()
            start, end = byte_range
            f.seek(start)
            return f.read(max(0, end - start))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise NotFoundError(f"no file at {path}") from None
    except PermissionError:
        raise AccessDeniedError(f"you may not read {path}") from None


@hookimpl
def pywren_data_put(bucket: str, key: str, data: bytes) -> None:
    path = _data_path(key)
    tmp = os.path.join(os.path.dirname(path), f"{_TMP_PREFIX}{os.getpid()}-{threading.get_ident()}")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StorageError(f"could not write {path}: {exc.strerror}") from None


@hookimpl
def pywren_data_delete(bucket: str, keys: Sequence[str]) -> None:
    for key in keys:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_data_path(key))


@hookimpl
def pywren_invoke(session: LocalSession, payload: Mapping[str, Any]) -> None:
    # The workers run in a scratch directory: a relative storage_dir reaches them resolved.
    config = {**payload["config"], "storage_dir": session.root}
    WorkerPool.shared(session.workers).submit({**payload, "config": config})


@hookimpl
def pywren_prepare(session: LocalSession) -> None:
    WorkerPool.shared(session.workers)  # started now, so the workers are warm by the first call


@hookimpl
def pywren_cancel(session: LocalSession, executor_id: str, job_id: str, call_ids: Sequence[str]) -> None:
    WorkerPool.shared(session.workers).cancel(executor_id, job_id, call_ids)


# --- the worker processes ------------------------------------------------------------------


def worker_main(fd: int) -> None:
    """A worker process: run each payload it is handed with the shared worker runtime.

    Payloads arrive in batches; each one is acknowledged as it finishes, so the supervisor always
    knows which payload is running.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the client's terminal is the client's
    conn = Connection(fd)
    try:  # load the plugins now, while the client is still busy submitting, not on the first call
        plugins.load_backend("local")
    except Exception:  # a broken wrapper plugin: the first payload will report it
        pass
    try:
        conn.send("ready")  # timeouts count from here, not from a slow interpreter start
    except OSError:  # the client is gone already
        return
    while True:
        try:
            batch = conn.recv()
        except (EOFError, OSError):
            return
        if batch is None:
            return
        orphaned = False
        for payload in batch:  # with the client gone, finish the batch: its results are still wanted
            try:
                worker.handle(payload)
                error = None
            except BaseException:
                error = traceback.format_exc()
            try:
                conn.send(error)
            except OSError:
                orphaned = True
        if orphaned:
            return


@attrs.define(eq=False)
class _Worker:
    process: subprocess.Popen
    conn: Connection
    #: Payloads sent and not yet acknowledged, in order: the first one is running.
    inflight: deque[dict[str, Any]] = attrs.field(factory=deque)
    #: When the running payload started (when the one before it was acknowledged).
    head_started: float = 0.0
    #: The process has started and said so; only then is it sent work.
    ready: bool = False

    @property
    def head_deadline(self) -> float | None:
        return harness.deadline_for(self.inflight[0], self.head_started) if self.inflight else None


class WorkerPool:
    """Warm worker processes, fed by a supervisor thread that also watches them die or overrun.

    Workers are fresh interpreters (not forks of the client) started in a scratch directory, so,
    as on a cloud, they import installed packages only and never re-run the user's script; the
    user's own modules reach them inside the pickles. Each worker is sent a few payloads ahead
    (about 5 ms of work, judged from recent calls), so it never idles waiting for the supervisor.
    """

    _shared: dict[int, WorkerPool] = {}
    _shared_lock = threading.Lock()
    QUEUED_SECONDS = 0.005
    MAX_AHEAD = 64
    #: Seconds the workers get to leave on their own when the pool closes (at exit), then killed.
    CLOSE_GRACE = 1.0
    #: Longest a cancel waits for the supervisor to have dropped and killed what it covers.
    CANCEL_WAIT = 2.0

    @classmethod
    def shared(cls, size: int) -> WorkerPool:
        with cls._shared_lock:
            pool = cls._shared.get(size)
            if pool is None or pool.closed:
                pool = cls._shared[size] = cls(size)
            return pool

    def __init__(self, size: int):
        self.pending: deque[dict[str, Any]] = deque()
        self._pending_lock = threading.Lock()
        self._cancels: deque[tuple[tuple[str, str, frozenset[str]], threading.Event]] = deque()
        self.closed = False
        self.scratch = tempfile.mkdtemp(prefix="pywren-local-")
        self._seconds_per_payload = 0.01
        self._failed_starts = 0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.workers = [self._spawn() for _ in range(size)]
        self._thread = threading.Thread(target=self._supervise, name="pywren-local-pool", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    def _spawn(self) -> _Worker:
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        # The worker must import this very pywren_core, whether installed or run from a checkout.
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(pywren_core.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        code = f"from pywren_core.backends.local import worker_main; worker_main({theirs.fileno()})"
        process = subprocess.Popen(
            [sys.executable, "-c", code],
            pass_fds=(theirs.fileno(),),
            cwd=self.scratch,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        return _Worker(process, Connection(ours.detach()))

    def submit(self, payload: dict[str, Any]) -> None:
        with self._pending_lock:
            self.pending.append(payload)
        self._wake()

    def cancel(self, executor_id: str, job_id: str, call_ids: Sequence[str]) -> None:
        """Drop these calls' payloads if queued, and kill the worker running one (or about to).

        Returns once the supervisor has done so (or after CANCEL_WAIT), so that a job cleaned up
        right after has no worker left writing into it.
        """
        done = threading.Event()
        self._cancels.append(((executor_id, job_id, frozenset(call_ids)), done))
        self._wake()
        if not self.closed and threading.current_thread() is not self._thread:
            done.wait(self.CANCEL_WAIT)

    def _apply_cancels(self) -> None:
        while self._cancels:
            request, done = self._cancels.popleft()
            hit = functools.partial(_cancelled_by, request)
            with self._pending_lock:
                self.pending = deque(p for p in self.pending if not hit(p))
            for w in list(self.workers):
                for p in w.inflight:
                    if hit(p):
                        p["cancelled"] = True  # already in the worker's hands: killed when it comes up
                self._kill_if_cancelled(w)
            done.set()

    def _kill_if_cancelled(self, w: _Worker) -> None:
        if w.inflight and w.inflight[0].get("cancelled"):
            self._replace(w, None, "")

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:  # the pipe is full: a wake-up is already waiting
            pass

    def _dispatch(self) -> None:
        ahead = 2 + min(self.MAX_AHEAD, int(self.QUEUED_SECONDS / self._seconds_per_payload))
        ready = [w for w in self.workers if w.ready]
        batches: dict[int, list[dict[str, Any]]] = {id(w): [] for w in ready}
        while self.pending and ready:  # deal payloads one at a time to the least loaded worker
            w = min(ready, key=lambda w: len(w.inflight) + len(batches[id(w)]))
            if len(w.inflight) + len(batches[id(w)]) >= ahead:
                break
            batches[id(w)].append(self.pending.popleft())
        for w in ready:
            batch = batches[id(w)]
            if not batch:
                continue
            if not w.inflight:
                w.head_started = time.time()
            w.inflight.extend(batch)
            try:
                w.conn.send(batch)
            except OSError:
                self._replace(w, "died", self._death_message(w))

    def _supervise(self) -> None:
        while not self.closed:
            try:
                self._supervise_once()
            except Exception:  # never let the pool stop: a call it could not report is found lost later
                logging.getLogger("pywren_core").exception("local worker pool: supervising failed; carrying on")
                time.sleep(0.1)

    def _supervise_once(self) -> None:
        """Hand out work, then wait for an acknowledgement, a start-up, a death or a deadline."""
        self._apply_cancels()
        self._dispatch()
        busy = [w for w in self.workers if w.inflight]
        deadlines = [d for d in (w.head_deadline for w in busy) if d is not None]
        timeout = max(0.0, min(deadlines) - time.time()) if deadlines else None
        starting = [w for w in self.workers if not w.ready]
        ready = set(wait([self._wake_r, *(w.conn for w in busy + starting)], timeout))
        if self._wake_r in ready:
            os.read(self._wake_r, 1 << 16)
        for w in starting:
            if w.conn in ready:
                self._started(w)
        for w in busy:
            if w.conn in ready:
                self._collect_acks(w)
            elif (deadline := w.head_deadline) is not None and time.time() >= deadline:
                timeout = w.inflight[0]["timeout"]
                self._replace(w, "timeout", f"call ran past its timeout of {timeout} s and was killed")

    def _started(self, w: _Worker) -> None:
        try:
            w.ready = w.conn.recv() == "ready"
            self._failed_starts = 0
            return
        except (EOFError, OSError):
            pass
        self._failed_starts += 1
        message = f"{self._death_message(w)}: local worker processes fail to start (see their output above)"
        if self._failed_starts >= 3 * len(self.workers):  # do not leave the client waiting on a broken install
            self._failed_starts = 0
            while self.pending:
                _report_unfinished(self.pending.popleft(), "error", message)
        self._replace(w, "error", message)

    def _collect_acks(self, w: _Worker) -> None:
        try:
            while w.inflight and w.conn.poll():
                error = w.conn.recv()
                finished = w.inflight.popleft()
                now = time.time()
                # Learn how long payloads take, to size the batches sent ahead.
                self._seconds_per_payload = 0.8 * self._seconds_per_payload + 0.2 * max(now - w.head_started, 1e-5)
                w.head_started = now
                if error is not None:
                    _report_unfinished(finished, "error", f"the worker runtime failed:\n{error}")
            self._kill_if_cancelled(w)
        except (EOFError, OSError):
            self._replace(w, "died", self._death_message(w))

    @staticmethod
    def _death_message(w: _Worker) -> str:
        try:
            code = w.process.wait(1)
        except subprocess.TimeoutExpired:
            return f"worker process {w.process.pid} stopped answering"
        how = f"was killed by signal {-code} ({signal.Signals(-code).name})" if code < 0 else f"exited with code {code}"
        return f"worker process {w.process.pid} {how}" + (" while running the call" if w.inflight else "")

    def _replace(self, w: _Worker, kind: str | None, message: str) -> None:
        """Report the running payload as failed (unless it was cancelled: ``kind`` None), requeue
        the ones it never started, and respawn."""
        w.process.kill()
        w.process.wait()
        w.conn.close()
        running = w.inflight.popleft() if w.inflight else None
        with self._pending_lock:
            self.pending.extendleft(reversed([p for p in w.inflight if not p.get("cancelled")]))
        self.workers[self.workers.index(w)] = self._spawn()
        if running is not None and kind is not None:
            _report_unfinished(running, kind, message)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._wake()
        for w in self.workers:
            try:
                w.conn.send(None)
            except OSError:
                pass
        give_up = time.monotonic() + self.CLOSE_GRACE  # for all of them together, not each
        for w in self.workers:
            try:
                w.process.wait(max(0.0, give_up - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.process.kill()
                w.process.wait()
        shutil.rmtree(self.scratch, ignore_errors=True)


def _cancelled_by(request: tuple[str, str, frozenset[str]], payload: dict[str, Any]) -> bool:
    """Whether a cancel request covers every call of ``payload``."""
    executor_id, job_id, call_ids = request
    return (
        payload["executor_id"] == executor_id
        and payload["job_id"] == job_id
        and all(c["call_id"] in call_ids for c in payload["calls"])
    )


def _forget_pools_after_fork() -> None:
    """In a forked child the parent's pools have no supervisor thread, and their workers are the
    parent's: the child starts pools of its own, and never closes (or writes to) the parent's."""
    for pool in WorkerPool._shared.values():
        pool.closed = True
    WorkerPool._shared = {}
    WorkerPool._shared_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pools_after_fork)


def _report_unfinished(payload: dict[str, Any], kind: str, message: str) -> None:
    """Write a failure status for each call of ``payload`` that has none, so the client learns of it."""
    session = worker.session_for({**payload, "faults": None})  # the platform reports, not a (faulty) worker
    for call in payload["calls"]:
        worker.report_failure(session, payload, call, kind, message)
