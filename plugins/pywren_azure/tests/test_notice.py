"""Completion notices: the function app posts each finished call to the client's own storage queue
(Azurite's), and the client hands it to the core as a "done" event instead of waiting for a listing."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from azure.storage.queue import QueueServiceClient
from conftest import Azurite
from pywren_azure import notice

import pywren_core as pw
from pywren_core.backend import done_notice
from pywren_core.testing import sleep_then_return, square


class StatusListings:
    """Counts the client's listings of status objects."""

    def __init__(self) -> None:
        self.listings = 0

    @pw.hookimpl(wrapper=True)
    def pywren_storage_list(self, prefix: str) -> Any:
        if "/status/" in prefix:
            self.listings += 1
        return (yield)


@pytest.fixture(params=["queue", "http"])
def pywren_config(request: pytest.FixtureRequest, queue_section: dict[str, Any],
                  http_section: dict[str, Any]) -> dict[str, Any]:
    return {"backend": "azure", "azure": queue_section if request.param == "queue" else http_section}


def notice_queues(azurite: Azurite) -> set[str]:
    service = QueueServiceClient.from_connection_string(azurite.connection_string)
    return {q.name for q in service.list_queues(name_starts_with=notice.QUEUE_PREFIX)}


def wait_for_queue(ex: pw.Executor) -> str:
    """The executor's notice queue, once its session has created it (in the background)."""
    give_up = time.monotonic() + 30
    while ex.session.handle.notices.target() is None:
        assert time.monotonic() < give_up, "the notice queue was not created within 30 s"
        time.sleep(0.05)
    return ex.session.handle.notices.target()


def test_finished_calls_are_noticed_through_the_queue_not_a_listing(pywren_config: dict[str, Any],
                                                                    azurite: Azurite) -> None:
    """With the listing held at 30 s, calls ending one after another still come back within the
    test's 25 s: each was noticed from its message, and no listing beyond the job's first ran."""
    counter = StatusListings()
    with pw.executor(pywren_config, wrappers=[counter], progress=False) as ex:
        name = wait_for_queue(ex)
        assert name in notice_queues(azurite)
        monitor = ex._engine.monitor
        monitor.min_interval = monitor.max_interval = 30.0
        delays = [0.1 * i for i in range(8)]
        futures = ex.map(sleep_then_return, delays)
        assert ex.get_result(futures, timeout=25) == delays
    assert counter.listings <= 2  # the job's first round, maybe one more: none for the notices
    assert name not in notice_queues(azurite)  # the session deleted its queue as it closed


def test_a_forged_notice_settles_nothing(queue_section: dict[str, Any], azurite: Azurite) -> None:
    """Anyone with the account key can say a call is done; the core then reads the call's status,
    finds none (or none this job signed), and the call still ends with its own result."""
    with pw.executor({"backend": "azure", "azure": queue_section}, progress=False) as ex:
        name = wait_for_queue(ex)
        queue = QueueServiceClient.from_connection_string(azurite.connection_string).get_queue_client(name)
        futures = ex.map(sleep_then_return, [2.0, 2.0])
        forged = [{"call_id": f.call_id, "attempt": 0} for f in futures]
        queue.send_message(done_notice({"executor_id": futures[0].executor_id, "job_id": futures[0].job_id},
                                          forged))
        queue.send_message("not a notice")
        queue.send_message(json.dumps({"executor_id": 1, "job_id": [], "calls": "x"}))
        assert ex.get_result(futures, timeout=60) == [2.0, 2.0]
        assert all(f.attempt == 0 for f in futures)


def test_notices_can_be_turned_off(queue_section: dict[str, Any], azurite: Azurite) -> None:
    before = notice_queues(azurite)
    with pw.executor({"backend": "azure", "azure": {**queue_section, "notices": False}}, progress=False) as ex:
        assert ex.session.handle.notices is None
        assert ex.get_result(ex.map(square, range(3)), timeout=60) == [0, 1, 4]
        assert notice_queues(azurite) == before


def test_the_function_app_sends_only_to_notice_queues(azurite: Azurite, caplog: pytest.LogCaptureFixture) -> None:
    """An invocation naming some other queue (the call queue, say) gets no message there."""
    payload = {"executor_id": "e1", "job_id": "j1"}
    notice.send({}, "pywren-calls", payload, [{"call_id": "00001", "attempt": 0}])
    assert "not a pywren notice queue" in caplog.text

