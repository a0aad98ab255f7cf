"""The worker side: the function MyCloud runs for each invocation (``BackendInfo.handler``).

Keep it a thin wrapper around the core's worker harness. It runs the calls in a worker process of
its own (which loads the call, runs it in a working directory of its own and writes the result and
status back through this plugin's storage hooks), and reports a call that crashes that process or
overruns its time as ``died`` or ``timeout`` within seconds.
"""

from __future__ import annotations

import time
from typing import Any

from pywren_core import harness


def handler(payload: dict[str, Any], seconds_left: float) -> list[dict[str, Any]]:
    # TODO: take your platform's handler signature: decode the payload it was invoked with and
    # find out how long the platform lets this invocation run. If the platform runs several
    # invocations at once in one process, call serve from each of their threads: every payload
    # gets a worker process of its own.
    return harness.serve(payload, platform_deadline=time.time() + seconds_left)
