"""Starting calls on the function app: a Storage Queue message (the default) or an HTTP POST.

The queue is the default because Azure scales a function app per instance and slowly on bursts:
messages wait in the queue, nothing is lost while the platform scales out on queue length. HTTP
answers sooner but a burst lands on the instances that exist; the function answers 429 when its
instance has no free slot and the core backs off and re-invokes.

Neither retries: a refused connection is an InvokeError naming where it went, a request sent
whose answer was lost an AmbiguousInvokeError, and the core decides what to send again.

Both invokers pace themselves to ``invoke_rate`` calls per second across all the client's invoker
threads, so a burst of thousands of calls is spread out instead of fired at once.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3
from azure.core.exceptions import AzureError, ResourceNotFoundError, ServiceResponseError
from azure.storage.queue import QueueClient

from pywren_azure import __version__
from pywren_azure.errors import retry_after, scrub, translate
from pywren_core.backend import CallEvent, Pacer
from pywren_core.errors import AmbiguousInvokeError, ConfigError, InvokeError, ThrottledError

log = logging.getLogger("pywren_azure")

#: A queue message holds at most 64 KiB of text; base64 makes 3 bytes into 4 characters.
QUEUE_MESSAGE_CHARS = 64 * 1024
#: Largest JSON payload that fits one queue message once base64-encoded, with room to spare.
MAX_PAYLOAD_BYTES = QUEUE_MESSAGE_CHARS * 3 // 4 - 64
#: Default pace of HTTP invocations (calls/s); queue messages are not paced unless asked.
DEFAULT_HTTP_RATE = 100.0
#: Connections kept to the function app: more than the core's invoker threads (64 by default), so
#: that no POST opens a connection only to drop it afterwards.
HTTP_POOL = 128
HTTP_ROUTE = "pywren"
#: Reading the poison queue: at most every POISON_INTERVAL s, up to POISON_READ messages, each
#: hidden POISON_HIDE s from the next reader (so the next reads see the ones behind it).
POISON_INTERVAL = 5.0
POISON_READ = 128
POISON_HIDE = 30
PAYLOAD_KEY_COMMAND = 'python -c "import secrets; print(secrets.token_hex(32))"'


def encode(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"))


def pacer(config: Mapping[str, Any]) -> Pacer:
    rate = config["invoke_rate"]
    if rate is None:
        rate = 0.0 if config["trigger"] == "queue" else DEFAULT_HTTP_RATE
    return Pacer(float(rate))


# --- where a runtime's calls go -------------------------------------------------------------
#
# Each runtime has a function app of its own (a Python app carries one set of packages, replaced
# whole by a zip deploy), named after the runtime's label, and a queue and an HTTP route named
# after the runtime's *name* (a hash of its packages): a call can only ever reach an app that
# carries exactly the packages it was checked against. Without a runtime, today's names apply.


def runtime_label(runtime: Any) -> str:
    """The config's name for ``runtime`` (``Runtime.label``: the label asked for, even when the same
    pinned set was built first under another)."""
    if runtime is None:
        return "default"
    return str(getattr(runtime, "label", None) or runtime.manifest.get("label") or "default")


def app_name(config: Mapping[str, Any], runtime: Any) -> str | None:
    """The function app that carries ``runtime``: ``function_app`` for no runtime or the default
    one, ``<function_app>-<label>`` for a named one (``runtimes: {ml: ...}`` -> ``my-app-ml``)."""
    app = config.get("function_app")
    label = runtime_label(runtime)
    if not app or label == "default":
        return app
    return f"{app}-{re.sub(r'[^a-z0-9]+', '-', label.lower()).strip('-')}"


def queue_name(config: Mapping[str, Any], runtime: Any) -> str:
    """The call queue of ``runtime``'s app: ``<queue>-<runtime name>`` (``pywren-calls-rt-1a2b...``)."""
    if runtime is None:
        return config["queue"]
    name = f"{config['queue']}-{runtime.name}"
    if len(name) > 63 - len("-poison"):
        raise ConfigError(f"azure.queue {config['queue']!r} is too long to name runtime {runtime.name}'s queue "
                          f"({name!r}, with its -poison queue, must fit in 63 characters): shorten it")
    return name


def http_route(runtime: Any) -> str:
    """The HTTP trigger's route: ``pywren``, or ``pywren/<runtime name>`` for a runtime's app."""
    return HTTP_ROUTE if runtime is None else f"{HTTP_ROUTE}/{runtime.name}"


