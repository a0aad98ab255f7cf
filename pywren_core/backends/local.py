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
import gc
import logging
import os
import select
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
import types
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any

import attrs

import pywren_core
from pywren_core import harness, plugins, worker
from pywren_core.backend import HOST, BackendInfo, ConfigField, Limits
from pywren_core.config import user_cache_dir
from pywren_core.data import FileRange
from pywren_core.errors import AccessDeniedError, ConfigError, NotFoundError, StorageError
from pywren_core.hookspecs import hookimpl

_log = logging.getLogger("pywren_core")
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
            ConfigField(
                "start",
                str,
                "fork",
                help="how worker processes start: fork (copies of the client made when the pool starts, "
                "ready in milliseconds; Linux 5.3+, else spawn) or spawn (fresh interpreters)",
            ),
        ),
        handler="pywren_core.backends.local:worker_main",
        poll_interval=(0.002, 0.02),  # listing a local folder is cheap; a long pause only adds latency
        storage_concurrency=1,
        data_schemes=("file",),
        platform=HOST,
        features={"trigger": "process pool", "isolation": "warm processes, a working directory per call"},
    )


@attrs.define
class LocalSession:
    root: str
    workers: int
    start: str = "fork"
    #: The interpreter of the runtime's virtual environment, or None: the client's own.
    python: str | None = None
    known_dirs: set[str] = attrs.field(factory=set)

    def pool(self) -> WorkerPool:
        return WorkerPool.shared(self.workers, self.start, self.python)


@hookimpl
def pywren_connect(config: Mapping[str, Any], role: str, runtime: Any) -> LocalSession:
    start = config.get("start", "fork")
    if start not in START_METHODS:
        raise ConfigError(f"local.start must be one of {', '.join(START_METHODS)}, got {start!r}")
    python = None
    if runtime is not None and role == "client":
        from pywren_core.runtime import local_environment

        python = str(local_environment(runtime))  # fresh interpreters of the runtime's venv: no fork
    workers = config["workers"] or os.cpu_count() or 1
    return LocalSession(_storage_root(config["storage_dir"]), workers, "spawn" if python else start, python)


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


def _read(path: str, byte_range: tuple[int, int] | None) -> bytes:
    """The file, or bytes ``[start, end)`` of it; the caller maps a missing file to its own message."""
    with open(path, "rb") as f:
        if byte_range is None:
            return f.read()
        start, end = byte_range
        f.seek(start)
        return f.read(max(0, end - start))


@hookimpl
def pywren_storage_get(session: LocalSession, key: str, byte_range: tuple[int, int] | None) -> bytes:
    try:
        return _read(_path(session, key), byte_range)
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


@contextlib.contextmanager
def _reading(path: str) -> Iterator[None]:
    """A data file's read errors as pywren's, naming the file."""
    try:
        yield
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise NotFoundError(f"no file at {path}") from None
    except PermissionError:
        raise AccessDeniedError(f"you may not read {path}") from None


@hookimpl
def pywren_data_get(bucket: str, key: str, byte_range: tuple[int, int] | None) -> bytes:
    path = _data_path(key)
    with _reading(path):
        return _read(path, byte_range)


@hookimpl
def pywren_data_open(bucket: str, key: str, byte_range: tuple[int, int]) -> FileRange:
    path = _data_path(key)
    with _reading(path):
        return FileRange(path, byte_range)


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
    session.pool().submit({**payload, "config": config})


@hookimpl
def pywren_prepare(session: LocalSession) -> None:
    session.pool()  # started now, so the workers are warm by the first call


@hookimpl
def pywren_cancel(session: LocalSession, executor_id: str, job_id: str, call_ids: Sequence[str]) -> None:
    session.pool().cancel(executor_id, job_id, call_ids)


# --- the worker processes ------------------------------------------------------------------

#: Values of ``local.start``: how the pool starts its worker processes.
START_METHODS = ("fork", "spawn")


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


@functools.cache
def fork_available() -> bool:
    """Whether workers can come from a zygote here: Linux with pidfds (5.3+) and Python's fd passing."""
    if sys.platform != "linux" or not all(
        (hasattr(os, "pidfd_open"), hasattr(signal, "pidfd_send_signal"), hasattr(socket, "send_fds"))
    ):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # an older kernel, or a sandbox that forbids the call
        return False
    return True


class _ZygoteGone(Exception):
    """The zygote cannot fork workers any more: it died, hung or was closed."""


