"""What a backend declares about itself, and a backend opened with a config (a Session).

Plugins build a :class:`BackendInfo` in their ``pywren_backend_info`` hook; the core adapts payload
inlining, timeouts and the invocation rate to its :class:`Limits`.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import attrs

from pywren_core.errors import AmbiguousInvokeError, ConfigError, InvokeError, ThrottledError

T = TypeVar("T")

#: The hook contract's version. A plugin whose ``BackendInfo.api_version`` differs is refused.
API_VERSION = 1

#: Marks a config field that has no default and must be given.
REQUIRED: Any = attrs.make_class("Required", [], repr=False)()


@attrs.frozen
class ConfigField:
    """One key of a backend's config section."""

    #: The key in the backend's section, and in ``PYWREN_<BACKEND>_<KEY>``.
    name: str
    #: Accepted type(s); environment values are parsed to it.
    type: type | tuple[type, ...]
    #: ``REQUIRED`` (the default) means the user must set it.
    default: Any = REQUIRED
    #: Secret fields are masked by ``pywren config`` and never travel to workers.
    secret: bool = False
    #: Shown in ``pywren config`` and in errors about a missing value.
    help: str = ""


@attrs.frozen
class Limits:
    """The platform's limits, in the units the core works in."""

    #: Largest invoke payload, once JSON-encoded. Arguments that do not fit go through storage.
    max_payload_bytes: int
    #: Longest a call may run, in seconds; also the default per-call timeout.
    max_runtime: float
    #: Invocations the platform runs at once (its concurrency limit). The client never has more
    #: invoke requests in flight; more may be queued by the platform or refused as throttled.
    max_concurrency: int
    #: Invocations per second the platform accepts before throttling (None: no known limit).
    max_invoke_rate: float | None = None


@attrs.frozen
class Platform:
    """Where a backend's workers run: what its runtimes are built for (``BackendInfo.platform``)."""

    #: ``"3.11"``; None: the client's own (the worker refuses another minor version anyway).
    python: str | None = None
    os: str = "linux"
    arch: str = "x86_64"
    #: The glibc of the platform's OS: wheels that need a newer one are never chosen (Lambda's
    #: Python 3.11 runs on Amazon Linux 2, glibc 2.26, where numpy 2.3's wheels fail to load).
    glibc: str = "2.28"
    #: Largest unpacked runtime the platform accepts (Lambda: 250 MB with the function's code).
    max_unzipped_bytes: int | None = None
    #: Distributions the platform itself provides (boto3 on Lambda): never installed, never missing.
    provided: frozenset[str] = attrs.field(default=frozenset(), converter=frozenset)
    #: What the plugin's worker needs besides pywren-core, as requirement lines; a name without a
    #: version is pinned to the client's version when the client has it.
    requirements: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    #: The base image a container runtime starts from (``pywren runtime dockerfile``); empty: the
    #: platform takes no container images.
    image_base: str = ""
    #: Where the platform's base image expects the function's code.
    image_code_dir: str = "/app"
    #: The image's command; empty: the platform's base image runs ``BackendInfo.handler`` itself
    #: (Lambda's does), else e.g. ``("functions-framework", "--target", "handler", ...)``.
    image_command: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    #: What the image needs besides the runtime to serve the handler (``functions-framework``).
    image_packages: tuple[str, ...] = attrs.field(default=(), converter=tuple)

    @property
    def python_version(self) -> str:
        return self.python or f"{sys.version_info.major}.{sys.version_info.minor}"

    @property
    def is_host(self) -> bool:
        """True when workers run on this very machine (``local``): any wheel or sdist pip can build here."""
        return self.os == "host"

    def pip_tags(self) -> list[str]:
        """pip's ``--platform`` values: every manylinux tag the platform's glibc runs, newest first."""
        if self.os != "linux":
            raise ConfigError(f"runtimes are built for linux platforms only, not {self.os!r}")
        newest = int(self.glibc.split(".")[1])
        tags = [f"manylinux_2_{minor}_{self.arch}" for minor in range(newest, 16, -1)]
        legacy = ["manylinux2014"] + (["manylinux2010", "manylinux1"] if self.arch in ("x86_64", "i686") else [])
        return tags + [f"{name}_{self.arch}" for name in legacy]

    def describe(self) -> str:
        where = "this machine" if self.is_host else f"{self.os}/{self.arch}"
        return f"Python {self.python_version} on {where}"


