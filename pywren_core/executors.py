"""The executor: turns calls into jobs, invokes them, and completes futures from storage.

Flow of one job: the function is pickled and signed once (``func.pickle``); each call's arguments
are pickled and signed, then sent inline in the invoke payload when they fit the backend's payload
limit, or else stored back to back in one ``args.pickle`` that workers read by byte range. Every
call's state lives in one :class:`~pywren_core.calls.CallTracker`; two kinds of thread report to
it. Invoker threads issue the invocations (throttling and lost answers are waited out, never a
dropped call). A monitor thread lists one status prefix per 1,000 open calls per round, with an
interval that shrinks when results arrive and grows when they do not, verifies each status record
and reports it, declares calls lost past their deadline, and drains the backend's call events.

The executor itself only submits and collects: its threads hold the engine, never the executor,
so an executor that is dropped without ``shutdown()`` is collected, its calls still complete, and
its threads end once they have. At interpreter exit, calls still open are cancelled and every
job's objects are deleted.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import itertools
import json
import logging
import os
import queue
import statistics
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from pywren_core import __version__, manifests, serialize
from pywren_core import config as config_module
from pywren_core import data as data_module
from pywren_core import fanout as fanout_module
from pywren_core import futures as futures_module
from pywren_core.backend import Pacer, Session, invoke_until_accepted
from pywren_core.calls import FAILURES, Call, CallTracker, Job, Outcome
from pywren_core.data import Storage
from pywren_core.errors import (
    ConfigError,
    InvokeError,
    NotFoundError,
    PywrenError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    SignatureError,
    StorageError,
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
    delete_jobs,
    exception_context,
    func_context,
    load_status,
    new_executor_id,
    new_secret,
    parse_status_key,
    python_version,
    result_context,
    seal,
    secret_context,
    sign,
    unb64,
    verify,
)
from pywren_core.protocol import (
    call_id as make_call_id,
)

log = logging.getLogger("pywren_core")

RESULT_INLINE_MAX = 64 * 1024
_CALL_OVERHEAD = 96  # JSON bytes around one call's entry in a payload
#: The pause after a round of polling is at least this many times the round's listing took.
POLL_COST_FACTOR = 4.0
#: While the backend's completion notices keep coming (done events, within the last
#: NOTICE_FRESH seconds), the listing only catches a lost notice: it pauses at least
#: NOTICE_LISTING_PAUSE seconds, and NOTICE_POLL_COST_FACTOR times its cost. (A long map re-lists
#: every finished status of a status group each round: on Azurite at 10,000 calls that took
#: 10 ms of client CPU a call.)
NOTICE_FRESH = 10.0
NOTICE_LISTING_PAUSE = 10.0
NOTICE_POLL_COST_FACTOR = 20.0
#: Rounds in a row a job's status listing may fail with a storage error (not throttling) before
#: the job fails with it: retrying will not fix denied access or a missing bucket.
LISTING_FAILURES = 3
#: Seconds the invoker waits out a platform's throttling before failing the calls (at least; a
#: longer call timeout is used when there is one).
INVOKE_PATIENCE = 60.0
#: Seconds a fan-out invoker the platform accepted has to start (counted from the job's last
#: progress too), and half the time it has to report once started, before the client invokes its
#: batch itself (each call then counts a possible extra run).
FANOUT_REPORT_WAIT = 120.0
#: Seconds the monitor gets to finish its round when the executor stops.
STOP_TIMEOUT = 10.0
#: A job whose submission takes longer than this shows a "submitting" bar (when progress is on),
#: moved on every SUBMIT_BAR_STEP calls prepared.
SUBMIT_BAR_DELAY = 0.5
SUBMIT_BAR_STEP = 1000


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
        #: The built runtime the calls run in (``pywren_core.runtime``), or None: the plugin's default.
        self.runtime: Any = None
        if config.runtime is not None or config.runtimes:
            from pywren_core import runtime as runtime_module  # only then: it costs imports

            say = (lambda text: print(f"pywren: {text}", file=sys.stderr)) if config.progress else None
            self.runtime = runtime_module.for_config(config, self.info, log=say)
        self.session: Session = self.backend.open(self.section, role="client", wrappers=wrappers, runtime=self.runtime)
        self.session.prepare()
        if self.faults is not None:
            self.faults.storage = self.session
        self.executor_id = new_executor_id()
        self._job_numbers = itertools.count()
        #: Futures not yet collected by ``get_result``, in submission order (a dict as an ordered set).
        self._uncollected: dict[ResponseFuture, None] = {}
        self._engine = _Engine(self.session, self.info, config, self.timeout)
        self._closed = False
        # Dropped without shutdown(): the calls still complete, then the engine's threads end.
        weakref.finalize(self, self._engine.stop, False).atexit = False

    # --- submitting -------------------------------------------------------------------------

    def call_async(self, func: Callable[..., Any], data: Any, extra_args: Sequence[Any] = ()) -> ResponseFuture:
        """Run ``func(data, *extra_args)`` as one remote call."""
        return self._submit_job(func, [((data, *extra_args), {})], chunksize=1)[0]

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> ResponseFuture:
        """``concurrent.futures.Executor.submit``: run ``fn(*args, **kwargs)`` remotely."""
        return self._submit_job(fn, [(args, kwargs)], chunksize=1)[0]

    @property
    def storage(self) -> Storage:
        """Objects at URLs of this backend's schemes (``put``, ``get``, ``list``, ``delete``, ``open``)."""
        return Storage(self.session)

    def map(  # type: ignore[override]
        self,
        func: Callable[..., Any],
        iterdata: Iterable[Any] | str,
        extra_args: Sequence[Any] = (),
        chunksize: int | None = None,
        *,
        obj_chunk_size: int | None = None,
        obj_chunk_number: int | None = None,
    ) -> list[ResponseFuture]:
        """Run ``func(item, *extra_args)`` for each item, one call each; return the futures at once.

        ``chunksize`` calls travel in one invocation (default: the ``chunksize`` setting, 1).
        ``iterdata`` may also name objects in storage: a URL prefix (``"s3://logs/2026/"``), or a
        list of object URLs or prefixes. Then each call gets a :class:`~pywren_core.data.DataPiece`
        of one object, cut into pieces of ``obj_chunk_size`` bytes or into ``obj_chunk_number``
        pieces (default: one per object), aligned to lines.
        """
        iterdata = self._plan(iterdata, obj_chunk_size, obj_chunk_number)
        calls = [((item, *extra_args), {}) for item in iterdata]
        return self._submit_job(func, calls, chunksize=chunksize or self.config.chunksize)

    def _plan(self, iterdata: Any, chunk_size: int | None, chunk_number: int | None) -> Any:
        if data_module.is_data(iterdata, self.info.data_schemes):
            return data_module.plan(self.storage, iterdata, chunk_size, chunk_number)
        if chunk_size is not None or chunk_number is not None:
            raise TypeError("obj_chunk_size and obj_chunk_number apply to a map over storage URLs only")
        return iterdata

    def map_reduce(
        self,
        map_func: Callable[..., Any],
        iterdata: Iterable[Any] | str,
        reduce_func: Callable[[list[Any]], Any],
        extra_args: Sequence[Any] = (),
        chunksize: int | None = None,
        *,
        obj_chunk_size: int | None = None,
        obj_chunk_number: int | None = None,
        reduce_by_key: bool = False,
    ) -> Any:
        """Map, then run ``reduce_func(list_of_map_results)`` as one more remote call.

        Returns the reduce call's future at once; ``.map_futures`` holds the map calls'. With
        ``reduce_by_key=True`` (a map over storage URLs), one reducer runs per object, on that
        object's pieces' results, as soon as they are done: a list of futures, one per object in
        listing order, each with ``.url`` and ``.map_futures``.
        """
        pieces = self._plan(iterdata, obj_chunk_size, obj_chunk_number)
        if reduce_by_key and not data_module.is_data(iterdata, self.info.data_schemes):
            raise TypeError("reduce_by_key=True needs a map over storage URLs")
        map_futures = self.map(map_func, pieces, extra_args=extra_args, chunksize=chunksize)
        if not reduce_by_key:
            return self._reduce_later([("", map_futures)], reduce_func)[0]
        groups: dict[str, list[ResponseFuture]] = {}
        for piece, future in zip(pieces, map_futures, strict=True):
            groups.setdefault(piece.url, []).append(future)
        return self._reduce_later(list(groups.items()), reduce_func)

    def _reduce_later(
        self, groups: list[tuple[str, list[ResponseFuture]]], reduce_func: Callable[[list[Any]], Any]
    ) -> list[ResponseFuture]:
        """One future per group, settled by a reduce call submitted once the group's map calls are
        done. One thread serves every group, in the order they finish."""
        outers = []
        for url, map_futures in groups:
            outer = ResponseFuture(self.executor_id, "reduce", f"{len(outers):05d}")
            outer.map_futures = map_futures  # type: ignore[attr-defined]
            outer.url = url  # type: ignore[attr-defined]
            outers.append(outer)
            self._uncollected[outer] = None

        ready: queue.SimpleQueue[ResponseFuture] = queue.SimpleQueue()
        lock = threading.Lock()
        left = {outer: len(outer.map_futures) for outer in outers}  # type: ignore[attr-defined]

        def one_done(outer: ResponseFuture) -> None:
            with lock:
                left[outer] -= 1
                if left[outer] == 0:
                    ready.put(outer)

        def reduce_when_mapped() -> None:
            for _ in outers:
                outer = ready.get()
                try:
                    results = futures_module.get_result(outer.map_futures, progress=False)  # type: ignore[attr-defined]
                    inner = self.call_async(reduce_func, results)
                    outer.job_id, outer.call_id = inner.job_id, inner.call_id
                    inner.add_done_callback(lambda _, outer=outer, inner=inner: _settle_like(outer, inner))
                except BaseException as exc:
                    outer._settle(exception=exc)

        for outer in outers:
            for future in outer.map_futures:  # type: ignore[attr-defined]
                future.add_done_callback(lambda _, outer=outer: one_done(outer))
            if not outer.map_futures:  # type: ignore[attr-defined]
                ready.put(outer)
        threading.Thread(target=reduce_when_mapped, name="pywren-reduce", daemon=True).start()
        return outers

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
        by_reference: set[str] = set()
        try:
            pickled_func = serialize.dumps(func, by_reference)
        except Exception as exc:
            raise SerializationError(
                f"the function {func!r} cannot be pickled to send it to the workers: {exc}"
            ) from exc
        if self.runtime is not None:
            from pywren_core.runtime import check_modules

            check_modules(self.runtime, by_reference, own_distributions=[self.backend.entry.distribution])
        width = max(5, len(str(len(calls) - 1)))
        base_payload = {
            "protocol": PROTOCOL_VERSION,
            "backend": self.info.name,
            "config": self.info.public_config(self.section),
            "executor_id": keys.executor_id,
            "job_id": keys.job_id,
            "func_key": keys.func,
            **self._secret_field(keys, secret),
            "timeout": self.timeout,
            "python": python_version(),
            "core_version": __version__,
            "result_inline_max": RESULT_INLINE_MAX,
        }
        if self.faults is not None:
            base_payload["faults"] = attrs.asdict(self.faults.config)
        if self.runtime is not None:
            base_payload["runtime"] = self.runtime.name
        job = Job(keys, secret, base_payload, self.timeout)
        condition, submitted = threading.Condition(), time.time()  # shared by the job's futures
        # A large map takes seconds to prepare: the bar shows from SUBMIT_BAR_DELAY on.
        bar = futures_module.progress_bar(len(calls), self._progress(), "submitting", SUBMIT_BAR_DELAY)
        signed: list[bytes] = []
        futures = []
        try:
            for start in range(0, len(calls), SUBMIT_BAR_STEP):
                for index in range(start, min(start + SUBMIT_BAR_STEP, len(calls))):
                    args, kwargs = calls[index]
                    try:
                        data = serialize.dumps((args, kwargs))
                    except Exception as exc:
                        shown = repr(args[0] if len(args) == 1 and not kwargs else (args, kwargs))[:120]
                        raise SerializationError(
                            f"the arguments of call {index} ({shown}) cannot be pickled: {exc}"
                        ) from exc
                    cid = make_call_id(index, width)
                    signed.append(sign(secret, args_context(keys, cid), data))
                    future = ResponseFuture(keys.executor_id, keys.job_id, cid, condition, submitted)
                    call = Call(job, cid, future, {})
                    future._call = call
                    job.add(call)
                    futures.append(future)
                if bar is not None:
                    bar.update(len(futures) - bar.n)
            # Storage first: a missing bucket fails here, before a manifest or an invocation exists.
            self.session.put(keys.func, sign(secret, func_context(keys), pickled_func))
            try:
                specs = self._arg_specs(keys, base_payload, signed, chunksize)
                for call, spec in zip(job.calls.values(), specs, strict=True):
                    call.args = spec
                manifests.write(keys, secret, len(calls), self.info.name, self.timeout)
            except BaseException:  # Ctrl-C included: nothing of a job that never started stays behind
                delete_jobs(self.session, keys.prefix)
                manifests.remove(keys)
                raise
            self._engine.start_job(job, chunksize)
        finally:
            if bar is not None:
                bar.close()
        self._uncollected.update(dict.fromkeys(futures))
        return futures

    def _secret_field(self, keys: JobKeys, secret: bytes) -> dict[str, str]:
        """The job secret for the payload: sealed when the backend has a payload key (its payloads
        may rest where storage's writers can read them), else as it is."""
        payload_key = self.section.get("payload_key")
        if payload_key:
            try:
                key = bytes.fromhex(payload_key)
            except ValueError:
                raise ConfigError(f"{self.info.name}.payload_key must be hex (e.g. 64 hex digits)") from None
            return {"sealed_secret": seal(key, secret, secret_context(keys))}
        return {"secret": secret.hex()}

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
            specs.append({"key": keys.args, "range": (offset, offset + len(blob))})  # a tuple: not tracked by the GC
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
        attached = Job(keys, bytes.fromhex(manifest["secret"]), {}, manifest["timeout"], attached=True)
        width = max(5, len(str(manifest["calls"] - 1)))
        futures = []
        condition, submitted = threading.Condition(), time.time()
        for index in range(manifest["calls"]):
            cid = make_call_id(index, width)
            future = ResponseFuture(keys.executor_id, keys.job_id, cid, condition, submitted)
            call = Call(attached, cid, future, {})
            future._call = call
            attached.add(call)
            futures.append(future)
        self._engine.attach_job(attached)
        self._uncollected.update(dict.fromkeys(futures))
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

    def get_result(self, fs: Any = None, timeout: float | None = None, throw_except: bool = True) -> Any:
        """Results in order, re-raising the first remote exception with its remote traceback.

        ``fs`` is a list of futures, one future (its result alone is returned) or None: every
        future of this executor not yet collected by ``get_result()``. Collected futures are
        forgotten by the executor. With ``throw_except=False`` a failed call's exception stands in
        its place instead of being raised.
        """
        single = isinstance(fs, concurrent.futures.Future)
        fs = [fs] if single else list(self._uncollected) if fs is None else list(fs)
        results = futures_module.get_result(fs, timeout, self._progress(), throw_except)
        for f in fs:
            self._uncollected.pop(f, None)
        return results[0] if single else results

    def _progress(self) -> bool | None:
        return None if self.config.progress else False

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking calls. ``cancel_futures`` cancels every call not yet settled; ``wait`` waits
        for the rest and for their jobs' cleanup. Without ``wait``, calls still complete and the
        executor's threads end once they have."""
        if self._closed:
            return
        self._closed = True
        self._engine.stop(wait, cancel=cancel_futures)

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        # An exception (Ctrl-C among them) leaves the block: nobody will collect these calls.
        self.shutdown(wait=True, cancel_futures=exc_type is not None)
        return False

    def clean(self, job_id: str | None = None) -> int:
        """Delete this executor's objects in storage (or one job's); returns how many were deleted."""
        prefix = JobKeys(self.executor_id, job_id).prefix if job_id else f"{JOBS_PREFIX}/{self.executor_id}/"
        return delete_jobs(self.session, prefix)


