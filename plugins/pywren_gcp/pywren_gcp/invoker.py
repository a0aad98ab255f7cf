"""Invoking the function: HTTP requests held open for the calls' duration, on one event-loop thread.

Cloud Run functions give an instance CPU only while it is answering a request, so a call must run
inside its request: the request stays open until the call has finished. The client therefore holds
many long requests at once, which it does without a thread each: a single thread runs an asyncio
loop with an aiohttp session that writes each request, waits for the handler's acknowledgement
line (the platform accepted the call and it is running), then keeps reading until the response
ends. ``pywren_invoke`` returns at the acknowledgement, so the core's bounded invoker threads are
free again within milliseconds. Connections are kept alive: a request whose response ended leaves
its connection (and its TLS session) in the pool for the next one.

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
import sys
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import attrs
from aiohttp.http_exceptions import HttpProcessingError

from pywren_core.backend import CallEvent
from pywren_core.errors import AmbiguousInvokeError, InvokeError, ThrottledError
from pywren_gcp import __version__

if sys.version_info >= (3, 11):
    from asyncio import timeout_at
else:  # aiohttp's own dependency there
    from async_timeout import timeout_at

#: The first line of every accepted response, sent by the handler before it runs the calls.
ACK = b'{"accepted":'
#: Largest request body Cloud Run accepts over HTTP/1.1.
MAX_REQUEST_BYTES = 32 * 2**20
#: Statuses that mean "not now": the core waits and invokes again.
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: Seconds an idle connection is kept for reuse. Under a server's own idle timeout (functions-framework's
#: gunicorn closes after 2 s), so a request never goes out on a connection the server is closing: that
#: would look like a lost acknowledgement. A burst of invocations reuses its connections within milliseconds.
KEEPALIVE = 1.0
#: Longest line of a response the client reads (aiohttp raises LineTooLong beyond it).
LINE_LIMIT = 64 * 1024
#: What reading a response that breaks off, stalls or turns to garbage raises.
_BROKEN = (OSError, ValueError, asyncio.TimeoutError, aiohttp.ClientError, HttpProcessingError)


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
    #: Payloads whose line said they finished: reported as "done" events, so the client reads
    #: their statuses at once instead of at its next listing.
    done: int = 0
    open: int = 0
    peak_open: int = 0
    largest_batch: int = 0


class Dispatcher:
    """Sends invocations to one function URL from a single event-loop thread."""

    def __init__(self, url: str, max_connections: int, calls_per_request: int, accept_timeout: float,
                 hold_timeout: float, notify: Callable[[], None] = lambda: None):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvokeError(f"the function URL must be http:// or https://, got {url!r}")
        self.url = url
        self.max_connections = max_connections
        self.calls_per_request = calls_per_request
        self.accept_timeout = accept_timeout
        self.hold_timeout = hold_timeout
        self.stats = DispatchStats()
        #: The core's ``notify``: called when events are ready, from the loop thread.
        self.notify = notify
        self._events: deque[CallEvent] = deque()
        self._waiting: deque[_Waiting] = deque()
        #: Handed over by invoking threads; the loop takes them all at each wake-up (see invoke()).
        self._inbox: deque[_Waiting] = deque()
        self._wake_pending = False
        self._tasks: set[asyncio.Task] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pywren-gcp-invoker", daemon=True)
        self._thread.start()
        self._http = asyncio.run_coroutine_threadsafe(self._open(), self._loop).result()

    def invoke(self, payload: Mapping[str, Any], authorization: str = "") -> None:
        """Send one payload; return when the handler acknowledged it, raise if the platform refused."""
        ids = {"executor_id": payload["executor_id"], "job_id": payload["job_id"],
               "call_ids": [[call["call_id"], call["attempt"]] for call in payload["calls"]]}
        body = json.dumps(payload, separators=(",", ":")).encode()
        item = _Waiting(body, authorization, concurrent.futures.Future(), ids)
        self._inbox.append(item)
        # One wake-up of the loop takes every payload handed over until it runs: a burst of invocations
        # costs the loop one wake-up, not one each. (The flag is cleared before the inbox is drained, so
        # an item appended after the drain always finds it cleared and wakes the loop itself.)
        if not self._wake_pending:
            self._wake_pending = True
            self._loop.call_soon_threadsafe(self._take_inbox)
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
        """Drop the open requests, close the connections and stop the loop thread."""
        if self._loop.is_closed():
            return
        with contextlib.suppress(concurrent.futures.TimeoutError):
            asyncio.run_coroutine_threadsafe(self._abandon(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    # --- on the loop thread --------------------------------------------------------------------

    async def _open(self) -> aiohttp.ClientSession:
        # The pool holds as many connections as requests may be open, so a request never waits for
        # one; idle ones are kept for reuse. Only connecting is bounded here: how long the rest may
        # take is bounded by the two phases of _request.
        connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0, keepalive_timeout=KEEPALIVE)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.accept_timeout)
        return aiohttp.ClientSession(connector=connector, timeout=timeout, read_bufsize=LINE_LIMIT,
                                     auto_decompress=False)

    async def _abandon(self) -> None:
        """Settle what waits, let the open requests unwind, then close the connections."""
        waiting = list(self._waiting) + [self._inbox.popleft() for _ in range(len(self._inbox))]
        self._waiting.clear()
        _settle(waiting, InvokeError("the invocation was abandoned: its session was closed"))
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._http.close()

    def _take_inbox(self) -> None:
        self._wake_pending = False
        while self._inbox:
            self._waiting.append(self._inbox.popleft())
        self._pump(pack=False)

    def _pump(self, pack: bool = True) -> None:
        """Start requests while connections are free: one per invocation as they arrive (``pack``
        False), and, when a connection frees up at the bound, one carrying all that waited for it."""
        per_request = self.calls_per_request if pack else 1
        while self.stats.open < self.max_connections:
            batch: list[_Waiting] = []
            size = 64
            while self._waiting and len(batch) < per_request:
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
        body = b'{"payloads":[' + b",".join(item.body for item in batch) + b"]}"
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity",
                   "User-Agent": f"pywren-gcp/{__version__}"}
        if batch[-1].authorization:
            headers["Authorization"] = batch[-1].authorization
        response = None
        try:
            try:
                # Connecting may take accept_timeout (the session's sock_connect), and the whole exchange up
                # to the acknowledgement twice that, as invoke() expects.
                async with timeout_at(self._loop.time() + 2 * self.accept_timeout):
                    response = await self._http.post(self.url, data=body, headers=headers)
                    await self._accepted(response)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:  # nothing was sent
                _settle(batch, InvokeError(f"cannot connect to the function at {self.url}: {_describe(exc)}"))
                return
            except (ThrottledError, InvokeError, AmbiguousInvokeError) as exc:
                _settle(batch, exc)
                return
            except (aiohttp.ClientResponseError, HttpProcessingError, ValueError) as exc:  # not HTTP as expected
                _settle(batch, InvokeError(f"the function at {self.url} answered something unreadable: "
                                           f"{_describe(exc)}"))
                return
            except (OSError, asyncio.TimeoutError, aiohttp.ClientError) as exc:
                _settle(batch, AmbiguousInvokeError(f"the request to {self.url} was sent but the function's "
                                                    f"acknowledgement was lost: {_describe(exc)}"))
                return
            _settle(batch, None)
            self.stats.accepted += len(batch)
            # Hold the request open while the calls run: the platform gives CPU only to open requests.
            await self._follow(response, batch, self._loop.time() + self.hold_timeout)
        finally:
            _settle(batch, InvokeError("the invocation was abandoned: its session was closed"))
            if response is not None:
                # Read to its end, the connection goes back to the pool; otherwise it is closed.
                response.release()

    async def _accepted(self, response: aiohttp.ClientResponse) -> None:
        """Read the acknowledgement line; raise on a refusal."""
        if response.status != 200:
            text = await _read_some(response)
            message = f"the function at {self.url} answered HTTP {response.status}: {text[:300]}"
            if response.status in RETRYABLE_STATUS:
                raise ThrottledError(message, retry_after=_retry_after(response))
            raise InvokeError(message)
        first = await response.content.readline()
        if not first:
            raise AmbiguousInvokeError(f"the function at {self.url} answered 200, then the response ended "
                                       "before its acknowledgement")
        if not first.startswith(ACK):
            raise InvokeError(f"the function at {self.url} answered 200 without accepting the call: {first[:200]!r}")

    async def _follow(self, response: aiohttp.ClientResponse, batch: list[_Waiting], deadline: float) -> None:
        """Read the payloads' lines until ``deadline``; report an error line, and every payload whose
        line never came."""
        waiting = list(batch)
        ending = "ended"
        try:
            async with timeout_at(deadline):
                while waiting:
                    line = await response.content.readline()
                    if not line:
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
                    else:  # the worker has written the calls' statuses: the client reads them now
                        self.stats.done += 1
                        self._events.extend(item.events("done", ""))
                        self.notify()
                if not waiting:  # read to the end (nothing more, as the handler speaks): the connection is reused
                    await response.read()
        except _BROKEN as exc:
            ending = "timed out" if isinstance(exc, asyncio.TimeoutError) else f"broke ({_describe(exc)})"
        message = (f"the request to {self.url} that ran the call {ending} before the call reported; "
                   "the call may or may not have run")
        for item in waiting:
            self._report(item.events("died", message))

    def _report(self, events: list[CallEvent]) -> None:
        self.stats.events += len(events)
        self._events.extend(events)
        self.notify()


def _line_is_for(record: dict[str, Any], item: _Waiting) -> bool:
    """Whether a handler's line may report on this payload: every id it names (``job_id``, or more)
    matches. Lines come in the request's order, so the first waiting payload that matches is the one."""
    return isinstance(record, dict) and all(record.get(key, value) == value for key, value in item.ids.items())


def _settle(batch: list[_Waiting], error: BaseException | None) -> None:
    for item in batch:
        try:
            if error is None:
                item.accepted.set_result(None)
            else:
                item.accepted.set_exception(error)
        except concurrent.futures.InvalidStateError:  # settled before, or withdrawn by its caller
            pass


async def _read_some(response: aiohttp.ClientResponse) -> str:
    try:
        data = await asyncio.wait_for(response.content.read(4096), 5)
    except (OSError, asyncio.TimeoutError, aiohttp.ClientError, HttpProcessingError):
        return ""
    return data.decode("utf-8", "replace").strip()


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    try:
        return float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the connection closed"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
