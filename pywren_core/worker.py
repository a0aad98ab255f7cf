"""The worker runtime: what runs for every invocation, on every backend.

Each platform's handler (a Lambda handler, a Cloud Function, an Azure function, the local worker
processes) is a thin wrapper that calls :func:`handle` with the invoke payload. The runtime loads
the signed function and arguments from storage, runs each call in a working directory of its own,
and writes the result and then the status record (the completion marker) back to storage.
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import functools
import hmac
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import attrs

from pywren_core import __version__, plugins, serialize
from pywren_core.backend import Session
from pywren_core.data import Storage
from pywren_core.errors import (
    CallFailedError,
    CallTimeoutError,
    NotFoundError,
    PywrenError,
    SerializationError,
    SignatureError,
    VersionMismatchError,
    WorkerDiedError,
)
from pywren_core.faults import FaultConfig, FaultInjector
from pywren_core.protocol import (
    PROTOCOL_VERSION,
    JobKeys,
    args_context,
    b64,
    dump_status,
    exception_context,
    func_context,
    group_of,
    job_secret,
    load_status,
    payload_key_from_env,
    python_version,
    result_context,
    sign,
    unb64,
    verify,
)

OUTPUT_TAIL_CHARS = 8192
_FUNCTION_CACHE_SIZE = 16


@attrs.frozen
class CallContext:
    """The call running in this thread.

    ``workdir`` is its own scratch directory. ``storage`` reads and writes objects at URLs of the
    backend's schemes (``s3://bucket/key``...), as ``pw.storage()`` does on the client; ``session``
    is the backend's raw session, whose keys live in the job bucket (for tools and tests).
    """

    executor_id: str
    job_id: str
    call_id: str
    attempt: int
    workdir: str
    session: Session

    @property
    def storage(self) -> Storage:
        return Storage(self.session)


_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar("pywren_call", default=None)
_output: contextvars.ContextVar[dict[str, _Tail] | None] = contextvars.ContextVar("pywren_output", default=None)
_state_lock = threading.Lock()
_sessions: dict[tuple[str, str], Session] = {}
#: The functions of the last few jobs this process ran, by job and function key, with the secret
#: that verified each (see :func:`_load_function`).
_functions: OrderedDict[tuple[str, str, str], tuple[bytes, Any]] = OrderedDict()
_calls_seen = 0


def current_call() -> CallContext | None:
    """The call being run by this thread, for code that wants its working directory or ids."""
    return _current.get()


@functools.lru_cache(maxsize=8)
def _worker_id(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}"


def worker_id() -> str:
    """Host and process of this worker (keyed by pid, so a forked child gets its own)."""
    return _worker_id(os.getpid())


class _Tail:
    """Keeps the last OUTPUT_TAIL_CHARS characters written to it."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0

    def write(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)
        if self.size > 2 * OUTPUT_TAIL_CHARS:
            joined = "".join(self.parts)[-OUTPUT_TAIL_CHARS:]
            self.parts, self.size = [joined], len(joined)

    def text(self) -> str:
        return "".join(self.parts)[-OUTPUT_TAIL_CHARS:]


class _Tee:
    """Stands in for sys.stdout/stderr: passes writes through and copies them to the current call's tail.

    A context variable, not a redirect, so concurrent calls in one process keep their output apart.
    """

    def __init__(self, stream: Any, name: str):
        self._stream = stream
        self._name = name

    def write(self, text: str) -> int:
        tails = _output.get()
        if tails is not None:
            tails[self._name].write(text)
        return self._stream.write(text) if self._stream is not None else len(text)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._stream, attr)


def _install_tees() -> None:
    if not isinstance(sys.stdout, _Tee):
        sys.stdout = _Tee(sys.stdout, "stdout")
    if not isinstance(sys.stderr, _Tee):
        sys.stderr = _Tee(sys.stderr, "stderr")


