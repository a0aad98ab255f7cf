"""A plugin that learns of completions as they happen reports "done" events and calls ``notify``:
the client then reads those statuses at once, and its listing keeps its own, slower pace.

The "platform" here is a watcher thread over the local backend's storage folder, standing in for
a held-open response: it sees each status file the real local worker writes, reports it as a
"done" event and calls the ``notify`` the core passed to ``pywren_connect``.
"""

from __future__ import annotations

import json
import os
import threading
import time

import pywren_core as pw
from pywren_core.backend import CallEvent, done_events, done_notice
from pywren_core.protocol import JobKeys, parse_status_key


class CompletionWatcher:
    """Wraps the local backend: reports every status the workers write as a "done" event."""

    def __init__(self, root: str):
        self.root = root
        self.notify = None
        self.events: list[CallEvent] = []
        self.seen: set[str] = set()
        self.lock = threading.Lock()
        self.listings = 0
        self.stop = threading.Event()

    @pw.hookimpl(wrapper=True)
    def pywren_connect(self, notify):
        self.notify = notify
        return (yield)

    @pw.hookimpl(wrapper=True)
    def pywren_storage_list(self, prefix):
        if "/status/" in prefix:
            self.listings += 1
        return (yield)

    @pw.hookimpl
    def pywren_poll_events(self):
        with self.lock:
            events, self.events = self.events, []
        return events

    def watch(self) -> None:
        while not self.stop.wait(0.005):
            for folder, _, names in os.walk(self.root):
                for name in names:
                    path = os.path.join(folder, name)
                    parsed = parse_status_key(name)
                    if parsed is None or path in self.seen:
                        continue
                    self.seen.add(path)
                    _, executor_id, job_id = os.path.relpath(path, self.root).split(os.sep)[:3]
                    with self.lock:
                        self.events.append(CallEvent(executor_id, job_id, parsed[0], parsed[1], "done"))
                    self.notify()


def staggered(seconds):
    time.sleep(seconds)
    return seconds


def test_done_events_settle_calls_at_once_without_more_listings(pywren_config, storage_dir):
    watcher = CompletionWatcher(storage_dir)
    with pw.executor(pywren_config, wrappers=[watcher], progress=False) as ex:
        monitor = ex._engine.monitor
        monitor.min_interval = monitor.max_interval = 30.0  # listing alone would take 30 s
        thread = threading.Thread(target=watcher.watch, daemon=True)
        thread.start()
        try:
            delays = [0.05 * i for i in range(10)]  # the calls end one after another
            started = time.monotonic()
            futures = ex.map(staggered, delays)
            assert ex.get_result(futures, timeout=25) == delays
            took = time.monotonic() - started
        finally:
            watcher.stop.set()
            thread.join()
    assert took < 10, f"the calls took {took:.1f} s: they waited for a listing, not for their done events"
    assert watcher.listings <= 2  # the job's first round, maybe one more: none for the events
    notices = sorted(f.stats["done"] - f.stats["end"] for f in futures)
    assert notices[len(notices) // 2] < 1.0, notices


def test_a_done_event_before_the_status_is_readable_leaves_the_call_to_the_listing(pywren_config):
    class EarlyDone:
        """Reports "done" for every call as soon as it is invoked: before any status exists."""

        def __init__(self):
            self.events: list[CallEvent] = []

        @pw.hookimpl(wrapper=True)
        def pywren_invoke(self, payload):
            result = yield
            keys = JobKeys.from_payload(payload)
            for call in payload["calls"]:
                self.events.append(CallEvent(keys.executor_id, keys.job_id, call["call_id"], call["attempt"], "done"))
            return result

        @pw.hookimpl
        def pywren_poll_events(self):
            events, self.events = self.events, []
            return events

    def slow(x):
        time.sleep(0.3)
        return x * 2

    with pw.executor(pywren_config, wrappers=[EarlyDone()], progress=False) as ex:
        futures = ex.map(slow, range(4))
        assert ex.get_result(futures, timeout=30) == [0, 2, 4, 6]
    assert all(f.stats.get("attempts", 1) == 1 for f in futures)


def test_a_done_notice_names_ids_only_and_parses_back_to_done_events():
    """What a handler sends a client's queue: the job's ids and each call's id and attempt, never
    the secret or a result; anything else read from the queue gives no event."""
    payload = {"executor_id": "e1", "job_id": "j1", "secret": "c2VjcmV0",
               "calls": [{"call_id": "00001", "attempt": 0, "args": "x"}]}
    notice = done_notice(payload, [{"call_id": "00001", "attempt": 0, "kind": "success"}])
    assert json.loads(notice) == {"executor_id": "e1", "job_id": "j1", "calls": [["00001", 0]]}
    assert done_events(notice) == [CallEvent("e1", "j1", "00001", 0, "done")]
    for junk in ("not json", "[]", '{"executor_id": 1, "job_id": [], "calls": "x"}',
                 '{"executor_id": "e1", "job_id": "j1", "calls": [["00001", "0"], [2, 0], [1]]}'):
        assert done_events(junk) == [], junk


def _listings_for_a_staggered_map(pywren_config, watcher, notices):
    """Status listings made while 20 calls end one after another (about 2 s on 2 workers)."""
    with pw.executor(pywren_config, wrappers=[watcher], progress=False) as ex:
        thread = threading.Thread(target=watcher.watch, daemon=True)
        if notices:
            thread.start()
        try:
            delays = [0.02 * i for i in range(20)]
            assert ex.get_result(ex.map(staggered, delays), timeout=60) == delays
        finally:
            watcher.stop.set()
            if notices:
                thread.join()
    return watcher.listings


def test_while_notices_come_the_listing_only_backs_them_up(pywren_config, storage_dir):
    """Once done events settle calls, listing every status group each round would re-read what
    the notices told: the listing pauses (10 s) while notices keep coming."""
    alone = _listings_for_a_staggered_map(pywren_config, CompletionWatcher(storage_dir), notices=False)
    noticed = _listings_for_a_staggered_map(pywren_config, CompletionWatcher(storage_dir), notices=True)
    assert noticed * 5 <= alone, (noticed, alone)


def test_a_lost_notice_costs_time_only(pywren_config, storage_dir, monkeypatch):
    """The notice of one call never comes, while the others' do: the listing still finds it."""
    from pywren_core import executors

    monkeypatch.setattr(executors, "NOTICE_LISTING_PAUSE", 1.0)

    class LosesOne(CompletionWatcher):
        @pw.hookimpl
        def pywren_poll_events(self):
            return [e for e in super().pywren_poll_events() if e.call_id != "00003"]

    watcher = LosesOne(storage_dir)
    with pw.executor(pywren_config, wrappers=[watcher], progress=False) as ex:
        thread = threading.Thread(target=watcher.watch, daemon=True)
        thread.start()
        try:
            delays = [0.05 * i for i in range(10)]
            futures = ex.map(staggered, delays)
            assert ex.get_result(futures, timeout=30) == delays
        finally:
            watcher.stop.set()
            thread.join()
    assert all(f.stats.get("runs", 1) == 1 for f in futures)