class _Zygote:
    """The client's end of the pool's zygote: a fork of the client made when the pool starts, whose
    only work is to fork the pool's worker processes and report how each one ended.

    Why fork the client, and why early: a fresh interpreter needs 150 ms or more to import
    pywren_core and its dependencies and scan the entry points, and the first calls of a new
    executor waited for it. A fork of the client has all that loaded already. It is made in
    ``pywren_prepare``, on the thread that creates the first executor, so normally before the core
    has started a thread of its own, whose locks a fork could copy while held; from then on the
    zygote is single-threaded, so every later worker (the first ones, and replacements after a
    crash, a timeout or a cancel) is a fork of a quiet, single-threaded process, made in a
    millisecond or two. The zygote first makes itself look like a new process (see
    :func:`_become_a_fresh_process`) and loads the plugins afresh (:func:`_load_plugins_afresh`);
    nothing the user's script did runs again in it or in a worker, which runs only
    :func:`worker_main`. ``local.start: spawn`` (and platforms without fork) keep fresh
    interpreters: a script that sets up something a fork does not survive (CUDA) needs them.

    The workers are the zygote's children, not the client's: the zygote sends a pidfd with each
    one, through which the client can kill it without ever hitting a recycled pid, and reports
    each one's exit code, which only a parent can collect.
    """

    #: Longest the pool waits for the zygote to answer a fork request before it gives up on it.
    ANSWER_WAIT = 10.0
    #: Longest the zygote gets to leave once told to (it leaves at once unless it hangs).
    CLOSE_WAIT = 1.0

    def __init__(self, pid: int, sock: socket.socket):
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self.sock = sock
        #: Held while talking to the zygote: the supervisor and a closing thread may both.
        self.lock = threading.Lock()
        #: Exit codes reported and not yet collected, by pid.
        self.exits: dict[int, int] = {}
        #: Answers to fork requests: (pid, pidfd).
        self.forked: deque[tuple[int, int]] = deque()
        self.gone = False
        #: How the zygote ended, once it has.
        self.code: int | None = None

    @classmethod
    def start(cls, scratch: str) -> _Zygote | None:
        """Fork the zygote (None when the fork fails: the pool then spawns interpreters)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = os.fork()
        except OSError as exc:  # out of memory or processes: fresh interpreters may still fit
            ours.close()
            theirs.close()
            _log.warning("local worker pool: cannot fork a zygote (%s); workers start as fresh interpreters", exc)
            return None
        if pid == 0:  # the zygote: never returns into the client's code, and runs no atexit handler
            code = 1
            try:
                ours.close()
                _zygote_main(theirs, scratch)
                code = 0
            except BaseException:
                with contextlib.suppress(BaseException):
                    traceback.print_exc()
            finally:
                os._exit(code)
        theirs.close()
        return cls(pid, ours)

    def fork_workers(self, count: int) -> list[tuple[_ForkedProcess, Connection]]:
        """``count`` new worker processes, forked by the zygote, with the client's ends of their sockets.

        All the requests go out before the first answer is read, so the workers of a new pool
        cost one round trip to the zygote, not one each.
        """
        pairs = [socket.socketpair() for _ in range(count)]
        try:
            with self.lock:
                if self.gone:
                    raise _ZygoteGone("the zygote is closed")
                try:
                    for _, theirs in pairs:
                        socket.send_fds(self.sock, [b"fork"], [theirs.fileno()])
                except OSError:
                    self._lost()
                    raise _ZygoteGone("the zygote stopped listening") from None
                give_up = time.monotonic() + self.ANSWER_WAIT
                while len(self.forked) < count:
                    if self.gone:
                        raise _ZygoteGone("the zygote exited")
                    if not self._read(give_up - time.monotonic()) and time.monotonic() >= give_up:
                        self._lost()
                        raise _ZygoteGone(f"the zygote did not answer within {self.ANSWER_WAIT:.0f} s")
                answers = [self.forked.popleft() for _ in range(count)]
        except BaseException:
            for ours, _ in pairs:
                ours.close()
            raise
        finally:
            for _, theirs in pairs:
                theirs.close()
        return [
            (_ForkedProcess(self, pid, pidfd), Connection(ours.detach()))
            for (ours, _), (pid, pidfd) in zip(pairs, answers, strict=True)
        ]

    def drain(self) -> None:
        """Take in whatever the zygote has reported (the supervisor calls this when it has)."""
        with self.lock:
            while not self.gone and self._read(0):
                pass

    def _read(self, timeout: float) -> bool:
        """Take in one message, waiting up to ``timeout`` seconds for it; whether one came (the lock is held)."""
        if self.gone or not select.select([self.sock], [], [], max(0.0, timeout))[0]:
            return False
        try:
            message, fds, _, _ = socket.recv_fds(self.sock, 256, 1)
        except OSError:
            message, fds = b"", []
        for fd in fds:
            os.set_inheritable(fd, False)
        word, *numbers = message.split() or [b""]
        if word == b"forked" and fds:
            self.forked.append((int(numbers[0]), fds[0]))
        elif word == b"exit":
            self.exits[int(numbers[0])] = int(numbers[1])
        else:  # the end of the socket: the zygote is gone
            for fd in fds:
                os.close(fd)
            self._lost()
        return True

    def _lost(self) -> None:
        """The zygote died or hangs: end it; the pool spawns fresh interpreters from now on."""
        if self.gone:
            return
        self._end()
        _log.warning(
            "local worker pool: its zygote process %d %s; new workers start as fresh interpreters",
            self.pid,
            _how_it_ended(self.code),
        )

    def close(self) -> None:
        """Tell the zygote to leave (its workers have left already), and wait for it."""
        with self.lock:
            if not self.gone:
                with contextlib.suppress(OSError):
                    self.sock.send(b"stop")
                self._end()

    def _end(self) -> None:
        self.gone = True
        self.sock.close()
        while self.forked:  # answers nobody will collect now (their workers leave: their sockets are closed)
            os.close(self.forked.popleft()[1])
        if not select.select([self.pidfd], [], [], self.CLOSE_WAIT)[0]:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        try:
            self.code = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        except ChildProcessError:  # reaped by someone else (a SIGCHLD handler set to SIG_IGN)
            self.code = None
        os.close(self.pidfd)


class _ForkedProcess:
    """A worker forked by the zygote, standing in for the ``subprocess.Popen`` of a spawned one.

    The client cannot wait for a process that is not its child: the zygote reports its exit code.
    """

    def __init__(self, zygote: _Zygote, pid: int, pidfd: int):
        self.zygote = zygote
        self.pid = pid
        self.pidfd = pidfd
        self.returncode: int | None = None
        self.ended = False

    def kill(self) -> None:
        with self.zygote.lock:  # the pidfd is closed under it once the process has ended
            if not self.ended:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code once the process has ended (None if it went with a dead zygote)."""
        give_up = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if give_up is None else give_up - time.monotonic()
            with self.zygote.lock:
                if self.ended:
                    return self.returncode
                if self.pid in self.zygote.exits:
                    self._ended(self.zygote.exits.pop(self.pid))
                    continue
                if self.zygote.gone:  # no one will report the code: wait for the process to end
                    if select.select([self.pidfd], [], [], None if left is None else max(0.0, left))[0]:
                        self._ended(None)
                        continue
                elif self.zygote._read(1.0 if left is None else left):
                    continue
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(f"worker process {self.pid}", timeout or 0.0)

    def _ended(self, code: int | None) -> None:
        self.returncode, self.ended = code, True
        os.close(self.pidfd)


