"""The core's conformance kit, run against the MyCloud backend."""

import pytest
from pywren_core.testing import ExecutorConformance, StorageConformance


@pytest.fixture
def pywren_config():
    # TODO: point the backend at an emulator the tests start on 127.0.0.1 (a session-scoped
    # fixture), or at a test account, and return the config that selects it.
    return {"backend": "mycloud", "mycloud": {"bucket": "pywren-tests"}}


class TestStorage(StorageConformance):
    pass


class TestExecutor(ExecutorConformance):
    pass
