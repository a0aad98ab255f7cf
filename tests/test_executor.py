"""The executor and futures on the local backend: APIs, failures, and nothing left behind."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import os
import signal
import sys
import threading
import time

import pytest

import pywren_core as pw
from pywren_core import executors
from pywren_core.backend import Pacer
from pywren_core.errors import CallTimeoutError, SerializationError, VersionMismatchError, WorkerDiedError


def kill_self_on_first_attempt(x):
    from pywren_core.worker import current_call

    if current_call().attempt == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 10


def kill_self(x):
    os.kill(os.getpid(), signal.SIGKILL)


def sleepy(seconds):
    time.sleep(seconds)
    return seconds


@pytest.fixture
def ex(pywren_config):
    executor = pw.executor(pywren_config, progress=False)
    yield executor
    executor.shutdown(wait=False)


def test_futures_are_real_concurrent_futures(ex):
    futures = ex.map(lambda x: x + 1, range(5))
    assert all(isinstance(f, concurrent.futures.Future) for f in futures)
    assert sorted(f.result() for f in concurrent.futures.as_completed(futures, timeout=60)) == [1, 2, 3, 4, 5]
    done, not_done = concurrent.futures.wait(futures, timeout=60)
    assert len(done) == 5 and not not_done


def test_asyncio_wrap_future(ex):
    async def main():
        return await asyncio.wrap_future(ex.call_async(lambda x: x * 3, 14))

    assert asyncio.run(main()) == 42


def test_wait_modes(ex):
    fast = ex.call_async(sleepy, 0)
    slow = ex.call_async(sleepy, 2)
    done, not_done = pw.wait([fast, slow], return_when=pw.ANY_COMPLETED, timeout=30)
    assert fast in done and slow in not_done
    done, not_done = pw.wait([fast, slow], return_when=pw.ALWAYS)
    assert fast in done and slow in not_done
    done, not_done = pw.wait([fast, slow], return_when=pw.ALL_COMPLETED, timeout=30)
    assert done == [fast, slow] and not_done == []
    with pytest.raises(ValueError, match="return_when"):
        pw.wait([fast], return_when="SOMETIMES")


def test_get_result_timeout_says_how_many_are_pending(ex):
    futures = [ex.call_async(sleepy, 3), ex.call_async(sleepy, 0)]
    with pytest.raises(TimeoutError, match="1 of 2 calls were not done"):
        ex.get_result(futures, timeout=1)


def test_get_result_without_futures_collects_everything_once(ex):
    ex.map(abs, [-1, -2])
    ex.call_async(abs, -3)
    assert ex.get_result() == [1, 2, 3]
    assert ex.get_result() == []


def test_get_result_of_one_future(ex):
    assert ex.get_result(ex.call_async(abs, -4)) == 4


def test_map_reduce(ex):
    reduce_future = ex.map_reduce(lambda x: x * x, range(10), sum)
    assert reduce_future.result(timeout=60) == sum(x * x for x in range(10))
    assert len(reduce_future.map_futures) == 10
    assert reduce_future.job_id != "reduce"


def test_map_reduce_reports_a_failed_map(ex):
    reduce_future = ex.map_reduce(lambda x: 1 / x, [1, 0], sum)
    with pytest.raises(ZeroDivisionError):
        reduce_future.result(timeout=60)


def test_context_manager_waits_and_cleans_up(pywren_config, storage_dir):
    with pw.executor(pywren_config, progress=False) as ex:
        futures = ex.map(sleepy, [0.2, 0.2, 0.2])
    assert all(f.done() for f in futures)
    deadline = time.time() + 10
    while time.time() < deadline and ex.session.list("pywren.jobs/"):
        time.sleep(0.05)
    assert ex.session.list("pywren.jobs/") == []
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.map(abs, [1])


def test_cleanup_off_keeps_objects(pywren_config):
    with pw.executor(pywren_config, progress=False, cleanup=False) as ex:
        ex.get_result(ex.map(abs, [1, 2]))
        keys = ex.session.list(f"pywren.jobs/{ex.executor_id}/")
        assert any(k.endswith("func.pickle") for k in keys) and sum("/status/" in k for k in keys) == 2
        assert ex.clean() == len(keys)
        assert ex.session.list(f"pywren.jobs/{ex.executor_id}/") == []


def test_shutdown_cancels_every_open_call(pywren_config):
    class SlowInvoke:
        @pw.hookimpl(wrapper=True)
        def pywren_invoke(self, session, payload):
            time.sleep(0.1)
            return (yield)

    ex = pw.executor(pywren_config, wrappers=[SlowInvoke()], progress=False, invoke_threads=1)
    futures = ex.map(abs, range(20))
    while not (futures[0].running() or futures[0].done()):  # a warm worker may finish it between two looks
        time.sleep(0.01)
    ex.shutdown(wait=True, cancel_futures=True)
    assert futures[0].cancelled() or futures[0].result() == 0
    cancelled = [f for f in futures if f.cancelled()]
    assert len(cancelled) >= 15 and all(f.status == "cancelled" for f in cancelled)
    assert all(f.done() for f in futures)


def test_sigkilled_worker_is_retried(ex):
    future = ex.call_async(kill_self_on_first_attempt, 4)
    assert future.result(timeout=60) == 40
    assert future.stats["attempts"] == 2


def test_sigkilled_worker_is_reported_when_out_of_retries(pywren_config):
    ex = pw.executor(pywren_config, progress=False, retries=0)
    future = ex.call_async(kill_self, 1)
    with pytest.raises(WorkerDiedError, match=r"killed by signal 9 \(SIGKILL\)"):
        future.result(timeout=60)
    assert ex.get_result(ex.map(abs, [-1])) == [1]  # the pool replaced the dead worker
    ex.shutdown()


def test_timeout_kills_the_call_and_frees_the_worker(pywren_config):
    ex = pw.executor(pywren_config, progress=False, retries=0, timeout=2, local={"workers": 1})
    started = time.monotonic()
    with pytest.raises(CallTimeoutError, match="past its timeout of 2.0 s"):
        ex.call_async(sleepy, 60).result(timeout=30)
    assert time.monotonic() - started < 20
    assert ex.call_async(sleepy, 0).result(timeout=30) == 0
    ex.shutdown()


def test_other_results_survive_a_failing_call(ex):
    futures = ex.map(lambda x: 1 / x, [1, 0, 2])
    pw.wait(futures, timeout=60)
    assert futures[0].result() == 1 and futures[2].result() == 0.5
    with pytest.raises(ZeroDivisionError):
        ex.get_result(futures)


def test_python_version_mismatch_is_refused(ex, monkeypatch):
    monkeypatch.setattr(executors, "python_version", lambda: "2.7")
    with pytest.raises(VersionMismatchError, match=r"client runs Python 2.7 .* this worker runs Python 3\.\d+"):
        ex.call_async(abs, 1).result(timeout=60)


def test_unpicklable_function_is_refused_before_invoking(ex):
    def generator_maker():
        yield 1

    gen = generator_maker()
    with pytest.raises(SerializationError, match="cannot be pickled"):
        ex.call_async(lambda x: next(gen), 1)


def test_unpicklable_result_is_a_clear_error(ex):
    import threading

    with pytest.raises(SerializationError, match="result of call 00000 cannot be pickled"):
        ex.call_async(lambda x: threading.Lock(), 1).result(timeout=60)


def test_progress_bar_counts_calls(pywren_config, capsys):
    ex = pw.executor(pywren_config, progress=True)
    futures = ex.map(abs, range(20))
    pw.wait(futures, progress=True, timeout=60)
    assert "20/20" in capsys.readouterr().err
    ex.shutdown()


def test_lost_call_is_detected_without_hanging(pywren_config):
    class DropInvocations:
        @pw.hookimpl(wrapper=True)
        def pywren_invoke(self, session, payload):
            if payload["calls"][0]["attempt"] == 0:
                payload["calls"] = []  # the platform accepts the invocation, and the call never runs
            return (yield)

    ex = pw.executor(pywren_config, wrappers=[DropInvocations()], progress=False, timeout=0.5, lost_grace=0.5)
    future = ex.call_async(abs, -9)
    assert future.result(timeout=30) == 9
    assert future.stats["attempts"] == 2
    ex.shutdown()


CRASHING_CLIENT = """
import os, sys, time
import pywren_core as pw
from pywren_core.testing import sleep_then_return