def function_url(config: Mapping[str, Any], runtime: Any = None) -> str:
    """The HTTP trigger's URL; an explicit ``function_url`` is the default app's, and a runtime's
    route is appended to it (``.../api/pywren/rt-1a2b...``)."""
    if config.get("function_url"):
        url = config["function_url"]
        return url if runtime is None else f"{url.rstrip('/')}/{runtime.name}"
    app = app_name(config, runtime)
    if app:
        return f"https://{app}.azurewebsites.net/api/{http_route(runtime)}"
    raise ConfigError("azure: trigger 'http' needs azure.function_app or azure.function_url")


class QueueInvoker:
    """One base64 message per invocation on the queue the function app's queue trigger reads.

    A message rests in the storage account, readable by anyone with the account key, so it only
    ever carries a sealed job secret (see ``payload_key``). The invoker also watches the poison
    queue for the messages of the executors it sent for: see :meth:`poll_events`.
    """

    def __init__(self, queue: QueueClient, poison: QueueClient, pace: Pacer, secrets: tuple[str, ...]):
        self.queue = queue
        self.poison = poison
        self.pace = pace
        self.secrets = secrets
        #: Where messages go, for errors: the queue's URL without its query (a SAS would be a credential).
        self.where = urlsplit(queue.url)._replace(query="").geturl()
        self.executors: set[str] = set()
        self._next_poison_read = 0.0

    def send(self, payload: Mapping[str, Any]) -> None:
        if "secret" in payload:
            raise InvokeError(
                f"refusing to put a job's signing secret in the clear into queue {self.queue.queue_name!r}, where "
                f"anyone with the storage account key could read it: set azure.payload_key (make one with: "
                f"{PAYLOAD_KEY_COMMAND}) and run pywren deploy, so the function app holds the same key"
            )
        text = encode(payload)
        if len(text.encode()) > MAX_PAYLOAD_BYTES:
            raise InvokeError(f"payload of {len(text)} bytes is over the queue message limit of {MAX_PAYLOAD_BYTES}")
        self.executors.add(payload["executor_id"])
        self.pace.wait()
        what = f"enqueue on queue {self.where}"
        try:
            self.queue.send_message(text)
        except ServiceResponseError as exc:
            raise AmbiguousInvokeError(scrub(f"{what}: the answer was lost: {exc.message}", self.secrets)) from None
        except AzureError as exc:
            error = translate(exc, what, self.secrets)
            if isinstance(error, ThrottledError):
                raise error from None
            raise InvokeError(str(error)) from None

    def poll_events(self) -> list[CallEvent]:
        """Calls whose message the platform gave up on: after ``maxDequeueCount`` failed deliveries
        it moves the message to ``<queue>-poison``, and its calls will never report.

        Reads the poison queue at most every POISON_INTERVAL seconds, POISON_READ messages at a time.
        Messages of other executors are left in place, hidden from the next reader for POISON_HIDE
        seconds so that successive reads walk the whole queue; this executor's are deleted once
        reported. A message that is not a pywren payload is someone else's and is left alone.
        """
        if not self.executors or time.monotonic() < self._next_poison_read:
            return []
        self._next_poison_read = time.monotonic() + POISON_INTERVAL
        events: list[CallEvent] = []
        try:
            for message in self.poison.receive_messages(messages_per_page=32, max_messages=POISON_READ,
                                                        visibility_timeout=POISON_HIDE):
                payload = _payload_in(message.content)
                if payload is None or payload.get("executor_id") not in self.executors:
                    continue
                events += [
                    CallEvent(payload["executor_id"], payload["job_id"], call["call_id"], call["attempt"], "error",
                              f"the function app failed on this call's queue message at every delivery, and Azure "
                              f"moved it to queue {self.poison.queue_name!r}; the function app's log says why")
                    for call in payload.get("calls", [])
                ]
                self.poison.delete_message(message)
        except ResourceNotFoundError:  # no message has ever been poisoned: the platform creates it then
            pass
        except AzureError as exc:  # polling must not fail the monitor: the next round reads again
            log.warning("%s", translate(exc, f"read poison queue {self.poison.queue_name!r}", self.secrets))
        return events

    def close(self) -> None:
        self.queue.close()
        self.poison.close()


