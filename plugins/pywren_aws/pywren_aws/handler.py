"""The Lambda function's entry point: ``pywren_aws.handler.lambda_handler``.

A thin wrapper around the core's worker harness (:func:`pywren_core.harness.serve`), given the time
Lambda will stop the invocation (``context.get_remaining_time_in_millis()``). The harness runs the
calls in a warm worker process of its own and reports a call that overruns or crashes that process
within seconds; this runtime process carries on and serves the next invocation.
"""

from __future__ import annotations

import time
from typing import Any

from pywren_core import harness

# During Lambda's init phase, not the first call: a worker process with this plugin (and boto3) loaded.
harness.prestart("aws")


def lambda_handler(event: dict[str, Any], context: Any) -> list[dict[str, Any]]:
    """Run the calls in ``event`` (an invoke payload) and return a summary of their statuses."""
    platform_deadline = time.time() + context.get_remaining_time_in_millis() / 1000
    return harness.serve(event, platform_deadline=platform_deadline)
