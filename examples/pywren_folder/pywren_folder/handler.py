"""The worker side: what runs in each invocation's process (``BackendInfo.handler``).

A cloud plugin ships the same thin wrapper as its Lambda handler or HTTP function: take the
payload, say when the platform will stop the invocation, and hand both to the shared runtime.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

from pywren_core import worker

#: Time the runtime gets, past the deadline, to write the timed-out call's status.
STOP_GRACE = 5.0


def main(argv: list[str] | None = None) -> None:
    (path,) = sys.argv[1:] if argv is None else argv
    with open(path) as f:
        payload = json.load(f)
    os.unlink(path)
    # This platform's time limit: the payload's per-call timeout for each call it carries.
    deadline = time.time() + payload["timeout"] * len(payload["calls"])
    runner = threading.Thread(target=worker.handle, args=(payload,), kwargs={"deadline": deadline}, daemon=True)
    runner.start()
    # Like a cloud platform, end the invocation at its limit even if the user's function has not
    # returned; by then the runtime has reported the call as timed out.
    runner.join(deadline - time.time() + STOP_GRACE)


if __name__ == "__main__":
    main()
