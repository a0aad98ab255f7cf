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
"""

from __future__ import annotations

import os
import re
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
from pywren_core.errors import CallTimeoutError, NotFoundError, SerializationError
from pywren_core.plugins import load_backend
from pywren_core.protocol import new_id


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


class _Isolated:
    @pytest.fixture(autouse=True)
    def isolated_pywren(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[None]:
        yield from _isolate(monkeypatch, tmp_path_factory)


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
        assert storage.get(prefix + "a") == data

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
        assert sorted(storage.list(prefix + "many/")) == keys

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
        assert storage.list(prefix + "del/") == []

    def test_large_object(self, storage: Session, prefix: str) -> None:
        data = os.urandom(self.large_object_bytes)
        storage.put(prefix + "big", data)
        assert storage.get(prefix + "big") == data
        middle = self.large_object_bytes // 2
        assert storage.get(prefix + "big", (middle, middle + 1000)) == data[middle : middle + 1000]

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
    """End-to-end behaviour: the same map, errors, timeouts and retries on every backend."""

    map_size = 50
    #: Per-call timeout for the timeout and retry tests; must be above the backend's cold start.
    short_timeout = 3.0
    #: Seconds a silent call may stay past its timeout before it counts as lost, in these tests.
    lost_grace = 10.0

    @pytest.fixture
    def executor(self, pywren_config: dict[str, Any]) -> Iterator[pw.Executor]:
        ex = pw.executor(pywren_config, progress=False)
        yield ex
        ex.shutdown()  # waits, cleans up, and closes the session (the pywren_close hook)

    def short_executor(self, pywren_config: dict[str, Any], **overrides: Any) -> pw.Executor:
        settings = {"progress": False, "timeout": self.short_timeout, "lost_grace": self.lost_grace, **overrides}
        return pw.executor(pywren_config, **settings)

    def test_map_returns_results_in_order(self, executor: pw.Executor) -> None:
        futures = executor.map(square, range(self.map_size))
        assert executor.get_result(futures) == [x * x for x in range(self.map_size)]
        assert all(f.status == "success" for f in futures)

    def test_call_async_submit_and_extra_args(self, executor: pw.Executor) -> None:
        assert executor.call_async(square, 7).result(timeout=60) == 49
        assert executor.submit(add, 1, 2, z=3).result(timeout=60) == 6
        assert executor.get_result(executor.map(add, [1, 2], extra_args=(10,))) == [11, 12]

    def test_chunked_map(self, executor: pw.Executor) -> None:
        futures = executor.map(square, range(20), chunksize=7)
        assert executor.get_result(futures) == [x * x for x in range(20)]

    def test_remote_exception_keeps_type_and_traceback(self, executor: pw.Executor) -> None:
        future = executor.call_async(fail_with, "missing-thing")
        with pytest.raises(KeyError, match="missing-thing") as info:
            future.result(timeout=60)
        cause = info.value.__cause__
        assert cause is not None and "fail_with" in str(cause) and "raise KeyError" in str(cause)
        assert future.status == "error"

    def test_stats_and_output(self, executor: pw.Executor) -> None:
        future = executor.call_async(echo_and_print, 5)
        assert future.result(timeout=60) == 5
        stats = future.stats
        assert stats["submitted"] <= stats["invoked"] <= stats["start"] <= stats["end"] <= stats["done"]
        assert stats["worker_id"] and isinstance(stats["cold"], bool)
        assert "hello from call 5" in future.stdout and "to stderr" in future.stderr

    def test_large_result_goes_through_storage(self, executor: pw.Executor) -> None:
        assert executor.call_async(big_result, 2**20).result(timeout=60) == b"r" * 2**20

    def test_argument_larger_than_payload_limit(self, executor: pw.Executor) -> None:
        size = executor.info.limits.max_payload_bytes + 1024
        if size > 64 * 2**20:
            pytest.skip("payload limit too large to exceed in a test")
        assert executor.call_async(payload_size, b"a" * size).result(timeout=120) == size

    def test_each_call_has_its_own_directory(self, executor: pw.Executor) -> None:
        names = [f"file-{i}" for i in range(8)]
        listings = executor.get_result(executor.map(files_in_workdir, names))
        assert listings == [[name] for name in names]

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
            assert executor.get_result(executor.map(module.compute, [1, 2])) == [42, 43]
        finally:
            sys.path.remove(str(tmp_path))
            sys.modules.pop(module_name, None)


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
        assert sum(f.stats.get("invoke_retries", 0) for f in futures) == ex.faults.injected["throttled_invocations"]

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

    def test_denied_listing_fails_the_job_and_reruns_nothing(self, pywren_config: dict[str, Any]) -> None:
        from pywren_core.errors import AccessDeniedError, StorageError

        class DenyStatusListing:
            @pw.hookimpl(wrapper=True)
            def pywren_storage_list(self, session: Any, prefix: str) -> Any:
                if "/status/" in prefix:
                    raise AccessDeniedError("AccessDenied: injected, as when credentials expire")
                return (yield)

        settings = {"progress": False, "timeout": self.short_timeout, "lost_grace": self.lost_grace, "retries": 3}
        ex = pw.executor(pywren_config, wrappers=[DenyStatusListing()], **settings)
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
            import json, sys, time
            import pywren_core as pw
            from pywren_core.testing import sleep_then_return
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


# --- local servers: the emulators a cloud backend's tests run against ---------------------------


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free now (another process may still take it before yours binds)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
