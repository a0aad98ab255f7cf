"""Runtimes on Azure: the package ``pywren deploy`` builds for a runtime, run as Azure runs it.

The numpy runtime is built once per test session by the core (for Linux x86-64: manylinux wheels)
into a session temp dir. ``pywren deploy`` sends its package to the ARM/Kudu stand-in, and the
test Functions host runs the UNPACKED package in a clean interpreter: a fresh virtual environment
holding only azure-functions (and its own dependencies, werkzeug and markupsafe), which is what the
Functions Python worker provides; the package's ``.python_packages/lib/site-packages`` and its
folder come first on ``sys.path``, and nothing of the test environment is on it. Calls then go
through Azurite to that host, as to Azure.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import attrs
import pytest
import requests
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import ContainerClient
from azure.storage.queue import QueueClient
from conftest import HOST_SCRIPT, PAYLOAD_KEY, PLANTED_FUNCTION_KEY, Azurite, FunctionsHost
from pywren_azure import deploy, plugin
from pywren_azure.invoke import queue_name
from pywren_azure.session import RUNTIMES_PREFIX
from standin_arm import StandInArm, standin_arm

import pywren_core as pw
from pywren_core import config as config_module
from pywren_core import doctor, runtime
from pywren_core.backend import Session
from pywren_core.errors import ConfigError, RuntimeMismatchError
from pywren_core.plugins import load_backend
from pywren_core.testing import LocalServer, free_port, http_status

APP = "pywren-rt-app"
RUNTIMES = {"numpy": {"requirements": ["numpy"]}}
#: A container and queue of their own: the deploy records must not meet the other tests' objects.
CONTAINER = "pywren-rt-test"
QUEUE = "pywren-rt"
HOST_SLOTS = 4


@attrs.frozen
class RuntimeApp:
    """The numpy runtime's function app, deployed and running in the test host."""

    runtime: runtime.Runtime
    #: The unpacked package, the host's wwwroot.
    root: Path
    package_bytes: int
    host: FunctionsHost
    section: dict[str, Any]
    deploy_summary: str
    build_seconds: dict[str, float]


@contextlib.contextmanager
def runtimes_in(folder: Path) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(runtime.DIR_ENV, str(folder))
        yield


def open_with(section: dict[str, Any], built: Any) -> Session:
    """A client session on azure carrying ``built`` as its runtime (what an executor and
    ``pywren deploy`` open)."""
    cfg = config_module.load({"backend": "azure", "azure": section})
    backend = load_backend("azure")
    return backend.open(cfg.backend_section(backend.info), role="client", runtime=built)


def fake_runtime(folder: Path, name: str, label: str) -> runtime.Runtime:
    """A runtime with nothing of its own (an empty tree): enough to deploy and name a queue."""
    (folder / name / "site").mkdir(parents=True, exist_ok=True)
    return runtime.Runtime(name, folder / name, {"name": name, "label": label, "distributions": {}, "modules": {},
                                                 "python": f"{sys.version_info[0]}.{sys.version_info[1]}"})


@pytest.fixture(scope="session")
def runtimes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runtimes")


@pytest.fixture(scope="session")
def numpy_runtime(runtimes_dir: Path) -> tuple[runtime.Runtime, dict[str, float]]:
    spec = runtime.RuntimeSpec.from_config("numpy", RUNTIMES)
    with runtimes_in(runtimes_dir):
        started = time.monotonic()
        built = runtime.build(spec, plugin.PLATFORM)
        cold = time.monotonic() - started
        started = time.monotonic()
        again = runtime.build(spec, plugin.PLATFORM)
        cached = time.monotonic() - started
    assert again.name == built.name
    return built, {"cold": cold, "cached": cached}


