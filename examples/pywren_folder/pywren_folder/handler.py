"""The worker side: what runs in each invocation's process (``BackendInfo.handler``).

A cloud plugin ships the same thin wrapper as its Lambda handler or HTTP function: take the
payload, say when the platform will stop the invocation, and hand both to the core's worker harness.
"""

from __future__ import annotations

import json
import os
import sys
import time

from pywren_core import harness

from pywren_folder.plugin import pywren_backend_info


def main(argv: list[str] | None = None) -> None:
    (path,) = sys.argv[1:] if argv is None else argv
    with open(path) as f:
        payload = json.load(f)
    os.unlink(path)
    # This platform lets an invocation run for the maximum runtime the plugin declares.
    platform_deadline = time.time() + pywren_backend_info().limits.max_runtime
    harness.serve(payload, platform_deadline=platform_deadline)


if __name__ == "__main__":
    main()
