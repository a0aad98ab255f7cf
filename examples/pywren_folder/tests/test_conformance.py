"""The core's conformance kit, run against the folder backend exactly as a third party runs it."""

# --8<-- [start:conformance]
import pytest
from pywren_core.testing import BenchConformance, ExecutorConformance, StorageConformance


@pytest.fixture
def pywren_config(tmp_path):
    """The one fixture the kit needs: a config selecting this backend, on a fresh folder."""
    return {"backend": "folder", "folder": {"root": str(tmp_path / "root")}}


class TestStorage(StorageConformance):
    pass


class TestExecutor(ExecutorConformance):
    pass


class TestBench(BenchConformance):
    pass


# --8<-- [end:conformance]
