"""End to end: the client enqueues or POSTs, the test host runs the plugin's real FunctionApp, the
worker writes back to Azurite. The core's executor conformance kit with both triggers, then bursts."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from azure.storage.queue import QueueClient
from conftest import HOST_CONCURRENCY, QUEUE, Azurite, FunctionsHost

import pywren_core as pw
from pywren_core.errors import AmbiguousInvokeError, InvokeError, ThrottledError
from pywren_core.testing import (
    BenchConformance,
    ExecutorConformance,
    FaultConformance,
    HangUpServer,
    free_port,
    open_session,
)

BURST = 1000


def noop(x: int) -> int:
    return x


class QueueTrigger:
    """The conformance classes below run through the queue trigger."""

    @pytest.fixture
    def pywren_config(self, queue_section: dict[str, Any]) -> dict[str, Any]:
        return {"backend": "azure", "azure": queue_section}


class TestQueueTrigger(QueueTrigger, ExecutorConformance):
    map_size = 200


class TestQueueTriggerFaults(QueueTrigger, FaultConformance):
    """The core's fault suite through the queue trigger, the test host and Azurite."""

    fault_calls = 200


class TestQueueTriggerBench(QueueTrigger, BenchConformance):
    """``pywren bench``'s standard suite, small, through the queue trigger and Azurite."""


class TestHttpTrigger(ExecutorConformance):
    map_size = 200

    @pytest.fixture
    def pywren_config(self, http_section: dict[str, Any]) -> dict[str, Any]:
        return {"backend": "azure", "azure": http_section}


@pytest.mark.parametrize("section", ["queue_section", "http_section"])
def test_burst_completes_with_nothing_lost(section: str, request: pytest.FixtureRequest,
                                           functions_host: FunctionsHost, azurite: Azurite) -> None:
    """1,000 calls at once against a host that runs at most HOST_CONCURRENCY invocations."""
    config = {"backend": "azure", "azure": request.getfixturevalue(section)}
    queue = QueueClient.from_connection_string(azurite.connection_string, QUEUE)
    # Messages of earlier tests' crashed workers stay invisible until their visibility timeout.
    before = queue.get_queue_properties().approximate_message_count
    with pw.executor(config, progress=False, retries=0) as ex:
        futures = ex.map(noop, range(BURST))
        assert ex.get_result(futures, timeout=600) == list(range(BURST))
    assert all(f.status == "success" and f.attempt == 0 for f in futures)
    status = functions_host.status()
    assert status["max_running"] <= HOST_CONCURRENCY
    # The host deletes a message after its function returned, a moment after the status was written.
    give_up = time.monotonic() + 60
    while queue.get_queue_properties().approximate_message_count > before and time.monotonic() < give_up:
        time.sleep(0.5)
    assert queue.get_queue_properties().approximate_message_count <= before


def test_http_trigger_requires_the_function_key(functions_host: FunctionsHost) -> None:
    body = b'{"calls": []}'
    assert requests.post(functions_host.function_url, data=body, timeout=30).status_code == 401
    wrong = {"x-functions-key": "not-the-key"}
    assert requests.post(functions_host.function_url, data=body, headers=wrong, timeout=30).status_code == 401
    right = {"x-functions-key": functions_host.key}
    assert requests.post(functions_host.function_url, data=b"not json", headers=right, timeout=30).status_code == 400


def test_wrong_function_key_fails_the_call_without_showing_the_key(http_section: dict[str, Any]) -> None:
    wrong = "WRONG-FUNCTION-KEY-1234"
    with pw.executor({"backend": "azure", "azure": {**http_section, "function_key": wrong}}, progress=False) as ex:
        future = ex.call_async(noop, 1)
        with pytest.raises(InvokeError, match="function key") as info:
            future.result(timeout=60)
    assert wrong not in str(info.value)


def test_a_refused_connection_fails_the_call_at_once_naming_the_url(http_section: dict[str, Any]) -> None:
    """Nothing listens at the function URL: an invoke error that says where, not a wait for throttling."""
    url = f"http://127.0.0.1:{free_port()}/api/pywren"
    started = time.monotonic()
    with pw.executor({"backend": "azure", "azure": {**http_section, "function_url": url}}, progress=False) as ex:
        with pytest.raises(InvokeError, match=re.escape(url)) as info:
            ex.call_async(noop, 1).result(timeout=60)
    assert time.monotonic() - started < 10
    assert not isinstance(info.value, ThrottledError) and "refused" in str(info.value)


@pytest.fixture
def hang_up_url() -> Iterator[str]:
    """A function URL whose server reads each request whole, then closes the connection unanswered."""
    with HangUpServer() as server:
        yield f"{server.url}/api/pywren"


def test_an_answer_lost_after_sending_is_an_ambiguous_invoke(http_section: dict[str, Any], hang_up_url: str) -> None:
    """The request went out, so the call may run: the core decides whether to send again, not the plugin."""
    session = open_session({"backend": "azure", "azure": {**http_section, "function_url": hang_up_url}})
    try:
        with pytest.raises(AmbiguousInvokeError, match=re.escape(hang_up_url)):
            session.invoke({"executor_id": "e", "job_id": "j", "calls": []})
    finally:
        session.close()
