"""What the folder backend promises beyond the conformance kit."""

import os

import pytest
import pywren_core as pw
from pywren_core.errors import NotFoundError, StorageError, WorkerDiedError
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


def test_data_urls_are_files_below_data_dir_and_stay_there(tmp_path):
    """folder://BUCKET/KEY is the file data_dir/BUCKET/KEY: files already there are served as they are."""
    data = tmp_path / "data"
    (data / "logs" / "2026").mkdir(parents=True)
    (data / "logs" / "2026" / "01.txt").write_bytes(b"already here\n")
    storage = pw.storage({"backend": "folder", "folder": {"root": str(tmp_path / "root"), "data_dir": str(data)}})
    try:
        storage.put("folder://logs/2026/02.txt", b"new\n")
        assert (data / "logs" / "2026" / "02.txt").read_bytes() == b"new\n"
        assert [(o.url, o.size) for o in sorted(storage.list("folder://logs/2026/"), key=lambda o: o.url)] == [
            ("folder://logs/2026/01.txt", 13),
            ("folder://logs/2026/02.txt", 4),
        ]
        assert storage.get("folder://logs/2026/01.txt", (8, 12)) == b"here"
        for url in ("folder://logs/../outside", "folder://logs/a//b", "folder://logs/./c", "folder://logs/d/"):
            with pytest.raises(StorageError, match="path segment"):
                storage.put(url, b"x")
        with pytest.raises(NotFoundError):
            storage.put("folder://../outside", b"x")
        with pytest.raises(NotFoundError):  # a put never creates a bucket
            storage.put("folder://no-such-bucket/x", b"x")
        with pytest.raises(NotFoundError):  # a folder is not an object
            storage.get("folder://logs/2026")
    finally:
        storage.session.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "root"]
    assert not (tmp_path / "root" / "buckets").exists(), "data_dir was given: no ROOT/buckets"


def exit_hard(code: int) -> None:
    os._exit(code)


def test_a_call_that_crashes_its_interpreter_fails_at_once(tmp_path):
    """The handler's harness reports the crash; the client does not wait for the call to count as lost."""
    with pw.executor(backend="folder", folder={"root": str(tmp_path)}, progress=False, retries=0) as ex:
        with pytest.raises(WorkerDiedError, match="exited with code 3"):
            ex.call_async(exit_hard, 3).result(timeout=10)
