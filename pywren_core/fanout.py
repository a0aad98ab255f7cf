"""In-cloud fan-out: a large map's invocations are made from inside the platform, not by the client.

Invoking 100,000 calls one request at a time over a laptop's link takes the link's round trip
100,000 times (over 64 threads). With fan-out the client stores the invocations in batches and
makes one invocation per batch: an *invoker*, which runs on the platform like any call, reads its
batch and invokes the calls in it from threads of its own, next to the platform's endpoint.

- A batch object holds the payloads of its invocations without the job's secret, signed with it:
  nobody who can write to the bucket can add, change or replay an invocation. The invoker's own
  payload carries the secret (sealed where the backend seals it) and hands it to each payload.
- The invoker retries throttled and lost invocations as the client's invoker does, then writes a
  signed report: when each invocation was accepted, how often it was throttled, whose answer was
  lost (a call that may run twice), and which the platform refused for good.
- The invoker marks its start (the platform may queue it behind other calls). The client lists each
  job's fan-out objects every half second, applies each report to its calls' stats and states, and
  invokes a batch directly when its invoker has not started ``report_wait`` seconds after it was
  accepted and after the job's last progress, or has not reported twice that long after it
  started (it died); each call it invokes then counts a possible extra run.
- A report is read even when the batch's calls have all ended (fast calls end before their invoker
  reports): a job's cleanup, and the executor's shutdown, wait for its batches' reports, a quarter
  of ``report_wait`` at most once the calls have ended, so every call's stats say how it was invoked.
- An invoker's payload delivered a second time (a queue's redelivery) invokes nothing: its batch
  was handed out once, and the client's wait covers a first run that died.

A backend opts in with the ``pywren_fanout`` hook (fan out maps of at least that many
invocations) and a ``pywren_invoke`` that also works in a worker's session.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from pywren_core.backend import Pacer, Session, invoke_until_accepted
from pywren_core.calls import INVOKED, NEW
from pywren_core.errors import ConfigError, NotFoundError, PywrenError, SignatureError
from pywren_core.protocol import sign, verify

log = logging.getLogger("pywren_core.fanout")

#: Invocations one invoker makes.
BATCH_SIZE = 500
#: Threads an invoker invokes from.
INVOKER_THREADS = 32
#: Seconds between the client's rounds of reading the reports.
ROUND = 0.5
#: What an invoker's payload carries that its batch's payloads do not: the job's secret (sealed or
#: not), and where the platform reports completions (``notice``), both set by the client's session.
HANDED_DOWN = ("secret", "sealed_secret", "notice")


def threshold(setting: str | int, session: Session, where: str) -> int | None:
    """From how many invocations this executor fans a map out (None: never), by the ``fanout``
    setting and what the backend declares (``pywren_fanout``)."""
    if setting == "off":
        return None
    if setting != "auto" and (isinstance(setting, bool) or not isinstance(setting, int) or setting < 1):
        raise ConfigError(f"{where}: fanout must be 'auto', 'off' or a number of invocations (at least 1), "
                          f"got {setting!r}")
    declared = session.fanout_threshold()
    if declared is None:
        if setting != "auto":
            raise ConfigError(f"{where}: fanout is {setting!r}, but backend {session.name!r} cannot fan out (its "
                              "plugin declares no pywren_fanout): set fanout: auto or off")
        return None
    return declared if setting == "auto" else setting


def batch_key(prefix: str, number: int) -> str:
    return f"{prefix}fanout/{number:05d}.batch"


def report_key(batch: str) -> str:
    return batch.removesuffix(".batch") + ".report"


def started_key(batch: str) -> str:
    """An empty object the invoker writes as it starts: it is alive, however long it waited in a queue."""
    return batch.removesuffix(".batch") + ".started"


def _context(key: str) -> str:
    return f"fanout:{key}"


# --- in the platform: an invoker ---------------------------------------------------------------


def serve(session: Session, payload: dict[str, Any], prefix: str, secret: bytes, delivery: int | None) -> None:
    """Run an invoker: invoke every payload of its batch, then write the report. What it writes is
    fenced against cleanup as a status is (``worker.put_fenced``): the invoker of a job cleaned up
    meanwhile invokes nothing and leaves nothing behind."""
    from pywren_core import worker

    key = payload["fanout"]
    if not isinstance(key, str) or not key.startswith(f"{prefix}fanout/") or not key.endswith(".batch"):
        raise PywrenError(f"fan-out batch {key!r} is not one of job {prefix}'s")
    if delivery is not None and delivery > 1:
        worker.log(f"fan-out batch {key}: delivered again, invoking nothing (the client re-invokes what never "
                   "reported)")
        return
    started = time.time()
    if not worker.put_fenced(session, payload, [(started_key(key), b"")]):
        worker.log(f"fan-out batch {key}: job {prefix} is gone, invoking nothing")
        return

    def report(content: dict[str, Any]) -> None:
        rkey = report_key(key)
        body = json.dumps(content, separators=(",", ":")).encode()
        worker.put_fenced(session, payload, [(rkey, sign(secret, _context(rkey), body))])

    try:
        children = json.loads(verify(secret, _context(key), session.get(key)))["payloads"]
    except (NotFoundError, SignatureError, ValueError, KeyError) as exc:  # gone, or not what this job stored
        worker.log(f"fan-out batch {key}: {type(exc).__name__}: {exc}; invoking nothing")
        report({"error": f"{type(exc).__name__}: {exc}", "invocations": []})
        return
    handed = {k: payload[k] for k in HANDED_DOWN if k in payload}
    ids = (payload["executor_id"], payload["job_id"])
    unpaced = Pacer(None)

    def one(child: dict[str, Any]) -> list[Any]:
        calls = [(c["call_id"], c["attempt"]) for c in child["calls"]]
        if (child.get("executor_id"), child.get("job_id")) != ids:
            return [calls, None, 0, 0, "a payload of another job"]
        try:
            accepted = invoke_until_accepted(session.invoke, {**child, **handed}, unpaced, give_up_after=300.0)
        except Exception as exc:
            return [calls, None, 0, 0, f"{type(exc).__name__}: {exc}"]
        return [calls, accepted.at, accepted.throttled, accepted.ambiguous, ""]

    with concurrent.futures.ThreadPoolExecutor(INVOKER_THREADS, "pywren-fanout") as pool:
        outcomes = list(pool.map(one, children))
    report({"start": started, "end": time.time(), "invocations": outcomes})


# --- on the client -------------------------------------------------------------------------------


@attrs.define(eq=False)
class Batch:
    """One invoker's share of a job's invocations, at the calls' attempts when it was made."""

    job: Any
    key: str
    invocations: list[list[tuple[Any, int]]]
    #: ``time.monotonic()`` when the platform accepted the invoker; None before.
    accepted: float | None = None
    #: ``time.monotonic()`` when the client first saw the invoker's start marker; None before.
    started: float | None = None
    #: ``time.monotonic()`` when the client first saw every call of the batch ended; None before.
    ended: float | None = None

    def calls(self) -> list[Any]:
        return [c for sent in self.invocations for c, _ in sent]


