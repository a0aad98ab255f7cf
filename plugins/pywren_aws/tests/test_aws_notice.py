"""Completion notices: the handler posts each finished call to the client's own SQS queue (moto's),
and the client hands it to the core as a "done" event instead of waiting for a listing."""

from __future__ import annotations

import json
import time
from typing import Any

import boto3
import pytest
import pywren_core as pw
from pywren_core.backend import done_notice
from pywren_core.testing import LocalServer, sleep_then_return, square

from pywren_aws import notice

from conftest import REGION


class StatusListings:
    """Counts the client's listings of status objects."""

    def __init__(self) -> None:
        self.listings = 0

    @pw.hookimpl(wrapper=True)
    def pywren_storage_list(self, prefix: str) -> Any:
        if "/status/" in prefix:
            self.listings += 1
        return (yield)


@pytest.fixture
def sqs(moto: LocalServer) -> Any:
    return boto3.client("sqs", endpoint_url=moto.url, region_name=REGION)


def notice_queues(sqs: Any) -> list[str]:
    return sqs.list_queues(QueueNamePrefix=notice.QUEUE_PREFIX).get("QueueUrls", [])


def wait_for_queue(ex: pw.Executor) -> str:
    """The executor's notice queue, once its session has created it (in the background)."""
    give_up = time.monotonic() + 30
    while ex.session.handle.notices.url is None:
        assert time.monotonic() < give_up, "the notice queue was not created within 30 s"
        time.sleep(0.05)
    return ex.session.handle.notices.url


def test_finished_calls_are_noticed_through_the_queue_not_a_listing(pywren_config: dict[str, Any],
                                                                    lambda_server: LocalServer, sqs: Any) -> None:
    """With the listing held at 30 s, calls ending one after another still come back within the
    test's 25 s: each was noticed from its message, and no listing beyond the job's first ran."""
    counter = StatusListings()
    with pw.executor(pywren_config, wrappers=[counter], progress=False) as ex:
        url = wait_for_queue(ex)
        assert url in notice_queues(sqs)
        monitor = ex._engine.monitor
        monitor.min_interval = monitor.max_interval = 30.0
        delays = [0.1 * i for i in range(8)]
        futures = ex.map(sleep_then_return, delays)
        assert ex.get_result(futures, timeout=25) == delays
    assert counter.listings <= 2  # the job's first round, maybe one more: none for the notices
    assert url not in notice_queues(sqs)  # the session deleted its queue as it closed


def test_a_forged_notice_settles_nothing(pywren_config: dict[str, Any], lambda_server: LocalServer,
                                         sqs: Any) -> None:
    """Anyone who can write to the queue can say a call is done; the core then reads the call's
    status, finds none (or none this job signed), and the call still ends with its own result."""
    with pw.executor(pywren_config, progress=False) as ex:
        url = wait_for_queue(ex)
        futures = ex.map(sleep_then_return, [2.0, 2.0])
        forged = [{"call_id": f.call_id, "attempt": 0} for f in futures]
        sqs.send_message(QueueUrl=url, MessageBody=done_notice(
            {"executor_id": futures[0].executor_id, "job_id": futures[0].job_id}, forged))
        sqs.send_message(QueueUrl=url, MessageBody="not a notice")
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"executor_id": 1, "job_id": [], "calls": "x"}))
        assert ex.get_result(futures, timeout=60) == [2.0, 2.0]
        assert all(f.attempt == 0 for f in futures)


def test_notices_can_be_turned_off(pywren_config: dict[str, Any], lambda_server: LocalServer, sqs: Any) -> None:
    before = set(notice_queues(sqs))
    config = {**pywren_config, "aws": {**pywren_config["aws"], "notices": False}}
    with pw.executor(config, progress=False) as ex:
        assert ex.session.handle.notices is None
        assert ex.get_result(ex.map(square, range(3)), timeout=60) == [0, 1, 4]
        assert set(notice_queues(sqs)) == before

