"""The ``gcp`` backend: Cloud Storage for job objects, a Cloud Run function (gen2) for the calls, and
``gs://`` URLs for data in any bucket the credentials reach.

Registered under the entry-point group ``pywren`` as ``gcp``; the core routes every ``gcp`` call
here through a plugin manager of the backend's own, so no hook checks whom a call is for.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import google.auth
import google.auth.exceptions
import google.auth.transport.requests
import google.oauth2.id_token
import google.oauth2.service_account

from pywren_core.backend import BackendInfo, CallEvent, ConfigField, Limits
from pywren_core.errors import ConfigError, InvokeError
from pywren_core.hookspecs import hookimpl
from pywren_gcp import deploy as deploy_module
from pywren_gcp.storage import (
    CREDENTIALS_HINT,
    GcsStore,
    credentials_error,
    credentials_mapped,
    errors_mapped,
    make_client,
)

if TYPE_CHECKING:
    from pywren_gcp.invoker import Dispatcher

SCOPE = "https://www.googleapis.com/auth/cloud-platform"

CONFIG = (
    ConfigField("bucket", str, help="Cloud Storage bucket that holds the job objects"),
    ConfigField("project", str, "", help="Google Cloud project (default: the credentials' project)"),
    ConfigField("region", str, "us-central1", help="region of the function (and of a bucket deploy creates)"),
    ConfigField("function_name", str, "pywren-runner", help="name of the Cloud Run function that runs the calls"),
    ConfigField("function_url", str, "",
                help="the default runtime's function URL (default: looked up from the deployed function)"),
    ConfigField("runtime_urls", dict, {},
                help="a runtime's function URL by runtime name (rt-...) or label (default: looked up from the "
                     "function deployed for it, <function_name>-<runtime name>)"),
    ConfigField("authenticated", bool, True,
                help="send an ID token with each invocation (false for a local or public endpoint)"),
    ConfigField("storage_endpoint", str, "",
                help="Cloud Storage endpoint (an emulator; default: STORAGE_EMULATOR_HOST or Google's)"),
    ConfigField("credentials_file", str, "", secret=True,
                help="service-account key file for the client (default: Application Default Credentials)"),
    ConfigField("invoke_token", str, "", secret=True,
                help="a fixed bearer token for the function, instead of minting ID tokens"),
    ConfigField("max_connections", int, 256, help="invocation requests the client holds open at once"),
    ConfigField("calls_per_request", int, 64, help="invocations packed into one request once max_connections are open"),
    ConfigField("accept_timeout", (int, float), 120.0, help="seconds to wait for the function to accept a request"),
    ConfigField("function_timeout", int, 3600, help="the function's request timeout, in seconds (deploy)"),
    ConfigField("memory", str, "2Gi", help="memory of each instance (deploy)"),
    ConfigField("cpu", str, "1", help="vCPUs of each instance (deploy)"),
    ConfigField("concurrency", int, 8, help="requests one instance serves at once (deploy)"),
    ConfigField("max_instances", int, 100, help="instances the function may scale to (deploy)"),
    ConfigField("service_account", str, "",
                help="service account the function runs as (deploy; default: the platform's)"),
)


@hookimpl
def pywren_backend_info() -> BackendInfo:
    return BackendInfo(
        name="gcp",
        # 32 MB per HTTP request; a few hundred KB stay free for the envelope of a packed request.
        limits=Limits(max_payload_bytes=32_000_000, max_runtime=3600.0, max_concurrency=1000),
        config=CONFIG,
        handler="pywren_gcp.handler:handler",
        poll_interval=(0.05, 2.0),
        storage_concurrency=32,
        data_schemes=("gs",),
        platform=deploy_module.platform(),
        features={
            "trigger": "HTTP (Cloud Run functions / Cloud Functions gen2), the request held open while the call runs",
            "invocation": "one event-loop thread (aiohttp, keep-alive); bounded connections; calls packed into a "
                          "request at the bound",
            "isolation": "threads in shared instances, a working directory per call",
        },
    )


class GcpSession:
    """The clients one config needs: storage at once, the invoker and tokens on first use."""

    def __init__(self, config: Mapping[str, Any], role: str, runtime: Any = None,
                 notify: Callable[[], None] = lambda: None):
        self.config = dict(config)
        #: The core's notify: the invoker calls it as held-open responses report calls done.
        self.notify = notify
        #: The built runtime (``pywren_core.runtime.Runtime``) the calls run in; None: the default.
        self.runtime = runtime
        if role == "client" and runtime is not None and self.config["function_url"] \
                and not deploy_module.runtime_url(self.config, runtime):
            label = runtime.label
            raise ConfigError(
                f"gcp.function_url is the default runtime's function; runtime {runtime.name} ({label!r}) runs in "
                f"a function of its own: give its URL in gcp.runtime_urls ({{{runtime.name}: URL}} or "
                f"{{{label}: URL}}), or unset gcp.function_url to use the function `pywren deploy` deploys for it "
                f"({deploy_module.function_name(self.config, runtime)})")
        self._lock = threading.Lock()
        self._credentials: Any = None
        self._id_credentials: Any = None
        self._dispatcher: Dispatcher | None = None
        credentials = None
        if role == "client" and not self._emulated() and self.config["credentials_file"]:
            credentials = self.credentials()
        client = make_client(self.config["project"], self.config["storage_endpoint"], credentials)
        self.bucket = self.config["bucket"]
        self.store = GcsStore(client)

    def _emulated(self) -> bool:
        return bool(self.config["storage_endpoint"] or os.environ.get("STORAGE_EMULATOR_HOST"))

    def credentials(self) -> Any:
        """OAuth credentials for Google's APIs: the key file if configured, else the environment's."""
        with self._lock:
            if self._credentials is None:
                try:
                    if self.config["credentials_file"]:
                        self._credentials = google.oauth2.service_account.Credentials.from_service_account_file(
                            self.config["credentials_file"], scopes=[SCOPE])
                    else:
                        self._credentials = google.auth.default(scopes=[SCOPE])[0]
                except (OSError, ValueError, google.auth.exceptions.GoogleAuthError) as exc:
                    raise credentials_error("loading Google credentials", exc) from None
            return self._credentials

    def api(self) -> Any:
        """An HTTP session authorised for the Cloud Functions API."""
        return google.auth.transport.requests.AuthorizedSession(self.credentials())

    def dispatcher(self) -> Dispatcher:
        with self._lock:
            dispatcher = self._dispatcher
        if dispatcher is not None:
            return dispatcher
        url = self.function_url()
        from pywren_gcp.invoker import Dispatcher  # aiohttp: clients only, a worker never loads it

        with self._lock:
            if self._dispatcher is None:
                self._dispatcher = Dispatcher(
                    url,
                    max_connections=max(1, self.config["max_connections"]),
                    calls_per_request=max(1, self.config["calls_per_request"]),
                    accept_timeout=float(self.config["accept_timeout"]),
                    hold_timeout=float(self.config["function_timeout"]) + 60.0,
                    notify=self.notify,
                )
            return self._dispatcher

    def function_url(self) -> str:
        """The URL of the function that carries the session's runtime: configured (``function_url``
        for the default, ``runtime_urls`` for a runtime), else looked up from the deployed function;
        a runtime never deployed is an error naming ``pywren deploy``."""
        if self.runtime is None:
            url = self.config["function_url"]
        else:
            url = deploy_module.runtime_url(self.config, self.runtime)
        if not url:
            with credentials_mapped("looking up the function's URL"):
                url = deploy_module.lookup_url(self.api(), self.config, self.runtime)
        return url

    def authorization(self, url: str) -> str:
        """The Authorization header for an invocation ('' when the endpoint needs none)."""
        if not self.config["authenticated"]:
            return ""
        if self.config["invoke_token"]:
            return f"Bearer {self.config['invoke_token']}"
        audience = url.split("?", 1)[0].rstrip("/")
        request = google.auth.transport.requests.Request()
        with self._lock:
            try:
                if self._id_credentials is None:
                    if self.config["credentials_file"]:
                        id_credentials = google.oauth2.service_account.IDTokenCredentials
                        self._id_credentials = id_credentials.from_service_account_file(
                            self.config["credentials_file"], target_audience=audience)
                    else:
                        self._id_credentials = google.oauth2.id_token.fetch_id_token_credentials(audience, request)
                if not self._id_credentials.valid:
                    self._id_credentials.refresh(request)
            except google.auth.exceptions.TransportError as exc:  # google-auth has retried it already
                raise InvokeError(f"could not reach Google to mint an ID token for {audience}: "
                                  f"{type(exc).__name__}") from None
            except (OSError, ValueError, google.auth.exceptions.GoogleAuthError) as exc:
                raise credentials_error(f"minting an ID token for {audience}", exc, CREDENTIALS_HINT + (
                    ", or set gcp.invoke_token (or gcp.authenticated: false for an endpoint that needs none)"
                )) from None
            return f"Bearer {self._id_credentials.token}"

    def events(self) -> list[CallEvent]:
        """What the open requests reported since the last call; nothing before the first invocation."""
        with self._lock:
            dispatcher = self._dispatcher
        return dispatcher.events() if dispatcher is not None else []

    def close(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.close()
        self.store.close()


@hookimpl
def pywren_connect(config: Mapping[str, Any], role: str, runtime: Any, notify: Callable[[], None]) -> GcpSession:
    return GcpSession(config, role, runtime, notify)


@hookimpl
def pywren_storage_put(session: GcpSession, key: str, data: bytes) -> None:
    session.store.put(session.bucket, key, data)


@hookimpl
def pywren_storage_get(session: GcpSession, key: str, byte_range: tuple[int, int] | None) -> bytes:
    return session.store.get(session.bucket, key, byte_range)


@hookimpl
def pywren_storage_list(session: GcpSession, prefix: str) -> list[str]:
    return session.store.list(session.bucket, prefix)


@hookimpl
def pywren_storage_delete(session: GcpSession, keys: Sequence[str]) -> None:
    session.store.delete(session.bucket, keys)


# --- data: objects in any bucket the credentials reach (gs://BUCKET/KEY), on the client (listing,
# planning) and in the function (ranged reads), through the same store as the job bucket ----------


@hookimpl
def pywren_data_list(session: GcpSession, bucket: str, prefix: str) -> list[tuple[str, int]]:
    return session.store.list_sizes(bucket, prefix)


@hookimpl
def pywren_data_get(session: GcpSession, bucket: str, key: str, byte_range: tuple[int, int] | None) -> bytes:
    return session.store.get(bucket, key, byte_range)


@hookimpl
def pywren_data_open(session: GcpSession, bucket: str, key: str, byte_range: tuple[int, int]) -> Any:
    return session.store.open_range(bucket, key, byte_range)


@hookimpl
def pywren_data_put(session: GcpSession, bucket: str, key: str, data: bytes) -> None:
    session.store.put(bucket, key, data)


@hookimpl
def pywren_data_delete(session: GcpSession, bucket: str, keys: Sequence[str]) -> None:
    session.store.delete(bucket, keys)


@hookimpl
def pywren_invoke(session: GcpSession, payload: Mapping[str, Any]) -> None:
    dispatcher = session.dispatcher()
    dispatcher.invoke(payload, session.authorization(dispatcher.url))


@hookimpl
def pywren_poll_events(session: GcpSession) -> list[CallEvent]:
    """Error lines from the handler and held-open requests that broke (see ``pywren_gcp.invoker``)."""
    return session.events()


@hookimpl
def pywren_deploy(session: GcpSession, config: Mapping[str, Any]) -> str:
    bucket = session.store.bucket(session.bucket)
    with errors_mapped(f"creating gs://{bucket.name}"):
        if not bucket.exists():
            session.store.client.create_bucket(bucket, location=config["region"])
    with credentials_mapped("deploying the function"):
        return deploy_module.deploy(session.api(), config, session.runtime)


@hookimpl
def pywren_remove(session: GcpSession, config: Mapping[str, Any]) -> str:
    with credentials_mapped("removing the function"):
        return deploy_module.remove(session.api(), config, session.runtime)  # one runtime's, or all


@hookimpl
def pywren_close(session: GcpSession) -> None:
    session.close()
