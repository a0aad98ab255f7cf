"""Starting calls on the function app: a Storage Queue message (the default) or an HTTP POST.

The queue is the default because Azure scales a function app per instance and slowly on bursts:
messages wait in the queue, nothing is lost while the platform scales out on queue length. HTTP
answers sooner but a burst lands on the instances that exist; the function answers 429 when its
instance has no free slot and the core backs off and re-invokes.

Both invokers pace themselves to ``invoke_rate`` calls per second across all the client's invoker
threads, so a burst of thousands of calls is spread out instead of fired at once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import requests
from azure.core.exceptions import AzureError
from azure.storage.queue import QueueClient

from pywren_azure.errors import retry_after, scrub, translate
from pywren_core.backend import Pacer
from pywren_core.errors import ConfigError, InvokeError, ThrottledError

#: A queue message holds at most 64 KiB of text; base64 makes 3 bytes into 4 characters.
QUEUE_MESSAGE_CHARS = 64 * 1024
#: Largest JSON payload that fits one queue message once base64-encoded, with room to spare.
MAX_PAYLOAD_BYTES = QUEUE_MESSAGE_CHARS * 3 // 4 - 64
#: Default pace of HTTP invocations (calls/s); queue messages are not paced unless asked.
DEFAULT_HTTP_RATE = 100.0
HTTP_ROUTE = "pywren"


def encode(payload: Mapping[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"))


def pacer(config: Mapping[str, Any]) -> Pacer:
    rate = config["invoke_rate"]
    if rate is None:
        rate = 0.0 if config["trigger"] == "queue" else DEFAULT_HTTP_RATE
    return Pacer(float(rate))


def function_url(config: Mapping[str, Any]) -> str:
    if config.get("function_url"):
        return config["function_url"]
    if config.get("function_app"):
        return f"https://{config['function_app']}.azurewebsites.net/api/{HTTP_ROUTE}"
    raise ConfigError("azure: trigger 'http' needs azure.function_app or azure.function_url")


class QueueInvoker:
    """One base64 message per invocation on the queue the function app's queue trigger reads."""

    def __init__(self, queue: QueueClient, pace: Pacer, secrets: tuple[str, ...]):
        self.queue = queue
        self.pace = pace
        self.secrets = secrets

    def send(self, payload: Mapping[str, Any]) -> None:
        text = encode(payload)
        if len(text.encode()) > MAX_PAYLOAD_BYTES:
            raise InvokeError(f"payload of {len(text)} bytes is over the queue message limit of {MAX_PAYLOAD_BYTES}")
        self.pace.wait()
        try:
            self.queue.send_message(text)
        except AzureError as exc:
            error = translate(exc, f"enqueue on queue {self.queue.queue_name!r}", self.secrets)
            if isinstance(error, ThrottledError):
                raise error from None
            raise InvokeError(str(error)) from None

    def close(self) -> None:
        self.queue.close()


class HttpInvoker:
    """One POST per invocation to the function's HTTP trigger, with the function key in a header."""

    def __init__(self, http: requests.Session, url: str, key: str | None, pace: Pacer, secrets: tuple[str, ...]):
        self.http = http
        self.url = url
        self.headers = {"content-type": "application/json", **({"x-functions-key": key} if key else {})}
        self.pace = pace
        self.secrets = secrets

    def send(self, payload: Mapping[str, Any]) -> None:
        body = encode(payload).encode()
        self.pace.wait()
        try:
            response = self.http.post(self.url, data=body, headers=self.headers, timeout=(10, 60))
        except requests.RequestException as exc:
            # Azure's front end drops connections under sudden bursts: wait and send again.
            message = scrub(f"the function app did not answer: {type(exc).__name__}", self.secrets)
            raise ThrottledError(message) from None
        if response.status_code in (200, 202):
            return
        if response.status_code in (429, 503):
            busy = f"the function app is busy (HTTP {response.status_code})"
            raise ThrottledError(busy, retry_after(response.headers))
        if response.status_code in (401, 403):
            raise InvokeError(f"the function app refused the function key (HTTP {response.status_code}): "
                              "check azure.function_key")
        detail = scrub(response.text[:200], self.secrets)
        raise InvokeError(f"the function app answered HTTP {response.status_code}: {detail}")

    def close(self) -> None:
        """Nothing of its own to release: the HTTP connections belong to the session."""
