"""The ``azure`` backend's hooks: Blob Storage for job objects, Azure Functions for calls.

The data hooks serve ``az://CONTAINER/BLOB`` and ``abfs://CONTAINER/BLOB`` URLs: blobs in any
container of the configured storage account, through the same blob code as the job container.

Registered under the entry-point group ``pywren`` as ``azure``; the core calls these with keyword
arguments. Every SDK error leaves here as a :mod:`pywren_core.errors` type.
"""

from __future__ import annotations

import io
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.blob import BlobProperties, ContainerClient

from pywren_azure import deploy, notice
from pywren_azure import session as session_module
from pywren_azure.errors import mapped
from pywren_azure.invoke import MAX_PAYLOAD_BYTES
from pywren_azure.session import TRANSFER_CONCURRENCY, AzureSession
from pywren_core.backend import BackendInfo, CallEvent, ConfigField, Limits, Platform
from pywren_core.data import SDKStream
from pywren_core.errors import InvokeError, StorageError, URLError
from pywren_core.hookspecs import hookimpl

#: Blobs per page of a listing (the service's largest); every page is followed.
LIST_PAGE_SIZE = 5000
#: Azure's limit of sub-requests in one blob batch.
BATCH_SIZE = 256
#: Threads per batch that delete key by key when a batch cannot be sent (at interpreter exit).
EXIT_DELETE_THREADS = 8
#: Maps of at least this many invocations are fanned out (``pywren_core.fanout``).
FANOUT_THRESHOLD = 1000
#: Guards a worker session's queue invoker, made on its first invocation (a fan-out invoker's threads).
_worker_lock = threading.Lock()
#: Consumption plan's longest function run (10 min); the function reports a call as timed out first.
MAX_RUNTIME = 600.0

#: Where the function app's calls run, for the runtimes the core builds: Azure Functions' Linux
#: Python workers (x86-64; the app is created for the client's Python, which the worker checks),
#: which provide the azure-functions library. Azure documents no unpacked size limit for a zip
#: package (DESIGN.md section 5: "zip or image"). Container images start from Microsoft's
#: Functions base image, with the app's code in /home/site/wwwroot.
PLATFORM = Platform(
    python=None,
    os="linux",
    arch="x86_64",
    max_unzipped_bytes=None,
    provided=deploy.PROVIDED,
    requirements=deploy.WORKER_REQUIREMENTS,
    image_base=f"mcr.microsoft.com/azure-functions/python:4-python{sys.version_info.major}.{sys.version_info.minor}",
    image_code_dir="/home/site/wwwroot",
)

CONFIG = (
    ConfigField("storage_account", str, None, help="storage account name (or give connection_string)"),
    ConfigField("connection_string", str, None, secret=True,
                help="storage connection string; UseDevelopmentStorage=true works"),
    ConfigField("account_key", str, None, secret=True, help="key of storage_account"),
    ConfigField("blob_endpoint", str, None, help="blob endpoint URL, when not https://<account>.blob.core.windows.net"),
    ConfigField("queue_endpoint", str, None, help="queue endpoint URL, when not https://<account>.queue.core.windows.net"),
    ConfigField("container", str, "pywren", help="blob container for job objects (created if missing)"),
    ConfigField("queue", str, "pywren-calls", help="storage queue the function app's queue trigger reads"),
    ConfigField("function_app", str, None, help="function app name (for trigger http and pywren deploy)"),
    ConfigField("function_url", str, None, help="HTTP trigger URL, when not https://<function_app>.azurewebsites.net/api/pywren"),
    ConfigField("function_key", str, None, secret=True, help="function key for the HTTP trigger"),
    ConfigField("payload_key", str, None, secret=True,
                help="64 hex digits only the client and the function app hold; seals each job's secret in its "
                     "invocations (needed for trigger queue; pywren deploy sets it on the app)"),
    ConfigField("trigger", str, "queue", help="'queue' (scales on queue length, loses nothing on bursts) or 'http'"),
    ConfigField("invoke_rate", (int, float), None,
                help="invocations per second the client sends; default: unpaced for queue, 100 for http"),
    ConfigField("max_concurrency", int, 16, help="calls one function instance runs at once (set at deploy)"),
    ConfigField("notices", bool, True,
                help="the function app posts each finished call to a storage queue of the client's own, so the "
                     "client notices it at once; false: the client lists the container only"),
)


@hookimpl
def pywren_backend_info() -> BackendInfo:
    return BackendInfo(
        name="azure",
        limits=Limits(max_payload_bytes=MAX_PAYLOAD_BYTES, max_runtime=MAX_RUNTIME, max_concurrency=1000),
        config=CONFIG,
        handler="pywren_azure.function_app:app",
        poll_interval=(0.1, 2.0),
        storage_concurrency=32,
        data_schemes=("az", "abfs"),
        platform=PLATFORM,
        features={
            "data": "az://CONTAINER/BLOB and abfs://CONTAINER/BLOB, in the configured storage account",
            "triggers": "queue (default), http",
            "completion": "a storage queue per client that the function app posts to (azure.notices)",
            "isolation": "calls run as threads in one process per instance, each in its own working directory",
            "per-instance concurrency": "azure.max_concurrency",
            "runtimes": "a function app per runtime label (<function_app>-<label>), a queue and route per runtime",
        },
    )


