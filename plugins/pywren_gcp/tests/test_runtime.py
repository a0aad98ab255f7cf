"""Runtimes (issue 13): a numpy runtime built once per session for the Cloud Run functions platform,
deployed as its own source package (the runtime's tree vendored beside the client's pywren_core and
pywren_gcp) and served by functions-framework in a fresh venv holding only what Cloud Build installs
for that package (its requirements.txt) -- nothing of the tests' environment."""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

import pywren_core as pw
from pywren_core import doctor
from pywren_core.errors import ConfigError, InvokeError, RuntimeMismatchError
from pywren_core.testing import LocalServer
from pywren_gcp import deploy

from conftest import RUNTIMES, gcp_config
from servers import raw_client


def where_numpy_runs(x: int) -> dict[str, Any]:
    """A call needing a compiled extension from a manylinux wheel, and where its modules came from."""
    import numpy

    import pywren_core

    return {"sum": float(numpy.ones(3).sum() + x), "numpy": numpy.__file__, "core": pywren_core.__file__,
            "extension": numpy._core._multiarray_umath.__file__, "prefix": sys.prefix, "version": numpy.__version__}


def needs_pytest(x: float) -> bool:
    return x == pytest.approx(x)  # pytest is installed on this client only


# --- the package (no server) ----------------------------------------------------------------------


def test_runtime_package_vendors_the_tree_and_names_its_runtime(ml_runtime: Any, ml_package: bytes) -> None:
    files = deploy.package_files(ml_runtime)
    assert "numpy/__init__.py" in files and "pywren_core/worker.py" in files and "pywren_gcp/handler.py" in files
    assert any(name.startswith("numpy/_core/_multiarray_umath") and name.endswith(".so") for name in files)
    assert f"DEPLOYED_RUNTIME = {ml_runtime.name!r}".encode() in files["main.py"]
    assert b"DEPLOYED_RUNTIME = ''" in deploy.package_files()["main.py"]
    # The tree is vendored: Cloud Build installs only the platform's own part.
    assert [line.split("==")[0] for line in deploy.requirements(ml_runtime)] == ["functions-framework"]
    assert "functions-framework" in deploy.platform().provided
    assert not [name for name in files if name.startswith(("functions_framework/", "pytest/"))]
    with zipfile.ZipFile(io.BytesIO(ml_package)) as archive:
        assert sorted(archive.namelist()) == sorted(files)


def test_each_runtime_is_a_function_of_its_own(ml_runtime: Any) -> None:
    config = {"project": "proj", "region": "europe-west1", "function_name": "runner", "function_timeout": 3600,
              "memory": "2Gi", "cpu": "1", "concurrency": 8, "max_instances": 100, "service_account": ""}
    spec = deploy.function_spec(config, {"bucket": "u", "object": "o.zip"}, ml_runtime)
    assert spec["name"] == f"projects/proj/locations/europe-west1/functions/runner-{ml_runtime.name}"
    assert spec["labels"]["pywren-runtime"] == ml_runtime.name
    assert deploy.function_spec(config, {"bucket": "u", "object": "o.zip"})["name"].endswith("/functions/runner")
    assert len(deploy.function_name(config, ml_runtime)) <= 63  # Cloud Functions' limit on a name


class FakeApi:
    """The Cloud Functions API as far as deploy and lookup use it: functions known by path."""

    def __init__(self) -> None:
        self.functions: dict[str, dict[str, Any]] = {}
        self.created: list[str] = []

    def _answer(self, status: int, body: dict[str, Any]) -> Any:
        import requests

        response = requests.Response()
        response.status_code, response._content = status, json.dumps(body).encode()
        return response

    def get(self, url: str, params: Any = None, **_: Any) -> Any:
        path = url.split("/v2/", 1)[1]
        if path.endswith("/functions"):  # a list, one function a page
            names = sorted(self.functions)
            start = int((params or {}).get("pageToken") or 0)
            page = [{"name": n, **self.functions[n]} for n in names[start:start + 1]]
            more = {"nextPageToken": str(start + 1)} if start + 1 < len(names) else {}
            return self._answer(200, {"functions": page, **more})
        if path in self.functions:
            return self._answer(200, self.functions[path])
        return self._answer(404, {"error": {"message": "not found"}})

    def post(self, url: str, params: Any = None, json: Any = None, **_: Any) -> Any:
        if url.endswith(":generateUploadUrl"):
            return self._answer(200, {"uploadUrl": "http://upload.invalid/", "storageSource": {"bucket": "u"}})
        self.functions[json["name"]] = {"serviceConfig": {"uri": f"https://{params['functionId']}.run.app"},
                                        "labels": json["labels"]}
        self.created.append(params["functionId"])
        return self._answer(200, {"done": True})

    def delete(self, url: str, **_: Any) -> Any:
        path = url.split("/v2/", 1)[1]
        if self.functions.pop(path, None) is None:
            return self._answer(404, {"error": {"message": "not found"}})
        return self._answer(200, {"done": True})


