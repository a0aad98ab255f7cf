"""The job protocol: ids, where each object lives in storage, signing, and the invoke payload.

Layout under one job (``pywren.jobs/<executor>/<job>/``)::

    func.pickle                       the function, serialized once per job
    args.pickle                       every call's arguments back to back (when not inline)
    status/<group>/<call>.<attempt>.json   written last by the worker: the completion record
    result/<call>.<attempt>.pickle    a result too large to travel inside its status

Statuses are grouped by thousands of calls, so the client lists one prefix per 1,000 calls and
stops listing a group once all of its calls are done.

Deleting a job is fenced against workers still running one of its calls (a duplicate run, a
timed-out attempt): the cleaner deletes the job's function first, then lists and deletes the rest;
a worker writes first, then checks that the function is still there, and deletes what it wrote if
not. Whichever comes first, nothing a worker writes outlives its job.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import secrets
import sys
import time
from typing import Any

import attrs

from pywren_core.errors import SignatureError

PROTOCOL_VERSION = 1
JOBS_PREFIX = "pywren.jobs"
GROUP_SIZE = 1000
_MAGIC = b"PWS1"
_DIGEST = hashlib.sha256().digest_size
#: The environment variable that holds a deployed function's payload key (see :func:`seal`).
PAYLOAD_KEY_ENV = "PYWREN_PAYLOAD_KEY"
_NONCE = 16
#: Every key of an invoke payload (``docs/writing-a-backend.md`` says what each holds). A handler
#: passes the payload to ``pywren_core.harness.serve`` as it came, whatever its transport.
PAYLOAD_KEYS = frozenset(
    {
        "protocol", "backend", "config", "executor_id", "job_id", "func_key", "secret", "sealed_secret",
        "timeout", "python", "core_version", "result_inline_max", "faults", "runtime", "calls", "fanout", "notice",
    }
)  # fmt: skip
#: The keys of each entry of ``payload["calls"]``.
PAYLOAD_CALL_KEYS = frozenset({"call_id", "attempt", "args"})


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def new_id(nbytes: int = 8) -> str:
    """An unguessable id: nobody can predict another client's keys on a shared bucket."""
    return secrets.token_hex(nbytes)


def new_executor_id() -> str:
    """When the executor started (8 hex digits of Unix seconds, so ``pywren clean --older-than``
    can tell a crashed client's leftovers by age) and 48 unguessable bits."""
    return f"{int(time.time()):08x}{secrets.token_hex(6)}"


def executor_started(executor_id: str) -> float | None:
    """The Unix time an executor id (from :func:`new_executor_id`) was made, or None for another id."""
    head = executor_id[:8]
    if len(executor_id) != 20 or not all(c in "0123456789abcdef" for c in executor_id):
        return None
    return float(int(head, 16))


def new_secret() -> bytes:
    """A job's signing key: it travels only inside invoke payloads, never into storage."""
    return secrets.token_bytes(32)


def call_id(index: int, width: int = 5) -> str:
    return f"{index:0{width}d}"


