"""The conformance kit: pytest test classes that tell a backend plugin whether it behaves.

Use it from a backend's own test suite with one import and one fixture::

    import pytest
    from pywren_core.testing import ExecutorConformance, StorageConformance

    @pytest.fixture
    def pywren_config(my_emulator):           # a config dict selecting your backend
        return {"backend": "mycloud", "mycloud": {"endpoint": my_emulator.url, "bucket": "test"}}

    class TestStorage(StorageConformance): pass
    class TestExecutor(ExecutorConformance): pass

Class attributes size the tests for slower backends (``large_object_bytes``, ``map_size``...).
The kit's tests run isolated from the machine's pywren setup (see :func:`isolated_pywren`); a
``conftest.py`` that imports ``isolated_pywren`` isolates every other test of the suite too.
:class:`LocalServer` runs the emulators a cloud backend's tests need on 127.0.0.1.

The kit is strict: on a fault-free run every call must succeed on its first attempt and run once,
every invocation must be answered (a throttle is an answer), and the core must have nothing to
recover from (see :class:`StrictWatch`). The core's retries would hide a broken backend from its
users; the kit exposes it instead. And no kit test hangs: each has a bound (``kit_bound``), past
which it fails with what it was waiting for.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

import pywren_core as pw
from pywren_core import config as config_module
from pywren_core import plugins
from pywren_core.backend import Session
from pywren_core.errors import CallTimeoutError, NotFoundError, SerializationError, ThrottledError
from pywren_core.plugins import load_backend
from pywren_core.protocol import JOBS_PREFIX, PAYLOAD_CALL_KEYS, PAYLOAD_KEYS, new_id


def _isolate(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    for var in list(os.environ):
        if var.startswith("PYWREN_"):
            monkeypatch.delenv(var)
    home = tmp_path_factory.mktemp("home")
    (home / "run").mkdir(mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home / "run"))  # the local backend's default storage
    monkeypatch.chdir(home)
    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture(autouse=True)
def isolated_pywren(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Nothing of the machine's pywren setup reaches a test, and the test leaves nothing there.

    No ``PYWREN_*`` variable, no ``~/.pywren_config`` or ``./.pywren_config`` (the test runs in a
    fresh home directory), no job manifest or local storage outside it, and plugins loaded anew.
    Import it into a ``conftest.py`` to apply it to every test below that folder.
    """
    yield from _isolate(monkeypatch, tmp_path_factory)


class KitTimeout(AssertionError):
    """A kit test ran past its bound: the backend hangs where it should answer or fail."""


@contextlib.contextmanager
def _bounded(seconds: float, what: str) -> Iterator[None]:
    """Fail the test (in the main thread) once ``seconds`` have passed, instead of hanging. Where
    signals are unavailable (another thread, Windows), the kit's own bounded waits still apply."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        signal.setitimer(signal.ITIMER_REAL, 60.0)  # the teardown that follows gets a bound too
        raise KitTimeout(f"{what} did not finish within {seconds:.0f} s: the backend hangs (see the traceback)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class _Isolated:
    #: Seconds one kit test (with its fixtures) may take before it fails as hanging.
    kit_bound = 180.0

    @pytest.fixture(autouse=True)
    def isolated_pywren(
        self, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[None]:
        with _bounded(self.kit_bound, request.node.nodeid):
            yield from _isolate(monkeypatch, tmp_path_factory)


class StrictWatch(logging.Handler):
    """Watches one kit test for what a fault-free run must not see.

    Pass it as a wrapper (``pw.executor(config, wrappers=[watch])``) and it records every
    invocation: a call invoked twice, an invocation that raised (other than a throttle, which is
    an answer), a payload with keys the docs do not list, a secret config value inside a payload.
    As a log handler on ``pywren_core`` it records every warning of the core and every extra run
    the call tracker reports (retries, backups, lost answers, redeliveries). :meth:`check` fails
    with all of it, naming the calls.
    """

    def __init__(self, secrets: Sequence[str] = ()) -> None:
        super().__init__(logging.INFO)
        self.secrets = [s for s in secrets if s]
        self.invocations: collections.Counter[str] = collections.Counter()
        self.throttles = 0
        self.problems: list[str] = []
        self._lock = threading.Lock()

    def _problem(self, text: str) -> None:
        with self._lock:
            if len(self.problems) < 50:
                self.problems.append(text)

    @pw.hookimpl(wrapper=True)
    def pywren_invoke(self, session: Any, payload: dict[str, Any]) -> Any:
        names = [f"{payload['executor_id']}/{payload['job_id']}/{c['call_id']}" for c in payload["calls"]]
        unknown = set(payload) - PAYLOAD_KEYS
        unknown_call_keys = {k for c in payload["calls"] for k in c} - PAYLOAD_CALL_KEYS
        if unknown or unknown_call_keys:
            self._problem(f"payload keys not in the documented set: {sorted(unknown | unknown_call_keys)}")
        text = repr(payload)
        if any(secret in text for secret in self.secrets):
            self._problem(f"a secret config value travels in the payload of {names[0]}")
        try:
            result = yield
        except ThrottledError:
            with self._lock:
                self.throttles += 1
            raise
        except BaseException as exc:
            self._problem(f"invoking {', '.join(names[:3])}{' ...' if len(names) > 3 else ''} raised "
                          f"{type(exc).__name__}: {exc}")
            raise
        with self._lock:
            self.invocations.update(names)
        return result

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING or hasattr(record, "pywren_event"):
            self._problem(f"{record.levelname.lower()} from {record.name}: {record.getMessage()}")

    @contextlib.contextmanager
    def watching(self) -> Iterator[StrictWatch]:
        """Record the core's log while the block runs."""
        logger = logging.getLogger("pywren_core")
        level = logger.level
        logger.setLevel(min(level or logging.WARNING, logging.INFO))
        logger.addHandler(self)
        try:
            yield self
        finally:
            logger.removeHandler(self)
            logger.setLevel(level)

    def check(self, futures: Sequence[Any] = ()) -> None:
        """Fail with everything a fault-free run should not have shown, ``futures``' stats included."""
        problems = list(self.problems)
        twice = sorted(name for name, count in self.invocations.items() if count > 1)
        if twice:
            problems.append(f"{len(twice)} calls invoked more than once: {', '.join(twice[:5])}")
        for f in futures:
            stats = f.stats
            if stats.get("attempts", 1) != 1 or stats.get("runs", 1) != 1 or stats.get("ambiguous_invokes"):
                problems.append(
                    f"call {f.job_id}/{f.call_id}: {stats.get('attempts', 1)} attempts, {stats.get('runs', 1)} runs, "
                    f"{stats.get('ambiguous_invokes', 0)} lost answers (expected 1, 1, 0)"
                )
        assert not problems, (
            "on a fault-free run the backend made the core recover (every call should succeed on its "
            "first attempt, run once, and every invocation be answered):\n  " + "\n  ".join(problems[:20])
        )


def open_session(pywren_config: dict[str, Any]) -> Session:
    """A client session on the backend that ``pywren_config`` selects."""
    config = config_module.load(pywren_config)
    backend = load_backend(config.backend)
    return backend.open(config.backend_section(backend.info), role="client")


