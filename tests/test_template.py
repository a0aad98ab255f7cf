"""The plugin template renders into a distribution that satisfies the hook contract as it stands."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_docs import load_script

import pywren_core
from pywren_core.plugins import Backend, PluginEntry

new_plugin = load_script("new_plugin")


@pytest.fixture
def rendered(tmp_path):
    return new_plugin.render("acme_hpc", tmp_path)


def test_rendered_files_carry_the_new_name_only(rendered):
    files = {str(p.relative_to(rendered)) for p in rendered.rglob("*") if p.is_file()}
    assert files == {
        "README.md",
        "pyproject.toml",
        "pywren_acme_hpc/__init__.py",
        "pywren_acme_hpc/handler.py",
        "pywren_acme_hpc/plugin.py",
        "pywren_acme_hpc/py.typed",
        "tests/test_conformance.py",
    }
    for path in rendered.rglob("*"):
        if path.is_file():
            assert "mycloud" not in path.read_text().lower(), path
    assert "AcmeHpcSession" in (rendered / "pywren_acme_hpc" / "plugin.py").read_text()


def test_rendered_pyproject_has_the_entry_point_and_the_core_pin(rendered):
    pyproject = (rendered / "pyproject.toml").read_text()
    assert 'name = "pywren-acme-hpc"' in pyproject
    assert '[project.entry-points.pywren]\nacme_hpc = "pywren_acme_hpc.plugin"' in pyproject
    assert f'"pywren-core~={pywren_core.__version__}"' in pyproject


def test_rendered_plugin_passes_the_load_time_checks(rendered, monkeypatch):
    monkeypatch.syspath_prepend(str(rendered))
    from pywren_acme_hpc import plugin

    entry = PluginEntry("acme_hpc", "backend", "pywren_acme_hpc.plugin", "pywren-acme-hpc", "0.1.0")
    backend = Backend(entry, plugin)
    assert backend.info.name == "acme_hpc"
    assert backend.info.field("api_key").secret


def test_rendered_tests_collect_the_conformance_kit(rendered):
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", str(rendered / "tests")],
        capture_output=True,
        text=True,
        cwd=rendered,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "TestStorage::test_round_trip" in result.stdout and "TestExecutor::test_map_returns_results_in_order" in (
        result.stdout
    )


def test_existing_target_and_bad_names_are_refused(rendered):
    with pytest.raises(FileExistsError):
        new_plugin.render("acme_hpc", rendered.parent)
    with pytest.raises(ValueError, match="not a backend name"):
        new_plugin.render("Acme-HPC", rendered.parent)
