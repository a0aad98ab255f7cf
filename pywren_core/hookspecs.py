"""The hook contract between pywren-core and its backends: the one place it is defined.

A backend is a plugin registered under the entry-point group ``pywren``; the entry-point name is
the backend key users write (``backend: gcp``). It implements every hook below marked *required*.
The core calls each hook with keyword arguments only, so a spec may grow an argument later
without breaking existing plugins.

Routing: each backend gets a plugin manager of its own that holds that backend's plugin plus the
wrapper plugins (entry-point group ``pywren.wrappers``). A call for backend X therefore never runs
backend Y's code, and no hook has to ask whether a call is meant for it. A wrapper plugin
implements any of these hooks with ``@hookimpl(wrapper=True)`` and applies to every backend;
every hook but ``pywren_backend_info`` gets ``backend``, the backend's name, so a wrapper can tell
them apart. A backend's own hooks leave out the arguments they do not use (``backend``, usually).

Errors: hooks raise :mod:`pywren_core.errors` types, never an SDK's own. A missing key is
``NotFoundError``, denied access ``AccessDeniedError``, a platform asking to slow down
``ThrottledError`` (the core retries it with backoff).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pluggy

from pywren_core.backend import BackendInfo, CallEvent

PROJECT = "pywren"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec(firstresult=True)
def pywren_backend_info() -> BackendInfo:
    """Required. Describe the backend: its config schema, platform limits and features.

    Called once when the backend loads; ``BackendInfo.api_version`` must equal
    ``pywren_core.backend.API_VERSION`` or the core refuses the plugin.
    """


@hookspec(firstresult=True)
def pywren_connect(
    config: Mapping[str, Any], role: str, backend: str, runtime: Any, notify: Callable[[], None]
) -> Any:
    """Required. Open the clients the other hooks need and return them as one session object.

    ``config`` is this backend's section, validated against the schema with defaults filled in.
    ``role`` is ``"client"`` or ``"worker"``; on a worker, only the fields not marked secret are
    present (credentials come from the platform's own environment). The returned object is passed
    back as ``session`` to every other hook; the core never looks inside it.

    ``runtime`` is the :class:`pywren_core.runtime.Runtime` the client's calls must run in (its
    packages in ``runtime.site``, its ``name`` a hash of them), or None for the plugin's default.
    A backend that declares a ``BackendInfo.platform`` deploys it (``pywren_deploy``, from
    ``runtime.artifact_files``) and invokes the function that carries it.

    ``notify`` may be called from any thread once ``pywren_poll_events`` has new events: the
    client's monitor then reads them at once instead of at its next round. A plugin that learns
    of completions as they happen (a held-open response) reports each as a ``"done"`` event and
    calls ``notify``, so a result is noticed within milliseconds; while such events keep coming,
    the monitor lists storage only every 10 s, to catch one that was lost.
    """


@hookspec(firstresult=True)
def pywren_storage_put(session: Any, key: str, data: bytes, backend: str) -> None:
    """Required. Store ``data`` under ``key``, replacing any object there, atomically.

    A reader sees either the old bytes or all of the new ones, never a part.
    """


@hookspec(firstresult=True)
def pywren_storage_get(session: Any, key: str, byte_range: tuple[int, int] | None, backend: str) -> bytes:
    """Required. Return the object at ``key``, or bytes ``[start, end)`` of it.

    A range reaching past the end returns what exists (like slicing). A missing key raises
    ``NotFoundError``.
    """


@hookspec(firstresult=True)
def pywren_storage_list(session: Any, prefix: str, backend: str) -> list[str]:
    """Required. Return every key that starts with ``prefix`` (a plain string prefix, not a folder),
    following all pages. Order is not part of the contract."""


@hookspec(firstresult=True)
def pywren_storage_delete(session: Any, keys: Sequence[str], backend: str) -> None:
    """Required. Delete ``keys``; keys that do not exist are ignored (deleting is idempotent).

    Also called at interpreter exit (with ``pywren_storage_list`` and ``pywren_cancel``), when the
    core deletes the objects of jobs the script never shut down: by then a
    ``concurrent.futures.ThreadPoolExecutor`` refuses new work, so fan out on plain threads, or
    fall back to one request at a time.
    """


# --- data where it lives: objects in any bucket the backend's credentials reach -----------------
# Optional as a group: a backend that declares ``BackendInfo.data_schemes`` implements the first four
# (``pywren_data_open``, streaming, is optional on top of them).
# The core parses URLs (``<scheme>://<bucket>/<key>``) and passes the bucket and key; ``local``
# serves ``file://`` and plain paths with ``bucket`` empty and ``key`` an absolute path.


@hookspec(firstresult=True)
def pywren_data_list(session: Any, bucket: str, prefix: str, backend: str) -> Iterable[tuple[str, int]]:
    """Data hook. Every object in ``bucket`` whose key starts with ``prefix`` (a plain string
    prefix), as ``(key, size in bytes)`` pairs, following all pages. A missing bucket raises
    ``NotFoundError``; a prefix with no objects under it gives nothing."""


@hookspec(firstresult=True)
def pywren_data_get(session: Any, bucket: str, key: str, byte_range: tuple[int, int] | None, backend: str) -> bytes:
    """Data hook. The object, or bytes ``[start, end)`` of it, as ``pywren_storage_get`` (a range
    past the end returns what exists; a missing object raises ``NotFoundError``). The core streams
    large objects through ``pywren_data_open`` or, without it, ranged calls of ``data_block_size``
    bytes, so this never holds more."""


@hookspec(firstresult=True)
def pywren_data_open(session: Any, bucket: str, key: str, byte_range: tuple[int, int], backend: str) -> Any:
    """Optional data hook. Bytes ``[start, end)`` of the object as a readable binary file object
    over one ranged GET, read from the network as it is consumed, so a 1 GB range never needs 1 GB
    of memory. ``DataPiece.open()`` and ``Storage.open`` read through it (``DataPiece.read()`` for a
    piece of at most ``data_block_size``); without it they make ranged ``pywren_data_get`` calls of
    ``data_block_size`` bytes one after another.

    The object has ``read(n)`` (up to ``n`` bytes, ``b""`` at the end of the range) and ``close()``,
    and ``readinto(buffer)`` where that saves a copy; :class:`pywren_core.data.SDKStream` makes one
    of an SDK's response body, :class:`pywren_core.data.FileRange` of a file. A range past the end
    gives what exists. Errors are those of ``pywren_data_get``, raised by the hook (a missing object
    is ``NotFoundError`` naming the URL, throttling ``ThrottledError``, which the core retries) or by
    the stream's reads (mapped too). The core closes the stream, often before its end: a piece
    reads a little past its end to find where its last line ends."""


@hookspec(firstresult=True)
def pywren_data_put(session: Any, bucket: str, key: str, data: bytes, backend: str) -> None:
    """Data hook. Store ``data`` as the object ``key`` of ``bucket``, atomically, as ``pywren_storage_put``."""


@hookspec(firstresult=True)
def pywren_data_delete(session: Any, bucket: str, keys: Sequence[str], backend: str) -> None:
    """Data hook. Delete ``keys`` of ``bucket``; missing keys are ignored."""


@hookspec(firstresult=True)
def pywren_invoke(session: Any, payload: Mapping[str, Any], backend: str) -> None:
    """Required. Start one asynchronous run of the platform's handler, which passes ``payload`` to
    ``pywren_core.harness.serve``.

    Return as soon as the platform has accepted the invocation, not when it finished. ``payload`` is
    a JSON-serialisable mapping no larger than ``Limits.max_payload_bytes`` once encoded; it holds
    ids, storage keys, timeouts and a per-job signing secret, never credentials. Raise
    ``ThrottledError`` when the platform refuses for rate, and ``AmbiguousInvokeError`` when the
    request was sent but its answer was lost (a dropped connection, a read timeout): the core waits
    and invokes again (counting a possible duplicate run for the second). Any other error is final
    for the calls in the payload: raise ``InvokeError`` naming what was invoked (the function, the
    URL), never a throttling error for a refused connection. Do not retry inside the hook.
    """


@hookspec(firstresult=True)
def pywren_fanout(session: Any, backend: str) -> int | None:
    """Optional. From how many invocations a map is fanned out, or None (the default): never.

    A fanned-out map's invocations are made from inside the platform by a few *invoker* calls
    (:mod:`pywren_core.fanout`), so the client's link carries a handful of requests instead of one
    per call. The invokers call ``pywren_invoke`` in a worker's session (``role="worker"``), with
    the platform's own credentials, to start the function they run in; a backend returns a number
    only if that works. The user's ``fanout`` setting can turn it off or change the number.
    """


@hookspec
def pywren_prepare(session: Any, backend: str) -> None:
    """Optional. Get ready to invoke (start warm workers, open connections) without waiting for it;
    at most a quick check that fails early (one request: is the session's runtime deployed?).

    Called once when an executor opens its session, never by commands that only read storage or
    deploy (``pywren status``, ``pywren clean``), so those start nothing they do not need.
    """


@hookspec(firstresult=True)
def pywren_cancel(session: Any, executor_id: str, job_id: str, call_ids: Sequence[str], backend: str) -> None:
    """Optional. Stop these calls of one job where the platform allows: drop those still queued,
    stop those running. Best effort; the core has already settled their futures as cancelled and
    ignores whatever they write later."""


@hookspec
def pywren_poll_events(session: Any, backend: str) -> Sequence[CallEvent]:
    """Optional. Return the call events the platform reported since the last call, and forget them.

    The client's monitor calls it once per polling round. A plugin that learns of a failed
    invocation (a broken held-open request, a poison queue, an error line from the handler) reports
    it here, so the call fails or retries at once instead of after its timeout. Must not block.
    """


@hookspec(firstresult=True)
def pywren_deploy(session: Any, config: Mapping[str, Any], backend: str) -> str:
    """Optional. Create or update the cloud function that runs the worker; return a one-line summary.

    With a runtime (the session's, from ``pywren_connect``), deploy the function that carries it,
    beside any other runtime's.
    """


@hookspec(firstresult=True)
def pywren_remove(session: Any, config: Mapping[str, Any], backend: str) -> str:
    """Optional. Remove what ``pywren_deploy`` created; return a one-line summary."""


@hookspec
def pywren_close(session: Any, backend: str) -> None:
    """Optional. Release the session's clients, threads and processes; called once per session."""
