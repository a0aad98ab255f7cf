"""The fault suite on the local backend, and the faults config itself."""

from __future__ import annotations

import pytest

import pywren_core as pw
from pywren_core.errors import ConfigError
from pywren_core.faults import CrashedWorker, FaultConfig, FaultInjector
from pywren_core.testing import FaultConformance


class TestLocalFaults(FaultConformance):
    pass


def test_unknown_fault_is_a_config_error(pywren_config):
    with pytest.raises(ConfigError, match="faults has no setting 'drop_invocation'"):
        pw.executor(pywren_config, faults={"drop_invocation": 0.1})
    with pytest.raises(ConfigError, match="must be a fraction between 0 and 1"):
        pw.executor(pywren_config, faults={"storage_errors": 2})


def test_faults_are_off_by_default(pywren_config):
    ex = pw.executor(pywren_config, progress=False)
    assert ex.faults is None
    ex.shutdown()


def crashed_attempts(injector: FaultInjector, keys: list[str]) -> set[str]:
    crashed = set()
    for key in keys:
        put = injector.pywren_storage_put(None, key, b"{}")
        try:
            next(put)
        except CrashedWorker:
            crashed.add(key)
    return crashed


def test_seeded_crashes_hit_the_same_attempts_in_any_worker_and_order():
    """Every worker process starts from the seed: a retry must not inherit its first attempt's fate."""
    keys = [f"pywren.jobs/e/j/status/0/{call:03d}.{attempt}.json" for call in range(400) for attempt in (1, 2)]
    config = FaultConfig(crash_workers=0.1, seed=7)
    crashed = crashed_attempts(FaultInjector(config, "worker"), keys)
    assert crashed == crashed_attempts(FaultInjector(config, "worker"), keys[::-1])
    first = {k.rsplit(".", 2)[0] for k in crashed if k.endswith(".1.json")}
    second = {k.rsplit(".", 2)[0] for k in crashed if k.endswith(".2.json")}
    assert 20 < len(first) < 60 and 20 < len(second) < 60, "about one attempt in ten crashes"
    assert len(first & second) < 10, "a call's attempts crash independently"
    assert not crashed_attempts(FaultInjector(config, "client"), keys), "only workers crash"
