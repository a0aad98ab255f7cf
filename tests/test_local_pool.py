"""The local backend's worker pool: workers forked from a zygote (``local.start: fork``, the
default on Linux), or fresh interpreters (``spawn``), and what each must never do again."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import pywren_core as pw
from pywren_core.backends import local
from pywren_core.backends.local import WorkerPool
from pywren_core.errors import CallFailedError, ConfigError, WorkerDiedError

needs_fork = pytest.mark.skipif(not local.fork_available(), reason="workers are forked on Linux 5.3+ only")

#: A pool size no other test uses, so a test may break its pool without harming the others.
OWN_SIZE = 5


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[1])


def name_of(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def alive(pid: int) -> bool:
    """Running, or a zombie not yet reaped by its parent (which still counts as not having left)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def pywren_config(pywren_config):
    """This file's executors fork their workers unless a test says otherwise."""
    return {**pywren_config, "local": {**pywren_config["local"], "start": "fork"}}


def pool_of(ex) -> WorkerPool:
    return WorkerPool.shared(ex.session.handle.workers, ex.session.handle.start)


def pid_of(future) -> int:
    return int(future.stats["worker_id"].rpartition(":")[2])


def kill_self_on_first_attempt(x):
    from pywren_core.worker import current_call

    if current_call().attempt == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 10


def exit_hard(code):
    os._exit(code)


def random_draw(x):
    import numpy

    time.sleep(0.05)
    return os.getpid(), float(numpy.random.random())


@pytest.fixture
def own_pool(pywren_config):
    """A config whose executors get a pool of their own, closed after the test."""
    close_own_pools()
    yield {**pywren_config, "local": {**pywren_config["local"], "workers": OWN_SIZE}}
    close_own_pools()


def close_own_pools() -> None:
    for key in [key for key in WorkerPool._shared if key[0] == OWN_SIZE]:
        WorkerPool._shared.pop(key).close()


@needs_fork
def test_the_workers_are_children_of_the_zygote_a_child_of_the_client(pywren_config):
    with pw.executor(pywren_config, progress=False) as ex:
        futures = ex.map(abs, range(-20, 0))
        assert ex.get_result(futures) == list(range(20, 0, -1))
        pool = pool_of(ex)
        assert pool.zygote is not None
        assert parent_of(pool.zygote.pid) == os.getpid()
        assert name_of(pool.zygote.pid) == "pywren-zygote"
        workers = {w.process.pid for w in pool.workers}
        assert all(parent_of(pid) == pool.zygote.pid and name_of(pid) == "pywren-worker" for pid in workers)
        assert {pid_of(f) for f in futures} <= workers


@needs_fork
def test_executor_does_not_wait_for_the_workers_and_calls_submitted_meanwhile_run(own_pool, monkeypatch):
    """The supervisor has the zygote fork the workers, while the client pickles and submits."""
    release = threading.Event()
    fork_workers = local._Zygote.fork_workers

    def held_fork_workers(zygote, count):
        release.wait(30)
        return fork_workers(zygote, count)

    monkeypatch.setattr(local._Zygote, "fork_workers", held_fork_workers)
    with pw.executor(own_pool, progress=False) as ex:
        pool = pool_of(ex)
        futures = ex.map(abs, [-1, -2, -3])
        assert not pool._spawned.is_set(), "executor() waited for the workers to be forked"
        release.set()
        assert ex.get_result(futures) == [1, 2, 3]
        assert len(pool.workers) == OWN_SIZE


def test_a_pool_that_cannot_start_workers_fails_its_calls_at_once(own_pool, monkeypatch):
    def no_processes(pool, count):
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(WorkerPool, "_spawn", no_processes)
    with pw.executor(own_pool, progress=False, retries=0) as ex:
        for _ in range(2):  # queued before the pool gave up, then submitted to the broken pool
            with pytest.raises(CallFailedError, match="cannot start worker processes: BlockingIOError"):
                ex.call_async(abs, -1).result(timeout=30)
    monkeypatch.undo()
    with pw.executor(own_pool, progress=False) as ex:  # a new executor tries again
        assert ex.call_async(abs, -4).result(timeout=30) == 4


