"""The core's conformance kit, run against the MyCloud backend."""

import pytest
from pywren_core.testing import (
    BenchConformance,
    DataConformance,
    ExecutorConformance,
    FaultConformance,
    StorageConformance,
)


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


class TestData(DataConformance):
    """Maps over objects in storage by URL, through the optional ``pywren_data_*`` hooks; delete this
    class if your backend declares no ``data_schemes``. Size ``many_objects``, ``largest_object_bytes``
    and ``edge_piece_sizes`` (about 250 calls in one map at 7 bytes) for your emulator."""

    @pytest.fixture
    def pywren_data_url(self):
        # TODO: a URL prefix in a bucket that exists on the emulator (create the bucket where you
        # start it); each test writes its objects under it and deletes them.
        return "mycloud://pywren-test-data/"