#: The client's own machine: ``local``'s platform (any wheel or sdist pip can install here).
HOST = Platform(os="host")


@attrs.frozen
class BackendInfo:
    """A backend's self-description, returned by its ``pywren_backend_info`` hook."""

    #: The backend key; equal to the entry-point name.
    name: str
    #: The platform's limits (see :class:`Limits`).
    limits: Limits
    #: The fields of this backend's config section.
    config: Sequence[ConfigField] = ()
    #: The hook API this plugin was built for; state it, so another core refuses the plugin.
    api_version: int = API_VERSION
    #: Dotted path of the platform's entry point that calls ``pywren_core.harness.serve``.
    handler: str = ""
    #: Smallest and largest pause between completion polls, in seconds.
    poll_interval: tuple[float, float] = (0.05, 2.0)
    #: Storage requests the client runs at once while collecting results (1: no thread pool).
    storage_concurrency: int = 32
    #: URL schemes whose objects the data hooks serve (``("s3",)``); empty: the backend maps over
    #: in-memory items only. A backend that declares schemes implements every ``pywren_data_*`` hook
    #: but the optional ``pywren_data_open``.
    data_schemes: Sequence[str] = ()
    #: Largest ranged read the core asks ``pywren_data_get`` for while streaming an object, for a
    #: backend without ``pywren_data_open`` (which streams one ranged GET).
    data_block_size: int = 8 * 2**20
    #: Where the workers run, for building runtimes (see :mod:`pywren_core.runtime`); None: the
    #: backend takes no runtime, and a config that asks for one is refused.
    platform: Platform | None = None
    #: Free-form facts for ``pywren backends --features`` (trigger kinds, isolation, ...).
    features: Mapping[str, Any] = attrs.field(factory=dict)

    def field(self, name: str) -> ConfigField | None:
        return next((f for f in self.config if f.name == name), None)

    def public_config(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The config without its secret fields: what may travel to a worker or be shown."""
        secret = {f.name for f in self.config if f.secret}
        return {k: v for k, v in config.items() if k not in secret}


@attrs.frozen
class CallEvent:
    """Something the platform told a plugin about one call attempt, for ``pywren_poll_events``.

    ``kind`` is ``"running"`` (the platform started it), ``"done"`` (the platform says the worker
    finished and wrote its status: the client reads that status at once instead of waiting for its
    next listing), or ``"died"`` / ``"error"`` (the invocation failed without the worker reporting:
    a broken held-open request, a message moved to a poison queue, an error line from the handler).
    A failure fails or retries the call at once instead of after the lost-call timer; ``message``
    says what happened and reaches the user.
    """

    executor_id: str
    job_id: str
    call_id: str
    attempt: int
    kind: str
    message: str = ""


def done_notice(payload: Mapping[str, Any], summary: Iterable[Mapping[str, Any]]) -> str:
    """What a handler sends the client once ``harness.serve(payload)`` returned ``summary``: the
    job's ids and each call's ``[call_id, attempt]``, never the payload's secret or a result.

    For a platform that does not tell the client a call ended: the plugin's handler sends this
    through a channel of the client's (a queue), and the client turns it back into "done" events
    with :func:`done_events`. A notice is a hint: the core reads the status it points at and
    checks its signature, so a forged one costs a read and settles nothing.
    """
    calls = [[entry["call_id"], entry["attempt"]] for entry in summary]
    return json.dumps({"executor_id": payload["executor_id"], "job_id": payload["job_id"], "calls": calls},
                      separators=(",", ":"))


def done_events(notice: str) -> list[CallEvent]:
    """The "done" events of a :func:`done_notice`; none for anything that is not one."""
    try:
        parsed = json.loads(notice)
        ids = (parsed["executor_id"], parsed["job_id"])
        calls = [(call_id, attempt) for call_id, attempt in parsed["calls"]]
    except (ValueError, KeyError, TypeError):
        return []
    if not all(isinstance(i, str) for i in ids):
        return []
    return [CallEvent(ids[0], ids[1], call_id, attempt, "done")
            for call_id, attempt in calls if isinstance(call_id, str) and type(attempt) is int]


#: Longest pause the core takes on a platform's Retry-After hint: a bad hint never stalls a job.
RETRY_AFTER_CAP = 30.0
#: Tries of one storage operation that the platform throttles, in the core. The SDKs retry
#: transport errors themselves (each plugin's README says how many times); together a storage
#: operation makes a bounded, documented number of HTTP requests (docs/reliability.md).
STORAGE_ATTEMPTS = 6


def backoff_delay(attempt: int, retry_after: float | None = None, base: float = 0.1, cap: float = 5.0) -> float:
    """Exponential backoff with full jitter; the platform's own hint wins when it gave one (capped)."""
    if retry_after is not None:
        return min(max(0.0, retry_after), RETRY_AFTER_CAP)
    return random.uniform(0, min(cap, base * 2**attempt))


def retry_throttled(operation: Callable[[], T], attempts: int = STORAGE_ATTEMPTS) -> T:
    """Run ``operation``, waiting and trying again while the platform says it is throttled."""
    for attempt in range(attempts):
        try:
            return operation()
        except ThrottledError as exc:
            if attempt == attempts - 1:
                raise
            time.sleep(backoff_delay(attempt, exc.retry_after))
    raise AssertionError("unreachable")


class Pacer:
    """Spaces actions at least ``1 / rate`` seconds apart, across every thread that takes a turn.

    The core paces invocations with it; a backend whose platform wants a gentler pace (a
    per-trigger rate limit, say) can pace its own invoker the same way. No rate: no waiting.
    """

    def __init__(self, rate: float | None):
        self.interval = 1.0 / rate if rate and rate > 0 else 0.0
        self._lock = threading.Lock()
        self._next = 0.0

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            slot = max(time.monotonic(), self._next)
            self._next = slot + self.interval
        time.sleep(max(0.0, slot - time.monotonic()))


#: Invocations in a row whose answer was lost before the calls fail: the platform is unreachable.
AMBIGUOUS_TRIES = 5


@attrs.define
class Accepted:
    """How one invocation went: when the request the platform accepted was sent (a ``time.time()``;
    None: its calls were cancelled while it waited), after how many refusals and lost answers."""

    at: float | None = None
    throttled: int = 0
    ambiguous: int = 0


def invoke_until_accepted(
    invoke: Callable[[Any], None], payload: Any, pacer: Pacer, give_up_after: float,
    on_ambiguous: Callable[[], None] = lambda: None, cancelled: Callable[[], bool] = lambda: False,
) -> Accepted:
    """Invoke ``payload`` until the platform accepts it, as the client's invoker and a fan-out
    invoker both do: throttling waited out for up to ``give_up_after`` seconds (pacing not
    counted), a lost answer invoked again up to AMBIGUOUS_TRIES times in a row (``on_ambiguous``
    is told of each: its calls may run twice). Raises InvokeError when it gives up, and whatever
    else the hook raised (a refusal for good); the caller decides what that fails."""
    result = Accepted()
    started = None
    while True:
        pacer.wait()
        started = started or time.monotonic()
        sent = time.time()
        try:
            invoke(payload)
        except (ThrottledError, AmbiguousInvokeError) as exc:
            if isinstance(exc, ThrottledError):
                result.throttled += 1
            else:
                result.ambiguous += 1
                on_ambiguous()
            tries, waited = result.throttled + result.ambiguous, time.monotonic() - started
            if waited > give_up_after or result.ambiguous >= AMBIGUOUS_TRIES:
                raise InvokeError(f"the platform did not accept the invocation ({tries} tries in "
                                  f"{waited:.1f} s); the last answer: {exc}") from None
            if cancelled():
                return result
            time.sleep(backoff_delay(min(tries - 1, 7), getattr(exc, "retry_after", None)))
            continue
        result.at = sent
        return result


def _direct_caller(hook: Any) -> Callable[..., Any]:
    """``hook`` (a pluggy hook caller); or, when one implementation alone answers it (no wrapper
    plugin), that implementation, called and answering as pluggy would, without pluggy's dispatch:
    it cost about 1 µs of every storage request and invocation, thousands of them a second."""
    impls = hook.get_hookimpls()
    if len(impls) != 1 or impls[0].hookwrapper or impls[0].wrapper:
        return hook
    function, names = impls[0].function, impls[0].argnames
    if hook.spec is not None and hook.spec.opts.get("firstresult"):
        return lambda **kwargs: function(*[kwargs[name] for name in names])

    def results(**kwargs: Any) -> list[Any]:
        result = function(*[kwargs[name] for name in names])
        return [] if result is None else [result]

    return results


class Session:
    """A backend opened with a config: the storage and invoke calls the executor and worker make.

    Each method calls the backend's hook through its own plugin manager, so wrapper plugins
    (fault injection, metrics, encryption) apply whatever the backend. Storage calls that the
    platform throttles are retried here with backoff; invocations are retried by the invoker.
    """

    def __init__(self, name: str, info: BackendInfo, hook: Any, config: Mapping[str, Any], role: str,
                 runtime: Any = None):
        self.name = name
        self.info = info
        self.config = dict(config)
        #: The built runtime (``pywren_core.runtime.Runtime``) the client's calls run in, or None.
        self.runtime = runtime
        #: What a plugin's ``notify`` calls: the client's monitor sets it to read events at once.
        self.on_events: Callable[[], None] = lambda: None
        self._hook = hook
        self._callers: dict[str, Callable[..., Any]] = {}
        self.handle = hook.pywren_connect(
            backend=name, config=self.config, role=role, runtime=runtime, notify=lambda: self.on_events()
        )

    def _call(self, hook: str, **kwargs: Any) -> Any:
        """Call one hook for this session: every hook also gets the backend's name, for wrappers."""
        try:
            caller = self._callers[hook]
        except KeyError:  # the session's plugins are registered before it opens: one look per hook
            caller = self._callers[hook] = _direct_caller(getattr(self._hook, hook))
        return caller(backend=self.name, session=self.handle, **kwargs)

    def put(self, key: str, data: bytes) -> None:
        data = bytes(data)
        retry_throttled(lambda: self._call("pywren_storage_put", key=key, data=data))

    def get(self, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        return retry_throttled(lambda: self._call("pywren_storage_get", key=key, byte_range=byte_range))

    def list(self, prefix: str) -> list[str]:
        return list(retry_throttled(lambda: self._call("pywren_storage_list", prefix=prefix)))

    def delete(self, keys: Sequence[str]) -> None:
        if keys:
            keys = list(keys)
            retry_throttled(lambda: self._call("pywren_storage_delete", keys=keys))

    def data_list(self, bucket: str, prefix: str) -> list[tuple[str, int]]:
        pairs = retry_throttled(lambda: self._call("pywren_data_list", bucket=bucket, prefix=prefix))
        return [(key, int(size)) for key, size in pairs or ()]

    def data_get(self, bucket: str, key: str, byte_range: tuple[int, int] | None = None) -> bytes:
        return retry_throttled(lambda: self._call("pywren_data_get", bucket=bucket, key=key, byte_range=byte_range))

    def data_open(self, bucket: str, key: str, byte_range: tuple[int, int]) -> Any:
        """A stream over bytes ``[start, end)`` (``pywren_data_open``), or None: the backend has no such hook."""
        return retry_throttled(lambda: self._call("pywren_data_open", bucket=bucket, key=key, byte_range=byte_range))

    def data_put(self, bucket: str, key: str, data: bytes) -> None:
        data = bytes(data)
        retry_throttled(lambda: self._call("pywren_data_put", bucket=bucket, key=key, data=data))

    def data_delete(self, bucket: str, keys: Sequence[str]) -> None:
        if keys:
            keys = list(keys)
            retry_throttled(lambda: self._call("pywren_data_delete", bucket=bucket, keys=keys))

    def invoke(self, payload: Mapping[str, Any]) -> None:
        self._call("pywren_invoke", payload=payload)

    def prepare(self) -> None:
        self._call("pywren_prepare")

    def fanout_threshold(self) -> int | None:
        return self._call("pywren_fanout")

    def cancel(self, executor_id: str, job_id: str, call_ids: Sequence[str]) -> None:
        self._call("pywren_cancel", executor_id=executor_id, job_id=job_id, call_ids=list(call_ids))

    def poll_events(self) -> list[CallEvent]:
        return [event for events in self._call("pywren_poll_events") for event in events or ()]

    def deploy(self) -> str | None:
        return self._call("pywren_deploy", config=self.config)

    def remove(self) -> str | None:
        return self._call("pywren_remove", config=self.config)

    def close(self) -> None:
        self._call("pywren_close")