class StorageConformance(_Isolated):
    """Storage semantics every backend must have: the put / get / list / delete hooks."""

    #: Big enough to take the multipart / resumable / staged-block path of most SDKs.
    large_object_bytes = 20 * 2**20
    #: More than one page of a typical list API (1,000 keys).
    many_keys = 1050
    #: Overwrites a reader races in the atomic-put test.
    atomic_rounds = 20

    @pytest.fixture
    def storage(self, pywren_config: dict[str, Any]) -> Iterator[Session]:
        session = open_session(pywren_config)
        yield session
        session.close()

    @pytest.fixture
    def prefix(self, storage: Session) -> Iterator[str]:
        prefix = f"conformance/{new_id()}/"
        yield prefix
        storage.delete(storage.list(prefix))

    def test_round_trip(self, storage: Session, prefix: str) -> None:
        data = bytes(range(256)) * 3
        storage.put(prefix + "a", data)
        _assert_same_bytes(storage.get(prefix + "a"), data, "every byte value")

    def test_every_byte_value_round_trips_in_a_large_object(self, storage: Session, prefix: str) -> None:
        data = bytes(range(256)) * 2**12 + os.urandom(2**20)  # 2 MiB
        storage.put(prefix + "bytes", data)
        _assert_same_bytes(storage.get(prefix + "bytes"), data, "2 MiB of every byte value")

    @pytest.mark.parametrize("size", [1024, 8 * 2**20], ids=["1KiB", "8MiB"])
    def test_put_is_atomic_for_readers(self, storage: Session, prefix: str, size: int) -> None:
        """A reader racing overwrites only ever sees a whole version, old or new, never a part. A
        read may fail instead (moto's S3 notices the race by checksum); it must never return a mix."""
        versions = [bytes([i]) * size for i in range(1, 5)]
        key = prefix + "atomic"
        storage.put(key, versions[0])
        seen: collections.Counter[str] = collections.Counter()
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                try:
                    data = storage.get(key)
                except NotFoundError:
                    seen["missing"] += 1
                    continue
                except Exception:  # refusing to read is not seeing a part
                    seen["failed reads"] += 1
                    continue
                seen["whole" if data in versions else f"a part: {len(data)} bytes, {set(data[:64])!r}..."] += 1

        readers = [threading.Thread(target=read, daemon=True) for _ in range(2)]
        for reader in readers:
            reader.start()
        try:
            for round_ in range(self.atomic_rounds):
                storage.put(key, versions[round_ % len(versions)])
        finally:
            stop.set()
            for reader in readers:
                reader.join(60)
        torn = {what: n for what, n in seen.items() if what not in ("whole", "failed reads")}
        whole = seen["whole"]
        assert not torn, f"readers racing {self.atomic_rounds} overwrites of {size} bytes saw {torn} ({whole} whole)"
        assert seen["whole"], "the readers never read the object"

    def test_empty_object(self, storage: Session, prefix: str) -> None:
        storage.put(prefix + "empty", b"")
        assert storage.get(prefix + "empty") == b""
        assert storage.list(prefix) == [prefix + "empty"]

    def test_overwrite_replaces(self, storage: Session, prefix: str) -> None:
        storage.put(prefix + "k", b"first version, longer")
        storage.put(prefix + "k", b"second")
        assert storage.get(prefix + "k") == b"second"

    def test_byte_ranges(self, storage: Session, prefix: str) -> None:
        data = bytes(range(100))
        storage.put(prefix + "r", data)
        assert storage.get(prefix + "r", (0, 10)) == data[0:10]
        assert storage.get(prefix + "r", (37, 64)) == data[37:64]
        assert storage.get(prefix + "r", (90, 150)) == data[90:]
        assert storage.get(prefix + "r", (99, 100)) == data[99:]

    def test_missing_key_is_not_found(self, storage: Session, prefix: str) -> None:
        with pytest.raises(NotFoundError):
            storage.get(prefix + "nothing-here")
        with pytest.raises(FileNotFoundError):  # NotFoundError is also the built-in
            storage.get(prefix + "nothing-here", (0, 10))

    def test_list_is_a_string_prefix(self, storage: Session, prefix: str) -> None:
        for key in ("x/1", "x/2", "x/sub/3", "xy", "z"):
            storage.put(prefix + key, key.encode())
        assert sorted(storage.list(prefix + "x/")) == [prefix + k for k in ("x/1", "x/2", "x/sub/3")]
        assert sorted(storage.list(prefix + "x")) == [prefix + k for k in ("x/1", "x/2", "x/sub/3", "xy")]
        assert storage.list(prefix + "nope") == []

    def test_list_follows_every_page(self, storage: Session, prefix: str) -> None:
        keys = [f"{prefix}many/{i:05d}" for i in range(self.many_keys)]
        _parallel(lambda k: storage.put(k, b"x"), keys)
        _assert_listed_once(storage.list(prefix + "many/"), keys)

    def test_delete_is_idempotent(self, storage: Session, prefix: str) -> None:
        storage.put(prefix + "d", b"x")
        storage.delete([prefix + "d", prefix + "never-existed"])
        storage.delete([prefix + "d"])
        with pytest.raises(NotFoundError):
            storage.get(prefix + "d")
        assert storage.list(prefix + "d") == []

    def test_delete_many(self, storage: Session, prefix: str) -> None:
        keys = [f"{prefix}del/{i:05d}" for i in range(self.many_keys)]
        _parallel(lambda k: storage.put(k, b"x"), keys)
        storage.delete(keys)
        left = storage.list(prefix + "del/")
        assert left == [], f"{len(left)} of {len(keys)} deleted keys are still listed, e.g. {left[:3]}"

    def test_large_object(self, storage: Session, prefix: str) -> None:
        data = os.urandom(self.large_object_bytes)
        storage.put(prefix + "big", data)
        _assert_same_bytes(storage.get(prefix + "big"), data, f"a {len(data)}-byte object")
        middle = self.large_object_bytes // 2
        part = storage.get(prefix + "big", (middle, middle + 1000))
        _assert_same_bytes(part, data[middle : middle + 1000], f"bytes {middle}-{middle + 1000} of it")


def _assert_same_bytes(got: Any, expected: bytes, what: str) -> None:
    if got == expected:
        return
    if not isinstance(got, bytes):
        raise AssertionError(f"{what}: get returned {type(got).__name__}, not bytes: {got!r:.80}")
    shorter = min(len(got), len(expected))
    differs = next((i for i in range(shorter) if got[i] != expected[i]), shorter)
    raise AssertionError(
        f"{what}: read back {len(got)} bytes, wrote {len(expected)}; first difference at byte {differs}: "
        f"read {got[differs:differs + 16]!r}, wrote {expected[differs:differs + 16]!r}"
    )


def _assert_listed_once(listed: Sequence[str], expected: Sequence[str]) -> None:
    counts = collections.Counter(listed)
    missing = sorted(set(expected) - set(counts))
    extra = sorted(set(counts) - set(expected))
    repeated = sorted(k for k, n in counts.items() if n > 1)
    assert not (missing or extra or repeated), (
        f"listing gave {len(listed)} keys for {len(expected)} stored: {len(missing)} missing (e.g. {missing[:3]}), "
        f"{len(repeated)} listed more than once (e.g. {repeated[:3]}), {len(extra)} unexpected (e.g. {extra[:3]})"
    )

    def test_unusual_key_characters(self, storage: Session, prefix: str) -> None:
        key = prefix + "spaces and+plus=équals/ü.pickle"
        storage.put(key, b"ok")
        assert storage.get(key) == b"ok"
        assert storage.list(prefix + "spaces") == [key]


def _parallel(fn: Any, items: list[Any]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(fn, items))


# Functions the executor tests send to workers. They are defined here, in an installed module, so
# a worker imports them by name like any installed package.


def square(x: int) -> int:
    return x * x


def add(x: int, y: int, z: int = 0) -> int:
    return x + y + z


def fail_with(message: str) -> None:
    raise KeyError(message)


def echo_and_print(x: Any) -> Any:
    print(f"hello from call {x}")
    print("to stderr", file=sys.stderr)
    return x


def big_result(n: int) -> bytes:
    return b"r" * n


def payload_size(data: bytes) -> int:
    return len(data)


