"""The conformance kit, run against the embedded local backend."""

from pywren_core.testing import ExecutorConformance, StorageConformance


class TestLocalStorage(StorageConformance):
    pass


class TestLocalExecutor(ExecutorConformance):
    lost_grace = 5.0


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
