"""pywren-core and its cloud plugins are released in lockstep: one version, one way of pinning.

Each plugin's version is its ``__version__`` (hatch reads it, as the core's); each plugin, the
template and the examples pin ``pywren-core~=<that version>`` (any core of the same minor version,
not older); the core's extras pin the plugins the same way; the CHANGELOG has the version's section.
These tests name every place that drifted, so a version bump is one edit per place they list.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pywren_core import plugins

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = sorted(p.parent for p in ROOT.glob("plugins/pywren_*/pyproject.toml"))
#: Distributions that pin the core without being released with it: they must still track it.
PINNING = [ROOT / "plugins" / "_template", *sorted(p.parent for p in ROOT.glob("examples/*/pyproject.toml"))]


def pyproject(directory: Path) -> dict:
    return tomllib.loads((directory / "pyproject.toml").read_text())


def declared_version(directory: Path) -> str:
    """The version a build of ``directory`` gets: static, or read by hatch from the file it names."""
    project = pyproject(directory)
    if "version" in project["project"]:
        return project["project"]["version"]
    assert "version" in project["project"].get("dynamic", ()), f"{directory}: no version, static or dynamic"
    source = directory / project["tool"]["hatch"]["version"]["path"]
    match = re.search(r'^__version__ = "([^"]+)"', source.read_text(), re.MULTILINE)
    assert match, f"{source}: no __version__ line for hatch to read"
    return match.group(1)


def core_pins(directory: Path) -> list[str]:
    deps = pyproject(directory)["project"]["dependencies"]
    return [d.replace(" ", "") for d in deps if re.match(r"pywren[-_]core\b", d)]


CORE = declared_version(ROOT)


def test_the_core_reports_the_version_it_is_built_with():
    import pywren_core

    assert pywren_core.__version__ == CORE


def test_every_plugin_has_the_core_version():
    drifted = {d.name: declared_version(d) for d in PLUGINS if declared_version(d) != CORE}
    assert not drifted, f"pywren-core is {CORE}, but these plugins are not: {drifted}"


def test_every_plugin_is_known_to_the_core():
    """The missing-backend error's install line and the core's extras cover exactly the plugins here."""
    names = {d.name.removeprefix("pywren_") for d in PLUGINS}
    assert set(plugins.KNOWN_DISTRIBUTIONS) == names
    assert {k: f"pywren-{k}" for k in names} == plugins.KNOWN_DISTRIBUTIONS


@pytest.mark.parametrize("directory", PLUGINS + PINNING, ids=lambda d: d.relative_to(ROOT).as_posix())
def test_core_pin_is_the_compatible_release_of_this_version(directory):
    assert core_pins(directory) == [f"pywren-core~={CORE}"], (
        f"{directory.relative_to(ROOT)}/pyproject.toml must depend on pywren-core~={CORE} "
        f"(any {CORE.rsplit('.', 1)[0]}.x core from {CORE} on), not {core_pins(directory)}"
    )


def test_core_extras_pin_each_plugin_the_same_way():
    extras = pyproject(ROOT)["project"]["optional-dependencies"]
    for directory in PLUGINS:
        name = directory.name.removeprefix("pywren_")
        assert extras.get(name) == [f"pywren-{name}~={CORE}"], (
            f"pyproject.toml: the extra {name!r} must be ['pywren-{name}~={CORE}'], not {extras.get(name)}"
        )


def test_the_changelog_has_a_section_for_this_version():
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## \[{re.escape(CORE)}\]", changelog, re.MULTILINE), (
        f"CHANGELOG.md has no '## [{CORE}]' section"
    )