def group_of(call: str) -> str:
    return str(int(call) // GROUP_SIZE)


@attrs.frozen
class JobKeys:
    """The storage keys of one job."""

    executor_id: str
    job_id: str
    #: ``pywren.jobs/<executor>/<job>/``, made once: every key and signing context starts with it.
    prefix: str = attrs.field(init=False, repr=False, eq=False)

    @prefix.default
    def _prefix(self) -> str:
        return f"{JOBS_PREFIX}/{self.executor_id}/{self.job_id}/"

    @property
    def func(self) -> str:
        return self.prefix + "func.pickle"

    @property
    def args(self) -> str:
        return self.prefix + "args.pickle"

    def status_group(self, group: str) -> str:
        return f"{self.prefix}status/{group}/"

    def status(self, call: str, attempt: int) -> str:
        return f"{self.prefix}status/{group_of(call)}/{call}.{attempt}.json"

    def result(self, call: str, attempt: int) -> str:
        return f"{self.prefix}result/{call}.{attempt}.pickle"

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> JobKeys:
        return cls(payload["executor_id"], payload["job_id"])


def delete_jobs(session: Any, prefix: str) -> int:
    """Delete every object under ``prefix`` (one job, or an executor's jobs), fenced as the module
    docstring says; returns how many were deleted."""
    first = session.list(prefix)
    session.delete([key for key in first if key.endswith("/func.pickle")])
    rest = session.list(prefix)
    session.delete(rest)
    return len(set(first) | set(rest))


def parse_status_key(key: str) -> tuple[str, int] | None:
    """``(call_id, attempt)`` of a status key, or None for any other key."""
    name = key.rpartition("/")[2]
    if not name.endswith(".json"):
        return None
    call, _, attempt = name[: -len(".json")].partition(".")
    if not (call.isdigit() and attempt.isdigit()):
        return None
    return call, int(attempt)


#: HMAC's inner and outer key pads (RFC 2104) as translation tables over a 64-byte key.
_INNER_PAD = bytes(x ^ 0x36 for x in range(256))
_OUTER_PAD = bytes(x ^ 0x5C for x in range(256))
_BLOCK = hashlib.sha256().block_size


@functools.lru_cache(maxsize=256)
def _keyed(secret: bytes) -> tuple[Any, Any]:
    """SHA-256 states after HMAC's inner and outer padded key, computed once per job secret."""
    key = (hashlib.sha256(secret).digest() if len(secret) > _BLOCK else secret).ljust(_BLOCK, b"\0")
    return hashlib.sha256(key.translate(_INNER_PAD)), hashlib.sha256(key.translate(_OUTER_PAD))


def _mac(secret: bytes, context: str, data: bytes | memoryview) -> bytes:
    """HMAC-SHA256 over ``context``, a zero byte and ``data``. Built on hashlib from the cached key
    pads rather than ``hmac.digest``: that one releases the GIL on every call, however small, so
    with the client's invoker and I/O threads each signature cost a thread switch."""
    inner_start, outer_start = _keyed(secret)
    inner, outer = inner_start.copy(), outer_start.copy()
    inner.update(context.encode() + b"\0")
    inner.update(data)
    outer.update(inner.digest())
    return outer.digest()


def sign(secret: bytes, context: str, data: bytes) -> bytes:
    """Prefix ``data`` with an HMAC over it and its context (which object of which job it is)."""
    return _MAGIC + _mac(secret, context, data) + data


def verify(secret: bytes, context: str, blob: bytes) -> bytes:
    """The data inside ``blob``, or SignatureError if this job's secret did not sign it as ``context``."""
    head = len(_MAGIC) + _DIGEST
    if len(blob) < head or blob[: len(_MAGIC)] != _MAGIC:
        raise SignatureError(f"{context}: not a signed pywren object; refusing to unpickle it")
    data = memoryview(blob)[head:]
    if not hmac.compare_digest(_mac(secret, context, data), blob[len(_MAGIC) : head]):
        raise SignatureError(
            f"{context}: signature does not match this job's secret (the object was altered or written "
            "by someone else); refusing to unpickle it"
        )
    return bytes(data)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


# Contexts name what a signature covers, so a signed object cannot be replayed as another one.
def func_context(keys: JobKeys) -> str:
    return f"func:{keys.prefix}"


def args_context(keys: JobKeys, call: str) -> str:
    return f"args:{keys.prefix}{call}"


def result_context(keys: JobKeys, call: str) -> str:
    return f"result:{keys.prefix}{call}"


def exception_context(keys: JobKeys, call: str) -> str:
    return f"exception:{keys.prefix}{call}"


def status_context(keys: JobKeys, call: str, attempt: int) -> str:
    return f"status:{keys.prefix}{call}.{attempt}"


def dump_status(secret: bytes, keys: JobKeys, status: dict[str, Any]) -> bytes:
    """A status record, signed for its job, call and attempt: nobody else can forge one."""
    context = status_context(keys, status["call_id"], status["attempt"])
    return sign(secret, context, json.dumps(status, separators=(",", ":")).encode())


def load_status(secret: bytes, keys: JobKeys, call: str, attempt: int, blob: bytes) -> dict[str, Any]:
    """The status record in ``blob``; SignatureError unless this job wrote it for this call and attempt."""
    return json.loads(verify(secret, status_context(keys, call, attempt), blob))


# Sealing: where invoke payloads rest in storage the bucket's writers can read (Azure's queue), the
# job secret travels encrypted with a payload key that only the client's config and the deployed
# function hold. HMAC-SHA256 serves as the keystream and as the tag (encrypt-then-MAC), so no
# cryptography package is needed for one 32-byte secret.


def _keystream(key: bytes, nonce: bytes, context: str) -> bytes:
    return hmac.new(key, b"pywren-seal\0" + nonce + context.encode(), hashlib.sha256).digest()


def _tag(key: bytes, nonce: bytes, sealed: bytes, context: str) -> bytes:
    return hmac.new(key, b"pywren-tag\0" + nonce + sealed + b"\0" + context.encode(), hashlib.sha256).digest()


def seal(key: bytes, secret: bytes, context: str) -> str:
    """``secret`` (32 bytes) encrypted and authenticated with ``key``, bound to ``context``."""
    if len(secret) != _DIGEST:
        raise ValueError("only a 32-byte job secret can be sealed")
    nonce = secrets.token_bytes(_NONCE)
    sealed = bytes(a ^ b for a, b in zip(secret, _keystream(key, nonce, context), strict=True))
    return b64(nonce + sealed + _tag(key, nonce, sealed, context))


def unseal(key: bytes, text: str, context: str) -> bytes:
    """The secret :func:`seal` sealed; SignatureError if it was altered or sealed with another key."""
    blob = unb64(text)
    nonce, sealed, tag = blob[:_NONCE], blob[_NONCE : _NONCE + _DIGEST], blob[_NONCE + _DIGEST :]
    if len(sealed) != _DIGEST or not hmac.compare_digest(tag, _tag(key, nonce, sealed, context)):
        raise SignatureError(f"{context}: the sealed job secret does not match this function's payload key")
    return bytes(a ^ b for a, b in zip(sealed, _keystream(key, nonce, context), strict=True))


def payload_key_from_env() -> bytes | None:
    """The deployed function's payload key (hex in ``PYWREN_PAYLOAD_KEY``), if it has one."""
    text = os.environ.get(PAYLOAD_KEY_ENV, "").strip()
    return bytes.fromhex(text) if text else None


def secret_context(keys: JobKeys) -> str:
    return f"secret:{keys.prefix}"


def job_secret(payload: dict[str, Any], payload_key: bytes | None) -> bytes:
    """The job's signing secret from an invoke payload.

    A worker that holds a payload key accepts only a sealed secret: a payload with a secret in the
    clear was written by someone who does not hold the key (anyone who can write to the queue), and
    running it would run their code.
    """
    keys = JobKeys.from_payload(payload)
    if payload_key is not None:
        if "sealed_secret" not in payload:
            raise SignatureError(
                f"job {keys.prefix}: this function has a payload key, but the payload's secret is not sealed with it"
            )
        return unseal(payload_key, payload["sealed_secret"], secret_context(keys))
    if "secret" not in payload:
        raise SignatureError(f"job {keys.prefix}: the payload's secret is sealed, but this function has no payload key")
    return bytes.fromhex(payload["secret"])
