"""The worker harness: how every platform handler runs an invoke payload.

A handler (a Lambda handler, a Cloud Run function, an Azure function) calls :func:`serve` with the
payload and the time the platform will stop the invocation. The harness runs the calls in a warm
worker process of its own, a fresh interpreter reused for later payloads, so that a call which
crashes its interpreter (``os._exit``, a segfault, the out-of-memory killer) or overruns its time
takes only that process down: the harness reports the calls as ``died`` or ``timeout`` at once and
starts a new process, while the handler's own process, and every other payload it is serving, carries
on. The client learns of a crash within seconds instead of counting the call as lost much later.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from pywren_core import plugins, worker

#: Seconds kept back before the platform's deadline, to write the statuses of calls still running.
STATUS_MARGIN = 3.0
#: Seconds past the deadline the worker gets to write its own timeout status before its process is killed.
KILL_GRACE = 1.0
#: Worker processes at most, busy or idle (each one is an interpreter with the plugin loaded). A
#: payload that finds all of them busy waits for one; a handler serving more at once may raise it.
MAX_WORKERS = 16
#: Worker processes starting at once. A burst of payloads on a cold instance waits for a few new
#: processes, each soon free for the next payload, instead of starting one per payload on every core.
MAX_STARTING = max(2, os.cpu_count() or 1)


def deadline_for(payload: dict[str, Any], started: float, platform_deadline: float | None = None) -> float | None:
    """When the calls of ``payload`` must be over (a ``time.time()`` value), or None for no limit.

    Its timeout for each of its calls, counted from ``started``, but never later than
    STATUS_MARGIN before ``platform_deadline``, so that there is time to report a call still running.
    """
    deadline = None
    if payload.get("timeout"):
        deadline = started + float(payload["timeout"]) * max(1, len(payload["calls"]))
    if platform_deadline is not None:
        cap = platform_deadline - STATUS_MARGIN
        deadline = cap if deadline is None else min(deadline, cap)
    return deadline


def serve(
    payload: dict[str, Any], *, platform_deadline: float | None = None, delivery: int | None = None
) -> list[dict[str, Any]]:
    """Run every call of ``payload`` in a warm worker process; return ``call_id``, ``attempt`` and
    ``kind`` for each call once all are over.

    ``platform_deadline`` (a ``time.time()`` value) is when the platform will stop this invocation;
    ``delivery`` is the platform's count of deliveries of it (a queue's dequeue count). Safe to
    call from many threads at once: each payload gets a process of its own.

    If the process dies, or is still running KILL_GRACE after the deadline (it is then killed), or
    no process is ready before the deadline, each call without a status of its own is reported as
    ``died``, ``timeout`` or ``error`` and summarised so (one that wrote its own is ``reported``). Raises only
    when even that report cannot be written (storage is unreachable), so the platform's own retry
    can take over.
    """
    try:
        child = _pool.acquire(payload["backend"], give_up=deadline_for(payload, time.time(), platform_deadline))
    except _Unavailable as exc:
        kind, detail = exc.args
    else:
        # The calls' time counts from here: waiting for a worker process is not the calls' doing.
        kind, detail = child.run(payload, deadline_for(payload, time.time(), platform_deadline), delivery)
        _pool.release(child, reuse=kind in ("done", "failed"))
    if kind == "done":
        return detail
    if kind == "failed":
        kind, detail = "error", f"the worker runtime failed:\n{detail}"
    worker.log(f"job {payload.get('executor_id')}/{payload.get('job_id')}: {detail}")
    session = worker.session_for({**payload, "faults": None})  # the platform reports, not a (faulty) worker
    # A call that wrote its own status before the process went down is summarised as "reported".
    return [
        {"call_id": c["call_id"], "attempt": c["attempt"],
         "kind": kind if worker.report_failure(session, payload, c, kind, detail) else "reported"}
        for c in payload["calls"]
    ]


def prestart(backend: str) -> None:
    """Start a worker process now, loading ``backend``'s plugin, unless one is idle already.

    For a handler's import (Lambda's init phase, say): the first payload then finds it warm.
    """
    _pool.prestart(backend)


def _seconds_until(moment: float | None) -> float | None:
    return None if moment is None else max(0.0, moment - time.time())


class _Unavailable(Exception):
    """No worker process could take the payload: ``args`` are the kind to report and why."""


class _Child:
    """A worker process: a fresh interpreter with the parent's ``sys.path``, in a session of its own.

    The payload (with the job's secret) travels over a socket, never on the command line. The
    process exits as soon as that socket closes, so it never outlives its parent, and whatever a
    crashed call left in its temporary directory goes when the process does.
    """

    def __init__(self, preload: str):
        ours, theirs = socket.socketpair()
        self.scratch = tempfile.mkdtemp(prefix="pywren-worker-")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, sys.path)), "TMPDIR": self.scratch}
        code = f"from pywren_core.harness import child_main; child_main({theirs.fileno()}, {preload!r})"
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-u", "-c", code],
                pass_fds=(theirs.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: killing it also kills what the call started
            )
        except BaseException:
            ours.close()
            shutil.rmtree(self.scratch, ignore_errors=True)
            raise
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        self.ready = False

    def wait_ready(self, give_up: float | None) -> bool:
        """Whether the process has started (imported the runtime and the plugin), waiting until ``give_up``."""
        if not self.ready:
            with contextlib.suppress(EOFError, OSError):
                self.ready = self.conn.poll(_seconds_until(give_up)) and self.conn.recv() == "ready"
        return self.ready

    def run(self, payload: dict[str, Any], deadline: float | None, delivery: int | None) -> tuple[str, Any]:
        """``("done", summary)``, ``("failed", traceback)``, ``("died", message)`` or ``("timeout", message)``."""
        try:
            self.conn.send((payload, deadline, delivery))
            if self.conn.poll(_seconds_until(None if deadline is None else deadline + KILL_GRACE)):
                return self.conn.recv()
        except (EOFError, OSError):
            return "died", f"{self.ending()} while running the call"
        return "timeout", (
            f"worker process {self.process.pid} was still running the call {KILL_GRACE} s after its deadline "
            f"(its timeout of {payload.get('timeout')} s, or the platform's time limit), so it was killed"
        )

    def ending(self) -> str:
        """How the process ended, once its socket closed: its exit code or the signal that killed it."""
        try:
            code = self.process.wait(5)
        except subprocess.TimeoutExpired:
            return f"worker process {self.process.pid} closed its connection"
        if code >= 0:
            return f"worker process {self.process.pid} exited with code {code}"
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown"
        return f"worker process {self.process.pid} was killed by signal {-code} ({name})"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        """Kill the process and everything it started, and remove its temporary directory."""
        self.conn.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        shutil.rmtree(self.scratch, ignore_errors=True)


class _Pool:
    """At most MAX_WORKERS worker processes; idle ones are kept, most recently used first, and every
    one is ended at interpreter exit."""

    def __init__(self) -> None:
        self._changed = threading.Condition()  # a process came free or ended, or one finished starting
        self._idle: list[_Child] = []
        self._children: set[_Child] = set()
        self._count = 0  # processes alive or being started
        self._starting = 0

    def acquire(self, backend: str, give_up: float | None) -> _Child:
        """A ready worker process: an idle one, else a new one when there is room, else the first to come free.

        Raises _Unavailable when none is ready by ``give_up``.
        """
        child = None
        with self._changed:
            while child is None:
                if self._idle:
                    child = self._idle.pop()
                    if not child.alive:  # died while idle (the out-of-memory killer, say)
                        self._drop(child)
                        child.close()
                        child = None
                elif self._count < MAX_WORKERS and self._starting < MAX_STARTING:
                    self._count += 1
                    self._starting += 1
                    break
                elif not self._changed.wait(_seconds_until(give_up)):
                    raise _Unavailable("timeout", "no worker process was free to run the call before its deadline")
        if child is not None:
            ready = child.wait_ready(give_up)
        else:
            try:
                child = _Child(backend)
            except BaseException:
                with self._changed:
                    self._count -= 1
                    self._starting -= 1
                    self._changed.notify()
                raise
            with self._changed:
                self._children.add(child)
            ready = child.wait_ready(give_up)
            with self._changed:
                self._starting -= 1
                self._changed.notify()
        if ready and child.alive:
            return child
        alive = child.alive
        self.release(child, reuse=alive)  # still starting: a later payload may have it
        if alive:
            raise _Unavailable("timeout", "no worker process was ready to run the call before its deadline")
        raise _Unavailable("error", f"{child.ending()} before it was ready (its output is in the log)")

    def release(self, child: _Child, reuse: bool = True) -> None:
        """Keep ``child`` for the next payload, or end it (``reuse`` False: it overran or died)."""
        with self._changed:
            keep = reuse and child.alive
            if keep:
                self._idle.append(child)
            else:
                self._drop(child)
            self._changed.notify()
        if not keep:
            child.close()

    def _drop(self, child: _Child) -> None:
        """Make room for another process in place of ``child`` (the lock is held)."""
        if child in self._children:
            self._children.discard(child)
            self._count -= 1

    def prestart(self, backend: str) -> None:
        with self._changed:
            if self._idle or self._count >= MAX_WORKERS:
                return
            child = _Child(backend)  # not waited for: it is ready, or nearly, when the first payload comes
            self._count += 1
            self._children.add(child)
            self._idle.append(child)

    def close(self) -> None:
        with self._changed:
            children, self._children, self._idle, self._count = list(self._children), set(), [], 0
        for child in children:
            child.close()

    def forget(self) -> None:
        """In a forked copy of this process: the processes are the parent's; let go of them untouched."""
        for child in self._children:
            child.conn.close()  # this copy of the socket only: the parent's stays open
        self._changed = threading.Condition()
        self._children, self._idle, self._count, self._starting = set(), [], 0, 0


_pool = _Pool()
atexit.register(_pool.close)
os.register_at_fork(after_in_child=_pool.forget)


# --- the worker process -------------------------------------------------------------------------


def child_main(fd: int, preload: str) -> None:
    """A worker process: run each payload sent over ``fd`` with the worker runtime, answer with its outcome."""
    conn = Connection(fd)
    os.set_inheritable(fd, False)
    # A process the call forks must not hold the socket open: the parent would not see this one die.
    os.register_at_fork(after_in_child=conn.close)
    payloads: queue.SimpleQueue[tuple[dict[str, Any], float | None, int | None]] = queue.SimpleQueue()
    threading.Thread(target=_receive, args=(conn, payloads), name="pywren-harness", daemon=True).start()
    with contextlib.suppress(Exception):  # a broken plugin: the first payload reports it
        plugins.load_backend(preload)
    conn.send("ready")
    while True:
        _idle.set()
        payload, deadline, delivery = payloads.get()
        _idle.clear()
        try:
            statuses = worker.handle(payload, deadline=deadline, isolate_cwd=True, delivery=delivery)
            outcome: tuple[str, Any] = ("done", [_summary(s) for s in statuses])
        except BaseException:
            outcome = ("failed", traceback.format_exc())
        conn.send(outcome)


#: Set while a worker process waits for its next payload: then its sessions may close as it exits.
_idle = threading.Event()


def _receive(conn: Connection, payloads: queue.SimpleQueue) -> None:
    """Hand payloads to the main thread; exit the moment the parent is gone, even mid-call (the
    worker sessions are closed first when no call is running)."""
    while True:
        try:
            payloads.put(conn.recv())
        except (EOFError, OSError):
            if _idle.is_set() and payloads.empty():
                worker.close_sessions()
            os._exit(0)


def _summary(status: dict[str, Any]) -> dict[str, Any]:
    return {"call_id": status["call_id"], "attempt": status["attempt"], "kind": status["kind"]}
