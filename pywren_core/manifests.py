"""Job manifests: what a client keeps on its own disk so a new process can collect a job again.

A job's signing secret must never reach storage, so a client that crashed takes the secret with
it, and with it the only way to check its results. Each client therefore writes a small manifest
(ids, call count, backend, the secret) to a private file under ``~/.cache/pywren/jobs`` before it
invokes anything, and removes it once the job's objects are cleaned up. ``Executor.attach`` and
``pywren status`` read it back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pywren_core.config import user_cache_dir
from pywren_core.errors import ConfigError
from pywren_core.protocol import JobKeys


def manifest_dir() -> Path:
    return user_cache_dir() / "pywren" / "jobs"


def _path(keys: JobKeys) -> Path:
    return manifest_dir() / keys.executor_id / f"{keys.job_id}.json"


def write(keys: JobKeys, secret: bytes, calls: int, backend: str, timeout: float) -> None:
    path = _path(keys)
    record = {"executor_id": keys.executor_id, "job_id": keys.job_id, "calls": calls, "backend": backend,
              "timeout": timeout, "secret": secret.hex()}
    for attempt in range(3):  # the cleanup of this executor's last job may remove the folder meanwhile
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # the secret: owner only
            break
        except (FileExistsError, FileNotFoundError):
            if attempt == 2:
                raise
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)


def read(job: str) -> dict[str, Any]:
    """The manifest of ``job``, given as ``EXECUTOR_ID/JOB_ID``."""
    executor_id, _, job_id = job.strip("/").partition("/")
    if not executor_id.isalnum() or not job_id.isalnum():
        raise ConfigError(f"a job is named EXECUTOR_ID/JOB_ID (as in its futures' ids), not {job!r}")
    path = _path(JobKeys(executor_id, job_id))
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"no manifest for job {job} at {path}: it was submitted from another machine or user, "
            "or it finished and was cleaned up"
        ) from None


def remove(keys: JobKeys) -> None:
    path = _path(keys)
    path.unlink(missing_ok=True)
    try:
        path.parent.rmdir()
    except OSError:  # other jobs of the executor remain
        pass


def remove_all(executor_id: str, job_id: str | None = None) -> None:
    """Remove one job's manifest, or every manifest of an executor (after ``pywren clean``)."""
    if job_id is not None:
        remove(JobKeys(executor_id, job_id))
        return
    folder = manifest_dir() / executor_id
    for path in folder.glob("*.json"):
        path.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass
