"""Invoking the function: HTTP requests held open for the calls' duration, on one event-loop thread.

Cloud Run functions give an instance CPU only while it is answering a request, so a call must run
inside its request: the request stays open until the call has finished. The client therefore holds
many long requests at once, which it does without a thread each: a single thread runs an asyncio
loop that writes each request, waits for the handler's acknowledgement line (the platform accepted
the call and it is running), then keeps reading until the response ends. ``pywren_invoke`` returns
at the acknowledgement, so the core's bounded invoker threads are free again within milliseconds.

Connections are bounded too (``max_connections``). Below the bound every invocation is a request
of its own, which is what the platform load-balances and scales on. At the bound, the invocations
that are waiting are packed into the next request that starts (up to ``calls_per_request`` and the
32 MB request limit) and the handler runs them concurrently: a 10,000-call map needs neither
10,000 threads nor 10,000 sockets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import ssl
import threading
from collections import deque
from urllib.parse import urlsplit

import attrs

from pywren_core.errors import InvokeError, ThrottledError
from pywren_gcp import __version__

log = logging.getLogger("pywren_gcp")

#: The first line of every accepted response, sent by the handler before it runs the calls.
ACK = b'{"accepted":'
#: Largest request body Cloud Run accepts over HTTP/1.1.
MAX_REQUEST_BYTES = 32 * 2**20
#: Statuses that mean "not now": the core waits and invokes again.
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_HEAD_LIMIT = 64 * 1024


@attrs.define(eq=False)
class _Waiting:
    body: bytes
    authorization: str
    accepted: concurrent.futures.Future


@attrs.define
class DispatchStats:
    """Counters for benchmarks and tests: how many requests and sockets the calls really used."""

    requests: int = 0
    invocations: int = 0
    open: int = 0
    peak_open: int = 0
    largest_batch: int = 0


class Dispatcher:
    """Sends invocations to one function URL from a single event-loop thread."""

    def __init__(self, url: str, max_connections: int, calls_per_request: int, accept_timeout: float,
                 hold_timeout: float):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvokeError(f"the function URL must be http:// or https://, got {url!r}")
        self.url = url
        self._host = parts.hostname
        self._tls = parts.scheme == "https"
        self._port = parts.port or (443 if self._tls else 80)
        self._host_header = parts.netloc.rpartition("@")[2]
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.max_connections = max_connections
        self.calls_per_request = calls_per_request
        self.accept_timeout = accept_timeout
        self.hold_timeout = hold_timeout
        self.stats = DispatchStats()
        self._waiting: deque[_Waiting] = deque()
        self._tasks: set[asyncio.Task] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pywren-gcp-invoker", daemon=True)
        self._thread.start()

    def invoke(self, payload_json: bytes, authorization: str = "") -> None:
        """Send one payload; return when the handler acknowledged it, raise if the platform refused."""
        item = _Waiting(payload_json, authorization, concurrent.futures.Future())
        self._loop.call_soon_threadsafe(self._enqueue, item)
        try:
            item.accepted.result(timeout=2 * self.accept_timeout)
        except concurrent.futures.TimeoutError:
            # Still waiting for a free connection: withdraw it, so that the core's next attempt is the
            # only one. (A request already sent settles within accept_timeout, before this.)
            if item.accepted.cancel():
                raise ThrottledError(f"no connection to {self.url} came free for the call within "
                                     f"{2 * self.accept_timeout} s") from None
            item.accepted.result()

    def close(self) -> None:
        """Drop the open requests and stop the loop thread."""
        if self._loop.is_closed():
            return

        def stop() -> None:
            _settle(list(self._waiting), InvokeError("the invocation was abandoned: its session was closed"))
            for task in self._tasks:
                task.cancel()
            self._loop.stop()

        self._loop.call_soon_threadsafe(stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    # --- on the loop thread --------------------------------------------------------------------

    def _enqueue(self, item: _Waiting) -> None:
        self._waiting.append(item)
        self._pump()

    def _pump(self) -> None:
        while self.stats.open < self.max_connections:
            batch: list[_Waiting] = []
            size = 64
            while self._waiting and len(batch) < self.calls_per_request:
                item = self._waiting[0]
                if item.accepted.cancelled():  # withdrawn by its caller while it waited
                    self._waiting.popleft()
                    continue
                if batch and size + len(item.body) + 1 > MAX_REQUEST_BYTES:
                    break
                batch.append(self._waiting.popleft())
                size += len(item.body) + 1
            if not batch:
                return
            self.stats.open += 1
            self.stats.peak_open = max(self.stats.peak_open, self.stats.open)
            self.stats.requests += 1
            self.stats.invocations += len(batch)
            self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
            task = self._loop.create_task(self._request(batch))
            self._tasks.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        self.stats.open -= 1
        self._pump()

    async def _request(self, batch: list[_Waiting]) -> None:
        writer = None
        try:
            try:
                reader, writer = await asyncio.wait_for(self._connect(), self.accept_timeout)
            except (OSError, asyncio.TimeoutError) as exc:
                _settle(batch, InvokeError(f"cannot connect to the function at {self.url}: {_describe(exc)}"))
                return
            body = b'{"payloads":[' + b",".join(item.body for item in batch) + b"]}"
            writer.write(self._head(len(body), batch[-1].authorization) + body)
            try:
                await asyncio.wait_for(self._accepted(reader), self.accept_timeout)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                _settle(batch, ThrottledError(f"the function at {self.url} did not accept the call: {_describe(exc)}"))
                return
            except (ThrottledError, InvokeError) as exc:
                _settle(batch, exc)
                return
            _settle(batch, None)
            # Hold the request open while the calls run: the platform gives CPU only to open requests.
            await asyncio.wait_for(_drain(reader), self.hold_timeout)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
            log.debug("an accepted request to %s ended early: %s", self.url, _describe(exc))
        finally:
            _settle(batch, InvokeError("the invocation was abandoned: its session was closed"))
            if writer is not None:
                writer.close()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        context = ssl.create_default_context() if self._tls else None
        return await asyncio.open_connection(self._host, self._port, ssl=context, limit=_HEAD_LIMIT,
                                             server_hostname=self._host if self._tls else None)

    def _head(self, length: int, authorization: str) -> bytes:
        lines = [
            f"POST {self._path} HTTP/1.1",
            f"Host: {self._host_header}",
            "Content-Type: application/json",
            f"Content-Length: {length}",
            f"User-Agent: pywren-gcp/{__version__}",
            "Connection: close",
        ]
        if authorization:
            lines.append(f"Authorization: {authorization}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _accepted(self, reader: asyncio.StreamReader) -> None:
        """Read the status line and headers, then up to the acknowledgement; raise on a refusal."""
        head = await reader.readuntil(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        try:
            status = int(status_line.split()[1])
        except (IndexError, ValueError):
            raise InvokeError(f"the function at {self.url} answered something not HTTP: {status_line[:80]!r}") from None
        if status != 200:
            text = await _read_some(reader)
            message = f"the function at {self.url} answered HTTP {status}: {text[:300]}"
            if status in RETRYABLE_STATUS:
                raise ThrottledError(message, retry_after=_retry_after(head))
            raise InvokeError(message)
        seen = b""
        while ACK not in seen:
            chunk = await reader.read(4096)
            if not chunk:
                raise InvokeError(f"the function at {self.url} answered 200 without accepting the call: {seen[:200]!r}")
            seen = seen[-len(ACK):] + chunk


def _settle(batch: list[_Waiting], error: BaseException | None) -> None:
    for item in batch:
        try:
            if error is None:
                item.accepted.set_result(None)
            else:
                item.accepted.set_exception(error)
        except concurrent.futures.InvalidStateError:  # settled before, or withdrawn by its caller
            pass


async def _drain(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


async def _read_some(reader: asyncio.StreamReader) -> str:
    try:
        data = await asyncio.wait_for(reader.read(4096), 5)
    except (OSError, asyncio.TimeoutError):
        return ""
    return data.decode("utf-8", "replace").strip()


def _retry_after(head: bytes) -> float | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"retry-after":
            try:
                return float(value.strip())
            except ValueError:
                return None
    return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
