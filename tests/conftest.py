from __future__ import annotations

import pytest

from pywren_core.testing import isolated_pywren  # noqa: F401  (autouse: the machine's setup stays out)

pytest_plugins = ["pytester"]


@pytest.fixture
def storage_dir(tmp_path):
    return str(tmp_path / "storage")


@pytest.fixture
def pywren_config(storage_dir):
    return {"backend": "local", "local": {"storage_dir": storage_dir}}