ex = pw.executor({"backend": "local", "local": {"storage_dir": sys.argv[1]}}, progress=False, timeout=5)
futures = ex.map(sleep_then_return, [0.5] * 6)
futures[0].result()  # the workers are up and have calls in hand
print(f"{ex.executor_id}/{futures[0].job_id} {time.time()}", flush=True)
os._exit(3)  # the client dies with its calls running
"""


def test_a_job_is_collected_after_its_client_crashed(pywren_config, storage_dir, tmp_path):
    import subprocess
    import sys

    script = tmp_path / "client.py"
    script.write_text(CRASHING_CLIENT)
    crashed = subprocess.run([sys.executable, str(script), storage_dir], capture_output=True, text=True, timeout=120)
    assert crashed.returncode == 3, crashed.stderr
    job, crashed_at = crashed.stdout.split()

    from pywren_core.cli import main

    assert main(["status", job]) == 0
    ex = pw.executor(pywren_config, progress=False, lost_grace=2)
    futures = ex.attach(job)
    pw.wait(futures, timeout=60)
    results = [f.exception() or f.result() for f in futures]
    assert all(r == 0.5 or isinstance(r, CallTimeoutError) for r in results), results
    assert results.count(0.5) >= 3, results  # the one seen before the crash, and those in workers' hands
    assert any(f.stats["end"] > float(crashed_at) for f in futures if f.exception() is None)
    ex.shutdown()


def straggle_on_first_attempt(x):
    from pywren_core.worker import current_call

    if x == 7 and current_call().attempt == 0:
        time.sleep(6)
    time.sleep(0.05)
    return x * 2


def test_speculative_backup_beats_a_straggler(pywren_config):
    ex = pw.executor(pywren_config, progress=False, speculative=True, speculative_factor=3)
    started = time.monotonic()
    futures = ex.map(straggle_on_first_attempt, range(12))
    assert ex.get_result(futures, timeout=60) == [x * 2 for x in range(12)]
    assert time.monotonic() - started < 5.5  # the backup answered before the straggler woke up
    assert futures[7].stats["speculated"] and futures[7].stats["attempts"] == 2
    # Calls queued behind the straggler on its worker may be backed up too; the quick ones are not.
    assert not any(f.stats.get("speculated") for f in futures[:4])
    ex.shutdown(wait=False)


def test_speculation_is_off_by_default(ex):
    futures = ex.map(straggle_on_first_attempt, [7, 1, 2, 3])
    assert ex.get_result(futures, timeout=60) == [14, 2, 4, 6]
    assert futures[0].stats["attempts"] == 1


def test_pacer_spaces_turns_across_threads():
    """The invoker's pacing (and any backend's that reuses Pacer): never faster than the rate."""
    pacer = Pacer(50.0)  # one turn per 20 ms
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        finished = list(pool.map(lambda _: (pacer.wait(), time.monotonic())[1], range(8)))
    assert max(finished) - start >= 7 * 0.02
    unpaced = Pacer(None)
    start = time.monotonic()
    for _ in range(1000):
        unpaced.wait()
    assert time.monotonic() - start < 1.0, "no rate means no waiting"


def test_remote_traceback_names_the_users_file_and_line(ex, tmp_path, monkeypatch):
    (tmp_path / "users_code_for_traceback.py").write_text("def boom(x):\n    y = x + 1\n    raise ValueError(y)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import users_code_for_traceback

    with pytest.raises(ValueError) as info:
        ex.call_async(users_code_for_traceback.boom, 1).result(timeout=60)
    remote = str(info.value.__cause__)
    assert f'File "{tmp_path / "users_code_for_traceback.py"}", line 3, in boom' in remote
    assert "raise ValueError(y)" in remote and "<dynamic-code>" not in remote


def test_progress_bar_shows_in_a_notebook_by_default(monkeypatch):
    import io
    import types

    from pywren_core import futures

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    assert futures.progress_bar(10, None) is None
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    bar = futures.progress_bar(10, None)
    assert bar is not None
    bar.close()
    assert futures.progress_bar(10, False) is None


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("progress", [True, False])
def test_a_large_map_shows_progress_while_it_submits(pywren_config, monkeypatch, progress):
    """A 100,000-call map takes seconds to prepare before any call is waited on: a "submitting" bar
    shows meanwhile, when progress is on (here as if on a terminal; the bar appears after
    SUBMIT_BAR_DELAY seconds, made 0 here)."""
    from tqdm.std import tqdm

    monkeypatch.setattr(executors, "SUBMIT_BAR_DELAY", 0.0)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    ex = pw.executor(pywren_config, progress=progress)
    futures = ex.map(abs, range(2500))
    assert len(futures) == 2500
    shown = terminal.getvalue()
    if progress:
        assert "submitting:" in shown and "/2500 [" in shown  # tqdm shows at most every 0.1 s
    else:
        assert shown == ""
    with pytest.raises(SerializationError, match="call 1500"):
        ex.map(lambda x: x, [*range(1500), threading.Lock()])
    assert not tqdm._instances, "the bar of a submission that failed half way is closed"
    ex.shutdown(wait=False, cancel_futures=True)


def test_plain_arguments_take_the_fast_pickler_and_the_rest_still_travel():
    """Built-in data is pickled by the C pickler (as cloudpickle would write it); anything else,
    a function inside a list say, still goes through cloudpickle, by value where it must."""
    import pickle

    from pywren_core import serialize

    plain = ((1, 2.5, "s", b"b", None, True, [1, {"k": (3, frozenset({4}))}]), {"x": 1})
    assert serialize.dumps(plain) == pickle.dumps(plain, protocol=serialize.cloudpickle.DEFAULT_PROTOCOL)
    assert serialize.loads(serialize.dumps(plain)) == plain
    shaped = ([lambda y: y + 1],)
    assert serialize.loads(serialize.dumps(shaped))[0][0](1) == 2  # a lambda: by value, not the C pickler
    many = (list(range(10_000)),)
    assert serialize.loads(serialize.dumps(many)) == many
