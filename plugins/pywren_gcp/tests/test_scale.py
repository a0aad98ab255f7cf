"""A 10,000-call map: it completes with a bounded number of client threads, sockets and requests.

Each call is an HTTP invocation, a status write by the worker and a status read by the client: about
three minutes on two cores shared with other test suites, most of it fake-gcs-server. The job's
objects go to a fake-gcs-server of this module's own, dropped whole at the end, instead of 10,000 more
deletes that test nothing here and a bucket that slows the other tests down. Large enough that a
thread or a socket per call would show, small enough to run every time.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pywren_core as pw
from pywren_core.testing import square

from conftest import gcp_config
from servers import start_fake_gcs

CALLS = 10_000
MAX_CONNECTIONS = 32


class _Peaks:
    """Samples the client process's thread and open-file counts while the map runs."""

    def __init__(self) -> None:
        self.threads = self.fds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.threads = max(self.threads, threading.active_count())
            self.fds = max(self.fds, len(os.listdir("/proc/self/fd")))

    def __enter__(self) -> _Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def scale_storage_url(log_dir: Path) -> Iterator[str]:
    """A fake-gcs-server for this test alone: the worker writes wherever the payload's config says."""
    service, url = start_fake_gcs(log_dir / "scale")
    yield url
    service.stop()


def test_ten_thousand_calls_without_a_thread_or_socket_each(scale_storage_url: str, function_url: str) -> None:
    config = gcp_config(scale_storage_url, function_url, max_connections=MAX_CONNECTIONS)
    with pw.executor(config, progress=False, cleanup=False) as ex, _Peaks() as peaks:
        started = time.monotonic()
        futures = ex.map(square, range(CALLS))
        results = ex.get_result(futures, timeout=900)
        elapsed = time.monotonic() - started
        stats = ex.session.handle.dispatcher().stats
    assert results == [x * x for x in range(CALLS)]
    print(f"\n{CALLS} calls in {elapsed:.1f} s: {stats.requests} requests, largest batch {stats.largest_batch}, "
          f"peak {stats.peak_open} open; client peaks: {peaks.threads} threads, {peaks.fds} open files")
    assert stats.invocations >= CALLS
    assert stats.peak_open <= MAX_CONNECTIONS
    assert stats.requests < CALLS  # invocations were packed once the connections were all in use
    assert peaks.threads < 200, "the client grew threads with the number of calls"
    assert peaks.fds < 500, "the client grew sockets with the number of calls"
