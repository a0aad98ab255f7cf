"""The Lambda function's entry point: ``pywren_aws.handler.lambda_handler``.

A thin wrapper around the core's worker harness (:func:`pywren_core.harness.serve`), given the time
Lambda will stop the invocation (``context.get_remaining_time_in_millis()``). The harness runs the
calls in a warm worker process of its own and reports a call that overruns or crashes that process
within seconds; this runtime process carries on and serves the next invocation. Once the calls'
statuses are written it tells the client so through the client's notice queue, when the
invocation names one (:mod:`pywren_aws.notice`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from pywren_core import harness
from pywren_core.backend import done_notice

from pywren_aws import notice

log = logging.getLogger("pywren_aws")
#: The SQS client that sends completion notices, made on this runtime process's first notice.
_sqs: Any = None
_sqs_lock = threading.Lock()

# During Lambda's init phase, not the first call: a worker process with this plugin (and boto3) loaded.
harness.prestart("aws")


def lambda_handler(event: dict[str, Any], context: Any) -> list[dict[str, Any]]:
    """Run the calls in ``event`` (an invoke payload) and return a summary of their statuses."""
    platform_deadline = time.time() + context.get_remaining_time_in_millis() / 1000
    queue_url = event.get(notice.PAYLOAD_KEY)
    summary = harness.serve(event, platform_deadline=platform_deadline)
    if queue_url and summary:  # a fan-out invoker runs no call of its own
        send_notice(queue_url, event, summary)
    return summary


def send_notice(queue_url: str, payload: Mapping[str, Any], summary: Iterable[Mapping[str, Any]]) -> None:
    """Tell the client that ``summary``'s calls have their statuses written.

    Only to a pywren notice queue, whatever the invocation says. Best effort: a failure is logged
    (ids only) and the client's listing finds the statuses.
    """
    global _sqs
    if not urlsplit(queue_url).path.rpartition("/")[2].startswith(notice.QUEUE_PREFIX):
        log.warning("pywren: not sending a completion notice to %r: not a pywren notice queue", queue_url)
        return
    try:
        with _sqs_lock:
            if _sqs is None:
                _sqs = boto3.client("sqs", config=Config(retries={"mode": "standard", "total_max_attempts": 2},
                                                         connect_timeout=5, read_timeout=10))
        _sqs.send_message(QueueUrl=queue_url, MessageBody=done_notice(payload, summary))
    except Exception as exc:
        log.warning("pywren: could not send the completion notice of job %s/%s (the client will list instead): %s",
                    payload.get("executor_id"), payload.get("job_id"), type(exc).__name__)
