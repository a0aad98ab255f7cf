"""Fan-out on the Lambda stand-in: invokers run the real handler and invoke the function they run in,
through the stand-in's Invoke API, as a function invokes Lambda from inside AWS."""

from __future__ import annotations

from typing import Any

import pytest
from pywren_core.testing import FanOutConformance, LocalServer

import aws_services


@pytest.fixture
def pywren_config(pywren_config: dict[str, Any], lambda_server: LocalServer) -> dict[str, Any]:
    return pywren_config


class TestFanOut(FanOutConformance):
    pass


def test_the_stand_in_accepted_each_call_once_and_each_invoker(pywren_config: dict[str, Any],
                                                               lambda_server: LocalServer) -> None:
    """What Lambda saw of a fanned-out map: 4 invokers from the client, then 40 calls from them."""
    import pywren_core as pw
    from pywren_core.testing import square

    aws_services.control(lambda_server, "reset")
    with pw.executor(pywren_config, fanout=1, fanout_batch=10, progress=False) as ex:
        assert ex.get_result(ex.map(square, range(40)), timeout=180) == [x * x for x in range(40)]
    assert aws_services.control(lambda_server, "stats")["accepted"] == 4 + 40
