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

The held-open response is also how the client learns of failures the worker cannot report: the
handler streams one line per payload as it ends, and a line with an ``error`` (the worker runtime
itself failed), or a response that breaks or ends before a payload's line, becomes a
:class:`~pywren_core.backend.CallEvent` for ``pywren_poll_events``, so the core fails or retries
those calls at once instead of after their lost-call timer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import ssl
import threading
from collections import deque
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from pywren_core.backend import CallEvent
from pywren_core.errors import AmbiguousInvokeError, InvokeError, ThrottledError
from pywren_gcp import __version__

#: The first line of every accepted response, sent by the handler before it runs the calls.
ACK = b'{"accepted":'
#: Largest request body Cloud Run accepts over HTTP/1.1.
MAX_REQUEST_BYTES = 32 * 2**20
#: Statuses that mean "not now": the core waits and invokes again.
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_HEAD_LIMIT = 64 * 1024
#: What reading a response that breaks off, stalls or turns to garbage raises.
_BROKEN = (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)


@attrs.define(eq=False)
class _Waiting:
    body: bytes
    authorization: str
    accepted: concurrent.futures.Future
    #: The payload's ids: for its calls' events, and to match the handler's line to it.
    ids: dict[str, Any]

    def events(self, kind: str, message: str) -> list[CallEvent]:
        return [CallEvent(self.ids["executor_id"], self.ids["job_id"], call_id, attempt, kind, message)
                for call_id, attempt in self.ids["call_ids"]]


