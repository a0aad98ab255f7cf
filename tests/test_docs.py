"""The docs are built from the code: these fail when a committed doc drifts from what it is built from."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str):
    """A script of docs/, loaded by path under a name that cannot shadow an installed package."""
    spec = importlib.util.spec_from_file_location(f"pywren_docs_{name}", ROOT / "docs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = load_script("build")


@pytest.mark.parametrize("path", sorted(build.expected()), ids=lambda p: p.name)
def test_committed_doc_is_up_to_date(path):
    assert path.read_text() == build.expected()[path], f"{path.name} is stale: run `python docs/build.py`"


def test_hook_reference_covers_every_hook():
    from pywren_core import hookspecs

    reference = build.hook_reference()
    hooks = [name for name in vars(hookspecs) if name.startswith("pywren_")]
    assert hooks and all(f"### `{name}`" in reference for name in hooks)


def test_the_guide_includes_every_step_of_the_example():
    guide = (ROOT / "docs" / "writing-a-backend.md").read_text()
    for region in ("info", "connect", "errors", "storage", "invoke"):
        assert f"<!-- include: examples/pywren_folder/pywren_folder/plugin.py#{region} -->" in guide


def test_includes_show_the_region_without_its_markers(tmp_path, monkeypatch):
    source = tmp_path / "example.py"
    source.write_text("a = 1\n# --8<-- [start:part]\n    def f():\n        return 2\n# --8<-- [end:part]\n")
    monkeypatch.setattr(build, "ROOT", tmp_path)
    doc = "before\n<!-- include: example.py#part -->\nstale\n<!-- /include -->\nafter\n"
    expanded = build.expand_includes(doc)
    assert expanded == (
        "before\n<!-- include: example.py#part -->\n```python\ndef f():\n    return 2\n```\n<!-- /include -->\nafter\n"
    )
    assert build.expand_includes(expanded) == expanded
    with pytest.raises(ValueError, match="no region 'nope'"):
        build.expand_includes("<!-- include: example.py#nope -->\n<!-- /include -->")


def test_the_guide_lists_exactly_the_payload_keys():
    """The payload keys a handler must pass on are the ones the kit accepts (protocol.PAYLOAD_KEYS)."""
    import re

    from pywren_core.protocol import PAYLOAD_CALL_KEYS, PAYLOAD_KEYS

    guide = (ROOT / "docs" / "writing-a-backend.md").read_text()
    table = guide.split("<!-- payload-keys -->")[1].split("<!-- /payload-keys -->")[0]
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    documented = {key for row in rows for key in re.findall(r"`(\w+)`", row)}
    calls_row = next(line for line in table.splitlines() if line.startswith("| `calls`"))
    assert documented == PAYLOAD_KEYS
    assert set(re.findall(r"`(\w+)`", calls_row.split("|")[2])) == PAYLOAD_CALL_KEYS
