from __future__ import annotations

import pytest

from pywren_core import plugins


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory):
    """No user config file or PYWREN_* variable from the machine leaks into a test."""
    import os

    for var in list(os.environ):
        if var.startswith("PYWREN_"):
            monkeypatch.delenv(var)
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    (home / "run").mkdir(mode=0o700)  # the local backend's default storage lands here, not in /dev/shm
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home / "run"))
    monkeypatch.chdir(home)
    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture
def storage_dir(tmp_path):
    return str(tmp_path / "storage")


@pytest.fixture
def pywren_config(storage_dir):
    return {"backend": "local", "local": {"storage_dir": storage_dir}}
