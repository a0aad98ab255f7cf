"""Fault injection, as a wrapper plugin around the storage and invoke hooks of any backend.

Off by default. A ``faults:`` section in the config turns it on, for users who want to see how
their job copes, and for the fault suite (``pywren_core.testing.FaultConformance``)::

    faults:
      drop_invocations: 0.1    # fraction of invocations accepted by the platform that never run
      throttle_for: 2.0        # seconds, from the first invocation, of 429-style throttling
      delay: 0.01              # seconds added to every storage operation and invocation
      storage_errors: 0.05     # fraction of storage operations failing with a retryable error
      crash_workers: 0.05      # fraction of calls whose worker dies after running, before reporting
      corrupt_reads: 0.01      # fraction of object reads returning a flipped byte
      ambiguous_invokes: 0.05  # fraction of invocations accepted, whose answer is then lost
      forge_statuses: 0.05     # fraction of calls for which a forger writes a false status
      seed: 1                  # make the choices repeatable

The section travels in invoke payloads (it holds no secrets), so worker-side faults happen on the
worker. Wrappers cannot swap a hook's arguments, so each fault is made by raising before or after
the call, by emptying the payload's call list, by changing what a read returns, or (forged
statuses) by writing through the client's session as someone with write access to storage would.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping
from typing import Any

import attrs

from pywren_core.errors import AmbiguousInvokeError, ConfigError, ThrottledError
from pywren_core.hookspecs import hookimpl


def _fraction(instance: Any, attribute: attrs.Attribute, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"faults.{attribute.name} must be a fraction between 0 and 1, got {value}")


@attrs.frozen(kw_only=True)
class FaultConfig:
    drop_invocations: float = attrs.field(default=0.0, validator=_fraction)
    throttle_for: float = 0.0
    delay: float = 0.0
    storage_errors: float = attrs.field(default=0.0, validator=_fraction)
    crash_workers: float = attrs.field(default=0.0, validator=_fraction)
    corrupt_reads: float = attrs.field(default=0.0, validator=_fraction)
    ambiguous_invokes: float = attrs.field(default=0.0, validator=_fraction)
    forge_statuses: float = attrs.field(default=0.0, validator=_fraction)
    seed: int | None = None

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any], where: str = "config") -> FaultConfig:
        known = {f.name for f in attrs.fields(cls)}
        unknown = set(section) - known
        if unknown:
            raise ConfigError(
                f"{where}: faults has no setting {sorted(unknown)[0]!r}; its settings: {', '.join(sorted(known))}"
            )
        try:
            return cls(**section)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None


class CrashedWorker(BaseException):
    """Raised by the fault injector to make a worker die before it reports (not an Exception, so
    nothing in the worker runtime turns it into a status)."""


class FaultInjector:
    """The wrapper plugin: registered on one session, client- or worker-side."""

    def __init__(self, config: FaultConfig, role: str):
        self.config = config
        self.role = role
        self._random = random.Random(config.seed)
        self._lock = threading.Lock()
        self._throttle_until: float | None = None
        #: The client's session, for forged writes (set by the executor once the session is open).
        self.storage: Any = None
        #: What was injected, by kind: tests and users read it to see what their job survived.
        self.injected: dict[str, int] = {}

    def _chance(self, fraction: float, kind: str, subject: str | None = None) -> bool:
        """Whether to inject a fault of ``kind`` now.

        With a seed, a ``subject`` (one call attempt, say) gets the same answer in any process and
        any order. Worker processes each start from the seed, so without a subject every fresh
        worker would repeat the same sequence, and a retry landing at the same place in it would
        fail again: the attempts of one call would not be independent.
        """
        with self._lock:
            if subject is not None and self.config.seed is not None:
                draw = random.Random(f"{self.config.seed}/{kind}/{subject}").random()
            else:
                draw = self._random.random()
            hit = fraction > 0 and draw < fraction
            if hit:
                self.injected[kind] = self.injected.get(kind, 0) + 1
        return hit

    def _storage_fault(self) -> None:
        if self.config.delay:
            time.sleep(self.config.delay)
        if self._chance(self.config.storage_errors, "storage_errors"):
            raise ThrottledError("injected fault: storage throttled")

    @hookimpl(wrapper=True)
    def pywren_storage_put(self, session: Any, key: str, data: bytes) -> Any:
        self._storage_fault()
        if (
            self.role == "worker"
            and "/status/" in key
            and self._chance(self.config.crash_workers, "crash_workers", subject=key.rpartition("/")[2])
        ):
            raise CrashedWorker("injected fault: the worker died before writing its status")
        return (yield)

    @hookimpl(wrapper=True)
    def pywren_storage_get(self, session: Any, key: str, byte_range: tuple[int, int] | None) -> Any:
        self._storage_fault()
        data = yield
        if data and self._chance(self.config.corrupt_reads, "corrupt_reads"):
            position = self._random.randrange(len(data))
            data = data[:position] + bytes([data[position] ^ 0xFF]) + data[position + 1 :]
        return data

    @hookimpl(wrapper=True)
    def pywren_storage_list(self, session: Any, prefix: str) -> Any:
        self._storage_fault()
        return (yield)

    @hookimpl(wrapper=True)
    def pywren_storage_delete(self, session: Any, keys: Any) -> Any:
        self._storage_fault()
        return (yield)

    @hookimpl(wrapper=True)
    def pywren_invoke(self, session: Any, payload: Any) -> Any:
        if self.config.delay:
            time.sleep(self.config.delay)
        if self.config.throttle_for:
            with self._lock:
                self._throttle_until = self._throttle_until or time.monotonic() + self.config.throttle_for
                throttled = time.monotonic() < self._throttle_until
                if throttled:
                    self.injected["throttled_invocations"] = self.injected.get("throttled_invocations", 0) + 1
            if throttled:
                raise ThrottledError("injected fault: too many requests", retry_after=0.05)
        if self._chance(self.config.drop_invocations, "drop_invocations"):
            payload["calls"] = []  # accepted by the "platform", and nothing ever runs
        if self.config.forge_statuses and self.storage is not None:
            for call in payload["calls"]:  # before the worker runs: its real status comes after
                if self._chance(self.config.forge_statuses, "forge_statuses", subject=call["call_id"]):
                    self._forge(payload, call)
        result = yield
        if self._chance(self.config.ambiguous_invokes, "ambiguous_invokes"):
            raise AmbiguousInvokeError("injected fault: the connection dropped after the invocation was accepted")
        return result

    def _forge(self, payload: Any, call: Any) -> None:
        """What a forger with write access to storage could write: a status saying the call died
        (to make it run again) or raised (to feed the client an error of their choosing)."""
        from pywren_core.protocol import JobKeys, dump_status, new_secret

        keys = JobKeys.from_payload(payload)
        kind = "died" if int(call["call_id"]) % 2 else "exception"
        status = {"protocol": payload["protocol"], "call_id": call["call_id"], "attempt": call["attempt"],
                  "kind": kind, "error": {"type": "ValueError", "message": "forged", "traceback": ""}}
        self.storage.put(keys.status(call["call_id"], call["attempt"]), dump_status(new_secret(), keys, status))
