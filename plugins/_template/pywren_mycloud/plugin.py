"""The MyCloud backend: the hooks of ``pywren_core.hookspecs``, implemented for MyCloud.

Each hook below says what it must do; the hook reference (docs/hooks.md in the pywren repository)
has the full contract, and ``pytest`` runs the core's conformance kit against this backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from pywren_core import hookimpl
from pywren_core.backend import BackendInfo, ConfigField, Limits


@hookimpl
def pywren_backend_info() -> BackendInfo:
    return BackendInfo(
        name="mycloud",
        # TODO: your platform's documented limits.
        limits=Limits(max_payload_bytes=256 * 1024, max_runtime=900.0, max_concurrency=1000),
        config=(
            ConfigField("bucket", str, help="bucket that holds the job objects"),
            ConfigField("endpoint", str, "", help="service URL; empty for the real service (tests set an emulator's)"),
            ConfigField("api_key", str, "", secret=True, help="credentials; never sent to workers"),
        ),
        handler="pywren_mycloud.handler:handler",
        # TODO: data_schemes=("mycloud",) once the pywren_data_* hooks below work (see there).
    )


@attrs.define
class MyCloudSession:
    """The clients the other hooks use; the core passes it back to them and never looks inside."""

    bucket: str
    endpoint: str


@hookimpl
def pywren_connect(config: Mapping[str, Any], role: str) -> MyCloudSession:
    # TODO: create the SDK clients. On a worker (role "worker") config has no secret fields:
    # take credentials from the platform's own environment there.
    return MyCloudSession(bucket=config["bucket"], endpoint=config["endpoint"])


@hookimpl
def pywren_storage_put(session: MyCloudSession, key: str, data: bytes) -> None:
    # TODO: upload atomically (multipart for large objects). Map the SDK's errors onto
    # pywren_core.errors: AccessDeniedError, ThrottledError (the core retries it), StorageError.
    raise NotImplementedError("pywren_storage_put")


@hookimpl
def pywren_storage_get(session: MyCloudSession, key: str, byte_range: tuple[int, int] | None) -> bytes:
    # TODO: download the object, or bytes [start, end) of it; a missing key raises NotFoundError.
    raise NotImplementedError("pywren_storage_get")


@hookimpl
def pywren_storage_list(session: MyCloudSession, prefix: str) -> list[str]:
    # TODO: every key starting with prefix, following all pages.
    raise NotImplementedError("pywren_storage_list")


@hookimpl
def pywren_storage_delete(session: MyCloudSession, keys: Sequence[str]) -> None:
    # TODO: delete the keys (in batches where the API allows); missing keys are not an error.
    raise NotImplementedError("pywren_storage_delete")


# Data where it lives (optional): users map over objects in any bucket your credentials reach, by
# URL: ex.map(f, "mycloud://BUCKET/PREFIX/"). The core parses the URL and calls these four with the
# bucket and key. Implement all four and declare data_schemes in pywren_backend_info, or delete
# them (and pywren_data_open) and TestData in tests/test_conformance.py.


@hookimpl
def pywren_data_list(session: MyCloudSession, bucket: str, prefix: str) -> list[tuple[str, int]]:
    # TODO: (key, size in bytes) of every object in bucket whose key starts with prefix, following
    # all pages; a missing bucket raises NotFoundError.
    raise NotImplementedError("pywren_data_list")


@hookimpl
def pywren_data_get(session: MyCloudSession, bucket: str, key: str, byte_range: tuple[int, int] | None) -> bytes:
    # TODO: as pywren_storage_get, in any bucket; a missing bucket or object raises NotFoundError.
    raise NotImplementedError("pywren_data_get")


@hookimpl
def pywren_data_open(session: MyCloudSession, bucket: str, key: str, byte_range: tuple[int, int]) -> Any:
    # TODO (optional, delete it to read in pywren_data_get blocks): bytes [start, end) as a stream over
    # one ranged GET, e.g. SDKStream(response_body, lambda: your_error_mapping(url), end - start) from
    # pywren_core.data; missing bucket or object: NotFoundError naming the URL, at once.
    raise NotImplementedError("pywren_data_open")


@hookimpl
def pywren_data_put(session: MyCloudSession, bucket: str, key: str, data: bytes) -> None:
    # TODO: as pywren_storage_put (atomic), in any bucket; a missing bucket raises NotFoundError.
    raise NotImplementedError("pywren_data_put")


@hookimpl
def pywren_data_delete(session: MyCloudSession, bucket: str, keys: Sequence[str]) -> None:
    # TODO: as pywren_storage_delete, in any bucket; missing keys are not an error.
    raise NotImplementedError("pywren_data_delete")


@hookimpl
def pywren_invoke(session: MyCloudSession, payload: Mapping[str, Any]) -> None:
    # TODO: start one asynchronous run of pywren_mycloud.handler with this JSON payload and
    # return once the platform accepted it; raise ThrottledError when it refuses for rate.
    raise NotImplementedError("pywren_invoke")