def _zygote_main(sock: socket.socket, scratch: str) -> None:
    """The zygote: fork a worker for each request, report each worker's end, until told to stop."""
    _become_a_fresh_process(sock.fileno(), scratch)
    _name_this_process("pywren-zygote")
    with contextlib.suppress(Exception):  # a broken plugin: a worker's first payload says so
        _load_plugins_afresh()
    children: dict[int, int] = {}  # pidfd -> pid
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            try:
                if fd != sock.fileno():  # a worker ended
                    pid = children.pop(fd)
                    poller.unregister(fd)
                    os.close(fd)
                    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
                    sock.send(b"exit %d %d" % (pid, code))
                    continue
                message, fds, _, _ = socket.recv_fds(sock, 64, 1)
            except OSError:  # the client is gone
                return
            if message != b"fork" or not fds:  # "stop", or the client is gone: its workers need us no more
                return
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    sock.close()
                    for pidfd in children:
                        os.close(pidfd)
                    code = _forked_worker(fds[0])
                finally:
                    os._exit(code)
            os.close(fds[0])
            pidfd = os.pidfd_open(pid)
            children[pidfd] = pid
            poller.register(pidfd, select.POLLIN)
            try:
                socket.send_fds(sock, [b"forked %d" % pid], [pidfd])
            except OSError:
                return


