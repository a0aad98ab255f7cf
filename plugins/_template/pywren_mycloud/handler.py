"""The worker side: the function MyCloud runs for each invocation (``BackendInfo.handler``).

Keep it a thin wrapper around the shared runtime, which loads the call, runs it in a working
directory of its own and writes the result and status back through this plugin's storage hooks.
"""

from __future__ import annotations

import time
from typing import Any

from pywren_core import worker


def handler(payload: dict[str, Any], seconds_left: float) -> list[dict[str, Any]]:
    # TODO: take your platform's handler signature: decode the payload it was invoked with and
    # find out how long the platform lets this invocation run. If the platform runs several
    # invocations as threads of one process, pass isolate_cwd=False.
    return worker.handle(payload, deadline=time.time() + seconds_left)
