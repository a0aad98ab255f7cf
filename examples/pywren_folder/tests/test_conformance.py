"""The core's conformance kit, run against the folder backend exactly as a third party runs it."""

# --8<-- [start:conformance]
import pytest
from pywren_core.testing import BenchConformance, DataConformance, ExecutorConformance, StorageConformance


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


# --8<-- [start:data]
class TestData(DataConformance):
    """Maps over folder:// URLs, which needs a second fixture: a URL prefix in a bucket that exists."""

    # Sized down: each call here is a new Python process, `processes` (one per CPU) at a time, and
    # an invocation refused as throttled for 60 s fails. The kit's 7-byte pieces of the edge/
    # objects make one map of about 250 calls, which takes longer than that on 2 CPUs; 31-byte
    # pieces (about 60 calls) still cut most lines, and test_every_line_lands_in_exactly_one_piece
    # runs pieces of 1, 3 and 10 bytes.
    edge_piece_sizes = (31, 100)

    @pytest.fixture
    def pywren_data_url(self, tmp_path):
        (tmp_path / "root" / "buckets" / "kit").mkdir(parents=True)  # a bucket is a sub-folder of data_dir
        return "folder://kit/"


# --8<-- [end:data]