def sleep_then_return(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def slow_first_attempt(seconds: float) -> int:
    """Overruns the timeout on the first attempt only, so a retry has something to fix."""
    from pywren_core.worker import current_call

    attempt = current_call().attempt  # type: ignore[union-attr]
    if attempt == 0:
        time.sleep(seconds)
    return attempt


def crash_or_wait(what: str) -> str:
    """``"crash"`` ends the interpreter mid-call (as a segfault or the out-of-memory killer would);
    anything else waits a little and returns, as a bystander running beside it."""
    if what == "crash":
        time.sleep(0.5)
        os._exit(1)
    time.sleep(3)
    return what


def crash_on_first_attempt(x: int) -> int:
    """Ends the interpreter on the call's first attempt only, so a retry has something to fix."""
    from pywren_core.worker import current_call

    if current_call().attempt == 0:  # type: ignore[union-attr]
        os._exit(1)
    return x * 10


def files_in_workdir(name: str) -> list[str]:
    """Writes a file into the call's own directory and lists what the directory holds."""
    from pywren_core.worker import current_call

    workdir = current_call().workdir  # type: ignore[union-attr]
    with open(os.path.join(workdir, name), "w") as f:
        f.write(name)
    time.sleep(0.05)
    return sorted(os.listdir(workdir))


class ExecutorConformance(_Isolated):
    """End-to-end behaviour: the same map, errors, timeouts and retries on every backend, strictly:
    a call retried, run twice or lost on a fault-free run fails the test (see :class:`StrictWatch`)."""

    map_size = 50
    #: Per-call timeout of the kit's executors: a call the backend loses fails after this and
    #: ``lost_grace``, not after the platform's time limit. Must be above the backend's cold start.
    call_timeout = 30.0
    #: Per-call timeout for the timeout and retry tests; must be above the backend's cold start.
    short_timeout = 3.0
    #: Seconds a silent call may stay past its timeout before it counts as lost, in these tests.
    lost_grace = 10.0
    kit_bound = 240.0
    #: Rounds of the lifecycle test, and how long what a closed session started may take to end.
    lifecycle_rounds = 3
    lifecycle_grace = 10.0

    @pytest.fixture
    def watch(self, pywren_config: dict[str, Any]) -> Iterator[StrictWatch]:
        watch = StrictWatch(_secret_values(pywren_config))
        with watch.watching():
            yield watch
        watch.check()

    @pytest.fixture
    def executor(self, pywren_config: dict[str, Any], watch: StrictWatch) -> Iterator[pw.Executor]:
        ex = self.strict_executor(pywren_config, watch)
        yield ex
        ex.shutdown()  # waits, cleans up, and closes the session (the pywren_close hook)

    def strict_executor(self, pywren_config: dict[str, Any], watch: StrictWatch) -> pw.Executor:
        """An executor whose lost calls fail soon (``call_timeout``) and are not retried."""
        self._watch = watch
        settings = {"progress": False, "timeout": self.call_timeout, "lost_grace": self.lost_grace, "retries": 0}
        return pw.executor(pywren_config, wrappers=[watch], **settings)

    def short_executor(self, pywren_config: dict[str, Any], **overrides: Any) -> pw.Executor:
        settings = {"progress": False, "timeout": self.short_timeout, "lost_grace": self.lost_grace, **overrides}
        return pw.executor(pywren_config, **settings)

    def wait_bound(self, executor: pw.Executor, calls: int) -> float:
        """How long ``calls`` calls may take, from the backend's concurrency and the kit's timeouts."""
        waves = -(-calls // max(1, executor.info.limits.max_concurrency))
        return waves * self.call_timeout + self.lost_grace + 30.0

    def results(self, executor: pw.Executor, futures: Sequence[Any]) -> list[Any]:
        """The futures' results, once each succeeded on its first attempt and ran once; otherwise
        a failure that says what happened to each call that did not."""
        bound = self.wait_bound(executor, len(futures))
        done, not_done = pw.wait(futures, timeout=bound)
        problems = [f"{f.job_id}/{f.call_id}: no answer within {bound:.0f} s" for f in not_done]
        problems += [f"{f.job_id}/{f.call_id}: {type(e).__name__}: {e}" for f in done if (e := f.exception())]
        assert not problems, f"{len(problems)} of {len(futures)} calls did not succeed:\n  " + "\n  ".join(
            problems[:10]
        )
        self._watch.check(futures)
        return [f.result() for f in futures]

    def test_map_returns_results_in_order(self, executor: pw.Executor) -> None:
        futures = executor.map(square, range(self.map_size))
        results = self.results(executor, futures)
        wrong = [(i, r) for i, r in enumerate(results) if r != i * i]
        assert not wrong, f"{len(wrong)} results wrong or out of order, e.g. (index, result) {wrong[:3]}"
        assert all(f.status == "success" for f in futures)

    def test_call_async_submit_and_extra_args(self, executor: pw.Executor) -> None:
        assert self.results(executor, [executor.call_async(square, 7)]) == [49]
        assert self.results(executor, [executor.submit(add, 1, 2, z=3)]) == [6]
        assert self.results(executor, executor.map(add, [1, 2], extra_args=(10,))) == [11, 12]

    def test_chunked_map(self, executor: pw.Executor) -> None:
        futures = executor.map(square, range(20), chunksize=7)
        assert self.results(executor, futures) == [x * x for x in range(20)]

    def test_remote_exception_keeps_type_and_traceback(self, executor: pw.Executor) -> None:
        future = executor.call_async(fail_with, "missing-thing")
        with pytest.raises(KeyError, match="missing-thing") as info:
            future.result(timeout=self.wait_bound(executor, 1))
        cause = info.value.__cause__
        assert cause is not None and "fail_with" in str(cause) and "raise KeyError" in str(cause), (
            f"the remote traceback should name the function and the line that raised; it is: {cause}"
        )
        assert future.status == "error"
        self._watch.check([future])

    def test_stats_and_output(self, executor: pw.Executor) -> None:
        future = executor.call_async(echo_and_print, 5)
        assert self.results(executor, [future]) == [5]
        stats = future.stats
        order = ["submitted", "invoked", "start", "end", "done"]
        assert [stats[k] for k in order] == sorted(stats[k] for k in order), (
            f"stats times out of order: {({k: stats[k] for k in order})}"
        )
        assert stats["worker_id"] and isinstance(stats["cold"], bool)
        assert "hello from call 5" in future.stdout and "to stderr" in future.stderr, (
            f"the call's output did not come back: stdout {future.stdout!r}, stderr {future.stderr!r}"
        )

    def test_large_result_goes_through_storage(self, executor: pw.Executor) -> None:
        (result,) = self.results(executor, [executor.call_async(big_result, 2**20)])
        _assert_same_bytes(result, b"r" * 2**20, "a 1 MiB result")

    def test_argument_larger_than_payload_limit(self, executor: pw.Executor) -> None:
        size = executor.info.limits.max_payload_bytes + 1024
        if size > 64 * 2**20:
            pytest.skip("payload limit too large to exceed in a test")
        assert self.results(executor, [executor.call_async(payload_size, b"a" * size)]) == [size]

    def test_each_call_has_its_own_directory(self, executor: pw.Executor) -> None:
        names = [f"file-{i}" for i in range(8)]
        listings = self.results(executor, executor.map(files_in_workdir, names))
        assert listings == [[name] for name in names], f"each call should see only its own file: {listings}"

    def test_unpicklable_argument_is_refused_before_invoking(self, executor: pw.Executor) -> None:
        import threading

        with pytest.raises(SerializationError, match="call 1"):
            executor.map(square, [1, threading.Lock()])

    def test_timeout_fails_the_call(self, pywren_config: dict[str, Any]) -> None:
        ex = self.short_executor(pywren_config, retries=0)
        try:
            future = ex.call_async(sleep_then_return, self.short_timeout + 30)
            with pytest.raises(CallTimeoutError):
                future.result(timeout=self.short_timeout + self.lost_grace + 30)
        finally:
            ex.shutdown(wait=False)

    def test_retry_recovers_a_timed_out_call(self, pywren_config: dict[str, Any]) -> None:
        ex = self.short_executor(pywren_config, retries=1)
        try:
            future = ex.call_async(slow_first_attempt, self.short_timeout + 30)
            assert future.result(timeout=self.short_timeout + self.lost_grace + 60) == 1
            assert future.stats["attempts"] == 2
        finally:
            ex.shutdown(wait=False)

    def test_user_module_travels_with_the_function(self, executor: pw.Executor, tmp_path: Any) -> None:
        module_name = f"pywren_user_module_{new_id(4)}"
        (tmp_path / f"{module_name}.py").write_text(
            textwrap.dedent("""
            SECRET_SAUCE = 41

            def compute(x):
                return x + SECRET_SAUCE
        """)
        )
        sys.path.insert(0, str(tmp_path))
        try:
            module = __import__(module_name)
            assert self.results(executor, executor.map(module.compute, [1, 2])) == [42, 43]
        finally:
            sys.path.remove(str(tmp_path))
            sys.modules.pop(module_name, None)

    def test_info_name_is_the_entry_point_name(self, pywren_config: dict[str, Any]) -> None:
        name = config_module.load(pywren_config).backend
        info = load_backend(name).info
        assert info.name == name, f"BackendInfo.name is {info.name!r}, but the entry point is named {name!r}"

    def test_credentials_are_secret_fields(self, pywren_config: dict[str, Any]) -> None:
        """A field that holds a credential is ``secret=True``: masked, and never sent to workers."""
        info = load_backend(config_module.load(pywren_config).backend).info
        looks_secret = re.compile(r"key|secret|token|password|passwd|credential|connection_string|sas", re.I)
        plain = [f.name for f in info.config if looks_secret.search(f.name) and not f.secret]
        assert not plain, f"config fields that look like credentials are not declared secret=True: {plain}"
        secret_fields = {f.name for f in info.config if f.secret}
        assert not secret_fields & set(info.public_config(dict.fromkeys(secret_fields, "x")))

    def test_closing_leaves_no_threads_or_processes(self, pywren_config: dict[str, Any], watch: StrictWatch) -> None:
        """Executors opened and shut down one after another (and one dropped without shutdown)
        leave no more threads and child processes than the first one did: a backend may keep
        one warm pool for the whole process, but nothing may pile up."""
        before = _running()
        after_first = None
        for round_ in range(self.lifecycle_rounds):
            ex = self.strict_executor(pywren_config, watch)
            assert self.results(ex, ex.map(square, range(4))) == [0, 1, 4, 9]
            if round_ < self.lifecycle_rounds - 1:
                ex.shutdown()
            else:
                del ex  # dropped without shutdown: collected, its threads end, its session closes
                gc.collect()
            now = _settled(after_first, self.lifecycle_grace)
            after_first = after_first or now
        grown = {
            kind: sorted((collections.Counter(now[kind]) - collections.Counter(after_first[kind])).elements())
            for kind in now
            if len(now[kind]) > len(after_first[kind])
        }
        assert not grown, (
            f"{self.lifecycle_grace:.0f} s after the last of {self.lifecycle_rounds} executors closed, more "
            f"is running than after the first: {grown} (before any: {len(before['threads'])} threads, "
            f"{len(before['processes'])} child processes; after the first: {len(after_first['threads'])}, "
            f"{len(after_first['processes'])})"
        )


def _secret_values(pywren_config: Mapping[str, Any]) -> list[str]:
    """The values of the config's secret fields, which must never travel in a payload."""
    name = pywren_config.get("backend", "local")
    section = pywren_config.get(name) or {}
    info = load_backend(name).info
    return [str(section[f.name]) for f in info.config if f.secret and section.get(f.name)]


def _running() -> dict[str, list[str]]:
    """This process's threads, and its child processes (Linux only; none elsewhere)."""
    threads = [t.name for t in threading.enumerate()]
    processes = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text.rpartition(")")[2].split()
        if len(fields) > 1 and fields[1] == str(os.getpid()) and fields[0] != "Z":
            try:
                command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                command = ""
            processes.append(f"{stat.parent.name}: {command.strip()[:100]}")
    return {"threads": threads, "processes": processes}


def _settled(baseline: dict[str, list[str]] | None, grace: float) -> dict[str, list[str]]:
    """What is running once it is no more than ``baseline`` (or ``grace`` seconds have passed);
    without a baseline, after a second, for what just shut down to end."""
    started = time.monotonic()
    while True:
        now = _running()
        waited = time.monotonic() - started
        if baseline is None:
            if waited >= 1.0:
                return now
        elif all(len(now[kind]) <= len(baseline[kind]) for kind in now) or waited > grace:
            return now
        time.sleep(0.1)


class FaultConformance(_Isolated):
    """A map of ``fault_calls`` calls under each injected fault (see :mod:`pywren_core.faults`):
    every call ends with its correct result or a clear per-call error, nothing hangs, nothing
    written is lost, and retries show in the futures' stats."""

    fault_calls = 500
    short_timeout = 3.0
    lost_grace = 5.0
    #: Bound on one faulty map: the client must never hang.
    map_deadline = 300.0
    #: Seconds after submitting before the Ctrl-C test interrupts (the calls must be running), and
    #: how soon after it the client must have stopped and cleaned up.
    interrupt_after = 2.0
    interrupt_bound = 10.0
    #: Seconds within which a call that crashed its interpreter must be reported as died.
    crash_notice_bound = 10.0

    @property
    def kit_bound(self) -> float:  # type: ignore[override]
        """Derived, so a suite that raises ``map_deadline`` gets a bound that still exceeds it."""
        return self.map_deadline + 120.0

    def run_under(self, pywren_config: dict[str, Any], faults: dict[str, Any], **overrides: Any) -> tuple[Any, list]:
        settings = {"progress": False, "timeout": self.short_timeout, "lost_grace": self.lost_grace, "retries": 3}
        ex = pw.executor(pywren_config, faults={"seed": 7, **faults}, **{**settings, **overrides})
        futures = ex.map(square, range(self.fault_calls))
        done, not_done = pw.wait(futures, timeout=self.map_deadline)
        ex.shutdown(wait=False)
        assert not not_done, f"{len(not_done)} calls still pending after {self.map_deadline} s"
        return ex, futures

    def assert_all_correct(self, futures: list) -> None:
        wrong = [(i, f.exception() or f.result()) for i, f in enumerate(futures)
                 if f.exception() is not None or f.result() != i * i]
        assert not wrong, f"{len(wrong)} calls failed or were wrong, first: {wrong[:3]}"

    def test_dropped_invocations_are_invoked_again(self, pywren_config: dict[str, Any]) -> None:
        ex, futures = self.run_under(pywren_config, {"drop_invocations": 0.05})
        self.assert_all_correct(futures)
        assert ex.faults.injected["drop_invocations"] > 0
        # Every dropped invocation (first ones and retries alike) cost its call one more attempt.
        assert sum(f.stats["attempts"] - 1 for f in futures) >= ex.faults.injected["drop_invocations"]

    def test_throttling_is_waited_out(self, pywren_config: dict[str, Any]) -> None:
        ex, futures = self.run_under(pywren_config, {"throttle_for": 1.0})
        self.assert_all_correct(futures)
        assert ex.faults.injected["throttled_invocations"] > 0
        # The backend may throttle too (a full platform): every injected throttle shows, at least.
        retried = sum(f.stats.get("invoke_retries", 0) for f in futures)
        injected = ex.faults.injected["throttled_invocations"]
        assert retried >= injected, f"{injected} throttles injected, but the calls' stats count {retried} retries"

    def test_storage_errors_are_retried(self, pywren_config: dict[str, Any]) -> None:
        ex, futures = self.run_under(pywren_config, {"storage_errors": 0.05})
        self.assert_all_correct(futures)
        assert ex.faults.injected["storage_errors"] > 0

    def test_slow_storage_and_invocations(self, pywren_config: dict[str, Any]) -> None:
        _, futures = self.run_under(pywren_config, {"delay": 0.002})
        self.assert_all_correct(futures)

    def test_workers_dying_before_reporting_are_retried(self, pywren_config: dict[str, Any]) -> None:
        _, futures = self.run_under(pywren_config, {"crash_workers": 0.05})
        self.assert_all_correct(futures)
        assert any(f.stats["attempts"] > 1 for f in futures)

    def test_ambiguous_invokes_are_invoked_again_and_counted(self, pywren_config: dict[str, Any]) -> None:
        ex, futures = self.run_under(pywren_config, {"ambiguous_invokes": 0.05})
        self.assert_all_correct(futures)
        injected = ex.faults.injected["ambiguous_invokes"]
        assert injected > 0
        assert sum(f.stats.get("ambiguous_invokes", 0) for f in futures) == injected

    def test_forged_statuses_change_nothing(self, pywren_config: dict[str, Any]) -> None:
        ex, futures = self.run_under(pywren_config, {"forge_statuses": 0.1})
        self.assert_all_correct(futures)
        assert ex.faults.injected["forge_statuses"] > 0
        reran = [f.call_id for f in futures if f.stats["attempts"] != 1 or f.stats["runs"] != 1]
        assert not reran, f"forged statuses made calls run again: {reran[:5]}"

    def test_denied_statuses_fail_the_job_and_rerun_nothing(self, pywren_config: dict[str, Any]) -> None:
        from pywren_core.errors import AccessDeniedError, StorageError

        class DenyStatuses:
            """Listing and reading statuses denied, as when credentials expire (a backend that
            pushes completions reads each status directly: that is denied too)."""

            @pw.hookimpl(wrapper=True)
            def pywren_storage_list(self, session: Any, prefix: str) -> Any:
                if "/status/" in prefix:
                    raise AccessDeniedError("AccessDenied: injected, as when credentials expire")
                return (yield)

            @pw.hookimpl(wrapper=True)
            def pywren_storage_get(self, session: Any, key: str, byte_range: Any) -> Any:
                if "/status/" in key:
                    raise AccessDeniedError("AccessDenied: injected, as when credentials expire")
                return (yield)

        settings = {"progress": False, "timeout": self.short_timeout, "lost_grace": self.lost_grace, "retries": 3}
        ex = pw.executor(pywren_config, wrappers=[DenyStatuses()], **settings)
        futures = ex.map(square, range(5))
        done, not_done = pw.wait(futures, timeout=self.map_deadline)
        ex.shutdown(wait=False)
        assert not not_done, f"{len(not_done)} calls still pending after {self.map_deadline} s"
        errors = [f.exception() for f in futures]
        assert all(isinstance(e, StorageError) and "AccessDenied" in str(e) for e in errors), errors
        assert all(f.stats["attempts"] == 1 for f in futures), "a call was invoked again"

    def test_a_clock_step_reruns_nothing(self, pywren_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 3600)  # the client's wall clock jumps an hour
        # A timeout well above any call's run time, yet far below the hour the clock jumped.
        ex, futures = self.run_under(pywren_config, {}, retries=0, timeout=10 * self.short_timeout)
        self.assert_all_correct(futures)
        assert all(f.stats["attempts"] == 1 for f in futures)

    def test_ctrl_c_stops_the_job_promptly_and_leaves_nothing(self, pywren_config: dict[str, Any]) -> None:
        """SIGINT in a client waiting inside ``with pw.executor() as ex:`` raises within seconds,
        cancels the calls and deletes the job's objects."""
        import json
        import signal

        script = textwrap.dedent("""
            import json, signal, sys, time
            import pywren_core as pw
            from pywren_core.testing import sleep_then_return
            # A shell's background job starts with SIGINT ignored: this client takes Ctrl-C anyway.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            with pw.executor(json.loads(sys.argv[1]), progress=False) as ex:
                futures = ex.map(sleep_then_return, [float(sys.argv[2])] * 4)
                print(ex.executor_id, flush=True)
                ex.get_result(futures)
        """)
        # The calls still run when Ctrl-C comes, and not much longer: a platform that cannot stop
        # them stays busy for the next test only briefly.
        seconds = str(self.interrupt_after + 3)
        client = subprocess.Popen([sys.executable, "-c", script, json.dumps(pywren_config), seconds],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            executor_id = client.stdout.readline().strip()  # type: ignore[union-attr]
            assert executor_id, client.communicate(timeout=60)[1]
            time.sleep(self.interrupt_after)  # the calls are running
            client.send_signal(signal.SIGINT)
            interrupted = time.monotonic()
            _, stderr = client.communicate(timeout=60)
            stopped_after = time.monotonic() - interrupted
        finally:
            client.kill()
        assert "KeyboardInterrupt" in stderr, stderr[-2000:]
        print(f"figure: the client stopped {stopped_after:.2f} s after Ctrl-C")  # for docs/reliability.md (-s)
        assert stopped_after < self.interrupt_bound, f"took {stopped_after:.1f} s to stop after Ctrl-C"
        session = open_session(pywren_config)
        try:
            left = session.list(f"pywren.jobs/{executor_id}/")
        finally:
            session.close()
        assert left == [], f"{len(left)} objects left behind, e.g. {left[:3]}"

    def test_a_crash_is_noticed_within_seconds_and_spares_a_bystander(self, pywren_config: dict[str, Any]) -> None:
        from pywren_core.errors import WorkerDiedError

        with pw.executor(pywren_config, progress=False, retries=0) as ex:
            started = time.monotonic()
            crashed, bystander = ex.map(crash_or_wait, ["crash", "wait"])
            with pytest.raises(WorkerDiedError, match=r"worker process \d+ exited with code 1 while running the call"):
                crashed.result(timeout=self.crash_notice_bound)
            noticed = time.monotonic() - started
            print(f"figure: crash noticed {noticed:.2f} s after submitting")  # for docs/reliability.md (-s)
            assert noticed < self.crash_notice_bound, f"the crash was noticed after {noticed:.1f} s"
            assert bystander.result(timeout=self.map_deadline) == "wait"

    def test_a_crash_on_the_first_attempt_is_retried(self, pywren_config: dict[str, Any]) -> None:
        with pw.executor(pywren_config, progress=False, retries=1) as ex:
            future = ex.call_async(crash_on_first_attempt, 4)
            assert future.result(timeout=self.map_deadline) == 40
        assert future.stats["attempts"] == 2 and future.stats["runs"] == 2

    def test_corrupted_reads_never_give_a_wrong_result(self, pywren_config: dict[str, Any]) -> None:
        from pywren_core.errors import SignatureError

        _, futures = self.run_under(pywren_config, {"corrupt_reads": 0.02})
        for i, f in enumerate(futures):
            if f.exception() is None:
                assert f.result() == i * i
            else:
                assert isinstance(f.exception(), SignatureError), repr(f.exception())


class BenchConformance(_Isolated):
    """The ``pywren bench`` standard suite on the backend, with small parameters: every workload
    runs (or says why it was skipped), every call succeeds, and the run file is valid."""

    bench_params: dict[str, dict[str, Any]] = {
        "latency": {"burst": 4, "sequential": 3},
        "scaleout": {"calls": 4, "sleep": 0.5},
        "storage": {"calls": 2, "megabytes": 0.25},
        "compute": {"calls": 2, "n": 64, "loops": 1},
        "throughput": {"calls": 20},
    }

    kit_bound = 300.0

    def test_standard_suite_runs(self, pywren_config: dict[str, Any], tmp_path: Any) -> None:
        from pywren_core.bench import results, workloads

        ex = pw.executor(pywren_config, progress=False)
        try:
            entries = workloads.run_suite(ex, "standard", "laptop", self.bench_params)
        finally:
            ex.shutdown()
        assert set(entries) == set(workloads.SUITES["standard"])
        for name, entry in entries.items():
            failed = [c for c in entry["calls"] if not c["ok"]]
            assert not failed, f"{name}: {failed[0]['error']}"
            assert entry["skipped"] or entry["calls"], name
        run = results.new_run(ex, "standard", "laptop", entries)
        results.save(run, tmp_path / "run.json")
        results.validate(results.load(tmp_path / "run.json"))


def word_corpus(largest: int, seed: int = 7) -> dict[str, bytes]:
    """Objects (name -> bytes) for word-count tests: every awkward case of line splitting, and
    sizes up to ``largest``: empty, one byte, no final newline, CRLF, blank lines, a line longer
    than most pieces, a run of newlines, and text of doubling size (most cut mid-line)."""
    import random

    rng = random.Random(seed)
    words = [f"w{i}" for i in range(500)] + ["the", "a", "ünïcode", "tab\tword"]
    pool = [" ".join(rng.choices(words, k=rng.randint(0, 12))).encode() for _ in range(2000)]

    def text(size: int, newline: bytes = b"\n") -> bytes:
        """About ``size`` bytes of lines drawn from the pool, cut at ``size`` (mid-line, usually)."""
        count = size // 40 + 1
        out = newline.join(rng.choices(pool, k=count))
        while len(out) < size:
            out += newline + newline.join(rng.choices(pool, k=count))
        return out[:size]

    corpus = {
        "edge/empty": b"",
        "edge/one-byte": b"x",
        "edge/only-newlines": b"\n\n\n\n",
        "edge/no-final-newline": b"alpha beta\ngamma delta",
        "edge/crlf": text(600, b"\r\n"),
        "edge/long-line": b"short line\n" + b" ".join([b"long"] * 200) + b"\nafter the long one\n",
        "edge/blank-lines": b"one\n\n\ntwo  three\n \n",
    }
    size, crlf = 1024, False
    while size < largest:  # doubling sizes; every other one with CRLF line ends
        corpus[f"text/{size:010d}"] = text(size, b"\r\n" if crlf else b"\n")
        size, crlf = size * 2, not crlf
    corpus[f"text/{largest:010d}"] = text(largest)[:-1] + b"\n"
    return corpus


def count_words(piece: Any) -> collections.Counter[str]:
    """A map over storage URLs' word count: the words of the lines of one piece."""
    return collections.Counter(word for line in piece.lines() for word in line.split())


def count_lines(piece: Any) -> list[str]:
    return list(piece.lines())


def sum_counters(counters: Sequence[collections.Counter[str]]) -> collections.Counter[str]:
    return sum(counters, collections.Counter())


def _streams(storage: Any) -> bool:
    """Whether the storage's backend implements the optional ``pywren_data_open`` (wrappers aside)."""
    impls = storage.session._hook.pywren_data_open.get_hookimpls()
    return any(not (impl.hookwrapper or impl.wrapper) for impl in impls)


def expected_words(corpus: Mapping[str, bytes]) -> collections.Counter[str]:
    return collections.Counter(
        word for data in corpus.values() for line in data.decode().splitlines() for word in line.split()
    )


class DataConformance(_Isolated):
    """Data where it lives: the ``pywren_data_*`` hooks through ``pw.storage()``, and maps over
    storage URLs split into line-aligned pieces.

    Needs a ``pywren_data_url`` fixture besides ``pywren_config``: a URL prefix in a bucket that
    exists (``"s3://my-test-data/"``), under which each test writes and then deletes its objects.
    """

    #: Objects in the listing test: more than one page of most list APIs.
    many_objects = 1050
    #: The largest object of the word-count corpus.
    largest_object_bytes = 2 * 2**20
    #: Piece sizes of the word-count test; the small ones are used on the ``edge/`` objects only
    #: (1.7 kB: about 250 calls at 7 bytes a piece).
    piece_sizes = (None, 256 * 2**10)
    edge_piece_sizes = (7, 100)
    kit_bound = 300.0

    @pytest.fixture
    def storage(self, pywren_config: dict[str, Any]) -> Iterator[Any]:
        store = pw.storage(pywren_config)
        yield store
        store.session.close()

    @pytest.fixture
    def data_prefix(self, storage: Any, pywren_data_url: str) -> Iterator[str]:
        base = pywren_data_url if pywren_data_url.endswith("/") else pywren_data_url + "/"
        prefix = f"{base}kit-{new_id()}/"
        yield prefix
        storage.delete([o.url for o in storage.list(prefix)])

    def executor(self, pywren_config: dict[str, Any]) -> pw.Executor:
        return pw.executor(pywren_config, progress=False, timeout=ExecutorConformance.call_timeout)

    def put_all(self, storage: Any, prefix: str, objects: Mapping[str, bytes]) -> None:
        _parallel(lambda item: storage.put(prefix + item[0], item[1]), list(objects.items()))

    def test_schemes_are_declared(self, storage: Any, pywren_data_url: str) -> None:
        from pywren_core.data import scheme_of

        assert storage.schemes, "BackendInfo.data_schemes is empty: the backend serves no storage URLs"
        scheme = scheme_of(pywren_data_url) or "file"
        assert scheme in storage.schemes, f"pywren_data_url {pywren_data_url!r} is not of {storage.schemes}"

    def test_round_trip_and_ranges(self, storage: Any, data_prefix: str) -> None:
        data = bytes(range(256)) * 40
        storage.put(data_prefix + "bytes", data)
        _assert_same_bytes(storage.get(data_prefix + "bytes"), data, "every byte value")
        for start, end in [(0, 1), (5, 300), (10239, 10240), (10000, 99999), (20000, 20010), (7, 7)]:
            got = storage.get(data_prefix + "bytes", (start, end))
            _assert_same_bytes(got, data[start:end], f"range {start}-{end}")
        storage.put(data_prefix + "bytes", b"replaced")
        assert storage.get(data_prefix + "bytes") == b"replaced"

    def test_list_has_sizes_and_is_a_string_prefix(self, storage: Any, data_prefix: str) -> None:
        objects = {"a/1": b"", "a/22": b"xx", "ab": b"yyy", "b/1": b"z" * 1000}
        self.put_all(storage, data_prefix, objects)
        listed = {o.url: o.size for o in storage.list(data_prefix + "a")}
        assert listed == {data_prefix + k: len(v) for k, v in objects.items() if k.startswith("a")}
        everything = {o.url: o.size for o in storage.list(data_prefix)}
        assert everything == {data_prefix + k: len(v) for k, v in objects.items()}
        assert storage.list(data_prefix + "nothing-here/") == []

    def test_list_follows_every_page(self, storage: Any, data_prefix: str) -> None:
        names = [f"many/{i:05d}" for i in range(self.many_objects)]
        _parallel(lambda name: storage.put(data_prefix + name, name.encode()), names)
        listed = storage.list(data_prefix + "many/")
        _assert_listed_once([o.url for o in listed], [data_prefix + n for n in names])
        assert all(o.size == len("many/00000") for o in listed), "a listed size is wrong"

    def test_missing_object_is_not_found(self, storage: Any, data_prefix: str) -> None:
        with pytest.raises(NotFoundError):
            storage.get(data_prefix + "missing")
        with pytest.raises(NotFoundError):
            storage.get(data_prefix + "missing", (0, 10))

    def test_missing_bucket_is_not_found(self, storage: Any, data_prefix: str) -> None:
        from pywren_core.data import scheme_of

        scheme = scheme_of(data_prefix) or "file"
        if scheme == "file":
            pytest.skip("file URLs have no buckets")
        url = f"{scheme}://pywren-no-such-bucket-{new_id()[:12]}/x"
        with pytest.raises(NotFoundError):
            storage.list(url)
        with pytest.raises(NotFoundError):
            storage.get(url)

    def test_delete_is_idempotent(self, storage: Any, data_prefix: str) -> None:
        storage.put(data_prefix + "gone", b"x")
        storage.delete([data_prefix + "gone", data_prefix + "never-was"])
        storage.delete(data_prefix + "gone")
        assert storage.list(data_prefix + "gone") == []

    def test_open_streams_the_object(self, storage: Any, data_prefix: str) -> None:
        data = b"".join(b"line %d\n" % i for i in range(40_000))
        storage.put(data_prefix + "stream", data)
        storage.block_size = 64 * 2**10
        asked: list[int] = []
        get = storage.session.data_get
        storage.session.data_get = lambda b, k, r=None: asked.append(r[1] - r[0]) or get(b, k, r)
        with storage.open(data_prefix + "stream", size=len(data)) as stream:
            assert stream.readline() == b"line 0\n"
            rest = stream.read()
        _assert_same_bytes(b"line 0\n" + rest, data, "an object read through open()")
        if _streams(storage):
            assert not asked, f"open() should read through pywren_data_open; it made pywren_data_get calls {asked[:5]}"
        else:
            assert len(asked) >= len(data) // storage.block_size and max(asked) <= storage.block_size, (
                f"open() should stream in ranged reads of at most {storage.block_size} bytes; it asked for {asked[:5]}"
            )

    def test_a_stream_gives_exactly_its_range_and_closes(self, storage: Any, data_prefix: str) -> None:
        from pywren_core.data import DataPiece

        if not _streams(storage):
            pytest.skip("the backend has no pywren_data_open (optional: it then streams in pywren_data_get blocks)")
        data = bytes(range(256)) * 4096 + b"\n"
        url = data_prefix + "ranged"
        storage.put(url, data)
        end = len(data)
        ranges = [(0, end), (1, 2), (1000, 300_000), (end - 10, end + 100), (end + 5, end + 9), (7, 7)]
        for (start, end), size in zip(ranges, (1 << 20, 1, 4096, 3, 100, 5), strict=True):
            stream = storage.stream(url, (start, end))
            chunks = list(iter(lambda: stream.read(size), b""))  # noqa: B023
            stream.close()
            _assert_same_bytes(b"".join(chunks), data[start:end], f"range {start}-{end} read {size} bytes at a time")
            assert max(map(len, chunks), default=0) <= size, f"read({size}) gave {max(map(len, chunks))} bytes"
            assert stream.closed, "closing the stream did not close it"
        buffer = bytearray(100_000)
        with storage.stream(url, (7, 200_007)) as stream:
            got = b""
            while n := stream.readinto(buffer):
                got += buffer[:n]
        _assert_same_bytes(got, data[7:200_007], "range 7-200007 read with readinto")
        half = storage.stream(url, (0, len(data)))
        assert half.read(10) == data[:10]
        half.close()  # closed before its end, as a piece closes its stream past its last line
        assert half.closed
        with pytest.raises(NotFoundError, match="missing-object"):
            storage.stream(data_prefix + "missing-object", (0, 10)).read()
        opened: list[Any] = []
        stream_of = storage.stream
        storage.stream = lambda *args: opened.append(stream_of(*args)) or opened[-1]
        with DataPiece(url, len(data), (1000, 500_000), storage=storage).open() as piece:
            assert piece.read(10) == data[1035:1045]  # the first line beginning in the piece
        assert opened and all(s.closed for s in opened), "closing a piece's file did not close its stream"

    def test_word_count_over_pieces_equals_a_direct_count(self, pywren_config: dict[str, Any], storage: Any,
                                                          data_prefix: str) -> None:
        corpus = word_corpus(self.largest_object_bytes)
        self.put_all(storage, data_prefix, corpus)
        edges = {k: v for k, v in corpus.items() if k.startswith("edge/")}
        ex = self.executor(pywren_config)
        try:
            runs = [(data_prefix, size, corpus) for size in self.piece_sizes]
            runs += [(data_prefix + "edge/", size, edges) for size in self.edge_piece_sizes]
            runs += [([data_prefix + "edge/crlf", data_prefix + "text"], None, {
                k: v for k, v in corpus.items() if k == "edge/crlf" or k.startswith("text/")})]
            for urls, size, objects in runs:
                futures = ex.map(count_words, urls, obj_chunk_size=size)
                got = sum_counters(ex.get_result(futures))
                expected = expected_words(objects)
                differing = dict(list(((got - expected) + (expected - got)).items())[:5])
                assert got == expected, (
                    f"word count over {urls} in pieces of {size} bytes: {sum(got.values())} words, expected "
                    f"{sum(expected.values())}; differing: {differing}"
                )
            futures = ex.map(count_words, data_prefix + "text/", obj_chunk_number=5)
            assert sum_counters(ex.get_result(futures)) == expected_words(
                {k: v for k, v in corpus.items() if k.startswith("text/")})
        finally:
            ex.shutdown()

    def test_every_line_lands_in_exactly_one_piece(self, pywren_config: dict[str, Any], storage: Any,
                                                   data_prefix: str) -> None:
        data = b"a\r\nbb\n\nccc\n" + b"x" * 50 + b"\ndd\ne"
        storage.put(data_prefix + "lines", data)
        ex = self.executor(pywren_config)
        try:
            for size in (1, 3, 10, 64):
                futures = ex.map(count_lines, data_prefix + "lines", obj_chunk_size=size)
                pieces = ex.get_result(futures)
                assert [line for piece in pieces for line in piece] == data.decode().splitlines(), (size, pieces)
        finally:
            ex.shutdown()

    def test_map_reduce_by_key_reduces_each_object(self, pywren_config: dict[str, Any], storage: Any,
                                                   data_prefix: str) -> None:
        objects = {"r/one": b"a b c\n" * 300, "r/two": b"b c\r\n" * 200 + b"tail", "r/three": b""}
        self.put_all(storage, data_prefix, objects)
        ex = self.executor(pywren_config)
        try:
            reducers = ex.map_reduce(count_words, data_prefix + "r/", sum_counters, obj_chunk_size=500,
                                     reduce_by_key=True)
            by_url = dict(zip((f.url for f in reducers), ex.get_result(reducers), strict=True))
        finally:
            ex.shutdown()
        assert by_url == {data_prefix + k: expected_words({k: v}) for k, v in objects.items()}

    def test_an_object_deleted_after_planning_fails_only_its_calls(self, pywren_config: dict[str, Any],
                                                                   storage: Any, data_prefix: str) -> None:
        from pywren_core.data import plan

        self.put_all(storage, data_prefix, {"d/keep": b"kept words\n", "d/gone": b"gone words\n" * 10})
        pieces = plan(storage, data_prefix + "d/", chunk_size=40)
        storage.delete(data_prefix + "d/gone")
        ex = self.executor(pywren_config)
        try:
            futures = ex.map(count_words, pieces)
            pw.wait(futures, timeout=ExecutorConformance.call_timeout * 2)
        finally:
            ex.shutdown()
        for piece, future in zip(pieces, futures, strict=True):
            if piece.url.endswith("/keep"):
                assert future.result() == collections.Counter(["kept", "words"])
            else:
                with pytest.raises(NotFoundError):
                    future.result()

    def test_bad_urls_are_refused_before_any_call(self, pywren_config: dict[str, Any], storage: Any,
                                                  data_prefix: str) -> None:
        from pywren_core.data import KNOWN_SCHEMES
        from pywren_core.errors import URLError

        ex = self.executor(pywren_config)
        try:
            foreign = next(s for s in KNOWN_SCHEMES if s not in storage.schemes and s != "file")
            with pytest.raises(URLError, match=f"{foreign}://"):
                ex.map(count_words, f"{foreign}://bucket/key")
            with pytest.raises(NotFoundError, match="no objects"):
                ex.map(count_words, data_prefix + "empty/")
            with pytest.raises(ValueError, match="obj_chunk_size"):
                ex.map(count_words, data_prefix, obj_chunk_size=0)
            with pytest.raises(TypeError, match="storage URLs"):
                ex.map(count_words, [1, 2], obj_chunk_size=10)
        finally:
            ex.shutdown()


# --- local servers: the emulators a cloud backend's tests run against ---------------------------


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free now (another process may still take it before yours binds)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports of 127.0.0.1, for one server that listens on several. Each is held
    until all are chosen: picked one after another, the system may hand out the same port twice."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def http_status(url: str, timeout: float = 5.0) -> int:
    """The HTTP status ``url`` answers with, error statuses included; ``OSError`` if nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


class LocalServer:
    """A server process for tests (an emulator, a stand-in for a platform), serving on 127.0.0.1.

    Its output goes to a log file, never to a pipe nobody reads: a server blocked on a full pipe
    freezes the whole test run. It runs in a session of its own, so Ctrl-C stops the tests, which
    then stop it: terminated, waited for, then killed.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: os.PathLike[str] | str,
        env: Mapping[str, str] | None = None,
        cwd: os.PathLike[str] | str | None = None,
        url: str = "",
    ):
        self.name = name
        self.url = url
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None, cwd=cwd, start_new_session=True,
        )

    def wait_ready(self, probe: Callable[[], Any], what: str = "", timeout: float = 120.0) -> None:
        """Poll ``probe()`` until it is true; an ``OSError`` from it (nothing listening yet) means not yet.

        Raises ``RuntimeError`` with the end of the server's log if it exits or the time runs out.
        """
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"{self.name} exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                if probe():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} was not ready ({what or 'probe'}) within {timeout} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class HangUpServer:
    """A server on 127.0.0.1 that reads each request whole and closes the connection unanswered,
    as a network that loses the answer does. ``connections`` counts the connections it took, so a
    test can see how many tries a client made. Use it as a context manager."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._serve, name="hang-up-server", daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._listener.accept()
            except OSError:  # closed
                return
            self.connections += 1
            with connection:
                connection.settimeout(5)
                try:
                    head = b""
                    while b"\r\n\r\n" not in head and (chunk := connection.recv(65536)):
                        head += chunk
                    length = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
                    body = head.partition(b"\r\n\r\n")[2]
                    while length and len(body) < int(length.group(1)) and (chunk := connection.recv(65536)):
                        body += chunk
                except OSError:
                    pass

    def close(self) -> None:
        self._listener.close()

    def __enter__(self) -> HangUpServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _InvokeCounter:
    """Counts the client's invocations: fan-out invokers, and invocations of calls."""

    def __init__(self) -> None:
        self.invokers = 0
        self.direct: list[str] = []
        self._lock = threading.Lock()

    @pw.hookimpl(wrapper=True)
    def pywren_invoke(self, payload: dict[str, Any]) -> Any:
        result = yield
        with self._lock:
            if payload.get("fanout"):
                self.invokers += 1
            else:
                self.direct += [c["call_id"] for c in payload["calls"]]
        return result


