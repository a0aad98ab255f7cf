"""The conformance kit, run against the embedded local backend."""

import sys

import pytest

from pywren_core.testing import (
    DataConformance,
    ExecutorConformance,
    LocalServer,
    StorageConformance,
    free_port,
    http_status,
)


class TestLocalStorage(StorageConformance):
    pass


class TestLocalExecutor(ExecutorConformance):
    lost_grace = 5.0


class TestLocalData(DataConformance):
    @pytest.fixture
    def pywren_data_url(self, tmp_path):
        return f"file://{tmp_path}/data/"


def test_the_kit_keeps_the_machines_pywren_setup_out(pytester, monkeypatch, tmp_path):
    """A backend author's own ~/.pywren_config and PYWREN_* variables must not steer the kit."""
    home = tmp_path / "author"
    home.mkdir()
    (home / ".pywren_config").write_text("backend: mycloud\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("PYWREN_TIMEOUT", "soon")
    pytester.makepyfile(
        test_kit="""
        from pywren_core import config
        from pywren_core.testing import StorageConformance

        class TestKit(StorageConformance):
            def test_sees_only_defaults(self):
                assert config.load().backend == "local"
        """
    )
    pytester.runpytest_subprocess("-k", "sees_only_defaults").assert_outcomes(passed=1)


def test_local_server_waits_for_its_server_and_stops_it(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]
    server = LocalServer("http.server", argv, tmp_path / "http.log", cwd=tmp_path, url=url)
    try:
        server.wait_ready(lambda: http_status(f"{url}/") == 200, "GET /")
        assert http_status(f"{url}/missing") == 404
    finally:
        server.stop()
    assert server.process.returncode is not None
    assert "GET /missing" in server.log_tail(), "the server's output went to its log"
    with pytest.raises(OSError):
        http_status(f"{url}/")


def test_local_server_that_dies_fails_with_its_log(tmp_path):
    argv = [sys.executable, "-c", "import sys; print('bad flag --nope'); sys.exit(3)"]
    server = LocalServer("broken", argv, tmp_path / "broken.log")
    with pytest.raises(RuntimeError, match=r"(?s)broken exited with code 3.*bad flag --nope"):
        server.wait_ready(lambda: False, timeout=30)