def _payload_in(content: str) -> dict[str, Any] | None:
    """The pywren payload in a raw (base64) queue message, or None if it is something else."""
    try:
        payload = json.loads(base64.b64decode(content, validate=True))
    except ValueError:
        return None
    return payload if isinstance(payload, dict) and isinstance(payload.get("calls"), list) else None


def _reached(exc: urllib3.exceptions.HTTPError) -> bool:
    """Whether a failed request may have reached the function app, so its calls may be running:
    an answer lost after sending. A refused or timed-out connection (``NewConnectionError`` is a
    ``ConnectTimeoutError``), a failed TLS handshake, a proxy that failed or a bad URL sent nothing."""
    return isinstance(exc, (urllib3.exceptions.ReadTimeoutError, urllib3.exceptions.ProtocolError))


def _connections(url: str) -> urllib3.PoolManager:
    """Connections to the function app at ``url``, one per invoker thread, set up as requests would.

    The environment (proxies and ``NO_PROXY``, ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE``, else
    certifi's CA bundle) is read here, once: through a ``requests`` session, which reads it on
    every request, a POST cost the client twice the CPU it costs through urllib3 alone.
    """
    with requests.Session() as http:
        environment = http.merge_environment_settings(url, {}, None, None, None)
    options: dict[str, Any] = {"num_pools": 1, "maxsize": HTTP_POOL, "retries": False,
                               "timeout": urllib3.Timeout(connect=10, read=60)}
    verify, cert = environment["verify"], environment["cert"]
    if verify is False:
        options["cert_reqs"] = "CERT_NONE"
    else:
        bundle = verify if isinstance(verify, str) else requests.certs.where()
        options["ca_cert_dir" if os.path.isdir(bundle) else "ca_certs"] = bundle
    if cert:
        options["cert_file"], options["key_file"] = (cert, None) if isinstance(cert, str) else cert
    proxy = requests.utils.select_proxy(url, environment["proxies"])
    if not proxy:
        return urllib3.PoolManager(**options)
    if proxy.startswith("socks"):
        from urllib3.contrib.socks import SOCKSProxyManager  # needs PySocks, as requests does

        return SOCKSProxyManager(proxy, **options)
    return urllib3.ProxyManager(proxy, **options)


class HttpInvoker:
    """One POST per invocation to the function's HTTP trigger, with the function key in a header."""

    def __init__(self, url: str, key: str | None, pace: Pacer, secrets: tuple[str, ...]):
        self.url = url
        self.headers = {"content-type": "application/json", "user-agent": f"pywren-azure/{__version__}",
                        **({"x-functions-key": key} if key else {})}
        self.connections = _connections(url)
        self.pace = pace
        self.secrets = secrets

    def send(self, payload: Mapping[str, Any]) -> None:
        body = encode(payload).encode()
        self.pace.wait()
        try:
            # Read whole (preload_content), so the connection goes back to the pool.
            response = self.connections.urlopen("POST", self.url, body=body, headers=self.headers)
        except urllib3.exceptions.HTTPError as exc:
            if _reached(exc):
                # Azure's front end drops connections under sudden bursts; the core sends again.
                raise AmbiguousInvokeError(scrub(f"the function app at {self.url} took the request but its answer "
                                                 f"was lost: {type(exc).__name__}", self.secrets)) from None
            raise InvokeError(scrub(f"could not reach the function app at {self.url}: {_reason(exc)}",
                                    self.secrets)) from None
        status = response.status
        if status in (200, 202):
            return
        if status in (429, 503):
            busy = f"the function app at {self.url} is busy (HTTP {status})"
            raise ThrottledError(busy, retry_after(response.headers))
        if status in (502, 504):  # the front end lost the function's answer
            raise AmbiguousInvokeError(f"the function app at {self.url} answered HTTP {status}")
        if status in (401, 403):
            raise InvokeError(f"the function app at {self.url} refused the function key (HTTP {status}): "
                              "check azure.function_key")
        detail = scrub(response.data[:200].decode("utf-8", "replace"), self.secrets)
        raise InvokeError(f"the function app at {self.url} answered HTTP {status}: {detail}")

    def poll_events(self) -> list[CallEvent]:
        """None: the HTTP trigger answers before the calls run, and nothing reports on them later."""
        return []

    def close(self) -> None:
        self.connections.clear()


def _reason(exc: urllib3.exceptions.HTTPError) -> str:
    """What went wrong, e.g. "NewConnectionError: ...: [Errno 111] Connection refused"."""
    return f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}"
