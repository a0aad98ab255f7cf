"""End to end: the core's executor conformance kit, with the plugin invoking the real handler served by
functions-framework (from the deploy package) and storage in fake-gcs-server."""

from __future__ import annotations

import time
from typing import Any

import pywren_core as pw
from pywren_core.testing import BenchConformance, ExecutorConformance, FaultConformance, sleep_then_return

from conftest import gcp_config


class TestGcpExecutor(ExecutorConformance):
    map_size = 200
    short_timeout = 3.0
    lost_grace = 10.0


def test_calls_packed_into_one_request_run_concurrently(storage_url: str, function_url: str) -> None:
    """With one connection allowed, waiting invocations share a request and the handler runs them side
    by side: 16 one-second calls finish in about two seconds, not sixteen."""
    config = gcp_config(storage_url, function_url, max_connections=1)
    with pw.executor(config, progress=False) as ex:
        started = time.monotonic()
        assert ex.get_result(ex.map(sleep_then_return, [1.0] * 16)) == [1.0] * 16
        elapsed = time.monotonic() - started
        stats = ex.session.handle.dispatcher().stats
    assert stats.peak_open == 1 and stats.requests < 16 and stats.largest_batch > 1
    assert stats.events == 0  # each payload's line was read and matched to it
    assert elapsed < 10, f"16 packed one-second calls took {elapsed:.1f} s: they did not run concurrently"


def test_each_call_is_its_own_request_below_the_connection_bound(pywren_config: dict[str, Any]) -> None:
    with pw.executor(pywren_config, progress=False) as ex:
        assert ex.get_result(ex.map(sleep_then_return, [0.5] * 8)) == [0.5] * 8
        stats = ex.session.handle.dispatcher().stats
    assert stats.requests == stats.invocations == stats.accepted == 8 and stats.largest_batch == 1
    assert stats.events == 0


def test_calls_waiting_too_long_for_a_connection_are_withdrawn_then_reinvoked(storage_url: str,
                                                                           function_url: str) -> None:
    """A call that waits past twice accept_timeout for a free connection is withdrawn (never sent) and
    reported as throttled; the core invokes it again later. Each call reaches the function once."""
    config = gcp_config(storage_url, function_url, max_connections=1, calls_per_request=1, accept_timeout=1)
    with pw.executor(config, progress=False) as ex:
        futures = ex.map(sleep_then_return, [3.0, 3.0, 3.0])
        assert ex.get_result(futures, timeout=120) == [3.0, 3.0, 3.0]
        stats = ex.session.handle.dispatcher().stats
    assert stats.invocations == stats.requests == 3
    assert sum(f.stats["invoke_retries"] for f in futures) > 0


class TestGcpFaults(FaultConformance):
    """The core's fault suite through the plugin, functions-framework and fake-gcs-server."""

    fault_calls = 200
    lost_grace = 10.0


class TestGcpBench(BenchConformance):
    """``pywren bench``'s standard suite, small, through functions-framework and fake-gcs-server."""
