"""The job protocol: ids, where each object lives in storage, signing, and the invoke payload.

Layout under one job (``pywren.jobs/<executor>/<job>/``)::

    func.pickle                       the function, serialized once per job
    args.pickle                       every call's arguments back to back (when not inline)
    status/<group>/<call>.<attempt>.json   written last by the worker: the completion record
    result/<call>.<attempt>.pickle    a result too large to travel inside its status

Statuses are grouped by thousands of calls, so the client lists one prefix per 1,000 calls and
stops listing a group once all of its calls are done.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import sys
from typing import Any

import attrs

from pywren_core.errors import SignatureError

PROTOCOL_VERSION = 1
JOBS_PREFIX = "pywren.jobs"
GROUP_SIZE = 1000
_MAGIC = b"PWS1"
_DIGEST = hashlib.sha256().digest_size


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def new_id(nbytes: int = 8) -> str:
    """An unguessable id: nobody can predict another client's keys on a shared bucket."""
    return secrets.token_hex(nbytes)


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

    @property
    def prefix(self) -> str:
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
        return f"{self.status_group(group_of(call))}{call}.{attempt}.json"

    def result(self, call: str, attempt: int) -> str:
        return f"{self.prefix}result/{call}.{attempt}.pickle"

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> JobKeys:
        return cls(payload["executor_id"], payload["job_id"])


def parse_status_key(key: str) -> tuple[str, int] | None:
    """``(call_id, attempt)`` of a status key, or None for any other key."""
    name = key.rpartition("/")[2]
    if not name.endswith(".json"):
        return None
    call, _, attempt = name[: -len(".json")].partition(".")
    if not (call.isdigit() and attempt.isdigit()):
        return None
    return call, int(attempt)


def sign(secret: bytes, context: str, data: bytes) -> bytes:
    """Prefix ``data`` with an HMAC over it and its context (which object of which job it is)."""
    mac = hmac.new(secret, context.encode(), hashlib.sha256)
    mac.update(b"\0")
    mac.update(data)
    return _MAGIC + mac.digest() + data


def verify(secret: bytes, context: str, blob: bytes) -> bytes:
    """The data inside ``blob``, or SignatureError if this job's secret did not sign it as ``context``."""
    head = len(_MAGIC) + _DIGEST
    if len(blob) < head or blob[: len(_MAGIC)] != _MAGIC:
        raise SignatureError(f"{context}: not a signed pywren object; refusing to unpickle it")
    data = memoryview(blob)[head:]
    mac = hmac.new(secret, context.encode(), hashlib.sha256)
    mac.update(b"\0")
    mac.update(data)
    if not hmac.compare_digest(mac.digest(), blob[len(_MAGIC) : head]):
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
