"""Fan-out through the queue trigger: invokers run in the test host's function app and put the
calls' messages on the app's own call queue, as a function app does inside Azure."""

from __future__ import annotations

from typing import Any

import pytest

import pywren_core as pw
from pywren_core.errors import ConfigError
from pywren_core.testing import FanOutConformance


class TestFanOut(FanOutConformance):
    @pytest.fixture
    def pywren_config(self, queue_section: dict[str, Any]) -> dict[str, Any]:
        return {"backend": "azure", "azure": queue_section}


def test_the_http_trigger_does_not_fan_out(http_section: dict[str, Any]) -> None:
    """The app holds no function key to POST with: asking for fan-out there is a clear error."""
    with pytest.raises(ConfigError, match="cannot fan out"):
        pw.executor({"backend": "azure", "azure": http_section}, fanout=1)
    with pw.executor({"backend": "azure", "azure": http_section}, progress=False) as ex:
        assert ex._engine.invoker.fanout is None