class _Engine:
    """An executor's tracker, threads and session; what keeps running until its calls settle."""

    def __init__(self, session: Session, info: Any, config: config_module.Config, timeout: float):
        self.session = session
        self.info = info
        self.config = config
        self.timeout = timeout
        self.tracker = CallTracker(config.retries, self._reinvoke, self._retired, self._stop_remote)
        limits = info.limits
        threads = max(1, min(config.invoke_threads, limits.max_concurrency))
        patience = max(timeout, INVOKE_PATIENCE)
        self.invoker = _Invoker(session, self.tracker, threads, limits.max_invoke_rate, patience)
        threshold = fanout_module.threshold(config.fanout, session, config.sources.get("fanout", "config"))
        if threshold is not None:
            self.invoker.fanout = fanout_module.FanOut(
                session, self.tracker, lambda job, calls: self.invoker.submit(job, calls, fan_out=False), threshold,
                report_wait=FANOUT_REPORT_WAIT, batch_size=config.fanout_batch)
        self.cleaner = _Cleaner(session)
        self.monitor = _Monitor(self)
        self.stopping = False
        #: Stopping with the calls cancelled (Ctrl-C, interpreter exit): no wait for fan-out reports.
        self.hurry = False
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        atexit.register(self.exit_now)
        _engines.add(self)

    def forked(self) -> None:
        """In a forked child: the parent's calls are the parent's (their futures here are cancelled),
        and none of its threads exist here; start afresh with this process's own."""
        for call in self.tracker.open_calls():
            call.future._settle_cancelled()
        atexit.unregister(self.exit_now)
        self.__init__(self.session, self.info, self.config, self.timeout)  # type: ignore[misc]

    def start_job(self, job: Job, chunksize: int) -> None:
        self.tracker.add_job(job)
        self.monitor.start()
        calls = list(job.calls.values())
        self.invoker.submit(job, [calls[start : start + chunksize] for start in range(0, len(calls), chunksize)])

    def attach_job(self, job: Job) -> None:
        self.tracker.add_job(job)
        self.tracker.invoked([(c, 0) for c in job.calls.values()], (time.monotonic(), time.time()))
        self.monitor.start()

    def _reinvoke(self, job: Job, calls: list[Call]) -> None:
        self.invoker.submit(job, [calls])

    def _retired(self, job: Job) -> None:
        """Clean up the job once its fan-out reports, which may come after its last call, are read."""
        if not self.config.cleanup:
            return
        if self.invoker.fanout is not None:
            self.invoker.fanout.after_reports(job, self.cleaner.submit)
        else:
            self.cleaner.submit(job)

    def _stop_remote(self, job: Job, call_ids: list[str]) -> None:
        try:
            self.session.cancel(job.keys.executor_id, job.keys.job_id, call_ids)
        except Exception as exc:
            log.warning("could not ask %s to stop cancelled calls of job %s: %s", self.info.name, job.keys.job_id, exc)

    def stop(self, wait: bool, cancel: bool = False) -> None:
        """Stop once every call has settled (at once with ``cancel``); ``wait`` blocks until then."""
        if cancel:
            self.hurry = True
            self.tracker.cancel_all(self.tracker.open_calls())
        self.stopping = True
        if not self.monitor.start(idle_ok=True):
            self._finish()
        elif wait:
            self.monitor.wake()
            futures_module.wait([c.future for c in self.tracker.open_calls()], progress=False)
        settled_since = None
        while wait and not self._stopped.wait(1.0):
            if self.tracker.open_calls():  # each bounded by its own deadline
                continue
            settled_since = settled_since or time.monotonic()
            if not self.monitor.alive or time.monotonic() - settled_since > STOP_TIMEOUT:
                self.monitor.stop_now()  # never wait on a monitor that does not finish
                self._finish()

    def _finish(self) -> None:
        """The last act, on the monitor thread (or the caller's): every job still known is cleaned,
        after its fan-out reports unless in a hurry."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            self.invoker.stop()
            left = self.invoker.fanout.finish(wait=not self.hurry) if self.invoker.fanout is not None else []
            self.cleaner.stop()
            left += self.tracker.drop_jobs()  # a job whose retirement a second Ctrl-C cut short
            if self.config.cleanup:
                for job in left:
                    self.cleaner.clean(job)
            try:
                self.session.close()
            except Exception as exc:
                log.warning("closing the %s session failed: %s", self.info.name, exc)
            self._stopped.set()
        atexit.unregister(self.exit_now)

    def exit_now(self) -> None:
        """At interpreter exit: cancel what is still open, delete every job's objects, close."""
        if self._stopped.is_set():
            return
        self.hurry = True
        self.tracker.cancel_all(self.tracker.open_calls())
        self.stopping = True
        self.monitor.stop_now()
        self._finish()


