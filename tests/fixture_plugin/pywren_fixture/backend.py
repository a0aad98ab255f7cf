"""An in-memory backend whose invocations run the worker runtime in threads of the client process."""

from __future__ import annotations

import threading
from typing import Any

from pywren_core import hookimpl, worker
from pywren_core.backend import BackendInfo, ConfigField, Limits
from pywren_core.errors import NotFoundError

_STORES: dict[str, dict[str, bytes]] = {}
_lock = threading.Lock()
#: Every payload invoked, so tests can inspect what travelled.
INVOKED: list[dict[str, Any]] = []


@hookimpl
def pywren_backend_info() -> BackendInfo:
    return BackendInfo(
        name="fixture",
        limits=Limits(max_payload_bytes=4096, max_runtime=60, max_concurrency=4),
        config=(
            ConfigField("store", str, "default"),
            ConfigField("token", str, "", secret=True),
            ConfigField("payload_key", str, "", secret=True, help="seals job secrets in payloads"),
        ),
        poll_interval=(0.005, 0.05),
        storage_concurrency=1,
    )


@hookimpl
def pywren_connect(config: dict[str, Any], role: str) -> dict[str, bytes]:
    with _lock:
        return _STORES.setdefault(config["store"], {})


@hookimpl
def pywren_storage_put(session: dict[str, bytes], key: str, data: bytes) -> None:
    session[key] = bytes(data)


@hookimpl
def pywren_storage_get(session: dict[str, bytes], key: str, byte_range: tuple[int, int] | None) -> bytes:
    if key not in session:
        raise NotFoundError(key)
    data = session[key]
    return data if byte_range is None else data[byte_range[0] : byte_range[1]]


@hookimpl
def pywren_storage_list(session: dict[str, bytes], prefix: str) -> list[str]:
    return [k for k in list(session) if k.startswith(prefix)]


@hookimpl
def pywren_storage_delete(session: dict[str, bytes], keys: list[str]) -> None:
    for key in keys:
        session.pop(key, None)


@hookimpl
def pywren_invoke(session: dict[str, bytes], payload: dict[str, Any]) -> None:
    INVOKED.append(payload)
    threading.Thread(target=worker.handle, args=(payload,), kwargs={"isolate_cwd": False}, daemon=True).start()