@hookimpl
def pywren_connect(config: Mapping[str, Any], role: str, runtime: Any, notify: Callable[[], None]) -> AzureSession:
    return session_module.connect(config, role, runtime, notify)


# Blob operations on one container, for the job container (keys shown quoted) and for data
# containers (objects shown as az:// URLs): ``name`` is what an error message calls the object.


def _put(session: AzureSession, container: ContainerClient, key: str, data: bytes, name: str) -> None:
    with mapped(f"put {name}", session.secrets):
        # Above SINGLE_PUT_BYTES the SDK stages blocks in parallel and commits them in one request,
        # so readers never see a partial object.
        container.upload_blob(key, data, length=len(data), overwrite=True, max_concurrency=TRANSFER_CONCURRENCY)


def _get(session: AzureSession, container: ContainerClient, key: str, byte_range: tuple[int, int] | None,
         name: str) -> bytes:
    with mapped(f"get {name}", session.secrets):
        if byte_range is None:
            return container.download_blob(key, max_concurrency=TRANSFER_CONCURRENCY).readall()
        start, end = byte_range
        if end <= start:  # an empty range still tells a missing key apart
            container.get_blob_client(key).get_blob_properties()
            return b""
        try:
            downloader = container.download_blob(key, offset=start, length=end - start,
                                                 max_concurrency=TRANSFER_CONCURRENCY)
        except HttpResponseError as exc:
            if exc.status_code != 416:
                raise
            return b""  # the range starts past the end (the blob exists: a missing one is a 404)
        # A range reaching past the end returns what exists.
        return downloader.readall()


def _delete(session: AzureSession, container: ContainerClient, keys: Sequence[str]) -> None:
    batches = [keys[i : i + BATCH_SIZE] for i in range(0, len(keys), BATCH_SIZE)]
    in_threads(lambda batch: _delete_batch(session, container, batch), batches, TRANSFER_CONCURRENCY)


def _delete_batch(session: AzureSession, container: ContainerClient, keys: Sequence[str]) -> None:
    where = "" if container is session.container else f" of az://{container.container_name}/"
    with mapped(f"delete {len(keys)} keys{where}", session.secrets):
        try:
            responses = container.delete_blobs(*keys, raise_on_any_failure=False)
        except RuntimeError as exc:
            if "interpreter shutdown" not in str(exc):
                raise
            # The SDK builds a batch on a ThreadPoolExecutor, which refuses work once the interpreter
            # exits: the core's cleanup of a script that never shut down then deletes key by key.
            in_threads(lambda key: _delete_one(container, key), keys, EXIT_DELETE_THREADS)
            return
        failed = [r for r in responses if r.status_code not in (200, 202, 404)]
    if failed:
        first = f"{failed[0].status_code} {failed[0].headers.get('x-ms-error-code', '')}"
        raise StorageError(f"delete{where}: {len(failed)} of {len(keys)} keys failed, the first with {first}")


def _delete_one(container: ContainerClient, key: str) -> None:
    try:
        container.delete_blob(key)
    except ResourceNotFoundError:
        pass


@hookimpl
def pywren_storage_put(session: AzureSession, key: str, data: bytes) -> None:
    _put(session, session.container, key, data, repr(key))


@hookimpl
def pywren_storage_get(session: AzureSession, key: str, byte_range: tuple[int, int] | None) -> bytes:
    return _get(session, session.container, key, byte_range, repr(key))


@hookimpl
def pywren_storage_list(session: AzureSession, prefix: str) -> list[str]:
    with mapped(f"list {prefix!r}", session.secrets):
        return list(session.container.list_blob_names(name_starts_with=prefix, results_per_page=LIST_PAGE_SIZE))


@hookimpl
def pywren_storage_delete(session: AzureSession, keys: Sequence[str]) -> None:
    _delete(session, session.container, keys)


# --- data: blobs in any container of the account, as az://CONTAINER/BLOB (or abfs://) -------------


def _data(session: AzureSession, bucket: str) -> ContainerClient:
    """The container a data URL's bucket names: ``container``, or ``container@account.<host>`` (the
    form abfs:// URLs often take) when the account is this session's own."""
    container, at, host = bucket.partition("@")
    account = host.partition(".")[0]
    if at and account != session.service.account_name:
        raise URLError(f"az://{bucket}/: account {account!r} is not the configured storage account "
                       f"{session.service.account_name!r}; pywren reaches the containers of that one only")
    return session.container_named(container)


def _is_folder(blob: BlobProperties) -> bool:
    """A directory of an account with a hierarchical namespace (ADLS Gen2), listed as an empty blob."""
    return (blob.metadata or {}).get("hdi_isfolder") == "true"


