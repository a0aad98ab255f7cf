"""A small Azure Functions host for the tests: it runs the plugin's real FunctionApp.

No Functions host can be installed on the test machines, so this stands in for it, in a process
of its own, doing what the real host does for the two trigger kinds the app uses:

- HTTP triggers are served at ``/api/<route>``; unless a trigger is anonymous, the request must
  carry the function key (header ``x-functions-key`` or ``?code=``), else it is answered 401;
- queue triggers are run off the Storage Queue (Azurite) named by the trigger, its connection
  string read from the app setting the trigger names; messages are base64 text, handed to the
  function with their ``dequeue_count`` (1 on the first delivery, one more on each redelivery),
  deleted after the function returned. A message whose function raised is delivered again after
  host.json's ``visibilityTimeout``, and moved to ``<queue>-poison`` once it has been delivered
  ``maxDequeueCount`` times; an idle queue is polled at least every ``maxPollingInterval``.

At most ``--concurrency`` function invocations run at once. ``async`` functions run on one event
loop, as in the Python worker. ``/admin/host/status`` answers once everything is running, with
counters the tests check; ``POST /admin/host/lose-deliveries?count=N`` makes the next N queue
deliveries fail before the function runs, as on an instance that crashed. With ``--trace FILE``
every message and request body received is appended to FILE, so tests can inspect exactly what
the client sent.

Usage: ``python functions_host.py --port P --concurrency 8 [--host-json FILE] [--trace FILE]
[--app module:attr] [--app-dir DIR]``, function key in the environment variable
``FUNCTIONS_TEST_KEY``; app settings (``AzureWebJobsStorage``, ``PYWREN_PAYLOAD_KEY``...) in the
environment, as on Azure.

``--app-dir DIR`` runs a deployed package as the Python worker does: DIR (the unpacked zip) and
its ``.python_packages/lib/site-packages`` go first on ``sys.path``, before anything this host
imports, this script's own folder (the tests') comes off it, and the app is ``function_app:app``
from DIR. Started with a bare virtual environment's interpreter, the app then sees the package and
what that environment holds (the platform's azure-functions) and nothing else. The host's own
queue polling then uses the package's azure-storage-queue (the real host is .NET and needs none).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import importlib
import inspect
import json
import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit


def _use_app_dir() -> None:
    """With ``--app-dir DIR``: the deployed package first on sys.path, the tests' folder off it."""
    if "--app-dir" not in sys.argv:
        return
    root = os.path.abspath(sys.argv[sys.argv.index("--app-dir") + 1])
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    sys.path[:0] = [root, os.path.join(root, ".python_packages", "lib", "site-packages")]
    os.chdir(root)


_use_app_dir()

import azure.functions as func  # noqa: E402
from azure.core.exceptions import ResourceExistsError  # noqa: E402
from azure.functions.queue import QueueMessage as DeliveredMessage  # noqa: E402  (what the Python worker hands a trigger)
from azure.storage.queue import QueueClient  # noqa: E402

#: How long a received message stays invisible while its function runs.
VISIBILITY_TIMEOUT = 300
POLL_MIN = 0.05
#: The queue extension's defaults, for what host.json does not say.
QUEUE_DEFAULTS = {"maxDequeueCount": 5, "visibilityTimeout": "00:00:00", "maxPollingInterval": "00:01:00"}
log = logging.getLogger("functions_host")


def _value(v: Any) -> str:
    return str(getattr(v, "value", v))


def _seconds(timespan: str) -> float:
    """host.json's "HH:MM:SS" as seconds."""
    hours, minutes, seconds = timespan.split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def queue_settings(host_json: str | None) -> dict[str, Any]:
    """The queue extension's settings from host.json, with the platform's defaults."""
    settings = dict(QUEUE_DEFAULTS)
    if host_json:
        with open(host_json) as f:
            settings.update(json.load(f).get("extensions", {}).get("queues", {}))
    return settings