def session_for(payload: dict[str, Any]) -> Session:
    """The worker-side session for the payload's backend, opened once per process and config."""
    faults = payload.get("faults")
    cache_key = (payload["backend"], json.dumps([payload["config"], faults], sort_keys=True))
    with _state_lock:
        session = _sessions.get(cache_key)
        if session is None:
            wrappers = [FaultInjector(FaultConfig(**faults), "worker")] if faults else []
            session = plugins.load_backend(payload["backend"]).open(payload["config"], role="worker", wrappers=wrappers)
            _sessions[cache_key] = session
    return session


#: Seconds a process's worker sessions get to close as it exits, before it exits anyway.
CLOSE_WAIT = 5.0


def close_sessions() -> None:
    """Close this process's worker sessions (each plugin's ``pywren_close``, role ``"worker"``):
    at interpreter exit, or when a harness worker process loses its handler while idle. A plugin
    whose close hangs delays the exit by ``CLOSE_WAIT`` at most."""
    with _state_lock:
        sessions = list(_sessions.values())
        _sessions.clear()

    def close_all() -> None:
        for session in sessions:
            try:
                session.close()
            except Exception as exc:
                log(f"closing the {session.name} worker session failed: {exc}")

    if sessions:
        closer = threading.Thread(target=close_all, name="pywren-close-sessions", daemon=True)
        closer.start()
        closer.join(CLOSE_WAIT)


atexit.register(close_sessions)


def handle(
    payload: dict[str, Any], *, deadline: float | None = None, isolate_cwd: bool = True, delivery: int | None = None
) -> list[dict[str, Any]]:
    """Run every call in ``payload`` and write their statuses; return the statuses.

    ``deadline`` (a ``time.time()`` value) is when the platform will stop this invocation: a call
    still running then is reported as timed out first. ``isolate_cwd`` changes the process's
    working directory into each call's own; a handler that runs calls in threads passes False, and
    calls find their directory with :func:`current_call`. ``delivery`` is the platform's count of
    deliveries of this invocation (a queue's dequeue count), reported in the calls' stats.

    A payload whose secret cannot be read (not sealed with this function's payload key) runs
    nothing and writes nothing; nor does one whose job is gone (cleaned up before a late
    redelivery), except that a warm process which ran the job's function before does not read it
    again for a payload that came straight from the client (not sealed, so never resting in a
    queue): the call runs, as a duplicate run may, and the fence in :func:`write_status` withdraws
    its status.
    """
    return run_payload(payload, session_for(payload), deadline=deadline, isolate_cwd=isolate_cwd, delivery=delivery)


def run_payload(
    payload: dict[str, Any],
    session: Session,
    *,
    deadline: float | None = None,
    isolate_cwd: bool = True,
    delivery: int | None = None,
) -> list[dict[str, Any]]:
    _install_tees()
    keys = JobKeys.from_payload(payload)
    try:
        secret = job_secret(payload, _payload_key())
    except (SignatureError, ValueError) as exc:
        log(f"refusing job {keys.prefix}: {exc}")
        return []
    refusal = _refusal(payload)
    if payload.get("fanout") is not None:  # an invoker: it invokes its batch, and runs no call itself
        if refusal is not None:
            log(f"refusing fan-out invoker of job {keys.prefix}: {refusal}")
            return []
        from pywren_core import fanout

        fanout.serve(session, payload, keys.prefix, secret, delivery)
        return []
    func = None
    if refusal is None:
        try:
            func = _load_function(session, payload, keys, secret)
        except NotFoundError:
            log(f"job {keys.prefix} is gone (cleaned up, or a late redelivery): running nothing")
            return []
        except BaseException as exc:  # a tampered or unloadable function: each call reports it
            refusal = exc
    statuses = []
    for call in _not_yet_reported(payload, session, keys, secret):
        if isinstance(refusal, (SignatureError, VersionMismatchError)):
            status = failure_status(payload, call, "refused", refusal)
            write_status(session, payload, secret, status)
        else:
            status = _run_call(payload, call, session, keys, secret, func, refusal, deadline, isolate_cwd, delivery)
        statuses.append(status)
    return statuses


