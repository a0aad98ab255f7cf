"""A call that crashes its interpreter under the HTTP trigger: reported as died within seconds by the
core's worker harness, while the instance's other calls carry on. (The fault kit covers the queue
trigger, and the retry of a crashed first attempt.)"""

from __future__ import annotations

import time
from typing import Any

import pytest

import pywren_core as pw
from pywren_core.errors import WorkerDiedError
from pywren_core.testing import crash_or_wait


def test_a_crash_under_the_http_trigger_spares_a_bystander(http_section: dict[str, Any]) -> None:
    with pw.executor({"backend": "azure", "azure": http_section}, progress=False, retries=0) as ex:
        started = time.monotonic()
        crashed, bystander = ex.map(crash_or_wait, ["crash", "wait"])
        with pytest.raises(WorkerDiedError, match=r"worker process \d+ exited with code 1 while running the call"):
            crashed.result(timeout=10)
        assert time.monotonic() - started < 10
        assert bystander.result(timeout=60) == "wait"