class _Invoker:
    """Issues invocations from a bounded thread pool, pacing them and waiting out throttling and
    lost answers. Calls settled meanwhile (cancelled, done by a racing attempt) are left out.

    Work waits in a deque that a job's invocations join all at once: the submitting thread takes
    one lock per job, and an invoker thread only sleeps (and needs waking) when the deque is empty.
    """

    def __init__(self, session: Session, tracker: CallTracker, threads: int, rate: float | None, give_up_after: float):
        self.session = session
        self.tracker = tracker
        self.threads = threads
        self.pacer = Pacer(rate)
        self.give_up_after = give_up_after
        #: Large maps' invocations are made by invokers in the platform (``pywren_core.fanout``), or None.
        self.fanout: fanout_module.FanOut | None = None
        #: One invocation each: its job, its calls and the attempt each was queued for; or one
        #: fan-out invoker's batch of them.
        self._work: collections.deque[tuple[Job, list[Call], tuple[int, ...]] | fanout_module.Batch] = (
            collections.deque()
        )
        self._ready = threading.Condition(threading.Lock())
        self._started: list[threading.Thread] = []
        self._stopped = False

    def submit(self, job: Job, invocations: list[list[Call]], fan_out: bool = True) -> None:
        """Queue one invocation per list of calls, at the calls' current attempts; enough of them
        (the fan-out threshold) go in batches, one invoker each, unless not ``fan_out``."""
        batches = self.fanout.batches(job, invocations) if fan_out and self.fanout is not None else []
        items = batches or [(job, calls, tuple([c.attempt for c in calls])) for calls in invocations]
        with self._ready:
            while len(self._started) < self.threads and not self._stopped:
                thread = threading.Thread(target=self._run, name="pywren-invoker", daemon=True)
                thread.start()
                self._started.append(thread)
            self._work.extend(items)
            self._ready.notify(len(items))

    def stop(self) -> None:
        """The threads end once the work queued so far is done."""
        with self._ready:
            self._stopped = True
            self._ready.notify_all()

    def _next(self) -> tuple[Job, list[Call], tuple[int, ...]] | None:
        while True:
            try:
                return self._work.popleft()
            except IndexError:
                pass
            with self._ready:
                if self._stopped and not self._work:
                    return None
                if not self._work:
                    self._ready.wait()

    def _run(self) -> None:
        while self._invoke_next():
            pass

    def _invoke_next(self) -> bool:
        """Invoke the next queued calls still live; False once stopped. (A function of its own, so
        that a thread waiting for work holds no job: a finished job's calls are freed.)"""
        item = self._next()
        if item is None:
            return False
        if isinstance(item, fanout_module.Batch):
            self.fanout.invoke(item, self.pacer, self.give_up_after)  # type: ignore[union-attr]
            return True
        job, calls, attempts = item
        queued = zip(calls, attempts, strict=True)
        live = [(c, attempt) for c, attempt in queued if c.attempt == attempt and not c.settled]
        if live:
            self._invoke(job, live)
        return True

    def _invoke(self, job: Job, sent: list[tuple[Call, int]]) -> None:
        """Invoke these calls at these attempts until the platform accepts (see
        ``backend.invoke_until_accepted``); a lost answer counts a possible extra run for each."""
        try:
            accepted = invoke_until_accepted(
                self.session.invoke, job.payload(sent), self.pacer, self.give_up_after,
                on_ambiguous=lambda: self.tracker.ambiguous(c for c, _ in sent),
                cancelled=lambda: all(c.settled for c, _ in sent),
            )
        except Exception as exc:
            if not isinstance(exc, PywrenError):
                exc = InvokeError(f"invoking failed: {type(exc).__name__}: {exc}")
            self.tracker.invoke_failed(sent, exc)
            return
        if accepted.at is not None:
            self.tracker.invoked(sent, (time.monotonic(), accepted.at), throttled=accepted.throttled)


