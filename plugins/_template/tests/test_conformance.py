"""The core's conformance kit, run against the MyCloud backend."""

import pytest
from pywren_core.testing import BenchConformance, ExecutorConformance, FaultConformance, StorageConformance


@pytest.fixture
def pywren_config():
    # TODO: point the backend at an emulator the tests start on 127.0.0.1 (a session-scoped
    # fixture), or at a test account, and return the config that selects it.
    return {"backend": "mycloud", "mycloud": {"bucket": "pywren-tests"}}


class TestStorage(StorageConformance):
    pass


class TestExecutor(ExecutorConformance):
    pass


class TestFaults(FaultConformance):
    """Faults injected into your backend's hooks: dropped, throttled, ambiguous invocations, storage
    errors, crashing workers, forged statuses, Ctrl-C. Size ``fault_calls`` so a map of that many
    calls takes well under a minute on your emulator."""


class TestBench(BenchConformance):
    """``pywren bench``'s standard suite with small parameters."""
