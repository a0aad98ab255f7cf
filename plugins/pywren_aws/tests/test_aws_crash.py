"""Calls that crash their interpreter, through the real handler under awslambdaric: reported as died
within seconds by the core's worker harness, while the runtime process carries on."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
import pywren_core as pw
from pywren_core.errors import WorkerDiedError
from pywren_core.testing import LocalServer

import aws_services


def exit_hard(code: int) -> None:
    os._exit(code)


def crash_on_first_attempt(x: int) -> int:
    from pywren_core.worker import current_call

    if current_call().attempt == 0:
        os._exit(1)
    return x * 10


def test_a_crash_is_reported_as_died_within_seconds(pywren_config: dict[str, Any],
                                                    lambda_server: LocalServer) -> None:
    exited_before = aws_services.control(lambda_server, "stats")["exited"]
    with pw.executor(pywren_config, progress=False, retries=0) as ex:
        started = time.monotonic()
        future = ex.call_async(exit_hard, 1)
        with pytest.raises(WorkerDiedError, match=r"worker process \d+ exited with code 1 while running the call"):
            future.result(timeout=10)
        assert time.monotonic() - started < 10
    assert aws_services.control(lambda_server, "stats")["exited"] == exited_before  # no runtime process died


def test_a_crash_on_the_first_attempt_is_retried(pywren_config: dict[str, Any], lambda_server: LocalServer) -> None:
    with pw.executor(pywren_config, progress=False, retries=1) as ex:
        future = ex.call_async(crash_on_first_attempt, 4)
        assert future.result(timeout=60) == 40
    assert future.stats["attempts"] == 2