@pytest.fixture(scope="session")
def clean_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bare virtual environment with what the Functions Python worker provides: azure-functions
    (at the client's version) and its dependencies. No pip, no setuptools."""
    venv = tmp_path_factory.mktemp("functions-worker") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", str(python), "install", "--quiet",
         f"azure-functions=={metadata.version('azure-functions')}"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return python


@pytest.fixture(scope="session")
def runtime_app(azurite: Azurite, numpy_runtime: tuple[runtime.Runtime, dict[str, float]], clean_python: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeApp]:
    built, seconds = numpy_runtime
    section = {"connection_string": azurite.connection_string, "container": CONTAINER, "queue": QUEUE,
               "trigger": "queue", "payload_key": PAYLOAD_KEY, "function_app": APP}
    with standin_arm({APP: {}, f"{APP}-numpy": {}}) as arm:
        session = open_with(section, built)
        try:
            summary = session.deploy() or ""
        finally:
            session.close()
    package = arm.package_of(f"{APP}-numpy")
    work = tmp_path_factory.mktemp("runtime-app")
    root = work / "wwwroot"
    with zipfile.ZipFile(io.BytesIO(package)) as archive:
        archive.extractall(root)
    port = free_port()
    env = {
        "PATH": "/usr/bin:/bin", "HOME": str(work), "PYTHONNOUSERSITE": "1",
        # The app's settings, as on Azure: its storage, the payload key, the HTTP trigger's key.
        "AzureWebJobsStorage": azurite.connection_string,
        "PYWREN_PAYLOAD_KEY": PAYLOAD_KEY,
        "PYWREN_AZURE_MAX_CONCURRENCY": str(HOST_SLOTS),
        "FUNCTIONS_TEST_KEY": PLANTED_FUNCTION_KEY,
    }
    trace = work / "trace.jsonl"
    argv = [str(clean_python), str(HOST_SCRIPT), "--port", str(port), "--concurrency", str(HOST_SLOTS),
            "--trace", str(trace), "--host-json", str(root / "host.json"), "--app-dir", str(root)]
    server = LocalServer("functions host (numpy runtime)", argv, work / "host.log", env=env, cwd=work)
    url = f"http://127.0.0.1:{port}"
    server.wait_ready(lambda: http_status(f"{url}/admin/host/status") == 200, "GET /admin/host/status")
    queues = json.loads((root / "host.json").read_text())["extensions"]["queues"]
    host = FunctionsHost(url, PLANTED_FUNCTION_KEY, trace, work / "host.log", queues)
    yield RuntimeApp(built, root, len(package), host, section, summary, seconds)
    server.stop()


@pytest.fixture
def numpy_config(runtime_app: RuntimeApp, runtimes_dir: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """An executor's config asking for the numpy runtime (found built in the session's folder)."""
    monkeypatch.setenv(runtime.DIR_ENV, str(runtimes_dir))
    return {"backend": "azure", "azure": runtime_app.section, "runtimes": RUNTIMES, "runtime": "numpy"}


def numpy_facts(n: int) -> dict[str, Any]:
    """A numpy computation, and where everything it ran with came from."""
    import numpy

    try:
        from numpy._core import _multiarray_umath as extension
    except ImportError:  # numpy 1.x
        from numpy.core import _multiarray_umath as extension
    a = numpy.arange(n * n, dtype=numpy.float64).reshape(n, n)
    import importlib.util

    modules = ("numpy", "cloudpickle", "pywren_core", "pywren_azure", "azure.storage.blob")
    return {
        "azure.functions": importlib.util.find_spec("azure.functions").origin,
        "trace": float((a @ a.T).trace()),
        "extension": extension.__file__,
        "files": {name: sys.modules[name].__file__ for name in modules if name in sys.modules},
        "sys_path": list(sys.path),
        "executable": sys.executable,
    }


def close_to_itself(x: float) -> bool:
    return x == pytest.approx(x)  # pytest is on the client only: the runtime lacks it


def test_numpy_map_runs_in_the_deployed_package(runtime_app: RuntimeApp, numpy_config: dict[str, Any]) -> None:
    with pw.executor(numpy_config) as ex:
        assert ex.runtime.name == runtime_app.runtime.name
        results = ex.get_result(ex.map(numpy_facts, [3, 40]), timeout=120)
    for n, facts in zip([3, 40], results, strict=True):
        assert facts["trace"] == float(sum(sum((i * n + k) ** 2 for k in range(n)) for i in range(n)))
        site = runtime_app.root / deploy.SITE_PACKAGES
        # A compiled extension from the manylinux wheel the core installed, loaded from the package.
        assert facts["extension"].startswith(str(site)) and ".so" in facts["extension"]
        for name in ("numpy", "cloudpickle", "pywren_core", "pywren_azure", "azure.storage.blob"):
            assert facts["files"][name].startswith(str(site)), (name, facts["files"][name])
        # azure-functions is the platform's: from the clean environment, which holds nothing else.
        assert "/functions-worker" in facts["azure.functions"]
        assert "functions-worker" in facts["executable"]
        checkout = str(Path(pw.__file__).resolve().parents[1])
        test_env = str(Path(metadata.distribution("pytest").locate_file("")))
        assert not [p for p in facts["sys_path"] if p.startswith((checkout, test_env))], facts["sys_path"]


def test_a_function_needing_what_the_runtime_lacks_is_refused_before_invoking(
        runtime_app: RuntimeApp, numpy_config: dict[str, Any], azurite: Azurite) -> None:
    before = requests.get(f"{runtime_app.host.url}/admin/host/status", timeout=10).json()["invocations"]
    queue = QueueClient.from_connection_string(azurite.connection_string,
                                               queue_name(runtime_app.section, runtime_app.runtime))
    with pw.executor(numpy_config) as ex:
        with pytest.raises(RuntimeMismatchError, match=r"'pytest'.*add 'pytest==") as info:
            ex.map(close_to_itself, [1.0, 2.0])
    assert runtime_app.runtime.name in str(info.value)
    assert queue.get_queue_properties().approximate_message_count == 0
    time.sleep(0.5)
    assert requests.get(f"{runtime_app.host.url}/admin/host/status", timeout=10).json()["invocations"] == before


def test_doctor_reports_what_the_runtime_lacks(runtime_app: RuntimeApp, numpy_config: dict[str, Any]) -> None:
    with pw.executor(numpy_config) as ex:
        rows = {row.what: row for row in doctor.check(ex, packages=["pytest"], timeout=120)}
    assert rows["pytest"].worker == "missing" and rows["pytest"].verdict == "breaks"
    assert rows["cloudpickle"].verdict == "same" and rows["pywren-core"].verdict == "same"
    assert rows["python"].verdict == "same"


def test_the_http_trigger_of_a_runtime_app_has_its_own_route(runtime_app: RuntimeApp,
                                                              numpy_config: dict[str, Any]) -> None:
    section = {**runtime_app.section, "trigger": "http", "function_url": f"{runtime_app.host.url}/api/pywren",
               "function_key": runtime_app.host.key}
    with pw.executor({**numpy_config, "azure": section}) as ex:
        assert [r["trace"] for r in ex.get_result(ex.map(numpy_facts, [2]), timeout=120)] == [14.0]
    wrong = requests.post(f"{runtime_app.host.url}/api/pywren", json={"calls": []},
                          headers={"x-functions-key": runtime_app.host.key}, timeout=10)
    assert wrong.status_code == 404  # the runtime's app serves its own route only


def test_a_runtime_no_app_carries_is_refused_naming_pywren_deploy(runtime_app: RuntimeApp, tmp_path: Path) -> None:
    session = open_with(runtime_app.section, fake_runtime(tmp_path, "rt-00000000abcd", "ml"))
    try:
        refused = r"rt-00000000abcd \('ml'\) is not deployed.*`pywren deploy --runtime ml`"
        with pytest.raises(ConfigError, match=refused):
            session.prepare()
    finally:
        session.close()


def test_runtimes_coexist_one_app_per_label_and_a_queue_per_runtime(runtime_app: RuntimeApp, tmp_path: Path,
                                                                    azurite: Azurite) -> None:
    """The numpy runtime's app stays deployed while the default app gets one runtime, then another,
    then none: each deploy records what its app carries and forgets what that app carried before."""
    first = fake_runtime(tmp_path, "rt-0000000000f1", "default")
    second = fake_runtime(tmp_path, "rt-0000000000f2", "default")
    container = ContainerClient.from_connection_string(azurite.connection_string, CONTAINER)

    def recorded() -> dict[str, str]:
        found = {}
        for name in container.list_blob_names(name_starts_with=RUNTIMES_PREFIX):
            record = json.loads(container.download_blob(name).readall())
            found[record["runtime"]] = record["app"]
        return found

    def deployed(built: Any, arm: StandInArm) -> str:
        session = open_with(runtime_app.section, built)
        try:
            return session.deploy() or ""
        finally:
            session.close()

    with standin_arm({APP: {}, f"{APP}-numpy": {}}) as arm:
        assert f"runtime {first.name}" in deployed(first, arm)
        assert recorded() == {runtime_app.runtime.name: f"{APP}-numpy", first.name: APP}
        with zipfile.ZipFile(io.BytesIO(arm.package_of(APP))) as archive:
            app_py = archive.read("function_app.py").decode()
            names = archive.namelist()
        assert f"os.environ['PYWREN_AZURE_QUEUE'] = '{QUEUE}-{first.name}'" in app_py
        assert f"os.environ['PYWREN_AZURE_ROUTE'] = 'pywren/{first.name}'" in app_py
        assert f"{deploy.SITE_PACKAGES}/pywren_core/worker.py" in names and "requirements.txt" not in names
        assert arm.apps[APP]["SCM_DO_BUILD_DURING_DEPLOYMENT"] == "false"

        deployed(second, arm)  # the same app, another runtime: the first one's clients must deploy again
        assert recorded() == {runtime_app.runtime.name: f"{APP}-numpy", second.name: APP}
        deployed(None, arm)  # no runtime at all
        assert recorded() == {runtime_app.runtime.name: f"{APP}-numpy"}
        assert [app for app, _ in arm.packages] == [APP, APP, APP]
    session = open_with(runtime_app.section, second)
    with pytest.raises(ConfigError, match="pywren deploy`"):
        session.prepare()
    session.close()
    session = open_with(runtime_app.section, runtime_app.runtime)
    session.prepare()  # still deployed
    session.close()


def test_the_runtime_package_and_its_figures(runtime_app: RuntimeApp) -> None:
    """What the deploy says, and the sizes and times the README quotes (printed with -s)."""
    assert f"runtime {runtime_app.runtime.name} ('numpy')" in runtime_app.deploy_summary
    assert f"to function app {APP}-numpy" in runtime_app.deploy_summary
    site = runtime_app.root / deploy.SITE_PACKAGES
    assert (site / "numpy").is_dir() and not (runtime_app.root / "requirements.txt").exists()
    assert not list(site.glob("azure_functions*")), "azure-functions is the platform's: never in the package"
    unpacked = sum(p.stat().st_size for p in runtime_app.root.rglob("*") if p.is_file())
    print(f"\nruntime {runtime_app.runtime.name}: build {runtime_app.build_seconds['cold']:.1f} s cold, "
          f"{runtime_app.build_seconds['cached']:.2f} s cached; package {runtime_app.package_bytes / 1e6:.1f} MB "
          f"zipped, {unpacked / 1e6:.1f} MB unpacked")
    assert os.path.getsize(runtime_app.root / "host.json") > 0


def test_an_image_runtime_is_configured_and_recorded_not_uploaded(runtime_app: RuntimeApp, tmp_path: Path) -> None:
    image = fake_runtime(tmp_path, "img-0000000000aa", "gpu")
    image = attrs.evolve(image, manifest={**image.manifest, "image": "example.azurecr.io/pywren-gpu:1"})
    with standin_arm({f"{APP}-gpu": {}}) as arm:
        session = open_with(runtime_app.section, image)
        try:
            summary = session.deploy() or ""
            session.prepare()  # recorded: an executor may now invoke it
        finally:
            session.close()
    assert arm.packages == [] and "az functionapp create --image example.azurecr.io/pywren-gpu:1" in summary
    settings = arm.apps[f"{APP}-gpu"]
    assert settings["PYWREN_AZURE_QUEUE"] == f"{QUEUE}-{image.name}"
    assert settings["PYWREN_AZURE_ROUTE"] == f"pywren/{image.name}" and settings["PYWREN_PAYLOAD_KEY"] == PAYLOAD_KEY
    host_json, app_py = deploy.write_app_files(tmp_path / "wwwroot")
    assert json.loads(host_json.read_text())["version"] == "2.0"
    assert "from pywren_azure.function_app import app" in app_py.read_text()


def test_pywren_deploy_with_a_named_runtime_from_the_command_line(
        runtime_app: RuntimeApp, runtimes_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from pywren_core import cli

    config_file = tmp_path / "pywren.yaml"
    config_file.write_text(yaml.safe_dump({"backend": "azure", "azure": runtime_app.section, "runtimes": RUNTIMES}))
    monkeypatch.setenv("PYWREN_CONFIG_FILE", str(config_file))
    monkeypatch.setenv(runtime.DIR_ENV, str(runtimes_dir))
    with standin_arm({f"{APP}-numpy": {}}) as arm:
        assert cli.main(["deploy", "--runtime", "numpy"]) == 0
    assert [app for app, _ in arm.packages] == [f"{APP}-numpy"]
    assert f"runtime {runtime_app.runtime.name} ('numpy')" in capsys.readouterr().out
    with zipfile.ZipFile(io.BytesIO(arm.package_of(f"{APP}-numpy"))) as archive:
        assert f"{deploy.SITE_PACKAGES}/numpy/__init__.py" in archive.namelist()


def test_pywren_remove_with_a_runtime_deletes_its_queues_and_record(runtime_app: RuntimeApp, tmp_path: Path,
                                                                     azurite: Azurite) -> None:
    gone = fake_runtime(tmp_path, "rt-0000000000ee", "old")
    with standin_arm({f"{APP}-old": {}}):
        session = open_with(runtime_app.section, gone)
        session.deploy()
        session.close()
    session = open_with(runtime_app.section, gone)  # a client session opens the runtime's queue
    try:
        assert f"'{QUEUE}-{gone.name}'" in (session.remove() or "")
        with pytest.raises(ConfigError, match="not deployed"):
            session.prepare()
    finally:
        session.close()
    with pytest.raises(ResourceNotFoundError):
        QueueClient.from_connection_string(azurite.connection_string, f"{QUEUE}-{gone.name}").get_queue_properties()