@hookimpl
def pywren_data_list(session: AzureSession, bucket: str, prefix: str) -> list[tuple[str, int]]:
    container = _data(session, bucket)
    with mapped(f"list az://{bucket}/{prefix}", session.secrets):
        blobs = container.list_blobs(name_starts_with=prefix, include=["metadata"], results_per_page=LIST_PAGE_SIZE)
        return [(blob.name, blob.size) for blob in blobs if not _is_folder(blob)]


@hookimpl
def pywren_data_get(session: AzureSession, bucket: str, key: str, byte_range: tuple[int, int] | None) -> bytes:
    return _get(session, _data(session, bucket), key, byte_range, f"az://{bucket}/{key}")


@hookimpl
def pywren_data_open(session: AzureSession, bucket: str, key: str, byte_range: tuple[int, int]) -> Any:
    start, end = byte_range
    what = f"get az://{bucket}/{key}"
    container = _data(session, bucket)
    with mapped(what, session.secrets):
        try:
            # The SDK gets the first chunk now (a missing blob fails here) and the rest as it is read.
            downloader = container.download_blob(key, offset=start, length=end - start)
        except HttpResponseError as exc:
            if exc.status_code != 416:
                raise
            return io.BytesIO(b"")  # the range starts past the end
    return SDKStream(_ChunkReader(downloader.chunks()), lambda: mapped(what, session.secrets))


class _ChunkReader(io.RawIOBase):
    """The SDK's download chunks as a file: each read gives at most what is left of a chunk."""

    def __init__(self, chunks: Iterator[bytes]):
        self.chunks, self.pending = chunks, memoryview(b"")

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return b"".join([self.pending, *self.chunks])
        if not self.pending:
            self.pending = memoryview(next(self.chunks, b""))
        data, self.pending = self.pending[:size], self.pending[size:]
        return data.obj if len(data) == len(data.obj) else data.tobytes()  # a whole chunk as it came

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


@hookimpl
def pywren_data_put(session: AzureSession, bucket: str, key: str, data: bytes) -> None:
    _put(session, _data(session, bucket), key, data, f"az://{bucket}/{key}")


@hookimpl
def pywren_data_delete(session: AzureSession, bucket: str, keys: Sequence[str]) -> None:
    _delete(session, _data(session, bucket), keys)


def in_threads(work: Callable[[Any], None], items: Sequence[Any], threads: int) -> None:
    """``work`` on every item, on up to ``threads`` plain threads; the first error is raised.

    Not a ThreadPoolExecutor: those refuse new work once the interpreter begins to exit, and that is
    when the core deletes the jobs of a script that never called shutdown().
    """
    pending, errors, lock = iter(items), [], threading.Lock()

    def drain() -> None:
        while not errors:
            with lock:
                item = next(pending, None)
            if item is None:
                return
            try:
                work(item)
            except BaseException as exc:
                errors.append(exc)

    if len(items) <= 1:
        drain()
    else:
        workers = [threading.Thread(target=drain, name="pywren-azure-delete", daemon=True)
                   for _ in range(min(threads, len(items)))]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    if errors:
        raise errors[0]


@hookimpl
def pywren_invoke(session: AzureSession, payload: Mapping[str, Any]) -> None:
    if session.invoker is None:
        if session.config["trigger"] != "queue":  # the function key, which an HTTP POST needs, is not the app's
            raise InvokeError("a function app invokes through its queue only: fan-out needs azure.trigger 'queue'")
        with _worker_lock:  # a fan-out invoker in the app: its calls go on the app's own call queue
            if session.invoker is None:
                session.invoker = session.open_queue_invoker()
    target = session.notices.target() if session.notices is not None else None
    session.invoker.send({**payload, notice.PAYLOAD_KEY: target} if target else payload)
    if target:  # a fan-out invoker's calls are out too, how many the client does not count here
        session.notices.sent(None if payload.get("fanout") else len(payload["calls"]))


@hookimpl
def pywren_fanout(session: AzureSession) -> int | None:
    """Maps of at least FANOUT_THRESHOLD invocations are fanned out through the queue trigger: its
    invokers put the calls' messages on the queue from inside Azure. Not through the HTTP trigger,
    whose function key the app does not hold."""
    return FANOUT_THRESHOLD if session.config["trigger"] == "queue" else None


@hookimpl
def pywren_prepare(session: AzureSession) -> None:
    """An executor's session with a runtime: refuse it now when no function app carries the runtime
    (its calls would wait in a queue nobody reads), naming ``pywren deploy``. Then create the notice
    queue, in the background."""
    if session.runtime is not None and session.role == "client":
        session_module.check_deployed(session, session.runtime)
    if session.notices is not None:
        session.notices.start()


@hookimpl
def pywren_poll_events(session: AzureSession) -> list[CallEvent]:
    events = session.invoker.poll_events() if session.invoker is not None else []
    return events + session.notices.events() if session.notices is not None else events


@hookimpl
def pywren_deploy(session: AzureSession, config: Mapping[str, Any]) -> str:
    return deploy.deploy(session, config)


@hookimpl
def pywren_remove(session: AzureSession, config: Mapping[str, Any]) -> str:
    return deploy.remove(session, config)


@hookimpl
def pywren_close(session: AzureSession) -> None:
    session_module.close(session)
