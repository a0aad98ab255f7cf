"""Where the local backend keeps jobs, what a storage directory it cannot use says, and a full one."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import pywren_core as pw
from pywren_core.backends import local
from pywren_core.errors import ConfigError


@pytest.fixture
def runtime_dir():
    """The test's private ``$XDG_RUNTIME_DIR`` (conftest.py), as systemd gives each logged-in user."""
    return Path(os.environ["XDG_RUNTIME_DIR"])


def test_default_storage_is_a_private_directory_in_the_runtime_dir(runtime_dir):
    ex = pw.executor(progress=False, cleanup=False)
    assert ex.section["storage_dir"] == str(runtime_dir / "pywren")
    assert ex.get_result(ex.map(abs, [-1, -2])) == [1, 2]
    storage = runtime_dir / "pywren"
    assert stat.S_IMODE(storage.stat().st_mode) == 0o700
    assert any(p.name.endswith(".json") for p in storage.rglob("*")), "the job's status records are there"


@pytest.mark.parametrize("plant", ["open to others", "symlink"])
def test_a_directory_others_could_enter_is_never_the_default(runtime_dir, tmp_path, plant):
    candidate = runtime_dir / "pywren"
    if plant == "open to others":
        candidate.mkdir(mode=0o700)
        candidate.chmod(0o777)
    else:
        target = tmp_path / "elsewhere"
        target.mkdir(mode=0o700)
        candidate.symlink_to(target)
    assert local.default_storage_dir() != str(candidate)
    assert candidate.is_symlink() == (plant == "symlink")
    assert plant == "symlink" or stat.S_IMODE(candidate.stat().st_mode) == 0o777, "left as it was found"


def test_a_memory_file_system_without_room_is_not_used(runtime_dir, monkeypatch):
    monkeypatch.setattr(local, "MEMORY_STORAGE_MIN_FREE", 2**62)
    assert local.default_storage_dir() != str(runtime_dir / "pywren")
    assert not (runtime_dir / "pywren").exists()


def test_the_default_sticks_once_made(runtime_dir, monkeypatch):
    first = local.default_storage_dir()
    monkeypatch.setattr(local, "MEMORY_STORAGE_MIN_FREE", 2**62)  # the memory file system filled up since
    assert local.default_storage_dir() == first == str(runtime_dir / "pywren")


FULL_DISK = """
import os, resource, signal, sys
from pywren_core.backends import local
from pywren_core.errors import StorageError
session = local.pywren_connect({"storage_dir": sys.argv[1], "workers": 1}, "worker", None)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
local.pywren_storage_put(session, "job/small", b"x" * 100)
try:
    local.pywren_storage_put(session, "job/large", b"x" * 10000)
except StorageError as exc:
    print(exc)
"""


def test_a_storage_directory_without_room_is_named_with_the_setting_to_change(tmp_path):
    storage = tmp_path / "storage"
    out = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(storage)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert "'job/large'" in out and str(storage) in out and "local.storage_dir" in out
    assert os.listdir(storage / "job") == ["small"], "no half-written temporary file is left behind"


def _not_writable(tmp_path, monkeypatch):
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o500)
    if os.access(folder, os.W_OK):  # root may write anywhere: stand for a read-only mount instead
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: path != str(folder) and real_access(path, mode))
    return folder


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda tmp_path, mp: tmp_path / "a-file", "it exists and is not a directory"),
        (lambda tmp_path, mp: tmp_path / "a-file" / "below", "cannot create it: Not a directory"),
        (
            lambda tmp_path, mp: Path("/proc/no-such-folder/storage"),
            r"cannot create it: No such file or directory \(/proc/no-such-folder\)",
        ),
        (_not_writable, "you may not write there"),
    ],
    ids=["a file", "below a file", "missing parent that cannot be made", "not writable"],
)
def test_a_storage_dir_that_cannot_be_used_is_a_config_error_naming_it(tmp_path, monkeypatch, make, problem):
    (tmp_path / "a-file").write_text("not a folder")
    path = make(tmp_path, monkeypatch)
    if str(path).startswith("/proc/") and not os.path.isdir("/proc/self"):
        pytest.skip("needs Linux's /proc, where no folder can be made")
    with pytest.raises(ConfigError, match=rf"local.storage_dir '{path}': {problem}; set local.storage_dir "
                                          r"\(or PYWREN_LOCAL_STORAGE_DIR\) to a directory you can write"):
        pw.executor(backend="local", local={"storage_dir": str(path)})


def test_a_relative_storage_dir_reaches_the_workers_resolved(tmp_path, monkeypatch):
    """Workers run in a scratch directory of their own: a relative path must not point them elsewhere."""
    monkeypatch.chdir(tmp_path)
    with pw.executor(backend="local", local={"storage_dir": "jobs"}, progress=False, timeout=10, lost_grace=1) as ex:
        assert ex.get_result(ex.map(abs, [-1, -2]), timeout=60) == [1, 2]
    assert (tmp_path / "jobs").is_dir()