class FanOut:
    """The client's side: store batches, invoke invokers, read their reports, invoke again what they missed.

    ``tracker`` is the executor's CallTracker; ``direct(job, invocations)`` queues invocations on
    the client's own invoker, for what an invoker did not do.
    """

    def __init__(self, session: Session, tracker: Any, direct: Callable[[Any, list[list[Any]]], None],
                 threshold: int, report_wait: float, batch_size: int = BATCH_SIZE):
        self.session = session
        self.tracker = tracker
        self.direct = direct
        self.threshold = threshold
        self.report_wait = report_wait
        #: How long a report is waited for once its batch's calls have all ended: the invoker has
        #: only the report left to write.
        self.ended_wait = report_wait / 4
        self.batch_size = batch_size
        #: Invokers the platform accepted.
        self.invokers = 0
        self._pending: list[Batch] = []
        self._numbers: dict[str, int] = {}
        #: Per job (its prefix): batches made and not yet done with (invoked and reported, or given up on).
        self._open: dict[str, int] = {}
        #: Per job: what to do once its batches are done with (the job's cleanup), when it ended first.
        self._deferred: dict[str, tuple[Any, Callable[[Any], None]]] = {}
        self._lock = threading.Lock()
        self._all_done = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def batches(self, job: Any, invocations: Sequence[Sequence[Any]]) -> list[Batch]:
        """``invocations`` (lists of calls) cut into batches, or none when there are too few to fan out."""
        if len(invocations) < self.threshold:
            return []
        out = []
        for start in range(0, len(invocations), self.batch_size):
            with self._lock:
                number = self._numbers[job.keys.prefix] = self._numbers.get(job.keys.prefix, -1) + 1
            chunk = [[(c, c.attempt) for c in calls] for calls in invocations[start:start + self.batch_size]]
            out.append(Batch(job, batch_key(job.keys.prefix, number), chunk))
        with self._lock:
            self._open[job.keys.prefix] = self._open.get(job.keys.prefix, 0) + len(out)
        return out

    def after_reports(self, job: Any, then: Callable[[Any], None]) -> None:
        """``then(job)`` once every batch of ``job`` is done with: now, if none is open."""
        with self._lock:
            if self._open.get(job.keys.prefix):
                self._deferred[job.keys.prefix] = (job, then)
                return
        then(job)

    def finish(self, wait: bool) -> list[Any]:
        """The executor stops: wait (if ``wait``) for the open batches' reports, ``ended_wait`` and
        two rounds at most, as their calls have ended; return the jobs whose
        ``after_reports`` has not run, which the caller cleans now."""
        deadline = time.monotonic() + (self.ended_wait + 2 * ROUND if wait else 0.0)
        with self._lock:
            while self._open and (left := deadline - time.monotonic()) > 0:
                self._all_done.wait(left)
            deferred, self._deferred = self._deferred, {}
            self._pending.clear()  # the watcher ends: the session is about to close
        return [job for job, _ in deferred.values()]

    def _done(self, batch: Batch) -> None:
        """Done with ``batch``: when it was its job's last, run what waited on the job's batches."""
        prefix = batch.job.keys.prefix
        with self._lock:
            self._open[prefix] -= 1
            if self._open[prefix]:
                return
            del self._open[prefix]
            deferred = self._deferred.pop(prefix, None)
            if not self._open:
                self._all_done.notify_all()
        if deferred is not None:
            job, then = deferred
            then(job)

    def invoke(self, batch: Batch, pacer: Pacer, give_up_after: float) -> None:
        """Store ``batch`` and invoke its invoker; if either fails, invoke its calls directly."""
        job = batch.job
        if all(c.settled for c in batch.calls()):  # cancelled, or failed, while it waited its turn
            self._done(batch)
            return
        strip = set(HANDED_DOWN)
        payloads = [{k: v for k, v in job.payload(sent).items() if k not in strip} for sent in batch.invocations]
        try:
            body = json.dumps({"payloads": payloads}, separators=(",", ":")).encode()
            self.session.put(batch.key, sign(job.secret, _context(batch.key), body))
            invoker = {**job.base_payload, "calls": [], "fanout": batch.key}
            # A lost answer may mean two invokers for the batch: every call of it may run twice.
            invoke_until_accepted(self.session.invoke, invoker, pacer, give_up_after,
                                  on_ambiguous=lambda: self.tracker.ambiguous(batch.calls()),
                                  cancelled=lambda: all(c.settled for c in batch.calls()))
        except Exception as exc:
            log.warning("fan-out batch %s: %s; the client invokes its %d invocations itself", batch.key, exc,
                        len(batch.invocations))
            self._invoke_directly(batch, possible_runs=False)
            self._done(batch)
            return
        # The calls stay NEW until the report says when each was accepted; till then this watch bounds
        # the wait, not the lost-call timer.
        batch.accepted = time.monotonic()
        with self._lock:
            self.invokers += 1
            self._pending.append(batch)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="pywren-fanout", daemon=True)
                self._thread.start()
        self._wake.set()

    def _watch(self) -> None:
        """Read the reports of the batches out, until none is: one listing per job and round, and a
        read of each report that has come."""
        while True:
            with self._lock:
                pending = list(self._pending)
                if not pending:
                    self._thread = None
                    return
            # Whether each batch's calls had ended, before the listing: a call that ended after it
            # may have been invoked by an invoker whose start marker the listing missed.
            ended = [all(c.settled for c in batch.calls()) for batch in pending]
            listed: dict[str, set[str]] = {}
            for batch, calls_ended in zip(pending, ended, strict=True):
                prefix = batch.job.keys.prefix
                if prefix not in listed:
                    try:
                        listed[prefix] = set(self.session.list(f"{prefix}fanout/"))
                    except Exception as exc:  # the next round lists again; the deadlines still count
                        log.warning("listing the fan-out reports of job %s failed: %s", prefix, exc)
                        listed[prefix] = set()
                try:
                    done = self._check(batch, listed[prefix], calls_ended)
                except Exception:  # a bug: never leave the batch's calls waiting on it
                    log.exception("fan-out batch %s: reading its report failed; the client invokes its calls "
                                  "itself, each of which may run twice", batch.key)
                    self._invoke_directly(batch, possible_runs=True)
                    done = True
                if done:
                    with self._lock:
                        if batch not in self._pending:  # the executor stopped meanwhile
                            self._thread = None
                            return
                        self._pending.remove(batch)
                    self._done(batch)
            self._wake.wait(ROUND)
            self._wake.clear()

    def _check(self, batch: Batch, keys: set[str], calls_ended: bool) -> bool:
        """Apply ``batch``'s report if it has come (``keys``: the job's fan-out objects, listed
        after ``calls_ended`` was seen), or give up on it; True once done with it.

        An invoker that has not started is waited for while its job makes progress (the platform
        may queue it behind other calls), ``report_wait`` at least; one that has started, for twice
        that from its start. Once the batch's calls have ended, an invoker that started has only
        its report left to write: it gets ``ended_wait``; one that never started
        invoked none of them (they were cancelled, failed or invoked by the client), and has
        nothing to report.
        """
        key = report_key(batch.key)
        if key in keys:
            try:
                report = json.loads(verify(batch.job.secret, _context(key), self.session.get(key)))
            except Exception as exc:  # unreadable or forged: wait for the real one, or the deadline
                log.warning("fan-out report %s: %s", key, exc)
            else:
                self._apply(batch, report)
                return True
        now = time.monotonic()
        if batch.started is None and started_key(batch.key) in keys:
            batch.started = now
        if calls_ended and batch.started is None:
            return True
        if batch.started is not None:
            deadline = batch.started + 2 * self.report_wait
        else:
            deadline = max(batch.accepted or now, batch.job.last_progress) + self.report_wait
        if calls_ended:
            batch.ended = batch.ended or now
            deadline = min(deadline, batch.ended + self.ended_wait)
        if now < deadline:
            return False
        if calls_ended:
            log.warning("fan-out batch %s: its calls ended, but its invoker did not report in time; their stats do "
                        "not say when each was invoked", batch.key)
            return True
        log.warning("fan-out batch %s: no report from its invoker in time (%s); the client invokes its calls "
                    "itself, each of which may run twice", batch.key,
                    "it started" if batch.started is not None else "it never started")
        self._invoke_directly(batch, possible_runs=True)
        return True

    def _apply(self, batch: Batch, report: dict[str, Any]) -> None:
        """Each invocation the invoker made counts as the client's own would; what it could not make
        (refused, or missing from the report) the client makes itself, so it fails, if it must, with
        the client's own error."""
        if report.get("error"):
            log.warning("fan-out batch %s: its invoker invoked nothing (%s); the client invokes its calls itself",
                        batch.key, report["error"])
        by_ids = {tuple((c.call_id, attempt) for c, attempt in sent): sent for sent in batch.invocations}
        refused = []
        for calls, accepted, throttled, ambiguous, error in report["invocations"]:
            sent = by_ids.pop(tuple(tuple(c) for c in calls), None)
            if sent is None:
                continue
            for _ in range(ambiguous):
                self.tracker.ambiguous(c for c, _ in sent)
            if accepted is None:
                log.warning("fan-out batch %s: the invoker could not invoke calls %s (%s); the client does",
                            batch.key, ", ".join(c.call_id for c, _ in sent), error)
                refused.append(sent)
            else:
                self.tracker.invoked(sent, (time.monotonic(), accepted), throttled=throttled)
        missed = refused + list(by_ids.values())  # by_ids: what the report did not mention
        if missed:
            self._invoke_directly(attrs.evolve(batch, invocations=missed), possible_runs=False)

    def _invoke_directly(self, batch: Batch, possible_runs: bool) -> None:
        """Queue on the client's invoker those of ``batch``'s calls that have not started or ended."""
        live = [[c for c, attempt in sent if c.attempt == attempt and c.state in (NEW, INVOKED)]
                for sent in batch.invocations]
        live = [calls for calls in live if calls]
        if possible_runs:
            for calls in live:
                self.tracker.ambiguous(calls)
        if live:
            self.direct(batch.job, live)

