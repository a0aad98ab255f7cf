"""Calls that crash their interpreter, through the test host running the real FunctionApp: reported as
died within seconds by the core's worker harness, while the instance's other calls carry on."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

import pywren_core as pw
from pywren_core.errors import WorkerDiedError


def crash_or_wait(what: str) -> str:
    if what == "crash":
        time.sleep(0.5)
        os._exit(1)
    time.sleep(3)
    return what


def crash_on_first_attempt(x: int) -> int:
    from pywren_core.worker import current_call

    if current_call().attempt == 0:
        os._exit(1)
    return x * 10


@pytest.mark.parametrize("section", ["queue_section", "http_section"])
def test_a_crash_is_reported_as_died_and_spares_a_bystander(section: str, request: pytest.FixtureRequest) -> None:
    config = {"backend": "azure", "azure": request.getfixturevalue(section)}
    with pw.executor(config, progress=False, retries=0) as ex:
        started = time.monotonic()
        crashed, bystander = ex.map(crash_or_wait, ["crash", "wait"])
        with pytest.raises(WorkerDiedError, match=r"worker process \d+ exited with code 1 while running the call"):
            crashed.result(timeout=10)
        assert time.monotonic() - started < 10
        assert bystander.result(timeout=60) == "wait"


def test_a_crash_on_the_first_attempt_is_retried(queue_section: dict[str, Any]) -> None:
    with pw.executor({"backend": "azure", "azure": queue_section}, progress=False, retries=1) as ex:
        future = ex.call_async(crash_on_first_attempt, 4)
        assert future.result(timeout=60) == 40
    assert future.stats["attempts"] == 2
