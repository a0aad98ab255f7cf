"""The ``pywren`` command line, as users see it."""

from pywren_core import cli


def test_backends_explains_a_broken_plugin_and_still_lists_the_others(capsys):
    """tests/fixture_plugin installs ``broken``, whose import fails, next to a working ``fixture``."""
    assert cli.main(["backends"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    broken = rows["broken"]
    assert "pywren-fixture" in broken and "0.1.0" in broken
    assert "BROKEN: plugin 'broken'" in broken
    assert "ModuleNotFoundError: No module named 'pywren_fixture_missing_dependency'" in broken
    assert rows["fixture"].endswith("ok") and rows["local"].endswith("ok")
