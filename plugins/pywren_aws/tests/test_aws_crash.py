"""A call that crashes its interpreter, through the real handler under awslambdaric, takes only the
harness's worker process down: the Lambda runtime process carries on. (The fault kit covers the
report within seconds and the retry.)"""

from __future__ import annotations

import time
from typing import Any

import pytest
import pywren_core as pw
from pywren_core.errors import WorkerDiedError
from pywren_core.testing import LocalServer, crash_or_wait

import aws_services


def test_a_crash_leaves_the_runtime_process_running(pywren_config: dict[str, Any],
                                                   lambda_server: LocalServer) -> None:
    exited_before = aws_services.control(lambda_server, "stats")["exited"]
    with pw.executor(pywren_config, progress=False, retries=0) as ex:
        started = time.monotonic()
        future = ex.call_async(crash_or_wait, "crash")
        with pytest.raises(WorkerDiedError, match=r"worker process \d+ exited with code 1 while running the call"):
            future.result(timeout=10)
        assert time.monotonic() - started < 10
    assert aws_services.control(lambda_server, "stats")["exited"] == exited_before  # no runtime process died