def test_deploy_creates_the_runtimes_function_and_a_missing_one_names_pywren_deploy(
    ml_runtime: Any, ml_package: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = {"project": "proj", "region": "r", "function_name": "pywren-runner", "function_timeout": 60,
              "memory": "2Gi", "cpu": "1", "concurrency": 8, "max_instances": 1, "service_account": "", "bucket": "b"}
    api = FakeApi()
    with pytest.raises(deploy.DeployError, match=r"pywren deploy --runtime ml.*" + ml_runtime.name):
        deploy.lookup_url(api, config, ml_runtime)
    uploads: list[int] = []

    def put(url: str, data: bytes, **_: Any) -> Any:
        uploads.append(len(data))
        return api._answer(200, {})

    monkeypatch.setattr(deploy.requests, "put", put)
    built = {}
    monkeypatch.setattr(deploy, "build_package", lambda rt=None: built.setdefault("rt", rt) and ml_package)
    summary = deploy.deploy(api, config, ml_runtime)
    assert built["rt"] is ml_runtime and uploads == [len(ml_package)]
    assert api.created == [f"pywren-runner-{ml_runtime.name}"]
    assert deploy.lookup_url(api, config, ml_runtime) == f"https://pywren-runner-{ml_runtime.name}.run.app"
    assert ml_runtime.name in summary
    with pytest.raises(deploy.DeployError, match=r"run `pywren deploy` first"):
        deploy.lookup_url(api, config)  # the default runtime's function is another one, not deployed
    deploy.deploy(api, config)
    api.functions["projects/proj/locations/r/functions/someone-else"] = {"labels": {}}
    assert len(api.functions) == 3
    summary = deploy.remove(api, config)  # `pywren remove`: the default's function and every runtime's
    assert f"pywren-runner-{ml_runtime.name}" in summary and list(api.functions) == [
        "projects/proj/locations/r/functions/someone-else"]
    assert "nothing to remove" in deploy.remove(api, config)


# --- the deployed artifact, served in a clean interpreter -----------------------------------------


def test_numpy_map_runs_in_the_deployed_runtime(ml_config: dict[str, Any], ml_package_dir: Path,
                                                ml_function: tuple[LocalServer, str]) -> None:
    with pw.executor(ml_config, progress=False) as ex:
        assert ex.runtime is not None and ex.runtime.manifest["label"] == "ml"
        results = ex.get_result(ex.map(where_numpy_runs, [1, 2]))
    assert [r["sum"] for r in results] == [4.0, 5.0]
    package = str(ml_package_dir.resolve())
    for result in results:  # numpy and pywren_core from the package, in the clean venv
        assert result["numpy"].startswith(package) and result["core"].startswith(package)
        assert result["extension"].endswith(".so") and result["extension"].startswith(package)
        assert result["version"] == ex.runtime.distributions["numpy"]
        assert "ml-venv" in result["prefix"]


def test_function_needing_a_package_the_runtime_lacks_is_refused_before_invoking(
    ml_config: dict[str, Any], storage_url: str
) -> None:
    with pw.executor(ml_config, progress=False) as ex:
        with pytest.raises(RuntimeMismatchError, match=r"'pytest'.*add 'pytest=="):
            ex.map(needs_pytest, [1.0, 2.0])
        assert ex.session.handle._dispatcher is None  # no invocation was ever made
        executor_id = ex.executor_id
    client = raw_client(storage_url)
    try:
        assert not [b.name for b in client.list_blobs("pywren-test") if executor_id in b.name]
    finally:
        client.close()


def test_doctor_reports_what_the_runtime_lacks(ml_config: dict[str, Any]) -> None:
    with pw.executor(ml_config, progress=False) as ex:
        rows = {row.what: row for row in doctor.check(ex, packages=["pytest"], timeout=120)}
    assert rows["pytest"].worker == "missing" and rows["pytest"].verdict == "breaks"
    assert rows["pywren-core"].verdict == "same" and rows["cloudpickle"].verdict == "same"


def test_function_url_of_another_runtime_is_refused(storage_url: str, function_url: str, ml_runtime: Any,
                                                     runtimes_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                     ml_function: tuple[LocalServer, str]) -> None:
    """Both runtimes' functions serve side by side; a runtime pointed at the default's function (or
    the default at a runtime's) is refused by the handler, naming both, before anything runs."""
    monkeypatch.setenv("PYWREN_RUNTIMES_DIR", str(runtimes_dir))
    wrong = {**gcp_config(storage_url, "", runtime_urls={ml_runtime.name: function_url}),
             "runtimes": RUNTIMES, "runtime": "ml"}
    with pw.executor(wrong, progress=False) as ex:
        need = rf"carries the default runtime, the calls need runtime {ml_runtime.name}"
        with pytest.raises(InvokeError, match=need):
            ex.get_result(ex.map(abs, [-1]), timeout=60)
    with pw.executor(gcp_config(storage_url, ml_function[1]), progress=False) as ex:
        with pytest.raises(InvokeError, match=r"carries runtime .*, the calls need the default runtime"):
            ex.get_result(ex.map(abs, [-1]), timeout=60)
    with pw.executor(gcp_config(storage_url, function_url), progress=False) as ex:
        assert ex.get_result(ex.map(abs, [-1])) == [1]  # the default function still serves the default


def test_runtime_without_its_url_says_what_to_set(storage_url: str, function_url: str,
                                                  runtimes_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                  ml_runtime: Any) -> None:
    monkeypatch.setenv("PYWREN_RUNTIMES_DIR", str(runtimes_dir))
    config = {**gcp_config(storage_url, function_url), "runtimes": RUNTIMES, "runtime": "ml"}
    with pytest.raises(ConfigError, match=r"gcp.runtime_urls.*pywren deploy"):
        pw.executor(config, progress=False)