def _not_yet_reported(payload: dict[str, Any], session: Session, keys: JobKeys, secret: bytes) -> list[dict[str, Any]]:
    """The calls of ``payload`` to run. A sealed payload rests where others can copy it (a queue), so
    one already answered (a replay, or the platform delivering it again after it was done) is not
    run again: one listing per status group it touches, for such payloads only. A status counts
    only if this job signed it: a forged one must not stop a call from running."""
    if "sealed_secret" not in payload:
        return payload["calls"]
    groups = {keys.status_group(group_of(c["call_id"])) for c in payload["calls"]}
    listed = {key for group in groups for key in session.list(group)}
    fresh = [c for c in payload["calls"] if not _answered(session, keys, secret, c, listed)]
    if len(fresh) < len(payload["calls"]):
        log(f"job {keys.prefix}: {len(payload['calls']) - len(fresh)} calls of this payload were answered already")
    return fresh


def _answered(session: Session, keys: JobKeys, secret: bytes, call: dict[str, Any], listed: set[str]) -> bool:
    """Whether ``call`` has a status this job signed (``listed``: the status keys seen). A forged
    status is no answer: it must neither stop the call from running nor hide its failure."""
    key = keys.status(call["call_id"], call["attempt"])
    if key not in listed:
        return False
    try:
        load_status(secret, keys, call["call_id"], call["attempt"], session.get(key))
    except (SignatureError, NotFoundError, ValueError):
        return False
    return True


def _job_present(session: Session, payload: dict[str, Any]) -> bool:
    """Whether the job's function is still stored: a job cleaned up must not get new objects."""
    return bool(session.list(payload["func_key"]))


@functools.lru_cache(maxsize=1)
def _payload_key() -> bytes | None:
    return payload_key_from_env()


def log(message: str) -> None:
    """A line for the platform's log; never the payload, which may hold the job's secret."""
    print(f"pywren: {message}", file=sys.__stderr__, flush=True)


def _refusal(payload: dict[str, Any]) -> PywrenError | None:
    if payload.get("protocol") != PROTOCOL_VERSION:
        return VersionMismatchError(
            f"job protocol {payload.get('protocol')} from the client, {PROTOCOL_VERSION} on the worker"
        )
    client = (payload.get("python"), payload.get("core_version"))
    here = (python_version(), __version__)
    if client != here:
        return VersionMismatchError(
            f"the client runs Python {client[0]} with pywren-core {client[1]}, but this worker runs "
            f"Python {here[0]} with pywren-core {here[1]}: use the same Python minor version and "
            "pywren-core release on both sides (redeploy the function with `pywren deploy`)"
        )
    return None


def failure_status(payload: dict[str, Any], call: dict[str, Any], kind: str, error: BaseException) -> dict[str, Any]:
    """The status of a call that ended without running to completion (refused, timed out, died)."""
    return {
        "protocol": PROTOCOL_VERSION,
        "call_id": call["call_id"],
        "attempt": call["attempt"],
        "kind": kind,
        "error": {"type": type(error).__name__, "message": str(error), "traceback": ""},
        "stats": {"worker_id": worker_id(), "end": time.time()},
    }


def write_status(
    session: Session, payload: dict[str, Any], secret: bytes, status: dict[str, Any], result: bytes | None = None
) -> bool:
    """Write a call's status record, signed for its job, call and attempt (after its large
    ``result``, if any). Fenced against cleanup (see :mod:`pywren_core.protocol`): when the job's
    function is gone once written, the job was deleted meanwhile, and what was written is deleted
    again. Returns whether the status stands."""
    keys = JobKeys.from_payload(payload)
    writes = [] if result is None else [(status["result_key"], result)]
    writes.append((keys.status(status["call_id"], status["attempt"]), dump_status(secret, keys, status)))
    if put_fenced(session, payload, writes):
        return True
    log(f"job {keys.prefix} was cleaned up while call {status['call_id']} ran: its status is withdrawn")
    return False


