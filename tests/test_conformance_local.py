"""The conformance kit, run against the embedded local backend."""

from pywren_core.testing import ExecutorConformance, StorageConformance


class TestLocalStorage(StorageConformance):
    pass


class TestLocalExecutor(ExecutorConformance):
    lost_grace = 5.0