class Host:
    def __init__(self, app: func.FunctionApp, key: str, concurrency: int, trace: str | None,
                 queues: dict[str, Any] | None = None):
        self.key = key
        self.concurrency = concurrency
        queues = queues or queue_settings(None)
        self.max_dequeue = int(queues["maxDequeueCount"])
        self.retry_delay = _seconds(queues["visibilityTimeout"])
        self.max_poll = _seconds(queues["maxPollingInterval"])
        self._trace = open(trace, "a") if trace else None
        self._trace_lock = threading.Lock()
        self._count_lock = threading.Condition()
        self.running = 0
        self.max_running = 0
        self.invocations = 0
        self.failures = 0
        #: Queue deliveries still to lose (POST /admin/host/lose-deliveries?count=N).
        self.lost_deliveries = 0
        self.stopping = threading.Event()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="host-loop", daemon=True).start()
        self.routes: dict[str, tuple[Any, dict[str, Any]]] = {}
        self.queue_triggers: list[tuple[Any, dict[str, Any]]] = []
        for function in app.get_functions():  # the azure-functions library allows this call once only
            trigger = function.get_trigger().get_dict_repr()
            if trigger["type"] == "httpTrigger":
                self.routes[trigger["route"]] = (function.get_user_function(), trigger)
            elif trigger["type"] == "queueTrigger":
                self.queue_triggers.append((function.get_user_function(), trigger))
            else:
                raise SystemExit(f"this test host does not run {trigger['type']} triggers")

    def trace(self, via: str, body: str) -> None:
        if self._trace is not None:
            with self._trace_lock:
                self._trace.write(json.dumps({"via": via, "body": body}) + "\n")
                self._trace.flush()

    def acquire(self, block: bool = True) -> bool:
        with self._count_lock:
            while self.running >= self.concurrency:
                if not block or self.stopping.is_set():
                    return False
                self._count_lock.wait(0.5)
            self.running += 1
            self.invocations += 1
            self.max_running = max(self.max_running, self.running)
            return True

    def release(self, failed: bool) -> None:
        with self._count_lock:
            self.running -= 1
            self.failures += failed
            self._count_lock.notify_all()

    def take_lost_delivery(self) -> bool:
        """Whether to lose this delivery, as an instance that crashes does: its message comes back."""
        with self._count_lock:
            lose, self.lost_deliveries = self.lost_deliveries > 0, max(0, self.lost_deliveries - 1)
            return lose

    def free_slots(self) -> int:
        with self._count_lock:
            return self.concurrency - self.running

    def call(self, function: Any, trigger: dict[str, Any], argument: Any) -> Any:
        """Run one invocation (the caller holds a slot)."""
        kwargs = {trigger["name"]: argument}
        if inspect.iscoroutinefunction(function):
            return asyncio.run_coroutine_threadsafe(function(**kwargs), self.loop).result()
        return function(**kwargs)

    def status(self) -> dict[str, Any]:
        with self._count_lock:
            return {"state": "Running", "running": self.running, "max_running": self.max_running,
                    "invocations": self.invocations, "failures": self.failures}

    # --- queue triggers -----------------------------------------------------------------------

    def open_queue(self, trigger: dict[str, Any], name: str) -> QueueClient:
        connection = os.environ[trigger.get("connection") or "AzureWebJobsStorage"]
        queue = QueueClient.from_connection_string(connection, name)
        try:
            queue.create_queue()
        except ResourceExistsError:
            pass
        return queue

    def poll_queue(self, function: Any, trigger: dict[str, Any], pool: ThreadPoolExecutor) -> None:
        queue = self.open_queue(trigger, trigger["queueName"])
        poison = self.open_queue(trigger, trigger["queueName"] + "-poison")
        idle = POLL_MIN
        while not self.stopping.is_set():
            room = self.free_slots()
            if room <= 0:
                time.sleep(0.01)
                continue
            try:
                messages = list(queue.receive_messages(messages_per_page=min(32, room), max_messages=min(32, room),
                                                       visibility_timeout=VISIBILITY_TIMEOUT))
            except Exception as exc:  # Azurite busy or restarting: try again shortly
                log.warning("receiving from %s failed: %r", trigger["queueName"], exc)
                messages = []
            if not messages:
                time.sleep(idle)
                idle = min(self.max_poll, idle * 2)
                continue
            idle = POLL_MIN
            for message in messages:
                self.acquire()
                pool.submit(self.run_message, function, trigger, queue, poison, message)

    def run_message(self, function: Any, trigger: dict[str, Any], queue: QueueClient, poison: QueueClient,
                    message: Any) -> None:
        failed = True
        try:
            self.trace("queue", message.content)
            body = base64.b64decode(message.content, validate=True)
            if self.take_lost_delivery():
                raise RuntimeError("the instance running this message was lost (a test asked for it)")
            self.call(function, trigger, DeliveredMessage(id=message.id, body=body, pop_receipt=message.pop_receipt,
                                                           dequeue_count=message.dequeue_count))
            queue.delete_message(message)
            failed = False
        except binascii.Error:
            log.error("message %s is not base64: moved to the poison queue", message.id)
            poison.send_message(message.content)
            queue.delete_message(message)
        except Exception as exc:
            log.exception("function failed on message %s (delivery %s)", message.id, message.dequeue_count)
            try:
                if message.dequeue_count >= self.max_dequeue:
                    poison.send_message(message.content)
                    queue.delete_message(message)
                else:
                    queue.update_message(message, visibility_timeout=int(self.retry_delay))
            except Exception:
                log.exception("could not hand message %s back after %r", message.id, exc)
        finally:
            self.release(failed)

    # --- HTTP triggers --------------------------------------------------------------------------

    def handler(self) -> type[BaseHTTPRequestHandler]:
        host = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # one line per request is noise
                pass

            def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    if name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self.dispatch("GET")

            def do_POST(self) -> None:
                self.dispatch("POST")

            def dispatch(self, method: str) -> None:
                url = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if url.path == "/admin/host/status":
                    return self.reply(200, json.dumps(host.status()).encode())
                if url.path == "/admin/host/lose-deliveries" and method == "POST":
                    with host._count_lock:
                        host.lost_deliveries = int(dict(parse_qsl(url.query)).get("count", 1))
                    return self.reply(204)
                route = url.path.removeprefix("/api/")
                if not url.path.startswith("/api/") or route not in host.routes:
                    return self.reply(404, b"no such function")
                function, trigger = host.routes[route]
                if method not in [_value(m).upper() for m in trigger.get("methods") or ["GET", "POST"]]:
                    return self.reply(405)
                params = dict(parse_qsl(url.query))
                if _value(trigger.get("authLevel", "function")).lower() != "anonymous":
                    given = self.headers.get("x-functions-key") or params.get("code")
                    if given != host.key:
                        return self.reply(401)
                host.trace("http", body.decode(errors="replace"))
                request = func.HttpRequest(method, f"http://{self.headers.get('Host')}{self.path}",
                                           headers=dict(self.headers), params=params, route_params={}, body=body)
                host.acquire()
                failed = True
                try:
                    response = host.call(function, trigger, request)
                    failed = False
                except Exception:
                    log.exception("function %s failed", route)
                    return self.reply(500, b"the function raised")
                finally:
                    host.release(failed)
                self.reply(response.status_code, response.get_body(), dict(response.headers))

        return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # a burst of client connections must not overflow the listen backlog


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--trace")
    parser.add_argument("--host-json", help="the app's host.json (queue retry and polling settings)")
    parser.add_argument("--app", default=None, help="module:attr (default: pywren_azure.function_app:app, or with "
                        "--app-dir the package's function_app:app)")
    parser.add_argument("--app-dir", help="an unpacked deployed package, run as the Python worker runs it")
    args = parser.parse_args()
    args.app = args.app or ("function_app:app" if args.app_dir else "pywren_azure.function_app:app")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    module_name, _, attr = args.app.partition(":")
    app = getattr(importlib.import_module(module_name), attr)
    host = Host(app, os.environ["FUNCTIONS_TEST_KEY"], args.concurrency, args.trace, queue_settings(args.host_json))
    pool = ThreadPoolExecutor(args.concurrency, thread_name_prefix="host-invocation")
    for function, trigger in host.queue_triggers:
        threading.Thread(target=host.poll_queue, args=(function, trigger, pool), daemon=True).start()
    server = _Server(("127.0.0.1", args.port), host.handler())

    def stop(signum: int, frame: Any) -> None:
        host.stopping.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    log.info("serving %s on 127.0.0.1:%s: routes %s, queues %s", args.app, args.port, sorted(host.routes),
             [t["queueName"] for _, t in host.queue_triggers])
    server.serve_forever()
    server.server_close()
    sys.exit(0)


if __name__ == "__main__":
    main()
