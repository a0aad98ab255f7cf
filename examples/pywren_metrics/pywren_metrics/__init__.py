"""Count and time every storage and invoke call, on every backend: a wrapper-only plugin.

Installed, it wraps the hooks of every backend in the environment (entry-point group
``pywren.wrappers``), on the client and, where the plugin is installed there too, on the workers.
:func:`snapshot` returns this process's figures; with ``PYWREN_METRICS_FILE`` set, each process
appends them to that file as one JSON line when it exits.
"""

from __future__ import annotations

import atexit
import copy
import json
import os
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from pywren_core import hookimpl

_lock = threading.Lock()
_ops: dict[str, dict[str, Any]] = {}
_roles: set[str] = set()


def snapshot() -> dict[str, Any]:
    """This process's figures: per operation, calls, errors, seconds and bytes moved."""
    with _lock:
        return {"pid": os.getpid(), "roles": sorted(_roles), "ops": copy.deepcopy(_ops)}


def reset() -> None:
    with _lock:
        _ops.clear()
        _roles.clear()


def _record(op: str, seconds: float, nbytes: int, failed: bool) -> None:
    with _lock:
        entry = _ops.setdefault(op, {"calls": 0, "errors": 0, "seconds": 0.0, "bytes": 0})
        entry["calls"] += 1
        entry["errors"] += failed
        entry["seconds"] += seconds
        entry["bytes"] += nbytes


# --8<-- [start:measure]
def _measure(op: str, sent: int = 0, received: Callable[[Any], int] = lambda result: 0) -> Generator[None, Any, Any]:
    """The body of every wrapper below: time the inner hook, count it, and pass its outcome on."""
    start = time.perf_counter()
    try:
        result = yield  # the backend's own implementation runs here
    except BaseException:
        _record(op, time.perf_counter() - start, sent, failed=True)
        raise  # a wrapper that only observes re-raises what the backend raised
    _record(op, time.perf_counter() - start, sent + received(result), failed=False)
    return result


@hookimpl(wrapper=True)
def pywren_storage_put(data: bytes) -> Generator[None, Any, Any]:
    return (yield from _measure("put", sent=len(data)))


@hookimpl(wrapper=True)
def pywren_storage_get() -> Generator[None, Any, Any]:
    return (yield from _measure("get", received=len))


# --8<-- [end:measure]


@hookimpl(wrapper=True)
def pywren_storage_list() -> Generator[None, Any, Any]:
    return (yield from _measure("list"))


@hookimpl(wrapper=True)
def pywren_storage_delete() -> Generator[None, Any, Any]:
    return (yield from _measure("delete"))


@hookimpl(wrapper=True)
def pywren_invoke() -> Generator[None, Any, Any]:
    return (yield from _measure("invoke"))


@hookimpl(wrapper=True)
def pywren_connect(role: str) -> Generator[None, Any, Any]:
    with _lock:
        _roles.add(role)
    return (yield)


@atexit.register
def _report() -> None:
    path = os.environ.get("PYWREN_METRICS_FILE")
    if path and _ops:
        with open(path, "a") as f:  # one short line per process: appends from many processes stay whole
            f.write(json.dumps(snapshot()) + "\n")
