"""The function app's zip package (built without any Azure API call), and ``pywren remove``'s queue
cleanup against Azurite."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import pywren_azure
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient
from pywren_azure import deploy, plugin

import pywren_core
from pywren_core.errors import ConfigError
from pywren_core.testing import open_session


@pytest.fixture
def config() -> dict[str, Any]:
    return {**{f.name: f.default for f in plugin.CONFIG}, "queue": "calls-from-config", "max_concurrency": 12}


@pytest.fixture
def package(config: dict[str, Any], tmp_path: Path) -> Path:
    return deploy.build_package(config, tmp_path)


def test_package_holds_the_app_its_settings_and_both_distributions(package: Path) -> None:
    with zipfile.ZipFile(package) as archive:
        names = set(archive.namelist())
        host = json.loads(archive.read("host.json"))
        app = archive.read("function_app.py").decode()
        requirements = archive.read("requirements.txt").decode().split()
        entry_points = archive.read(f"pywren_azure-{pywren_azure.__version__}.dist-info/entry_points.txt").decode()
    assert {"host.json", "function_app.py", "requirements.txt", "pywren_core/worker.py",
            "pywren_azure/function_app.py", "pywren_azure/py.typed"} <= names
    assert f"pywren_core-{pywren_core.__version__}.dist-info/METADATA" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "/tests/" in n]
    assert host["version"] == "2.0" and host["functionTimeout"] == "00:10:00"
    assert host["extensions"]["queues"]["batchSize"] == 12
    assert "'PYWREN_AZURE_QUEUE', 'calls-from-config'" in app and "'PYWREN_AZURE_MAX_CONCURRENCY', '12'" in app
    assert "azure = pywren_azure.plugin" in entry_points
    pinned = {r.split("==")[0]: r for r in requirements}
    assert {"azure-functions", "azure-storage-blob", "azure-storage-queue", "cloudpickle", "pluggy"} <= set(pinned)
    assert "==" in pinned["cloudpickle"] and "==" in pinned["azure-storage-blob"]
    assert not {"pywren-core", "pywren-azure", "boto3"} & set(pinned)
    assert not [r for r in requirements if r.startswith("google")]


def test_package_is_reproducible(config: dict[str, Any], package: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    again.mkdir()
    assert deploy.build_package(config, again).read_bytes() == package.read_bytes()


def test_unpacked_package_runs_its_own_core_and_finds_the_backend(package: Path, tmp_path: Path) -> None:
    """Imported as Azure imports an app (its folder first on sys.path), the vendored core and plugin
    win, the ``azure`` entry point resolves, and the app's triggers carry the baked settings."""
    root = tmp_path / "wwwroot"
    with zipfile.ZipFile(package) as archive:
        archive.extractall(root)
    site = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    script = textwrap.dedent(f"""
        import json, sys
        sys.path[:0] = [{str(root)!r}]
        sys.path += {site!r}
        import function_app
        import pywren_core
        from pywren_core.plugins import load_backend
        backend = load_backend("azure")
        bindings = [f.get_trigger().get_dict_repr() for f in function_app.app.get_functions()]
        print(json.dumps({{
            "core": pywren_core.__file__, "plugin": backend.plugin.__file__, "version": backend.entry.version,
            "bindings": [{{k: str(getattr(v, "value", v)) for k, v in b.items()}} for b in bindings],
        }}))
    """)
    # -S: no site-packages .pth files, so an editable install of this checkout cannot shadow the package.
    result = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=root, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["core"].startswith(str(root)) and found["plugin"].startswith(str(root))
    assert found["version"] == pywren_azure.__version__
    triggers = {b["type"]: b for b in found["bindings"]}
    assert triggers["queueTrigger"]["queueName"] == "calls-from-config"
    assert triggers["httpTrigger"]["route"] == "pywren"


def test_deploy_needs_a_function_app(storage_section: dict[str, Any]) -> None:
    session = open_session({"backend": "azure", "azure": storage_section})
    with pytest.raises(ConfigError, match="function_app"):
        session.deploy()
    session.close()


def test_remove_deletes_the_queue_and_its_poison_queue(storage_section: dict[str, Any], azurite: Any) -> None:
    name = "pywren-remove-me"
    session = open_session({"backend": "azure", "azure": {**storage_section, "queue": name}})
    poison = QueueClient.from_connection_string(azurite.connection_string, f"{name}-poison")
    poison.create_queue()
    assert "deleted queues" in (session.remove() or "")
    for queue_name in (name, f"{name}-poison"):
        with pytest.raises(ResourceNotFoundError):
            QueueClient.from_connection_string(azurite.connection_string, queue_name).get_queue_properties()
    session.close()


def test_the_platform_runtimes_are_built_for() -> None:
    """Linux x86-64 Python workers that provide azure-functions; a runtime's worker gets every
    dependency pywren-azure declares (bare names: the core pins them to the client's versions)."""
    platform = plugin.pywren_backend_info().platform
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert (platform.os, platform.arch, platform.python_version) == ("linux", "x86_64", python)
    assert platform.provided == {"azure-functions"} and platform.max_unzipped_bytes is None
    declared = {r.split(">")[0].split("=")[0].split("~")[0].strip()
                for r in metadata.requires("pywren-azure") or () if ";" not in r}
    assert declared - {"pywren-core"} <= set(platform.requirements)
    assert platform.image_base.startswith("mcr.microsoft.com/azure-functions/python:4-python")
    assert platform.image_code_dir == "/home/site/wwwroot"