@needs_fork
def test_a_worker_killed_mid_call_is_replaced_from_the_zygote_and_the_call_retried(pywren_config):
    with pw.executor(pywren_config, progress=False, retries=1) as ex:
        pool = pool_of(ex)
        before = {w.process.pid for w in pool.workers}
        future = ex.call_async(kill_self_on_first_attempt, 4)
        assert future.result(timeout=60) == 40
        assert future.stats["attempts"] == 2
        after = {w.process.pid for w in pool.workers}
        assert len(after - before) == 1, "the killed worker was not replaced"
        assert all(parent_of(pid) == pool.zygote.pid for pid in after)
        assert pid_of(future) in after


@needs_fork
@pytest.mark.parametrize(
    ("func", "arg", "message"),
    [
        (kill_self_on_first_attempt, 1, r"worker process \d+ was killed by signal 9 \(SIGKILL\) while running"),
        (exit_hard, 3, r"worker process \d+ exited with code 3 while running the call"),
    ],
)
def test_a_forked_workers_death_is_reported_with_its_exit_code(pywren_config, func, arg, message):
    with pw.executor(pywren_config, progress=False, retries=0) as ex:
        with pytest.raises(WorkerDiedError, match=message):
            ex.call_async(func, arg).result(timeout=60)
        assert ex.get_result(ex.map(abs, [-1, -2])) == [1, 2]  # the pool replaced the dead worker


@needs_fork
def test_the_zygote_and_its_workers_leave_when_the_pool_closes():
    pool = WorkerPool(2)
    zygote, workers = pool.zygote.pid, [w.process.pid for w in pool.workers]
    started = time.monotonic()
    pool.close()
    assert time.monotonic() - started < WorkerPool.CLOSE_GRACE + 1
    assert not alive(zygote)
    with pytest.raises(ChildProcessError):
        os.waitpid(zygote, os.WNOHANG)  # reaped: no zombie left
    deadline = time.monotonic() + 5  # the workers' parent has reaped them, or init does
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in workers)


@needs_fork
def test_a_hung_worker_is_killed_when_the_pool_closes():
    pool = WorkerPool(1)
    (w,) = pool.workers
    os.kill(w.process.pid, signal.SIGSTOP)  # never reads the request to leave
    started = time.monotonic()
    pool.close()
    assert WorkerPool.CLOSE_GRACE <= time.monotonic() - started < WorkerPool.CLOSE_GRACE + 2
    assert w.process.returncode == -signal.SIGKILL
    assert not alive(pool.zygote.pid)


@needs_fork
def test_without_its_zygote_the_pool_spawns_interpreters(own_pool, caplog):
    with pw.executor(own_pool, progress=False, retries=1) as ex, caplog.at_level(logging.WARNING, "pywren_core"):
        pool = pool_of(ex)
        zygote = pool.zygote.pid
        os.kill(zygote, signal.SIGKILL)
        future = ex.call_async(kill_self_on_first_attempt, 5)
        assert future.result(timeout=60) == 50
        assert pool.zygote is None
        spawned = [w for w in pool.workers if isinstance(w.process, subprocess.Popen)]
        assert spawned and all(parent_of(w.process.pid) == os.getpid() for w in spawned)
        assert ex.get_result(ex.map(abs, range(-10, 0))) == list(range(10, 0, -1))
    assert f"its zygote process {zygote} was killed by signal 9" in caplog.text


@needs_fork
def test_each_forked_worker_draws_its_own_random_numbers(own_pool):
    numpy_random = pytest.importorskip("numpy.random")
    numpy_random.random()  # the client's generator is in use before the pool forks its zygote
    with pw.executor(own_pool, progress=False) as ex:
        draws = ex.get_result(ex.map(random_draw, range(20)))
    assert len({pid for pid, _ in draws}) > 1
    assert len({value for _, value in draws}) == len(draws), "two workers drew the same numbers"


def test_spawn_starts_fresh_interpreters_as_children_of_the_client(pywren_config):
    config = {**pywren_config, "local": {**pywren_config["local"], "start": "spawn"}}
    with pw.executor(config, progress=False, retries=0) as ex:
        pool = pool_of(ex)
        assert pool.zygote is None and pool is not WorkerPool._shared.get(ex.session.handle.workers)
        assert all(isinstance(w.process, subprocess.Popen) for w in pool.workers)
        assert all(parent_of(w.process.pid) == os.getpid() for w in pool.workers)
        assert ex.get_result(ex.map(abs, [-3])) == [3]
        with pytest.raises(WorkerDiedError, match=r"worker process \d+ exited with code 3 while running the call"):
            ex.call_async(exit_hard, 3).result(timeout=60)


