"""What the README names for a user to import, build or serve exists, so its directions cannot rot."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from pywren_gcp.deploy import package_files

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
NAMES = sorted(set(re.findall(r"`(pywren_(?:gcp|core)(?:\.\w+)+)", README)))


def test_the_readme_names_the_modules_a_user_needs():
    assert {"pywren_core.errors", "pywren_gcp.storage.mapped_error", "pywren_gcp.deploy.DeployError"} <= set(NAMES)


@pytest.mark.parametrize("dotted", NAMES)
def test_each_dotted_name_resolves(dotted):
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ModuleNotFoundError:
            continue
        for attr in parts[split:]:
            obj = getattr(obj, attr)  # AttributeError names what the README got wrong
        return
    pytest.fail(f"README names {dotted}, which does not import")


def test_the_local_run_serves_what_the_package_exports():
    """The README's functions-framework command points at main.py's ``handler``."""
    assert "--source pywren-function/main.py --target handler" in README
    assert "from pywren_gcp.handler import handler" in package_files()["main.py"].decode()