class _Cleaner:
    """Deletes retired jobs' objects and manifests on a thread of its own (thousands of objects
    take a while); what is queued when it stops is deleted by the stopping thread."""

    def __init__(self, session: Session):
        self.session = session
        self.queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="pywren-cleanup", daemon=True)
                self._thread.start()
        self.queue.put(job)

    def _run(self) -> None:
        while self._clean_next():
            pass

    def _clean_next(self) -> bool:
        """Clean the next job; False once stopped (a function, so that waiting holds no job)."""
        job = self.queue.get()
        if job is None:
            return False
        self.clean(job)
        return True

    def clean(self, job: Job) -> None:
        try:
            delete_jobs(self.session, job.keys.prefix)
            manifests.remove(job.keys)
        except Exception as exc:
            log.warning("cleaning up job %s failed: %s (`pywren clean` removes it later)", job.keys.job_id, exc)

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self.queue.put(None)
            thread.join(STOP_TIMEOUT)
        while True:  # whatever the thread did not get to
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                self.clean(job)


class _Monitor:
    """Reports statuses, platform events and lost calls to the tracker; ends the engine when done."""

    def __init__(self, engine: _Engine):
        self.engine = engine
        self.session = engine.session
        self.tracker = engine.tracker
        self.config = engine.config
        self.min_interval, self.max_interval = engine.info.poll_interval
        self._wakeup = threading.Event()
        #: Set by :meth:`wake` (a new job, a stop): list statuses this round, whatever the interval.
        self._list_now = False
        self._halt = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._io: concurrent.futures.ThreadPoolExecutor | None = None
        if engine.info.storage_concurrency > 1:
            self._io = concurrent.futures.ThreadPoolExecutor(engine.info.storage_concurrency, "pywren-io")
        #: Per job: consecutive failed listing rounds, and when the streak began (monotonic).
        self._listing_failures: dict[int, tuple[int, float]] = {}
        self._warned: set[str] = set()
        #: When (monotonic) the backend last told of finished calls whose statuses were there to read.
        self._noticed_at = float("-inf")
        #: A done event's status could not be read since the last listing: list at the usual pace.
        self._notice_unread = False
        self.session.on_events = self._wakeup.set  # a plugin's notify: read its events, list as planned

    def start(self, idle_ok: bool = False) -> bool:
        """Start the thread if needed; False (and nothing started) when ``idle_ok`` and none runs."""
        with self._lock:
            if self._thread is None:
                if idle_ok:
                    return False
                self._thread = threading.Thread(target=self._run, name="pywren-monitor", daemon=True)
                self._thread.start()
        self.wake()
        return True

    def wake(self) -> None:
        self._list_now = True
        self._wakeup.set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop_now(self) -> None:
        self._halt = True
        self.wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(STOP_TIMEOUT)

    def _run(self) -> None:
        interval = self.min_interval
        last_check = next_listing = time.monotonic()
        try:
            while not self._halt:
                self._wakeup.clear()
                jobs = self.tracker.active_jobs()
                if not jobs:
                    if self.engine.stopping:
                        break
                    self._wakeup.wait()
                    continue
                self._drain_events(jobs)
                # A plugin's notify only wakes the monitor for its events: the listing keeps its
                # own pace, so a stream of completion events never adds storage requests.
                if self._list_now or time.monotonic() >= next_listing:
                    self._list_now = False
                    progressed, listing = self._poll(jobs)
                    interval = self.min_interval if progressed else min(self.max_interval, interval * 1.5)
                    # Listing must not starve the calls it waits for: at most a fifth of the time goes to it.
                    interval = max(interval, POLL_COST_FACTOR * listing)
                    if time.monotonic() - self._noticed_at < NOTICE_FRESH and not self._notice_unread:
                        interval = max(interval, NOTICE_LISTING_PAUSE, NOTICE_POLL_COST_FACTOR * listing)
                    self._notice_unread = False
                    next_listing = time.monotonic() + interval
                if time.monotonic() - last_check > 1.0:
                    self._check_deadlines(jobs)
                    last_check = time.monotonic()
                self._wakeup.wait(max(0.0, next_listing - time.monotonic()))
        except Exception as exc:  # a bug: fail the open calls rather than leave them waiting forever
            log.exception("the pywren monitor failed")
            for job in self.tracker.active_jobs():
                self.tracker.fail_job(job, PywrenError(f"the client's monitor thread failed: {exc!r}"))
        finally:
            if self._io is not None:
                self._io.shutdown(wait=False)
            if not self._halt:
                self.engine._finish()

    # --- one round ---------------------------------------------------------------------------

    def _drain_events(self, jobs: list[Job]) -> None:
        try:
            events = self.session.poll_events()
        except Exception as exc:
            log.warning("reading %s's call events failed (will retry): %s", self.engine.info.name, exc)
            return
        by_id = {(j.keys.executor_id, j.keys.job_id): j for j in jobs}
        done: list[tuple[Job, Call, int, str]] = []
        for event in events:
            job = by_id.get((event.executor_id, event.job_id))
            call = job.calls.get(event.call_id) if job is not None else None
            if call is None:
                continue
            if event.kind == "running":
                self.tracker.running(call, event.attempt)
            elif event.kind == "done":  # the worker says it wrote its status: read it now, no listing
                if not call.settled and event.attempt in call.live and event.attempt not in call.reported:
                    done.append((job, call, event.attempt, job.keys.status(call.call_id, event.attempt)))
            elif not call.settled and event.attempt in call.live:
                # A platform's failure report can be wrong about one call (a broken response that
                # carried several): a status the worker wrote wins over it.
                written = self._fetch((job, call, event.attempt, job.keys.status(call.call_id, event.attempt)))
                if written is None:
                    error = FAILURES.get(event.kind, FAILURES["error"])(
                        event.message or f"the platform reported {event.kind}"
                    )
                    written = Outcome(event.kind, error=error)
                self.tracker.settle(call, event.attempt, written)
        # Read the finished calls' statuses as a listing round does (one not visible yet, the listing finds,
        # at its usual pace).
        if done:
            if self._settle_found(done) == len(done):
                self._noticed_at = time.monotonic()
            else:
                self._notice_unread = True

    def _poll(self, jobs: list[Job]) -> tuple[bool, float]:
        """Report the attempts whose status appeared; return whether any did, and the listing's cost."""
        listing_started = time.monotonic()
        found: list[tuple[Job, Call, int, str]] = []
        for job in jobs:
            try:
                found += self._list_job(job)
            except Exception as exc:
                self._listing_failed(job, exc)
            else:
                self._listing_failures.pop(id(job), None)
        listing = time.monotonic() - listing_started
        if not found:
            return False, listing
        self._settle_found(found)
        return True, listing

    def _settle_found(self, found: list[tuple[Job, Call, int, str]]) -> int:
        """Read the statuses ``found`` and report those that could be read to the tracker, at once;
        return how many could."""
        outcomes = self._fetch_all(found)
        pairs = zip(found, outcomes, strict=True)
        read = [(call, attempt, out) for (_, call, attempt, _), out in pairs if out is not None]
        self.tracker.settle_all(read)
        return len(read)

    def _list_job(self, job: Job) -> list[tuple[Job, Call, int, str]]:
        found = []
        for group, pending in list(job.pending.items()):
            if group not in job.invoked_groups:  # none invoked yet: no call to look for each round
                continue
            if not any(job.calls[c].invoked_at is not None for c in list(pending)):
                continue
            for key in self.session.list(job.keys.status_group(group)):
                parsed = parse_status_key(key)
                call = job.calls.get(parsed[0]) if parsed is not None else None
                if call is None or call.settled or parsed[1] not in call.live or parsed[1] in call.reported:
                    continue
                found.append((job, call, parsed[1], key))
        return found

    def _listing_failed(self, job: Job, exc: Exception) -> None:
        """Retry a failing listing a few rounds; a storage error that persists fails the job with it."""
        count, since = self._listing_failures.get(id(job), (0, time.monotonic()))
        count += 1
        self._listing_failures[id(job)] = (count, since)
        persistent = isinstance(exc, StorageError) and count >= LISTING_FAILURES
        if persistent or time.monotonic() - since > job.timeout + self.config.lost_grace:
            error = StorageError(
                f"the statuses of job {job.keys.job_id} cannot be listed in {self.engine.info.name} storage: "
                f"{type(exc).__name__}: {exc}"
            )
            self.tracker.fail_job(job, error)
            self._listing_failures.pop(id(job), None)
        else:
            log.warning("listing the statuses of job %s failed (will retry): %s", job.keys.job_id, exc)

    def _fetch_all(self, found: list[tuple[Job, Call, int, str]]) -> list[Outcome | None]:
        """Read the statuses ``found``, in order: split into one run of reads per I/O thread, so a
        round of 10,000 statuses costs 32 thread-pool tasks, not 10,000."""
        if self._io is not None and len(found) > 1:
            size = -(-len(found) // self.engine.info.storage_concurrency)
            runs = [found[i : i + size] for i in range(0, len(found), size)]
            try:
                return [outcome for run in self._io.map(self._fetch_run, runs) for outcome in run]
            except RuntimeError:  # the interpreter is shutting down: no new threads
                pass
        return self._fetch_run(found)

    def _fetch_run(self, items: list[tuple[Job, Call, int, str]]) -> list[Outcome | None]:
        return [self._fetch(item) for item in items]

    def _fetch(self, item: tuple[Job, Call, int, str]) -> Outcome | None:
        """The outcome a status record tells, or None when it cannot be read, or was not signed by
        this job (it is read again next round: the real worker may still overwrite a forgery)."""
        job, call, attempt, key = item
        try:
            status = load_status(job.secret, job.keys, call.call_id, attempt, self.session.get(key))
        except SignatureError as exc:
            if key not in self._warned:
                self._warned.add(key)
                log.warning("ignoring status %s: %s", key, exc)
            return None
        except NotFoundError:
            return None
        except Exception as exc:
            log.warning("reading status %s failed (will retry): %s", key, exc)
            return None
        return self._outcome(job, call.call_id, status)

    def _outcome(self, job: Job, call_id: str, status: dict[str, Any]) -> Outcome:
        kind = status.get("kind", "error")
        common = {
            "stats": status.get("stats") or {},
            "stdout": status.get("stdout", ""),
            "stderr": status.get("stderr", ""),
        }
        error = status.get("error") or {}
        if kind == "success":
            try:
                blob = unb64(status["result"]) if "result" in status else self.session.get(status["result_key"])
                value = serialize.loads(verify(job.secret, result_context(job.keys, call_id), blob))
            except SignatureError as exc:  # a tampered result object: this attempt gave no answer
                return Outcome("error", error=exc, **common)
            except Exception as exc:  # a result that cannot be unpickled here
                return Outcome("exception", error=exc, **common)
            return Outcome("success", value=value, **common)
        if kind == "exception":
            return Outcome("exception", error=_remote_exception(job, call_id, error), **common)
        if error.get("type") == "SignatureError":
            return Outcome("refused", error=SignatureError(error.get("message", "")), **common)
        failure = FAILURES.get(kind, FAILURES["error"])(error.get("message") or f"call ended with status {kind!r}")
        return Outcome(kind, error=failure, **common)

    def _check_deadlines(self, jobs: list[Job]) -> None:
        """Declare lost, in one round, every call past its timeout and grace with no report.

        A job's clock restarts only when one of its workers reports (a backend may queue calls
        behind its concurrency limit), never when the client itself declares a call lost, and no
        call is declared lost while the job's statuses cannot be listed.
        """
        now = time.monotonic()
        grace = self.config.lost_grace
        for job in jobs:
            if id(job) in self._listing_failures:
                continue
            if self.config.speculative:
                self._speculate(job, now)
            limit = job.timeout + grace
            overdue = [
                call
                for pending in list(job.pending.values())
                for call in (job.calls[c] for c in list(pending))
                if call.invoked_at is not None and now - max(call.invoked_at, job.last_progress) > limit
            ]
            if overdue:
                message = (
                    f"no worker reported on call {{call}} within its timeout of {job.timeout} s plus "
                    f"lost_grace of {grace} s: the invocation was lost or the worker hung"
                )
                if job.attached:
                    message += " (an attached job's calls are not invoked again: their arguments are gone)"
                self.tracker.lost(overdue, message)

    def _speculate(self, job: Job, now: float) -> None:
        """Back up stragglers: once half of the job is done, a call running longer than
        ``speculative_factor`` times the median call is invoked once more; the first answer wins."""
        if job.attached or len(job.durations) < max(3, len(job.calls) // 2):
            return
        limit = self.config.speculative_factor * statistics.median(job.durations)
        for pending in list(job.pending.values()):
            for call_id in list(pending):
                call = job.calls[call_id]
                if len(call.live) == 1 and call.invoked_at is not None and now - call.invoked_at > limit:
                    self.tracker.speculate(call)


_engines: weakref.WeakSet[_Engine] = weakref.WeakSet()


def _settle_like(outer: ResponseFuture, inner: ResponseFuture) -> None:
    outer.stats, outer.stdout, outer.stderr = inner.stats, inner.stdout, inner.stderr
    exc = inner.exception()
    outer._settle(exception=exc) if exc is not None else outer._settle(result=inner.result())


def _after_fork_in_child() -> None:
    for engine in list(_engines):
        engine.forked()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _remote_exception(job: Job, call_id: str, error: dict[str, Any]) -> BaseException:
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
    if isinstance(exc, ImportError):
        from pywren_core.doctor import import_note

        note = import_note(exc, job.base_payload["backend"], job.base_payload.get("runtime"))
        if note:
            exc.add_note(note)
    return exc