def _forked_worker(fd: int) -> int:
    """A worker forked by the zygote: run :func:`worker_main`; its exit code."""
    _name_this_process("pywren-worker")
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:  # Python reseeds ``random`` in every fork; numpy's global generator, not
        with contextlib.suppress(Exception):
            numpy_random.seed()
    code = 0
    try:
        worker_main(fd)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()  # those the worker registered itself, as a fresh interpreter would
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    return code


#: What the zygote took over from the client and must never finalize (a file object's finalizer
#: would flush the client's unwritten output a second time, or close a descriptor reused since).
_inherited: list[Any] = []


def _become_a_fresh_process(keep_fd: int, scratch: str) -> None:
    """Make the zygote (and so its workers) look like a new interpreter started in ``scratch``.

    Signal handlers, the signal mask and atexit handlers are the client's: reset. Every inherited
    descriptor but stdout, stderr and the zygote's socket is released, pointed at /dev/null rather
    than closed, so that an object of the client still holding the number can never reach a
    descriptor opened later (stdin too: it belongs to the client's terminal). sys.stdin, stdout and
    stderr are new objects, so output the client had not flushed yet is not written again. The
    worker runtime forgets the sessions and calls the client may have run in process.
    """
    for signum in signal.valid_signals():
        with contextlib.suppress(OSError, ValueError, TypeError):
            if callable(signal.getsignal(signum)):
                signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the client's terminal is the client's
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the zygote waits for its workers itself
    signal.set_wakeup_fd(-1)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    gc.freeze()  # the client's objects are never collected here, only this process's new ones
    atexit._clear()
    atexit.register(worker.close_sessions)
    executors = sys.modules.get("pywren_core.executors")
    if executors is not None:  # the client's executors are not ours: forks of this process forget them
        executors._engines.clear()
    devnull = os.open(os.devnull, os.O_RDWR)
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in (1, 2, keep_fd, devnull):
            with contextlib.suppress(OSError):  # the directory's own descriptor, closed by now
                os.fstat(fd)
                os.dup2(devnull, fd, inheritable=fd == 0)
    os.close(devnull)
    _inherited.extend([sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__])
    sys.stdin = sys.__stdin__ = _standard_stream(0, "r")
    sys.stdout = sys.__stdout__ = _standard_stream(1, "w")
    sys.stderr = sys.__stderr__ = _standard_stream(2, "w")
    os.chdir(scratch)
    _inherited.append(worker._sessions)
    worker._sessions = {}
    worker._functions.clear()
    worker._state_lock = threading.Lock()  # another thread of the client may have held it
    worker._calls_seen = 0  # a worker's first call is its cold one
    worker._payload_key.cache_clear()


def _load_plugins_afresh() -> None:
    """Load the plugins as a new interpreter would, so that a wrapper plugin's module state (its
    counters, say) starts empty and the exit hooks it registers on import run when a worker leaves;
    the client's copies of those modules are the client's. Only the wrapper plugins' modules are
    imported again (a worker of this backend loads no other plugin), and only if there are any."""
    loaded = plugins.load_backend("local")  # normally the client's, already loaded
    packages = set()
    for _, wrapper in loaded.wrappers:
        module = wrapper.__name__ if isinstance(wrapper, types.ModuleType) else getattr(wrapper, "__module__", "")
        packages.add(module.partition(".")[0])
    packages.discard("pywren_core")
    packages.discard("")
    if not packages:
        return
    for name in list(sys.modules):
        if name.partition(".")[0] in packages:
            _inherited.append(sys.modules.pop(name))
    plugins.reset(installed=False)  # the same install: the entry points found stand
    plugins.load_backend("local")


def _standard_stream(fd: int, mode: str) -> Any:
    """A new ``sys.std*`` object on ``fd``, buffered as a fresh interpreter would (None if closed)."""
    try:
        os.fstat(fd)
    except OSError:
        return None
    line_buffered = fd == 2 or os.isatty(fd)
    errors = "backslashreplace" if fd == 2 else None
    return open(fd, mode, buffering=1 if line_buffered else -1, errors=errors, closefd=False)  # noqa: SIM115


def _name_this_process(name: str) -> None:
    """Show ``name`` in ps and top, instead of a copy of the client's."""
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as f:
        f.write(name)


