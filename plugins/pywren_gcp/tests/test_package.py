"""The deploy package builder, and the Function resource deploy sends (no API call is made here)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import pywren_core
import pywren_gcp
from pywren_gcp import deploy

SECRET_TOKEN = "PLANTED-invoke-token-0b7e"


def test_package_holds_entry_point_code_and_metadata() -> None:
    files = deploy.package_files()
    assert "main.py" in files and "requirements.txt" in files
    assert "pywren_core/worker.py" in files and "pywren_gcp/handler.py" in files and "pywren_gcp/py.typed" in files
    assert not [name for name in files if "__pycache__" in name or name.endswith(".pyc")]
    assert b"from pywren_gcp.handler import handler" in files["main.py"]
    entry_points = files[f"pywren_gcp-{pywren_gcp.__version__}.dist-info/entry_points.txt"].decode()
    assert "[pywren]\ngcp = pywren_gcp.plugin" in entry_points
    core_metadata = files[f"pywren_core-{pywren_core.__version__}.dist-info/METADATA"].decode()
    assert f"Version: {pywren_core.__version__}" in core_metadata


def test_requirements_pin_what_the_client_runs_and_nothing_else() -> None:
    lines = deploy.requirements()
    names = {line.split("==")[0].lower() for line in lines}
    assert {"google-cloud-storage", "google-auth", "requests", "cloudpickle", "pluggy", "attrs"} <= names
    assert "functions-framework" in names
    assert not names & {"pywren-core", "pywren-gcp", "boto3", "botocore", "azure-storage-blob", "pytest"}
    assert not names & {"aiohttp", "async-timeout"}  # the client's invoker only
    import cloudpickle

    assert f"cloudpickle=={cloudpickle.__version__}" in lines  # the worker unpickles what this client pickled


def test_archive_is_reproducible_and_complete(tmp_path: Path) -> None:
    first = deploy.build_package(tmp_path / "source.zip")
    assert first == deploy.build_package() == (tmp_path / "source.zip").read_bytes()
    with zipfile.ZipFile(io.BytesIO(first)) as archive:
        assert sorted(archive.namelist()) == sorted(deploy.package_files())


def test_package_runs_on_its_own_copies(package_dir: Path) -> None:
    """In an interpreter that sees no installed pywren (no site-packages .pth files, the package first),
    main.py imports the handler and the core finds the gcp backend through the vendored metadata."""
    site_packages = sysconfig.get_paths()["purelib"]
    code = (
        "import json, sys; sys.path.insert(0, '.'); import main; "
        "from importlib import metadata; import pywren_core, pywren_gcp; from pywren_core import plugins; "
        "backend = plugins.load_backend('gcp'); "
        "print(json.dumps([pywren_core.__file__, pywren_gcp.__file__, backend.info.name, "
        "str(metadata.distribution('pywren-gcp').locate_file(''))]))"
    )
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=package_dir, capture_output=True, text=True,
                         env={"PYTHONPATH": f"{package_dir}:{site_packages}", "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    core_file, plugin_file, name, dist_root = json.loads(out.stdout.strip().splitlines()[-1])
    assert core_file.startswith(str(package_dir)) and plugin_file.startswith(str(package_dir))
    assert name == "gcp" and Path(dist_root).resolve() == package_dir.resolve()


def _config(**settings: object) -> dict:
    base = {"project": "proj", "region": "europe-west1", "function_name": "runner", "bucket": "b",
            "function_timeout": 3600, "memory": "2Gi", "cpu": "1", "concurrency": 8, "max_instances": 100,
            "service_account": "", "credentials_file": "/keys/PLANTED.json", "invoke_token": SECRET_TOKEN}
    return {**base, **settings}


def test_function_spec() -> None:
    spec = deploy.function_spec(_config(service_account="runner@proj.iam.gserviceaccount.com"),
                                {"bucket": "upload", "object": "source.zip"})
    assert spec["name"] == "projects/proj/locations/europe-west1/functions/runner"
    assert spec["environment"] == "GEN_2"
    build, service = spec["buildConfig"], spec["serviceConfig"]
    assert build["runtime"] == f"python{sys.version_info.major}{sys.version_info.minor}"
    assert build["entryPoint"] == "handler" and build["source"]["storageSource"]["object"] == "source.zip"
    assert service["timeoutSeconds"] == 3600 and service["maxInstanceRequestConcurrency"] == 8
    assert service["environmentVariables"]["THREADS"] == "8"
    assert service["serviceAccountEmail"] == "runner@proj.iam.gserviceaccount.com"
    text = json.dumps(spec)
    assert SECRET_TOKEN not in text and "PLANTED" not in text


def test_deploy_needs_a_project() -> None:
    with pytest.raises(deploy.DeployError, match="gcp.project"):
        deploy.function_path(_config(project=""))