class _TamperBatches:
    """Changes one byte of each fan-out batch in the bucket, through a session of its own, as
    someone with write access could, just before its invoker is invoked: the invoker must refuse it."""

    def __init__(self, store: Session) -> None:
        self.store = store

    @pw.hookimpl(wrapper=True)
    def pywren_invoke(self, payload: dict[str, Any]) -> Any:
        if payload.get("fanout"):
            blob = self.store.get(payload["fanout"])
            self.store.put(payload["fanout"], blob[:-1] + bytes([blob[-1] ^ 1]))
        return (yield)


class _HideReports:
    """Reads of fan-out reports find nothing: the client must not wait for them forever."""

    @pw.hookimpl(wrapper=True)
    def pywren_storage_get(self, key: str) -> Any:
        result = yield
        if key.endswith(".report"):
            raise NotFoundError(f"{key} (hidden by the test)")
        return result


class _LateReports:
    """The client's listings miss fan-out reports until ``shown`` is set: as when every call of a
    batch ends before its invoker has written its report."""

    def __init__(self) -> None:
        self.shown = threading.Event()

    @pw.hookimpl(wrapper=True)
    def pywren_storage_list(self, prefix: str) -> Any:
        keys = yield
        return keys if self.shown.is_set() else [k for k in keys if not k.endswith(".report")]