def put_fenced(session: Session, payload: dict[str, Any], writes: Sequence[tuple[str, bytes]]) -> bool:
    """Put each ``(key, data)`` in order, fenced against cleanup (see :mod:`pywren_core.protocol`):
    when the job's function is gone once they are written, the job was deleted meanwhile, and they
    are deleted again. Returns whether they stand."""
    for key, data in writes:
        session.put(key, data)
    if _job_present(session, payload):
        return True
    session.delete([key for key, _ in writes])
    return False


def report_failure(session: Session, payload: dict[str, Any], call: dict[str, Any], kind: str, message: str) -> bool:
    """For whoever runs the worker (a platform handler, the local pool): report that ``call`` of
    ``payload`` ended without its own status (``kind`` ``died``, ``timeout`` or ``error``), unless it
    wrote one. Writes nothing when the payload's secret cannot be read or the job is gone.
    Returns whether it wrote the failure."""
    keys = JobKeys.from_payload(payload)
    try:
        secret = job_secret(payload, _payload_key())
    except (SignatureError, ValueError):
        return False
    status_key = keys.status(call["call_id"], call["attempt"])
    if _answered(session, keys, secret, call, set(session.list(status_key))):
        return False
    error_type = {"timeout": CallTimeoutError, "died": WorkerDiedError}.get(kind, CallFailedError)
    return write_status(session, payload, secret, failure_status(payload, call, kind, error_type(message)))


def _load_function(session: Session, payload: dict[str, Any], keys: JobKeys, secret: bytes) -> Any:
    """The job's function, verified against this payload's secret.

    Read once per job in a warm process: the cache holds the secret that verified the signed
    bytes, and a payload with any other secret (only the job's client has the right one) reads and
    verifies them again, so a cached function never runs for a payload its job did not sign. A
    job cleaned up before its first payload here is noticed by the read (NotFoundError); a sealed
    payload (one that rests in a queue, and may come back after its job is gone) checks on every
    payload that the job is still there.
    """
    cache_key = (keys.executor_id, keys.job_id, payload["func_key"])
    with _state_lock:
        cached = _functions.get(cache_key)
        if cached is not None:
            _functions.move_to_end(cache_key)
    if cached is not None and hmac.compare_digest(cached[0], secret):
        if "sealed_secret" in payload and not _job_present(session, payload):
            raise NotFoundError(f"no object at key {payload['func_key']!r}")
        return cached[1]
    func = serialize.loads(verify(secret, func_context(keys), session.get(payload["func_key"])))
    with _state_lock:
        _functions[cache_key] = (secret, func)
        while len(_functions) > _FUNCTION_CACHE_SIZE:
            _functions.popitem(last=False)
    return func


def _load_args(session: Session, call: dict[str, Any], keys: JobKeys, secret: bytes) -> tuple[tuple, dict]:
    spec = call["args"]
    blob = unb64(spec["inline"]) if "inline" in spec else session.get(spec["key"], tuple(spec["range"]))
    args, kwargs = serialize.loads(verify(secret, args_context(keys, call["call_id"]), blob))
    return args, kwargs


class _Workdirs:
    """Scratch directories for calls, reused once a call leaves its directory empty.

    Creating and removing a directory per call costs more than a short call itself on some file
    systems (about 0.7 ms on an ext4 virtual disk); an empty directory is as good as a new one.
    """

    def __init__(self) -> None:
        self._free: list[str] = []
        self._lock = threading.Lock()
        atexit.register(self.clear)

    def acquire(self) -> str:
        with self._lock:
            if self._free:
                return self._free.pop()
        return tempfile.mkdtemp(prefix="pywren-call-")

    def release(self, path: str) -> None:
        try:
            reusable = not os.listdir(path)
        except OSError:
            return
        if reusable:
            with self._lock:
                if len(self._free) < 64:
                    self._free.append(path)
                    return
        shutil.rmtree(path, ignore_errors=True)

    def clear(self) -> None:
        with self._lock:
            free, self._free = self._free, []
        for path in free:
            shutil.rmtree(path, ignore_errors=True)


_workdirs = _Workdirs()


