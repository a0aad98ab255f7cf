"""The executor: turns calls into jobs, invokes them, and completes futures from storage.

Flow of one job: the function is pickled and signed once (``func.pickle``); each call's arguments
are pickled and signed, then sent inline in the invoke payload when they fit the backend's payload
limit, or else stored back to back in one ``args.pickle`` that workers read by byte range. An
invoker thread pool issues the invocations (throttling is waited out, never a dropped call). A
monitor thread lists one status prefix per 1,000 pending calls per round, with an interval that
shrinks when results arrive and grows when they do not, and completes each future from its status.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import queue
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from pywren_core import __version__, manifests, serialize
from pywren_core import config as config_module
from pywren_core import futures as futures_module
from pywren_core.backend import Pacer, Session, backoff_delay
from pywren_core.errors import (
    CallFailedError,
    CallTimeoutError,
    ConfigError,
    InvokeError,
    PywrenError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    SignatureError,
    ThrottledError,
    VersionMismatchError,
    WorkerDiedError,
)
from pywren_core.faults import FaultConfig, FaultInjector
from pywren_core.futures import ALL_COMPLETED, ResponseFuture
from pywren_core.plugins import load_backend
from pywren_core.protocol import (
    JOBS_PREFIX,
    PROTOCOL_VERSION,
    JobKeys,
    args_context,
    b64,
    exception_context,
    func_context,
    group_of,
    load_status,
    new_id,
    new_secret,
    parse_status_key,
    python_version,
    result_context,
    sign,
    unb64,
    verify,
)
from pywren_core.protocol import (
    call_id as make_call_id,
)

RESULT_INLINE_MAX = 64 * 1024
#: Failures worth another attempt: the call itself never ran to an answer.
RETRYABLE = {"died": WorkerDiedError, "timeout": CallTimeoutError, "error": CallFailedError}
_FAILURES = {**RETRYABLE, "refused": VersionMismatchError}
_CALL_OVERHEAD = 96  # JSON bytes around one call's entry in a payload
#: The pause after a round of polling is at least this many times the round's listing took.
POLL_COST_FACTOR = 4.0


@attrs.define(eq=False)
class _Call:
    future: ResponseFuture
    args: dict[str, Any]
    invoked_at: float | None = None
    #: Attempts that may still report: one, or two while a speculative backup races the original.
    live: set[int] = attrs.field(factory=lambda: {0})


@attrs.define(eq=False)
class _Job:
    keys: JobKeys
    secret: bytes
    base_payload: dict[str, Any]
    calls: dict[str, _Call]
    timeout: float
    pending: dict[str, set[str]] = attrs.field(factory=dict)
    last_progress: float = attrs.field(factory=time.time)
    #: Collected by a new client (``Executor.attach``): arguments unknown, so never invoked again.
    attached: bool = False
    #: Seconds from invocation to completion of the calls done so far, for speculation.
    durations: list[float] = attrs.field(factory=list)

    def payload(self, calls: Sequence[_Call]) -> dict[str, Any]:
        entries = [{"call_id": c.future.call_id, "attempt": c.future.attempt, "args": c.args} for c in calls]
        return {**self.base_payload, "calls": entries}


class Executor(concurrent.futures.Executor):
    """Runs Python calls on the configured backend; made by :func:`pywren_core.executor`.

    ``map`` keeps PyWren's meaning: it returns the list of futures at once (not an iterator of
    results, as ``concurrent.futures.Executor.map`` does); collect them with :meth:`get_result`.
    """

    def __init__(self, config: config_module.Config, wrappers: Iterable[Any] = ()):
        self.config = config
        self.backend = load_backend(config.backend)
        self.info = self.backend.info
        limits = self.info.limits
        self.timeout = float(config.timeout if config.timeout is not None else limits.max_runtime)
        if not 0 < self.timeout <= limits.max_runtime:
            raise ConfigError(
                f"{config.sources.get('timeout', 'config')}: timeout must be between 0 and "
                f"{limits.max_runtime} s (the {self.info.name} backend's maximum runtime), got {self.timeout}"
            )
        for name, low in (("retries", 0), ("chunksize", 1), ("invoke_threads", 1)):
            if getattr(config, name) < low:
                raise ConfigError(f"{config.sources.get(name, 'config')}: {name} must be at least {low}")
        self.section = config.backend_section(self.info)
        self.faults: FaultInjector | None = None
        if config.faults:
            fault_config = FaultConfig.from_mapping(config.faults, config.sources.get("faults", "config"))
            self.faults = FaultInjector(fault_config, "client")
            wrappers = [*wrappers, self.faults]
        self.session: Session = self.backend.open(self.section, role="client", wrappers=wrappers)
        self.executor_id = new_id()
        self._job_numbers = itertools.count()
        self._uncollected: list[ResponseFuture] = []
        self._invoker = _Invoker(
            self.session,
            max(1, min(config.invoke_threads, limits.max_concurrency)),
            limits.max_invoke_rate,
            self.timeout,
        )
        self._monitor = _Monitor(self)
        self._closed = False

    # --- submitting -------------------------------------------------------------------------

    def call_async(self, func: Callable[..., Any], data: Any, extra_args: Sequence[Any] = ()) -> ResponseFuture:
        """Run ``func(data, *extra_args)`` as one remote call."""
        return self._submit_job(func, [((data, *extra_args), {})], chunksize=1)[0]

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> ResponseFuture:
        """``concurrent.futures.Executor.submit``: run ``fn(*args, **kwargs)`` remotely."""
        return self._submit_job(fn, [(args, kwargs)], chunksize=1)[0]

    def map(  # type: ignore[override]
        self,
        func: Callable[..., Any],
        iterdata: Iterable[Any],
        extra_args: Sequence[Any] = (),
        chunksize: int | None = None,
    ) -> list[ResponseFuture]:
        """Run ``func(item, *extra_args)`` for each item, one call each; return the futures at once.

        ``chunksize`` calls travel in one invocation (default: the ``chunksize`` setting, 1).
        """
        calls = [((item, *extra_args), {}) for item in iterdata]
        return self._submit_job(func, calls, chunksize=chunksize or self.config.chunksize)

    def map_reduce(
        self,
        map_func: Callable[..., Any],
        iterdata: Iterable[Any],
        reduce_func: Callable[[list[Any]], Any],
        extra_args: Sequence[Any] = (),
        chunksize: int | None = None,
    ) -> ResponseFuture:
        """Map, then run ``reduce_func(list_of_map_results)`` as one more remote call.

        Returns the reduce call's future at once; ``.map_futures`` holds the map calls'.
        """
        map_futures = self.map(map_func, iterdata, extra_args=extra_args, chunksize=chunksize)
        outer = ResponseFuture(self.executor_id, "reduce", "00000")
        outer.map_futures = map_futures  # type: ignore[attr-defined]

        def reduce_when_mapped() -> None:
            try:
                results = futures_module.get_result(map_futures, progress=False)
                inner = self.call_async(reduce_func, results)
                outer.job_id, outer.call_id = inner.job_id, inner.call_id
                outer.set_result(inner.result())
                outer.stats, outer.stdout, outer.stderr = inner.stats, inner.stdout, inner.stderr
            except BaseException as exc:
                outer.set_exception(exc)

        self._uncollected.append(outer)
        threading.Thread(target=reduce_when_mapped, name="pywren-reduce", daemon=True).start()
        return outer

    def _submit_job(
        self, func: Callable[..., Any], calls: list[tuple[tuple, dict]], chunksize: int
    ) -> list[ResponseFuture]:
        if self._closed:
            raise RuntimeError("cannot submit calls after shutdown()")
        if not callable(func):
            raise TypeError(f"{func!r} is not callable")
        if not calls:
            return []
        keys = JobKeys(self.executor_id, f"j{next(self._job_numbers):04d}")
        secret = new_secret()
        try:
            pickled_func = serialize.dumps(func)
        except Exception as exc:
            raise SerializationError(
                f"the function {func!r} cannot be pickled to send it to the workers: {exc}"
            ) from exc
        blobs = []
        for index, (args, kwargs) in enumerate(calls):
            try:
                data = serialize.dumps((args, kwargs))
            except Exception as exc:
                shown = repr(args[0] if len(args) == 1 and not kwargs else (args, kwargs))[:120]
                raise SerializationError(f"the arguments of call {index} ({shown}) cannot be pickled: {exc}") from exc
            blobs.append(data)
        width = max(5, len(str(len(calls) - 1)))
        ids = [make_call_id(i, width) for i in range(len(calls))]
        signed = [sign(secret, args_context(keys, cid), blob) for cid, blob in zip(ids, blobs, strict=True)]
        base_payload = {
            "protocol": PROTOCOL_VERSION,
            "backend": self.info.name,
            "config": self.info.public_config(self.section),
            "executor_id": keys.executor_id,
            "job_id": keys.job_id,
            "func_key": keys.func,
            "secret": secret.hex(),
            "timeout": self.timeout,
            "python": python_version(),
            "core_version": __version__,
            "result_inline_max": RESULT_INLINE_MAX,
        }
        if self.faults is not None:
            base_payload["faults"] = attrs.asdict(self.faults.config)
        arg_specs = self._arg_specs(keys, base_payload, signed, chunksize)
        manifests.write(keys, secret, len(calls), self.info.name, self.timeout)
        self.session.put(keys.func, sign(secret, func_context(keys), pickled_func))
        job = _Job(keys, secret, base_payload, {}, self.timeout)
        futures = []
        for cid, spec in zip(ids, arg_specs, strict=True):
            future = ResponseFuture(keys.executor_id, keys.job_id, cid)
            job.calls[cid] = _Call(future, spec)
            job.pending.setdefault(group_of(cid), set()).add(cid)
            futures.append(future)
        self._monitor.add(job)
        call_list = list(job.calls.values())
        for start in range(0, len(call_list), chunksize):
            chunk = call_list[start : start + chunksize]
            self._invoker.submit(job.payload(chunk), chunk)
        self._uncollected.extend(futures)
        return futures

    def _arg_specs(
        self, keys: JobKeys, base_payload: dict[str, Any], signed: list[bytes], chunksize: int
    ) -> list[dict]:
        """Inline every call's arguments when each payload fits the backend's limit; else store them."""
        room = self.info.limits.max_payload_bytes - len(json.dumps(base_payload)) - 64
        inline = [b64(blob) for blob in signed] if sum(map(len, signed)) < room * 2 else None
        if inline is not None:
            sizes = [len(text) + _CALL_OVERHEAD for text in inline]
            if all(sum(sizes[i : i + chunksize]) <= room for i in range(0, len(sizes), chunksize)):
                return [{"inline": text} for text in inline]
        specs, offset = [], 0
        for blob in signed:
            specs.append({"key": keys.args, "range": [offset, offset + len(blob)]})
            offset += len(blob)
        self.session.put(keys.args, b"".join(signed))
        return specs

    def attach(self, job: str) -> list[ResponseFuture]:
        """Futures for a job another client submitted (``EXECUTOR_ID/JOB_ID``), e.g. before it crashed.

        Results written meanwhile are collected like any others. Calls that never report fail
        after the timeout: their arguments left with the old client, so they are not invoked again.
        """
        manifest = manifests.read(job)
        if manifest["backend"] != self.info.name:
            raise ConfigError(f"job {job} ran on backend {manifest['backend']!r}, not {self.info.name!r}")
        keys = JobKeys(manifest["executor_id"], manifest["job_id"])
        attached = _Job(keys, bytes.fromhex(manifest["secret"]), {}, {}, manifest["timeout"], attached=True)
        width = max(5, len(str(manifest["calls"] - 1)))
        now = time.time()
        futures = []
        for index in range(manifest["calls"]):
            cid = make_call_id(index, width)
            future = ResponseFuture(keys.executor_id, keys.job_id, cid)
            future.set_running_or_notify_cancel()
            future.stats["invoked"] = now
            attached.calls[cid] = _Call(future, {}, invoked_at=now)
            attached.pending.setdefault(group_of(cid), set()).add(cid)
            futures.append(future)
        self._monitor.add(attached)
        self._uncollected.extend(futures)
        return futures

    # --- collecting -------------------------------------------------------------------------

    def wait(
        self,
        fs: Sequence[concurrent.futures.Future] | None = None,
        return_when: str = ALL_COMPLETED,
        timeout: float | None = None,
    ) -> tuple[list, list]:
        """:func:`pywren_core.wait` over ``fs`` (default: every future not yet collected)."""
        fs = list(self._uncollected) if fs is None else fs
        return futures_module.wait(fs, return_when, timeout, self._progress())

    def get_result(self, fs: Any = None, timeout: float | None = None) -> Any:
        """Results in order, re-raising the first remote exception with its remote traceback.

        ``fs`` is a list of futures, one future (its result alone is returned) or None: every
        future of this executor not yet collected by ``get_result()``.
        """
        if isinstance(fs, concurrent.futures.Future):
            return futures_module.get_result([fs], timeout, self._progress())[0]
        collecting_all = fs is None
        fs = list(self._uncollected) if collecting_all else list(fs)
        results = futures_module.get_result(fs, timeout, self._progress())
        if collecting_all:
            collected = set(map(id, fs))
            self._uncollected = [f for f in self._uncollected if id(f) not in collected]
        return results

    def _progress(self) -> bool | None:
        return None if self.config.progress else False

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._closed:
            return
        if cancel_futures:
            for f in self._uncollected:
                f.cancel()
        if wait:
            futures_module.wait(self._uncollected, ALL_COMPLETED, progress=False)
        self._closed = True
        self._invoker.stop()
        self._monitor.stop(wait)
        if wait:
            self.session.close()

    def clean(self, job_id: str | None = None) -> int:
        """Delete this executor's objects in storage (or one job's); returns how many were deleted."""
        prefix = JobKeys(self.executor_id, job_id).prefix if job_id else f"{JOBS_PREFIX}/{self.executor_id}/"
        keys = self.session.list(prefix)
        self.session.delete(keys)
        return len(keys)

    # --- completing futures (called from the monitor thread) ---------------------------------

    def _complete(self, job: _Job, call: _Call, status: dict[str, Any]) -> None:
        future = call.future
        kind = status.get("kind")
        attempt = status.get("attempt")
        if kind not in ("success", "exception") and attempt is not None and call.live - {attempt}:
            call.live.discard(attempt)  # the other attempt of this call may still answer
            return
        future.stats.update(status.get("stats") or {})
        future.stats["done"] = time.time()
        future.stdout, future.stderr = status.get("stdout", ""), status.get("stderr", "")
        try:
            if kind == "success":
                blob = unb64(status["result"]) if "result" in status else self.session.get(status["result_key"])
                future.set_result(serialize.loads(verify(job.secret, result_context(job.keys, future.call_id), blob)))
                job.durations.append(future.stats["done"] - future.stats.get("invoked", future.stats["done"]))
            elif kind == "exception":
                future.set_exception(self._remote_exception(job, future.call_id, status.get("error") or {}))
            elif kind in RETRYABLE and future.attempt < self.config.retries and not job.attached:
                self._retry(job, call)
                return
            else:
                error = status.get("error") or {}
                if error.get("type") == "SignatureError":
                    failure: BaseException = SignatureError(error.get("message", ""))
                else:
                    failure = _FAILURES.get(kind, CallFailedError)(
                        error.get("message") or f"call ended with status {kind!r}"
                    )
                if kind in RETRYABLE and self.config.retries:
                    failure.add_note(f"gave up after {future.attempt + 1} attempts (retries={self.config.retries})")
                future.set_exception(failure)
        except concurrent.futures.InvalidStateError:  # cancelled meanwhile
            pass
        except Exception as exc:  # a result that fails its signature or cannot be unpickled here
            if not future.done():
                future.set_exception(exc)
        self._monitor.finished(job, call)

    def _remote_exception(self, job: _Job, call_id: str, error: dict[str, Any]) -> BaseException:
        exc: BaseException | None = None
        if "pickle" in error:
            try:
                exc = serialize.loads(verify(job.secret, exception_context(job.keys, call_id), unb64(error["pickle"])))
            except SignatureError as bad:
                return bad
            except Exception:
                exc = None
        if not isinstance(exc, BaseException):
            exc = RemoteError(error.get("type", "Exception"), error.get("message", ""))
        exc.__cause__ = RemoteTraceback(error.get("traceback", ""))
        return exc

    def _retry(self, job: _Job, call: _Call, *, keep_running: bool = False) -> None:
        """Invoke the call again; ``keep_running`` leaves the running attempt free to win the race."""
        future = call.future
        future.attempt += 1
        future.stats["attempts"] = future.attempt + 1
        call.live = (call.live if keep_running else set()) | {future.attempt}
        call.invoked_at = None
        self._invoker.submit(job.payload([call]), [call])


class _Invoker:
    """Issues invocations from a bounded thread pool, pacing them and waiting out throttling."""

    def __init__(self, session: Session, threads: int, rate: float | None, give_up_after: float):
        self.session = session
        self.threads = threads
        self.pacer = Pacer(rate)
        self.give_up_after = give_up_after
        self.queue: queue.SimpleQueue[tuple[dict[str, Any], list[_Call]] | None] = queue.SimpleQueue()
        self._started: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, payload: dict[str, Any], calls: list[_Call]) -> None:
        if not self._started:
            with self._lock:
                while len(self._started) < self.threads:
                    thread = threading.Thread(target=self._run, name="pywren-invoker", daemon=True)
                    thread.start()
                    self._started.append(thread)
        self.queue.put((payload, calls))

    def stop(self) -> None:
        for _ in self._started:
            self.queue.put(None)

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            payload, calls = item
            live = [c for c in calls if c.future.running() or c.future.set_running_or_notify_cancel()]
            if not live:
                continue
            self._invoke(payload, live)

    def _invoke(self, payload: dict[str, Any], calls: list[_Call]) -> None:
        started = time.monotonic()
        for attempt in itertools.count():
            self.pacer.wait()
            issued = time.time()
            try:
                self.session.invoke(payload)
            except ThrottledError as exc:
                if time.monotonic() - started > self.give_up_after:
                    self._fail(
                        calls,
                        InvokeError(f"the platform kept throttling invocations for {self.give_up_after} s: {exc}"),
                    )
                    return
                time.sleep(backoff_delay(min(attempt, 7), exc.retry_after))
                continue
            except Exception as exc:
                error = (
                    exc
                    if isinstance(exc, PywrenError)
                    else InvokeError(f"invoking failed: {type(exc).__name__}: {exc}")
                )
                self._fail(calls, error)
                return
            for c in calls:
                c.invoked_at = issued
                c.future.stats.setdefault("invoked", issued)
                c.future.stats["invoke_retries"] = c.future.stats.get("invoke_retries", 0) + attempt
            return

    @staticmethod
    def _fail(calls: list[_Call], error: BaseException) -> None:
        for c in calls:
            if not c.future.done():
                c.future.set_exception(error)


class _Monitor:
    """Completes futures from status records, detects lost calls, and cleans finished jobs."""

    def __init__(self, executor: Executor):
        self.executor = executor
        self.session = executor.session
        self.min_interval, self.max_interval = executor.info.poll_interval
        self.jobs: list[_Job] = []
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._cleaner = concurrent.futures.ThreadPoolExecutor(1, "pywren-cleanup")
        self._io: concurrent.futures.ThreadPoolExecutor | None = None
        if executor.info.storage_concurrency > 1:
            self._io = concurrent.futures.ThreadPoolExecutor(executor.info.storage_concurrency, "pywren-io")

    def add(self, job: _Job) -> None:
        with self._lock:
            self.jobs.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pywren-monitor", daemon=True)
                self._thread.start()
        self._wakeup.set()

    def stop(self, wait: bool) -> None:
        self._stopped = True
        self._wakeup.set()
        if wait and self._thread is not None:
            self._thread.join()  # its last acts: hand finished jobs to the cleaner, shut its pools
            self._cleaner.shutdown(wait=True)

    def finished(self, job: _Job, call: _Call) -> None:
        job.pending.get(group_of(call.future.call_id), set()).discard(call.future.call_id)
        job.last_progress = time.time()

    def _run(self) -> None:
        interval = self.min_interval
        last_check = time.monotonic()
        while not self._stopped:
            self._wakeup.clear()
            try:
                progressed, listing = self._poll()
            except Exception as exc:  # storage trouble: keep polling, the calls still count down to their deadline
                progressed, listing = False, 0.0
                self._warn(exc)
            if time.monotonic() - last_check > 1.0:
                self._check_deadlines()
                last_check = time.monotonic()
            self._retire_done_jobs()
            interval = self.min_interval if progressed else min(self.max_interval, interval * 1.5)
            # Listing must not starve the calls it waits for: at most a fifth of the time goes to it.
            interval = max(interval, POLL_COST_FACTOR * listing)
            with self._lock:
                idle = not self.jobs
            self._wakeup.wait(None if idle else interval)
        self._retire_done_jobs()
        # Here, not in stop(): until now this thread may still be using them.
        self._cleaner.shutdown(wait=False)
        if self._io is not None:
            self._io.shutdown(wait=False)

    def _warn(self, exc: Exception) -> None:
        import logging

        logging.getLogger("pywren_core").warning("polling for results failed (will retry): %s", exc)

    def _poll(self) -> tuple[bool, float]:
        """Complete the calls whose status appeared; return whether any did, and the listing's cost."""
        with self._lock:
            jobs = list(self.jobs)
        listing_started = time.monotonic()
        found: list[tuple[_Job, _Call, str]] = []
        for job in jobs:
            for group, pending in list(job.pending.items()):
                if not pending or all(job.calls[c].invoked_at is None for c in pending):
                    continue
                for key in self.session.list(job.keys.status_group(group)):
                    parsed = parse_status_key(key)
                    if parsed is None or parsed[0] not in pending:
                        continue
                    call = job.calls[parsed[0]]
                    if parsed[1] in call.live and not call.future.cancelled():
                        found.append((job, call, key))
        listing = time.monotonic() - listing_started
        if not found:
            return False, listing
        parallel = self._io is not None and len(found) > 1
        statuses = self._io.map(self._fetch, found) if parallel else map(self._fetch, found)  # type: ignore[union-attr]
        for (job, call, _), status in zip(found, statuses, strict=True):
            if status is not None:
                self.executor._complete(job, call, status)
        return True, listing

    def _fetch(self, item: tuple[_Job, _Call, str]) -> dict[str, Any] | None:
        """A status record, or None when it cannot be read now (it is read again next round)."""
        job, call, key = item
        try:
            parsed = parse_status_key(key)
            return load_status(job.secret, job.keys, call.future.call_id, parsed[1], self.session.get(key))
        except Exception as exc:
            self._warn(exc)
            return None

    def _check_deadlines(self) -> None:
        now = time.time()
        grace = self.executor.config.lost_grace
        with self._lock:
            jobs = list(self.jobs)
        for job in jobs:
            if self.executor.config.speculative:
                self._speculate(job, now)
            for pending in list(job.pending.values()):
                for call_id in list(pending):
                    call = job.calls[call_id]
                    if call.future.cancelled():
                        self.finished(job, call)
                    elif (
                        call.invoked_at is not None
                        and now - max(call.invoked_at, job.last_progress) > job.timeout + grace
                    ):
                        message = (
                            f"no worker reported on call {job.keys.job_id}/{call_id} within its timeout of "
                            f"{job.timeout} s plus {grace} s: the invocation was lost or the worker hung"
                        )
                        if job.attached:
                            message += " (an attached job's calls are not invoked again: their arguments are gone)"
                        status = {"kind": "timeout", "error": {"type": "CallTimeoutError", "message": message}}
                        self.executor._complete(job, call, status)

    def _speculate(self, job: _Job, now: float) -> None:
        """Back up stragglers: once half of the job is done, a call running longer than
        ``speculative_factor`` times the median call is invoked once more; the first answer wins."""
        if job.attached or len(job.durations) < max(3, len(job.calls) // 2):
            return
        limit = self.executor.config.speculative_factor * statistics.median(job.durations)
        for pending in list(job.pending.values()):
            for call_id in list(pending):
                call = job.calls[call_id]
                if len(call.live) == 1 and call.invoked_at is not None and now - call.invoked_at > limit:
                    call.future.stats["speculated"] = True
                    self.executor._retry(job, call, keep_running=True)

    def _retire_done_jobs(self) -> None:
        with self._lock:
            done = [job for job in self.jobs if not any(job.pending.values())]
            self.jobs = [job for job in self.jobs if any(job.pending.values())]
        if self.executor.config.cleanup:
            for job in done:  # off the polling thread: deleting thousands of objects takes a while
                self._cleaner.submit(self._clean, job)

    def _clean(self, job: _Job) -> None:
        try:
            self.session.delete(self.session.list(job.keys.prefix))
            manifests.remove(job.keys)
        except Exception as exc:
            self._warn(exc)