@attrs.define
class DispatchStats:
    """Counters for benchmarks and tests: how many requests and sockets the calls really used."""

    requests: int = 0
    invocations: int = 0
    #: Invocations the handler acknowledged: their calls are running.
    accepted: int = 0
    #: Call events reported (an error line, a response that broke before a payload's line).
    events: int = 0
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
        self._events: deque[CallEvent] = deque()
        self._waiting: deque[_Waiting] = deque()
        self._tasks: set[asyncio.Task] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pywren-gcp-invoker", daemon=True)
        self._thread.start()

    def invoke(self, payload: Mapping[str, Any], authorization: str = "") -> None:
        """Send one payload; return when the handler acknowledged it, raise if the platform refused."""
        ids = {"executor_id": payload["executor_id"], "job_id": payload["job_id"],
               "call_ids": [[call["call_id"], call["attempt"]] for call in payload["calls"]]}
        body = json.dumps(payload, separators=(",", ":")).encode()
        item = _Waiting(body, authorization, concurrent.futures.Future(), ids)
        self._loop.call_soon_threadsafe(self._enqueue, item)
        try:
            item.accepted.result(timeout=2 * self.accept_timeout)
        except concurrent.futures.TimeoutError:
            # Still waiting for a free connection: withdraw it, so that the core's next attempt is the
            # only one. (Once in a request it cannot be withdrawn; it settles within 2 * accept_timeout.)
            if item.accepted.cancel():
                raise ThrottledError(f"no connection to {self.url} came free for the call within "
                                     f"{2 * self.accept_timeout} s") from None
            item.accepted.result()

    def events(self) -> list[CallEvent]:
        """The call events since the last call (appended by the loop thread); never blocks."""
        return [self._events.popleft() for _ in range(len(self._events))]

    def close(self) -> None:
        """Drop the open requests and stop the loop thread."""
        if self._loop.is_closed():
            return
        with contextlib.suppress(concurrent.futures.TimeoutError):
            asyncio.run_coroutine_threadsafe(self._abandon(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    # --- on the loop thread --------------------------------------------------------------------

    async def _abandon(self) -> None:
        """Settle what waits, and let the open requests unwind (close their sockets) before the loop
        stops: a request left suspended would do that when collected, on a closed loop."""
        waiting = list(self._waiting)
        self._waiting.clear()
        _settle(waiting, InvokeError("the invocation was abandoned: its session was closed"))
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _enqueue(self, item: _Waiting) -> None:
        self._waiting.append(item)
        self._pump()

    def _pump(self) -> None:
        while self.stats.open < self.max_connections:
            batch: list[_Waiting] = []
            size = 64
            while self._waiting and len(batch) < self.calls_per_request:
                item = self._waiting[0]
                if batch and size + len(item.body) + 1 > MAX_REQUEST_BYTES:
                    break
                self._waiting.popleft()
                # Running from here on: its caller can no longer withdraw it. False: it was withdrawn.
                if item.accepted.set_running_or_notify_cancel():
                    batch.append(item)
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
                lines = await asyncio.wait_for(self._accepted(reader), self.accept_timeout)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
                _settle(batch, AmbiguousInvokeError(f"the request to {self.url} was sent but the function's "
                                                    f"acknowledgement was lost: {_describe(exc)}"))
                return
            except (ThrottledError, InvokeError, AmbiguousInvokeError) as exc:
                _settle(batch, exc)
                return
            except (ValueError, asyncio.LimitOverrunError) as exc:  # not HTTP as the handler speaks it
                _settle(batch, InvokeError(f"the function at {self.url} answered something unreadable: "
                                           f"{_describe(exc)}"))
                return
            _settle(batch, None)
            self.stats.accepted += len(batch)
            # Hold the request open while the calls run: the platform gives CPU only to open requests.
            await self._follow(lines, batch, self._loop.time() + self.hold_timeout)
        finally:
            _settle(batch, InvokeError("the invocation was abandoned: its session was closed"))
            if writer is not None:
                writer.close()

    async def _follow(self, lines: _Lines, batch: list[_Waiting], deadline: float) -> None:
        """Read the payloads' lines until ``deadline``; report an error line, and every payload whose
        line never came."""
        waiting = list(batch)
        ending = "ended"
        try:
            while waiting:
                line = await asyncio.wait_for(lines.next(), deadline - self._loop.time())
                if line is None:
                    break
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                item = next((item for item in waiting if _line_is_for(record, item)), None)
                if item is None:
                    continue
                waiting.remove(item)
                if record.get("error"):
                    self._report(item.events("error", f"the worker runtime failed on the function at "
                                                      f"{self.url}: {record['error']}"))
        except _BROKEN as exc:
            ending = "timed out" if isinstance(exc, asyncio.TimeoutError) else f"broke ({_describe(exc)})"
        message = (f"the request to {self.url} that ran the call {ending} before the call reported; "
                   "the call may or may not have run")
        for item in waiting:
            self._report(item.events("died", message))

    def _report(self, events: list[CallEvent]) -> None:
        self.stats.events += len(events)
        self._events.extend(events)

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

    async def _accepted(self, reader: asyncio.StreamReader) -> _Lines:
        """Read the head and the acknowledgement line; raise on a refusal. Returns the lines that follow."""
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
        lines = _Lines(reader, chunked=b"chunked" in _header(head, b"transfer-encoding").lower())
        first = await lines.next()
        if first is None:
            raise AmbiguousInvokeError(f"the function at {self.url} answered 200, then the response ended "
                                       "before its acknowledgement")
        if not first.startswith(ACK):
            raise InvokeError(f"the function at {self.url} answered 200 without accepting the call: {first[:200]!r}")
        return lines


class _Lines:
    """The lines of a response body after its head, de-chunked when it came chunked."""

    def __init__(self, reader: asyncio.StreamReader, chunked: bool):
        self._reader = reader
        self._chunked = chunked
        self._buffer = b""
        self._left = 0  # bytes left in the current chunk
        self._ended = False

    async def next(self) -> bytes | None:
        """The next line without its newline; None at the end of the body. A body that breaks off
        raises (OSError, IncompleteReadError) when it was chunked; otherwise it looks like an end."""
        while b"\n" not in self._buffer:
            data = await self._read()
            if not data:
                rest, self._buffer = self._buffer, b""
                return rest or None
            self._buffer += data
            if len(self._buffer) > _HEAD_LIMIT and b"\n" not in self._buffer:
                raise ValueError(f"a response line over {_HEAD_LIMIT} bytes")
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    async def _read(self) -> bytes:
        if not self._chunked:
            return await self._reader.read(65536)
        if self._ended:
            return b""
        if not self._left:
            self._left = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if not self._left:
                self._ended = True
                return b""
        data = await self._reader.readexactly(min(self._left, 65536))
        self._left -= len(data)
        if not self._left:
            await self._reader.readexactly(2)  # the CRLF after a chunk's data
        return data


def _line_is_for(record: dict[str, Any], item: _Waiting) -> bool:
    """Whether a handler's line may report on this payload: every id it names (``job_id``, or more)
    matches. Lines come in the request's order, so the first waiting payload that matches is the one."""
    return isinstance(record, dict) and all(record.get(key, value) == value for key, value in item.ids.items())


def _header(head: bytes, name: bytes) -> bytes:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return b""


def _settle(batch: list[_Waiting], error: BaseException | None) -> None:
    for item in batch:
        try:
            if error is None:
                item.accepted.set_result(None)
            else:
                item.accepted.set_exception(error)
        except concurrent.futures.InvalidStateError:  # settled before, or withdrawn by its caller
            pass


async def _read_some(reader: asyncio.StreamReader) -> str:
    try:
        data = await asyncio.wait_for(reader.read(4096), 5)
    except (OSError, asyncio.TimeoutError):
        return ""
    return data.decode("utf-8", "replace").strip()


def _retry_after(head: bytes) -> float | None:
    try:
        return float(_header(head, b"retry-after"))
    except ValueError:
        return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.IncompleteReadError):
        return "the connection closed"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