class FanOutConformance(_Isolated):
    """For a backend whose plugin declares ``pywren_fanout``: large maps invoked by invokers that run
    on the platform (:mod:`pywren_core.fanout`). Fan-out is forced on small maps (``fanout: 1``,
    ``batch`` invocations per invoker)."""

    map_size = 40
    batch = 10
    timeout = 180.0

    def fanned_executor(self, pywren_config: dict[str, Any], wrappers: Sequence[Any]) -> pw.Executor:
        return pw.executor(pywren_config, wrappers=list(wrappers), fanout=1, fanout_batch=self.batch,
                           progress=False, retries=0)

    def test_a_fanned_out_map_is_invoked_from_the_platform(self, pywren_config: dict[str, Any]) -> None:
        """The client invokes one invoker per batch and no call; every call runs once, with the time
        its invocation was accepted in its stats, and nothing counts as an extra run."""
        watch, counter = StrictWatch(_secret_values(pywren_config)), _InvokeCounter()
        with watch.watching(), self.fanned_executor(pywren_config, [watch, counter]) as ex:
            futures = ex.map(square, range(self.map_size))
            assert ex.get_result(futures, timeout=self.timeout) == [x * x for x in range(self.map_size)]
        watch.check(futures)
        assert counter.invokers == -(-self.map_size // self.batch) and counter.direct == []
        assert all("invoked" in f.stats for f in futures)

    def test_a_report_that_comes_after_the_calls_is_still_read(self, pywren_config: dict[str, Any]) -> None:
        """Every call ends before the client sees its invoker's report: shutting down waits for the
        reports, applies them to the calls' stats, and only then deletes the job's objects."""
        late, store = _LateReports(), open_session(pywren_config)
        with self.fanned_executor(pywren_config, [late]) as ex:
            futures = ex.map(square, range(self.map_size))
            assert ex.get_result(futures, timeout=self.timeout) == [x * x for x in range(self.map_size)]
            assert not any("invoked" in f.stats for f in futures), "the reports were seen before they were shown"
            late.shown.set()
        left = store.list(f"{JOBS_PREFIX}/{ex.executor_id}/")
        store.close()
        assert all("invoked" in f.stats for f in futures)
        assert left == [], f"the job's objects outlived the executor: {left[:5]}"

    def test_cancelling_a_fanned_out_map_does_not_wait_for_reports(self, pywren_config: dict[str, Any]) -> None:
        """Leaving the executor's block with an error cancels the calls, and the client stops at
        once: it does not wait for the report of an invoker that started (a quarter of the report
        wait, 30 s, when the calls have ended on their own)."""
        late, store = _LateReports(), open_session(pywren_config)

        class Interrupted(Exception):
            pass

        with pytest.raises(Interrupted):
            with self.fanned_executor(pywren_config, [late]) as ex:
                futures = ex.map(sleep_then_return, [5.0] * self.batch)
                prefix = f"{JOBS_PREFIX}/{ex.executor_id}/{futures[0].job_id}/fanout/"
                with _bounded(self.timeout, "the invoker's start marker"):
                    while not any(k.endswith(".started") for k in store.list(prefix)):
                        time.sleep(0.2)
                stopping = time.monotonic()
                raise Interrupted
        stopped = time.monotonic() - stopping
        store.close()
        assert all(f.cancelled() for f in futures)
        assert stopped < 20.0, f"the client took {stopped:.1f} s to stop after cancelling"

    def test_a_tampered_batch_invokes_nothing_and_the_client_invokes_it(self, pywren_config: dict[str, Any]) -> None:
        """A batch changed in the bucket fails its signature: the invoker invokes none of it and
        reports so, and the client invokes those calls itself, each once."""
        counter, store = _InvokeCounter(), open_session(pywren_config)
        with self.fanned_executor(pywren_config, [_TamperBatches(store), counter]) as ex:
            futures = ex.map(square, range(self.map_size))
            assert ex.get_result(futures, timeout=self.timeout) == [x * x for x in range(self.map_size)]
        store.close()
        assert sorted(counter.direct) == sorted(f.call_id for f in futures)
        assert all(f.stats.get("runs", 1) == 1 and not f.stats.get("ambiguous_invokes") for f in futures)

    def test_lost_answers_inside_and_outside_the_invokers_are_counted(self, pywren_config: dict[str, Any]) -> None:
        """With a third of the invocations' answers lost (the client's and the invokers' alike, by
        the fault injector, which travels to the workers), every call still ends right, and the
        possible extra runs show in the calls' stats."""
        faults = {"ambiguous_invokes": 0.3, "seed": 7}
        with pw.executor(pywren_config, fanout=1, fanout_batch=self.batch, progress=False, retries=0,
                         faults=faults) as ex:
            futures = ex.map(square, range(self.map_size))
            assert ex.get_result(futures, timeout=self.timeout) == [x * x for x in range(self.map_size)]
        assert sum(f.stats.get("ambiguous_invokes", 0) for f in futures) > 0

    def test_an_invoker_that_never_reports_does_not_hang_the_map(self, pywren_config: dict[str, Any],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
        """With every report unreadable, the client invokes each batch's unfinished calls itself
        once the report is overdue (twice the report wait after the invoker started); each call it
        invokes again counts a possible extra run."""
        from pywren_core import executors

        monkeypatch.setattr(executors, "FANOUT_REPORT_WAIT", 2.0)
        counter = _InvokeCounter()
        with self.fanned_executor(pywren_config, [_HideReports(), counter]) as ex:
            futures = ex.map(sleep_then_return, [10.0] * self.batch)
            assert ex.get_result(futures, timeout=self.timeout) == [10.0] * self.batch
        again = set(counter.direct)
        assert again, "no call was still unfinished after the report wait: make the calls longer"
        for f in futures:
            assert (f.stats.get("ambiguous_invokes", 0) >= 1) == (f.call_id in again), f.stats