@attrs.define(eq=False)
class _Worker:
    process: subprocess.Popen | _ForkedProcess
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

    With ``start="fork"`` (the default, on Linux) the workers are forks of a zygote that the pool
    forks from the client as it starts (see :class:`_Zygote`): ready within milliseconds. With
    ``start="spawn"``, or where fork is not available, they are fresh interpreters started in a
    scratch directory. Either way they never re-run the user's script; the user's own modules reach
    them inside the pickles. The supervisor starts the workers, so that the client goes on (to
    pickle and submit its first calls) meanwhile. Each worker is sent a few payloads ahead (about
    5 ms of work, judged from recent calls), so it never idles waiting for the supervisor.
    """

    _shared: dict[tuple[int, str, str | None], WorkerPool] = {}
    _shared_lock = threading.Lock()
    QUEUED_SECONDS = 0.005
    MAX_AHEAD = 64
    #: Seconds the workers get to leave on their own when the pool closes (at exit), then killed.
    CLOSE_GRACE = 1.0
    #: Longest a cancel waits for the supervisor to have dropped and killed what it covers.
    CANCEL_WAIT = 2.0

    @classmethod
    def shared(cls, size: int, start: str = "fork", python: str | None = None) -> WorkerPool:
        """The process's pool of ``size`` workers started the ``start`` way (made if need be)."""
        key = (size, start, python)
        with cls._shared_lock:
            pool = cls._shared.get(key)
            if pool is None or pool.closed or pool.broken:
                pool = cls._shared[key] = cls(size, start, python)
            return pool

    def __init__(self, size: int, start: str = "fork", python: str | None = None):
        #: A runtime's interpreter (its venv carries pywren_core), or None: this one.
        self.python = python
        self.pending: deque[dict[str, Any]] = deque()
        self._pending_lock = threading.Lock()
        self._cancels: deque[tuple[tuple[str, str, frozenset[str]], threading.Event]] = deque()
        self.closed = False
        self.scratch = tempfile.mkdtemp(prefix="pywren-local-")
        self._seconds_per_payload = 0.01
        self._failed_starts = 0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        #: Why no worker process could be started, if none could: calls then fail at once.
        self.broken: str | None = None
        forking = start == "fork" and python is None and fork_available()
        self.zygote = _Zygote.start(self.scratch) if forking else None
        self._workers: list[_Worker] = []
        self._spawned = threading.Event()
        self._thread = threading.Thread(target=self._supervise, args=(size,), name="pywren-local-pool", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    @property
    def workers(self) -> list[_Worker]:
        """The worker processes, once the supervisor has started them."""
        self._spawned.wait()
        return self._workers

    def _spawn(self, count: int) -> list[_Worker]:
        """``count`` new workers: forks of the zygote, or fresh interpreters without one."""
        if self.zygote is not None:
            try:
                return [_Worker(process, conn) for process, conn in self.zygote.fork_workers(count)]
            except _ZygoteGone:
                self.zygote = None
            except Exception:  # out of descriptors, say: fresh interpreters may still work
                _log.exception("local worker pool: the zygote failed to fork a worker; spawning one instead")
        return [self._spawn_interpreter() for _ in range(count)]

    def _spawn_interpreter(self) -> _Worker:
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        if self.python:  # a runtime's venv: its own packages and pywren_core, nothing of the client's
            env.pop("PYTHONPATH", None)
        else:  # the worker must import this very pywren_core, whether installed or run from a checkout
            package_root = os.path.dirname(os.path.dirname(os.path.abspath(pywren_core.__file__)))
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        code = f"from pywren_core.backends.local import worker_main; worker_main({theirs.fileno()})"
        process = subprocess.Popen(
            [self.python or sys.executable, "-c", code],
            pass_fds=(theirs.fileno(),),
            cwd=self.scratch,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        theirs.close()
        return _Worker(process, Connection(ours.detach()))

    def submit(self, payload: dict[str, Any]) -> None:
        with self._pending_lock:
            broken = self.broken
            if broken is None:
                self.pending.append(payload)
        if broken is not None:
            _report_unfinished(payload, "error", broken)
            return
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

    def _supervise(self, size: int) -> None:
        try:
            self._workers = self._spawn(size)
        except Exception as exc:
            _log.exception("local worker pool: cannot start its worker processes")
            with self._pending_lock:
                self.broken = f"the local worker pool cannot start worker processes: {type(exc).__name__}: {exc}"
                pending, self.pending = self.pending, deque()
            for payload in pending:
                _report_unfinished(payload, "error", self.broken)
            return
        finally:
            self._spawned.set()
        while not self.closed:
            try:
                self._supervise_once()
            except Exception:  # never let the pool stop: a call it could not report is found lost later
                if self.closed:
                    return
                _log.exception("local worker pool: supervising failed; carrying on")
                time.sleep(0.1)

    def _supervise_once(self) -> None:
        """Hand out work, then wait for an acknowledgement, a start-up, a death or a deadline."""
        self._apply_cancels()
        self._dispatch()
        busy = [w for w in self.workers if w.inflight]
        deadlines = [d for d in (w.head_deadline for w in busy) if d is not None]
        timeout = max(0.0, min(deadlines) - time.time()) if deadlines else None
        starting = [w for w in self.workers if not w.ready]
        zygote = [self.zygote.sock] if self.zygote is not None and not self.zygote.gone else []
        ready = set(wait([self._wake_r, *zygote, *(w.conn for w in busy + starting)], timeout))
        if self._wake_r in ready:
            os.read(self._wake_r, 1 << 16)
        if zygote and zygote[0] in ready and self.zygote is not None:
            self.zygote.drain()  # exit reports, or its end (then new workers are spawned)
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
            while w.inflight and _readable(w.conn):
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
        how = _how_it_ended(code)
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
        try:
            if running is not None and kind is not None:
                _report_unfinished(running, kind, message)
        finally:  # a dead worker must not stay in the list, whatever happened
            if self.closed:  # closing: nothing to replace it for (close() would not wait for the new one)
                self.workers.remove(w)
            else:
                self.workers[self.workers.index(w)] = self._spawn(1)[0]

    def close(self) -> None:
        if self.closed:
            return
        self._spawned.wait()  # a zygote closed while forking workers would leave them to interpreters
        self.closed = True
        self._wake()
        workers = list(self.workers)  # the supervisor may still drop one
        for w in workers:
            try:
                w.conn.send(None)
            except OSError:
                pass
        give_up = time.monotonic() + self.CLOSE_GRACE  # for all of them together, not each
        for w in workers:
            try:
                w.process.wait(max(0.0, give_up - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.process.kill()
                w.process.wait()
        if self.zygote is not None:
            self.zygote.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


def _readable(conn: Connection) -> bool:
    """Whether ``conn`` has something to read (or has closed), without waiting: what
    ``conn.poll()`` answers, minus the selector it builds each time (a few µs per call acknowledged)."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def _cancelled_by(request: tuple[str, str, frozenset[str]], payload: dict[str, Any]) -> bool:
    """Whether a cancel request covers every call of ``payload``."""
    executor_id, job_id, call_ids = request
    return (
        payload["executor_id"] == executor_id
        and payload["job_id"] == job_id
        and all(c["call_id"] in call_ids for c in payload["calls"])
    )


def _how_it_ended(code: int | None) -> str:
    """How a process ended, from its exit code (negative: the signal that killed it)."""
    if code is None:
        return "ended (its exit code went with the pool's zygote process)"
    if code < 0:
        try:
            name = f" ({signal.Signals(-code).name})"
        except ValueError:
            name = ""
        return f"was killed by signal {-code}{name}"
    return f"exited with code {code}"


def _forget_pools_after_fork() -> None:
    """In a forked child the parent's pools have no supervisor thread, and their workers are the
    parent's: the child starts pools of its own, and never closes (or writes to) the parent's.
    It lets go of its copies of their sockets, so that a zygote or a worker of the parent still
    sees the parent leave when it does."""
    for pool in WorkerPool._shared.values():
        pool.closed = True
        if pool.zygote is not None and not pool.zygote.gone:
            pool.zygote.sock.close()
        for w in pool._workers:  # not .workers: no supervisor here will ever finish starting them
            w.conn.close()
    WorkerPool._shared = {}
    WorkerPool._shared_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pools_after_fork)


def _report_unfinished(payload: dict[str, Any], kind: str, message: str) -> None:
    """Write a failure status for each call of ``payload`` that has none, so the client learns of it."""
    session = worker.session_for({**payload, "faults": None})  # the platform reports, not a (faulty) worker
    for call in payload["calls"]:
        worker.report_failure(session, payload, call, kind, message)