@contextlib.contextmanager
def _call_scope(keys: JobKeys, call: dict[str, Any], session: Session, isolate_cwd: bool) -> Iterator[dict[str, _Tail]]:
    workdir = _workdirs.acquire()
    tails = {"stdout": _Tail(), "stderr": _Tail()}
    context = CallContext(keys.executor_id, keys.job_id, call["call_id"], call["attempt"], workdir, session)
    tokens = (_current.set(context), _output.set(tails))
    previous_cwd = os.getcwd() if isolate_cwd else None
    try:
        if isolate_cwd:
            os.chdir(workdir)
        yield tails
    finally:
        if previous_cwd is not None:
            os.chdir(previous_cwd)
        _output.reset(tokens[1])
        _current.reset(tokens[0])
        _workdirs.release(workdir)


def _exception_record(exc: BaseException, keys: JobKeys, call_id: str, secret: bytes) -> dict[str, Any]:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    record: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc), "traceback": tb}
    try:
        pickled = serialize.dumps(exc.with_traceback(None))
        record["pickle"] = b64(sign(secret, exception_context(keys, call_id), pickled))
    except Exception:  # an exception that cannot travel becomes a RemoteError on the client
        pass
    return record


class _FirstWriter:
    """Lets exactly one of the call and its timeout watchdog write the call's status."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._written = False

    def claim(self) -> bool:
        with self._lock:
            first, self._written = not self._written, True
            return first


def _run_call(
    payload: dict[str, Any],
    call: dict[str, Any],
    session: Session,
    keys: JobKeys,
    secret: bytes,
    func: Any,
    load_error: BaseException | None,
    deadline: float | None,
    isolate_cwd: bool,
    delivery: int | None,
) -> dict[str, Any]:
    global _calls_seen
    with _state_lock:
        cold = _calls_seen == 0
        _calls_seen += 1
    call_id, attempt = call["call_id"], call["attempt"]
    stats: dict[str, Any] = {"worker_id": worker_id(), "cold": cold, "start": time.time()}
    if delivery is not None:
        stats["delivery"] = delivery
    writer = _FirstWriter()
    watchdog = None
    if deadline is not None:
        timeout = CallTimeoutError(
            f"call {call_id} was still running at the end of its time: its timeout of {payload['timeout']} s "
            "or the platform's time limit, whichever came first"
        )
        watchdog = threading.Timer(
            max(0.0, deadline - time.time()),
            lambda: (
                writer.claim()
                and write_status(session, payload, secret, failure_status(payload, call, "timeout", timeout))
            ),
        )
        watchdog.daemon = True
        watchdog.start()
    status: dict[str, Any] = {"protocol": PROTOCOL_VERSION, "call_id": call_id, "attempt": attempt}
    tails = None
    large_result = None
    try:
        if load_error is not None:
            raise load_error
        args, kwargs = _load_args(session, call, keys, secret)
        stats["setup_done"] = time.time()
        with _call_scope(keys, call, session, isolate_cwd) as tails:
            value = func(*args, **kwargs)
        stats["func_done"] = time.time()
        try:
            pickled = serialize.dumps(value)
        except Exception as exc:
            raise SerializationError(f"the result of call {call_id} cannot be pickled: {exc}") from exc
        result = sign(secret, result_context(keys, call_id), pickled)
        if len(result) <= payload["result_inline_max"]:
            status["result"] = b64(result)
        else:
            status["result_key"], large_result = keys.result(call_id, attempt), result
        status["kind"] = "success"
    except SignatureError as exc:
        status.update(kind="refused", error={"type": type(exc).__name__, "message": str(exc), "traceback": ""})
    except BaseException as exc:  # the user's exception, whatever it is, goes back to the client
        status.update(kind="exception", error=_exception_record(exc, keys, call_id, secret))
    finally:
        if watchdog is not None:
            watchdog.cancel()
    stats["end"] = time.time()
    status["stats"] = stats
    if tails is not None:
        status["stdout"], status["stderr"] = tails["stdout"].text(), tails["stderr"].text()
    if writer.claim():
        write_status(session, payload, secret, status, large_result)
    return status
