"""What the folder backend promises beyond the conformance kit."""

import os

import pytest
import pywren_core as pw
from pywren_core.errors import StorageError, WorkerDiedError
from pywren_core.testing import open_session


def process_id(_: object) -> int:
    return os.getpid()


def test_each_invocation_is_a_fresh_process(tmp_path):
    with pw.executor(backend="folder", folder={"root": str(tmp_path)}, progress=False) as ex:
        pids = ex.get_result(ex.map(process_id, range(3)))
    assert len(set(pids)) == 3 and os.getpid() not in pids


def test_invocations_beyond_the_process_limit_are_throttled_then_run(tmp_path):
    config = {"root": str(tmp_path), "processes": 1}
    with pw.executor(backend="folder", folder=config, progress=False) as ex:
        futures = ex.map(process_id, range(3))
        assert len(set(ex.get_result(futures))) == 3
    assert sum(f.stats["invoke_retries"] for f in futures) > 0


def test_keys_stay_inside_the_folder(tmp_path):
    storage = open_session({"backend": "folder", "folder": {"root": str(tmp_path / "root")}})
    for key in ("../outside", "..", ".", "a/../../b"):
        storage.put(key, b"x")
        assert storage.get(key) == b"x"
    assert sorted(storage.list("")) == sorted(["../outside", "..", ".", "a/../../b"])
    assert sorted(os.listdir(tmp_path)) == ["root"]
    with pytest.raises(StorageError):
        storage.put("", b"x")


def exit_hard(code: int) -> None:
    os._exit(code)


def test_a_call_that_crashes_its_interpreter_fails_at_once(tmp_path):
    """The handler's harness reports the crash; the client does not wait for the call to count as lost."""
    with pw.executor(backend="folder", folder={"root": str(tmp_path)}, progress=False, retries=0) as ex:
        with pytest.raises(WorkerDiedError, match="exited with code 3"):
            ex.call_async(exit_hard, 3).result(timeout=10)