def test_an_unknown_start_method_is_a_config_error(pywren_config):
    with pytest.raises(ConfigError, match=r"local.start must be one of fork, spawn, got 'vfork'"):
        pw.executor(pywren_config, local={**pywren_config["local"], "start": "vfork"})


SCRIPT = """
import atexit, os, signal, sys, time
log = sys.argv[1]

def note(line):
    with open(log, "a") as f:
        f.write(line + "\\n")

note("imported")  # the script's top level: must run once, in the client
atexit.register(note, "atexit")  # the client's exit handler: never in a worker or the zygote
signal.signal(signal.SIGTERM, lambda *_: note("sigterm handler"))  # the client's, not a worker's
print("unflushed output", end="")  # stdout is a pipe: still in the client's buffer at the fork

import pywren_core as pw

def pid(x):
    time.sleep(0.01)
    return os.getpid()

config = {"backend": "local", "local": {"storage_dir": sys.argv[2], "workers": 2, "start": sys.argv[3]}}
with pw.executor(config, progress=False) as ex:
    pids = set(ex.get_result(ex.map(pid, range(20))))
    for worker in pids:  # replacements are made from the zygote
        os.kill(worker, signal.SIGTERM)
    time.sleep(0.5)
    again = set(ex.get_result(ex.map(pid, range(20))))
assert os.getpid() not in pids | again and not pids & again, (pids, again)
print("", len(pids | again))
"""


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_nothing_the_users_script_did_runs_again_in_a_worker(tmp_path, storage_dir, start):
    script, log = tmp_path / "script.py", tmp_path / "log"
    script.write_text(SCRIPT)
    run = subprocess.run(
        [sys.executable, str(script), str(log), storage_dir, start], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert log.read_text().splitlines() == ["imported", "atexit"]
    assert run.stdout.startswith("unflushed output ") and run.stdout.count("unflushed") == 1, run.stdout
    assert int(run.stdout.split()[-1]) >= 2


@needs_fork
def test_a_lock_held_by_another_thread_of_the_client_does_not_hold_up_the_workers(storage_dir):
    """The zygote may be forked from any thread, while another holds a lock the workers need."""
    code = textwrap.dedent(
        """
        import sys, threading, time
        import pywren_core as pw
        from pywren_core import worker

        held = threading.Event()

        def hold():
            with worker._state_lock:  # a lock the workers need, held by a thread the zygote lacks
                held.set()
                time.sleep(3)

        threading.Thread(target=hold, daemon=True).start()
        held.wait()
        results = []

        def run():
            config = {"backend": "local", "local": {"storage_dir": sys.argv[1], "workers": 2, "start": "fork"}}
            with pw.executor(config, progress=False) as ex:
                results.extend(ex.get_result(ex.map(abs, range(-5, 0)), timeout=20))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(30)
        print(results, flush=True)
        """
    )
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-c", code, storage_dir], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[5, 4, 3, 2, 1]"
    assert time.monotonic() - started < 30


PLUGIN_SCRIPT = """
import atexit, sys
import pywren_core as pw
from pywren_fixture import wrapper  # the "counting" wrapper plugin, installed with the tests

wrapper.PUTS["the client's"] += 5  # the client's module state, before the pool forks its zygote
log = sys.argv[1]

def in_a_worker(x):
    from pywren_fixture import wrapper

    atexit.register(lambda: open(log, "a").write("worker exit\\n"))  # run when the worker leaves
    return dict(wrapper.PUTS)

config = {"backend": "local", "local": {"storage_dir": sys.argv[2], "workers": 1, "start": "fork"}}
with pw.executor(config, progress=False) as ex:
    seen = ex.call_async(in_a_worker, 0).result()
assert "the client's" not in seen, seen
assert wrapper.PUTS["the client's"] == 5 and wrapper.PUTS["pywren.jobs"] >= 1, wrapper.PUTS
"""


@needs_fork
def test_a_forked_worker_loads_the_plugins_afresh_and_runs_its_own_exit_hooks(tmp_path, storage_dir):
    """As in a new interpreter: a wrapper plugin's module state is the worker's own, and what the
    worker registers with atexit runs when it leaves (the metrics example reports that way)."""
    log = tmp_path / "log"
    run = subprocess.run(
        [sys.executable, "-c", PLUGIN_SCRIPT, str(log), storage_dir], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert log.read_text() == "worker exit\n"
