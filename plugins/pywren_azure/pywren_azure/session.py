"""Opening the Azure clients for a config: where credentials come from, on a client and on a worker.

A client finds credentials in its config (``connection_string``, or ``storage_account`` with
``account_key``), then in ``AZURE_STORAGE_CONNECTION_STRING``, then through DefaultAzureCredential
(managed identity, ``az login``; needs the ``identity`` extra). A worker never receives secrets in
its payload: it reads the function app's own settings, ``PYWREN_AZURE_CONNECTION_STRING`` or else
``AzureWebJobsStorage`` (the storage account every function app already has), and falls back to
its managed identity.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import requests
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobServiceClient, ContainerClient, LinearRetry
from azure.storage.queue import LinearRetry as QueueLinearRetry
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from pywren_azure import notice
from pywren_azure.errors import CREDENTIALS_HINT, mapped
from pywren_azure.invoke import (
    PAYLOAD_KEY_COMMAND,
    HttpInvoker,
    QueueInvoker,
    app_name,
    function_url,
    pacer,
    queue_name,
    runtime_label,
)
from pywren_core.errors import ConfigError

#: The worker's own connection-string settings, in the order they are tried.
WORKER_CONNECTION_SETTINGS = ("PYWREN_AZURE_CONNECTION_STRING", "AzureWebJobsStorage")
#: Enough pooled connections for the client's result-collecting threads and invoker threads (queue
#: messages go through it; HTTP invocations have a pool of their own, see ``invoke.HTTP_POOL``).
POOL_CONNECTIONS = 96
#: Blobs above this size are uploaded as staged blocks, several at once, then committed in one step.
#: Below it one request is faster (measured against Azurite: a 16 MiB put in 4 MiB blocks ran at
#: 0.4x the speed of a single put); above it a failed block is retried alone, not the whole blob.
SINGLE_PUT_BYTES = 32 * 2**20
BLOCK_BYTES = 8 * 2**20
TRANSFER_CONCURRENCY = 4
READ_BLOCK_BYTES = 4 * 2**20
#: Times the SDK sends a request again after a transport error (connection refused or reset, timeout).
SDK_RETRIES = 2
#: Where ``pywren deploy`` records, in the job container, which runtime each function app carries:
#: one blob per deployed runtime, ``pywren.runtimes/<runtime name>.json``.
RUNTIMES_PREFIX = "pywren.runtimes/"


@attrs.define(eq=False)
class AzureSession:
    """What the hooks share: the account's blob service, the invoke channel, and the values to mask
    in messages. ``container`` is the job container; ``container_named`` gives any other."""

    config: dict[str, Any]
    role: str
    http: requests.Session
    service: BlobServiceClient
    secrets: tuple[str, ...]
    #: How invocations reach the function app; clients only.
    invoker: QueueInvoker | HttpInvoker | None = None
    #: The built runtime (``pywren_core.runtime.Runtime``) whose function app runs the calls, or None.
    runtime: Any = None
    #: Where the function app reports finished calls to this client (``azure.notices``); clients only.
    notices: notice.NoticeQueue | None = None
    #: Makes a queue invoker for this session's runtime: a client's, or a fan-out invoker's in the app.
    open_queue_invoker: Callable[[], QueueInvoker] | None = None
    container: ContainerClient = attrs.field(init=False)
    _containers: dict[str, ContainerClient] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        self.container = self.container_named(self.config["container"])

    def container_named(self, name: str) -> ContainerClient:
        """A client of the container ``name`` in this session's account, on the session's connections."""
        client = self._containers.get(name)
        if client is None:
            client = self._containers.setdefault(name, self.service.get_container_client(name))
        return client


def _http_session() -> requests.Session:
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=POOL_CONNECTIONS)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _sdk_options(http: requests.Session) -> dict[str, Any]:
    return {
        # Our own transport (for the larger connection pool) must read responses in blocks as large
        # as the SDK's own transport does: its default of 4 KiB made 16 MiB gets 40% slower.
        "transport": RequestsTransport(session=http, session_owner=False, connection_data_block_size=READ_BLOCK_BYTES,
                                       connection_timeout=20, read_timeout=120),
        "retry_policy": transport_retry(),
        "max_single_put_size": SINGLE_PUT_BYTES,
        "max_block_size": BLOCK_BYTES,
    }


def transport_retry(policy: type = LinearRetry, read: bool = True) -> Any:
    """The SDK's retry: transport errors only, SDK_RETRIES times, about a second apart.

    No answer is retried here (``retry_status=0``): throttling and the service's transient
    failures become ThrottledError and the core retries them with backoff, so the two never stack.
    ``read=False`` for requests that must not be sent twice (a queue message): a response lost after
    the request went out then reaches the core as an ambiguous invocation, counted as such.
    ``policy`` is the SDK's own LinearRetry class (blob's or queue's).
    """
    return policy(backoff=1, random_jitter_range=1, retry_total=SDK_RETRIES, retry_connect=SDK_RETRIES,
                  retry_read=SDK_RETRIES if read else 0, retry_status=0)


def default_credential(purpose: str = "no connection_string or account_key given, and signing in without a key") -> Any:
    """DefaultAzureCredential (az login, a managed identity, AZURE_CLIENT_* variables), which
    ``purpose`` needs; a ConfigError naming the extra to install when azure-identity is missing."""
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise ConfigError(f"azure: {purpose} needs azure-identity: pip install 'pywren-azure[identity]'") from None
    return DefaultAzureCredential()


def endpoint(config: Mapping[str, Any], service: str) -> str:
    explicit = config.get(f"{service}_endpoint")
    if explicit:
        return explicit
    if not config.get("storage_account"):
        raise ConfigError(
            "azure: say which storage account to use: set azure.storage_account (or azure.connection_string)"
        )
    return f"https://{config['storage_account']}.{service}.core.windows.net"


def credentials(config: Mapping[str, Any], role: str) -> tuple[str | None, Any]:
    """A connection string, or else a credential for the account endpoints."""
    if role == "worker":
        for setting in WORKER_CONNECTION_SETTINGS:
            value = os.environ.get(setting, "")
            if "AccountName=" in value or "UseDevelopmentStorage=" in value:
                return value, None
        return None, default_credential()
    if config.get("connection_string"):
        return config["connection_string"], None
    if config.get("account_key"):
        if not config.get("storage_account"):
            raise ConfigError("azure.account_key is set but azure.storage_account is not: say which account it is for")
        return None, AzureNamedKeyCredential(config["storage_account"], config["account_key"])
    if os.environ.get("AZURE_STORAGE_CONNECTION_STRING"):
        return os.environ["AZURE_STORAGE_CONNECTION_STRING"], None
    if not config.get("storage_account"):
        raise ConfigError(f"azure: no storage credentials: {CREDENTIALS_HINT}")
    return None, default_credential()


def _check_config(config: Mapping[str, Any]) -> None:
    if config["trigger"] not in ("queue", "http"):
        raise ConfigError(f"azure.trigger must be 'queue' or 'http', got {config['trigger']!r}")
    if config["max_concurrency"] < 1:
        raise ConfigError("azure.max_concurrency must be at least 1")
    key = config.get("payload_key")
    if key and not re.fullmatch(r"[0-9a-fA-F]{64}", key.strip()):
        raise ConfigError("azure.payload_key must be 64 hex digits (32 random bytes); make one with: "
                          + PAYLOAD_KEY_COMMAND)
    url = config.get("function_url")
    if url and "code" in parse_qs(urlsplit(url).query):
        # function_url travels to workers with the rest of the public config: a key must not ride in it.
        raise ConfigError("azure.function_url must not carry the function key (?code=...): set azure.function_key")


def connect(config: Mapping[str, Any], role: str, runtime: Any = None,
            notify: Callable[[], None] = lambda: None) -> AzureSession:
    """Open the storage account (and, on a client, the invoke channel) for ``config``; a client
    creates the job container when it is missing. With a ``runtime``, a client invokes that
    runtime's function app (whether it is deployed is checked by :func:`check_deployed`, when an
    executor prepares: ``pywren deploy`` opens a session with the runtime to deploy it)."""
    _check_config(config)
    connection_string, credential = credentials(config, role)
    secrets = tuple(
        s for s in (config.get("connection_string"), config.get("account_key"), config.get("function_key"),
                    config.get("payload_key"), connection_string) if s
    )
    http = _http_session()
    options = _sdk_options(http)
    if connection_string:
        blob_service = BlobServiceClient.from_connection_string(connection_string, **options)
    else:
        blob_service = BlobServiceClient(endpoint(config, "blob"), credential=credential, **options)
    if role == "worker" and config.get("storage_account") and blob_service.account_name != config["storage_account"]:
        raise ConfigError(
            f"the function app's storage settings reach account {blob_service.account_name!r}, but the client "
            f"uses {config['storage_account']!r}: set PYWREN_AZURE_CONNECTION_STRING in the app's settings"
        )
    session = AzureSession(dict(config), role, http, blob_service, secrets, runtime=runtime)
    session.open_queue_invoker = lambda: _queue_invoker(config, role, runtime, connection_string, credential, http,
                                                        secrets)
    if role == "client":
        with mapped(f"create container {config['container']!r}", secrets):
            try:
                session.container.create_container()
            except ResourceExistsError:
                pass
        if config["trigger"] == "queue":
            session.invoker = session.open_queue_invoker()
            with mapped(f"create queue {session.invoker.queue.queue_name!r}", secrets):
                try:
                    session.invoker.queue.create_queue()
                except ResourceExistsError:
                    pass
        else:
            session.invoker = HttpInvoker(function_url(config, runtime), config["function_key"], pacer(config),
                                          secrets)
        if config["notices"]:
            session.notices = notice.NoticeQueue(
                lambda name: queue_client(config, connection_string, credential, http, name), notify)
    return session


def _queue_invoker(config: Mapping[str, Any], role: str, runtime: Any, connection_string: str | None,
                   credential: Any, http: requests.Session, secrets: tuple[str, ...]) -> QueueInvoker:
    """Invocations onto ``runtime``'s call queue; in the function app (a fan-out invoker), onto the
    queue the app reads itself (``PYWREN_AZURE_QUEUE``, set at deploy)."""
    name = queue_name(config, runtime)
    if role == "worker":
        name = os.environ.get("PYWREN_AZURE_QUEUE", name)
    queue, poison = open_queues({**config, "queue": name}, connection_string, credential, http)
    return QueueInvoker(queue, poison, pacer(config), secrets)


def deployed_record(session: AzureSession, runtime: Any) -> dict[str, Any] | None:
    """What ``pywren deploy`` recorded of ``runtime`` in the job container, or None: not deployed."""
    key = f"{RUNTIMES_PREFIX}{runtime.name}.json"
    with mapped(f"get {key!r}", session.secrets):
        try:
            return json.loads(session.container.download_blob(key).readall())
        except ResourceNotFoundError:
            return None


def check_deployed(session: AzureSession, runtime: Any) -> None:
    """Refuse, before any call is sent, a runtime no function app carries: its queue would never be
    read (and its HTTP route answer 404)."""
    if deployed_record(session, runtime) is not None:
        return
    label = runtime_label(runtime)
    app = app_name(session.config, runtime) or "the function app"
    again = "pywren deploy" if label == "default" else f"pywren deploy --runtime {label}"
    raise ConfigError(
        f"azure: runtime {runtime.name} ({label!r}) is not deployed: no function app carries it (nothing under "
        f"{RUNTIMES_PREFIX!r} in container {session.config['container']!r} says so). Run `{again}` to deploy it "
        f"to {app}, then run this again"
    )


def open_queues(config: Mapping[str, Any], connection_string: str | None, credential: Any,
                http: requests.Session) -> tuple[QueueClient, QueueClient]:
    """Clients of the call queue and of its poison queue (which the platform creates)."""
    # A Functions queue trigger reads messages as base64 text; the poison queue is read raw.
    queue = queue_client(config, connection_string, credential, http, config["queue"],
                         message_encode_policy=TextBase64EncodePolicy())
    return queue, queue_client(config, connection_string, credential, http, f"{config['queue']}-poison")


def queue_client(config: Mapping[str, Any], connection_string: str | None, credential: Any,
                 http: requests.Session, name: str, **extra: Any) -> QueueClient:
    """A client of queue ``name`` on the session's connections; a message is never sent twice by the SDK."""
    options = {**_sdk_options(http), "retry_policy": transport_retry(QueueLinearRetry, read=False), **extra}
    del options["max_single_put_size"], options["max_block_size"]
    if connection_string:
        return QueueClient.from_connection_string(connection_string, name, **options)
    return QueueClient(endpoint(config, "queue"), name, credential=credential, **options)


def close(session: AzureSession) -> None:
    if session.notices is not None:
        session.notices.close()
    session.service.close()  # the container clients share its transport
    if session.invoker is not None:
        session.invoker.close()
    session.http.close()
