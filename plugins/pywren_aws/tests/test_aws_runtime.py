"""Runtimes on Lambda, end to end: ``pywren deploy`` puts a numpy runtime (and the default package)
into functions of their own on moto, and the Lambda stand-in runs the DEPLOYED packages, fetched back
from moto, under ``awslambdaric`` in a fresh virtual environment that holds only what Lambda's Python
runtime provides (boto3, awslambdaric): nothing of the tests' environment.

The runtimes are built once per test session into a temporary ``PYWREN_RUNTIMES_DIR`` (numpy from a
manylinux wheel, through the package index), as is the clean interpreter.
"""

from __future__ import annotations

import io
import os
import sys
import sysconfig
import time
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import pywren_core as pw
import yaml
from pywren_core import cli, doctor
from pywren_core import runtime as runtimes
from pywren_core.errors import ConfigError, RuntimeBuildError, RuntimeMismatchError
from pywren_core.plugins import load_backend
from pywren_core.testing import LocalServer

from pywren_aws import deploy
from pywren_aws.plugin import PLATFORM

import aws_services
from conftest import BUCKET, PLANTED, REGION

#: The configured function_name: the default package runs as it, each runtime as ``<it>-<runtime>``.
BASE = "pywren-art"
#: The client's numpy release: the check before invoking refuses a runtime with another one.
NUMPY = {"requirements": [f"numpy=={metadata.version('numpy')}"]}
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="session")
def runtimes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runtimes")


@pytest.fixture(autouse=True)
def _runtimes_dir(isolated_pywren: None, runtimes_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test finds the session's runtimes (the isolation fixture drops PYWREN_* variables)."""
    monkeypatch.setenv(runtimes.DIR_ENV, str(runtimes_dir))


@pytest.fixture(scope="session")
def numpy_runtime(runtimes_dir: Path) -> runtimes.Runtime:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(runtimes.DIR_ENV, str(runtimes_dir))
        started = time.monotonic()
        built = runtimes.build(runtimes.RuntimeSpec.from_config(NUMPY, {}), PLATFORM)
        TIMINGS["build"] = time.monotonic() - started
    return built


@pytest.fixture(scope="session")
def clean_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return aws_services.lambda_python(tmp_path_factory.mktemp("lambda-python") / "venv")


@pytest.fixture(scope="session")
def role(moto: LocalServer) -> str:
    iam = boto3.client("iam", endpoint_url=moto.url, region_name=REGION)
    trust = '{"Version": "2012-10-17", "Statement": []}'
    try:
        return iam.create_role(RoleName="pywren-art", AssumeRolePolicyDocument=trust)["Role"]["Arn"]
    except iam.exceptions.EntityAlreadyExistsException:
        return iam.get_role(RoleName="pywren-art")["Role"]["Arn"]


def _config(moto: LocalServer, role: str, **extra: Any) -> dict[str, Any]:
    return {"backend": "aws", "progress": False, **extra,
            "aws": {"bucket": BUCKET, "region": REGION, "function_name": BASE, "endpoint_url": moto.url,
                    "role_arn": role}}


@pytest.fixture(scope="session")
def deployed(moto: LocalServer, bucket: str, role: str, numpy_runtime: runtimes.Runtime,
             tmp_path_factory: pytest.TempPathFactory, runtimes_dir: Path) -> dict[str, str]:
    """``pywren deploy`` of the numpy runtime and of the default package, against moto's Lambda API.
    Packages go through S3 here (the direct-upload limit lowered to 0): moto keeps no copy of a
    direct upload the stand-in could fetch, and the staged path is the one a real runtime over 50 MB takes."""
    folder = tmp_path_factory.mktemp("deploy")
    with pytest.MonkeyPatch.context() as mp:
        for var in os.environ:
            if var.startswith("PYWREN_"):
                mp.delenv(var)
        mp.setenv("AWS_ENDPOINT_URL_LAMBDA", moto.url)
        mp.setenv(runtimes.DIR_ENV, str(runtimes_dir))
        mp.setenv("HOME", str(folder))
        mp.setattr(deploy, "MAX_ZIP_BYTES", 0)
        for name, config in (("numpy", _config(moto, role, runtime=NUMPY)), ("default", _config(moto, role))):
            path = folder / f"{name}.yaml"
            path.write_text(yaml.safe_dump(config))
            mp.setenv("PYWREN_CONFIG_FILE", str(path))
            started = time.monotonic()
            assert cli.main(["deploy"]) == 0
            TIMINGS[f"deploy {name}"] = time.monotonic() - started
    return {"numpy": f"{BASE}-{numpy_runtime.name}", "default": BASE}


def _stand_in(name: str, moto: LocalServer, python: Path, service_logs: Path,
              tmp_path_factory: pytest.TempPathFactory) -> LocalServer:
    env = aws_services.lambda_env(moto.url, tmp_path_factory.mktemp("unused-task-root"), PLANTED)
    deployed = {"moto_url": moto.url, "bucket": BUCKET, "python": str(python),
                "code_dir": str(tmp_path_factory.mktemp(f"task-{name}"))}
    return aws_services.start_lambda(service_logs, name, env, runtimes=2, deployed=deployed)


@pytest.fixture(scope="session")
def numpy_lambda(deployed: dict[str, str], moto: LocalServer, clean_python: Path, service_logs: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    service = _stand_in(deployed["numpy"], moto, clean_python, service_logs, tmp_path_factory)
    yield service
    service.stop()


@pytest.fixture(scope="session")
def default_lambda(deployed: dict[str, str], moto: LocalServer, clean_python: Path, service_logs: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    service = _stand_in(deployed["default"], moto, clean_python, service_logs, tmp_path_factory)
    yield service
    service.stop()


@pytest.fixture
def numpy_config(moto: LocalServer, role: str, numpy_lambda: LocalServer,
                 monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", numpy_lambda.url)
    aws_services.control(numpy_lambda, "reset")
    return _config(moto, role, runtime=NUMPY)


#: Where this test environment's packages are: none of it may be on a worker's path.
OURS = tuple({str(Path(pw.__file__).resolve().parents[1]), sysconfig.get_paths()["purelib"],
              str(Path(deploy.__file__).resolve().parents[1])})


def numpy_sum(x: int) -> dict[str, Any]:
    """Refers to numpy by reference (a module global), as users' code does."""
    return {"value": float(np.arange(x).sum() + np.ones(3).sum()), "numpy": np.__file__,
            "multiarray": np._core._multiarray_umath.__file__, "python": sys.executable, "path": sys.path}


def test_deploy_puts_each_runtime_in_a_function_of_its_own(deployed: dict[str, str], moto: LocalServer,
                                                           numpy_runtime: runtimes.Runtime) -> None:
    client = boto3.client("lambda", endpoint_url=moto.url, region_name=REGION)
    functions = {k: client.get_function(FunctionName=v) for k, v in deployed.items()}
    assert {k: f["Configuration"]["Handler"] for k, f in functions.items()} == {
        "numpy": "pywren_aws.handler.lambda_handler", "default": "pywren_aws.handler.lambda_handler"}
    assert numpy_runtime.name in functions["numpy"]["Configuration"]["Description"]
    # Both packages were staged in the job bucket (over the lowered direct-upload limit); each holds the
    # client's pywren-core and pywren-aws with the plugin's entry point, and only the runtime numpy.
    s3 = boto3.client("s3", endpoint_url=moto.url, region_name=REGION)
    for kind, name in deployed.items():
        (key,) = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"pywren.deploy/{name}/")["Contents"]]
        names = zipfile.ZipFile(io.BytesIO(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())).namelist()
        assert {"pywren_core/worker.py", "pywren_aws/handler.py", "cloudpickle/__init__.py"} <= set(names)
        assert any(n.startswith("pywren_aws-") and n.endswith("entry_points.txt") for n in names)
        has_numpy = any(n.startswith("numpy/_core/_multiarray_umath.") and n.endswith(".so") for n in names)
        assert has_numpy == (kind == "numpy")
        assert not {n.split("/")[0] for n in names} & {"boto3", "botocore", "urllib3"}


def test_a_numpy_map_runs_in_the_deployed_runtime(numpy_config: dict[str, Any], numpy_lambda: LocalServer,
                                                  clean_python: Path) -> None:
    started = time.monotonic()
    with pw.executor(numpy_config) as ex:
        results = ex.get_result(ex.map(numpy_sum, [1, 2, 3, 4]), timeout=120)
    TIMINGS["numpy map"] = time.monotonic() - started
    assert [r["value"] for r in results] == [3.0, 4.0, 6.0, 9.0]
    code_dir = aws_services.control(numpy_lambda, "stats")["code"]["dir"]
    for result in results:  # numpy (a compiled extension) from the unpacked package, in the clean interpreter
        assert Path(result["numpy"]).is_relative_to(code_dir)
        assert Path(result["multiarray"]).is_relative_to(code_dir)
        assert Path(result["python"]).parent == clean_python.parent
        assert not [p for p in result["path"] if p.startswith(OURS)], (OURS, result["path"])


def needs_pytest(x: float) -> bool:
    return pytest.approx(x) == x


def test_a_function_needing_what_the_runtime_lacks_is_refused_before_invoking(
        numpy_config: dict[str, Any], numpy_lambda: LocalServer) -> None:
    with pw.executor(numpy_config) as ex:
        with pytest.raises(RuntimeMismatchError, match=r"module 'pytest'.*add 'pytest=="):
            ex.map(needs_pytest, [1.0, 2.0])
    assert aws_services.control(numpy_lambda, "stats")["accepted"] == 0  # nothing was invoked


def test_doctor_reports_what_the_workers_lack(numpy_config: dict[str, Any]) -> None:
    with pw.executor(numpy_config) as ex:
        rows = {row.what: row for row in doctor.check(ex, numpy_sum, packages=["pytest"], timeout=120)}
    assert (rows["pytest"].worker, rows["pytest"].verdict) == ("missing", "breaks")
    assert rows["numpy"].verdict == "same"
    assert rows["pywren-core"].verdict == "same"


def test_the_default_package_runs_in_a_clean_interpreter(moto: LocalServer, role: str, default_lambda: LocalServer,
                                                         clean_python: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No runtime configured: the function is ``function_name`` with today's package (pywren-core,
    pywren-aws and their pure-Python dependencies), which runs without numpy."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", default_lambda.url)

    def where(x: int) -> tuple[int, str, str]:
        import importlib.util

        import pywren_core

        return x * x, pywren_core.__file__, str(importlib.util.find_spec("numpy"))

    with pw.executor(_config(moto, role)) as ex:
        results = ex.get_result(ex.map(where, range(5)), timeout=120)
    code_dir = aws_services.control(default_lambda, "stats")["code"]["dir"]
    assert [r[0] for r in results] == [0, 1, 4, 9, 16]
    assert all(Path(r[1]).is_relative_to(code_dir) and r[2] == "None" for r in results)


def test_a_runtime_not_deployed_is_an_error_naming_pywren_deploy(moto: LocalServer, role: str,
                                                                 numpy_lambda: LocalServer,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", numpy_lambda.url)
    config = _config(moto, role, runtime=NUMPY)
    config["aws"]["function_name"] = "pywren-never-deployed"
    with pw.executor(config) as ex:
        with pytest.raises(ConfigError, match=r"is not deployed \(no function pywren-never-deployed-rt-.*"
                                              r"run `pywren deploy`"):
            ex.get_result(ex.map(numpy_sum, [1]), timeout=60)


def test_an_image_runtime_is_deployed_as_an_image(moto: LocalServer, bucket: str, role: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime that is the user's container image (on Lambda's base image, see ``pywren runtime
    dockerfile``) deploys as PackageType=Image. Only the control plane is tested: no container engine here."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", moto.url)
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/pywren-ml:1"
    built = runtimes.build(runtimes.RuntimeSpec(image=image), PLATFORM)
    session = load_backend("aws").open(_section(_config(moto, role)["aws"]), runtime=built)
    assert session.deploy().startswith(f"created Lambda function {BASE}-{built.name} (runtime {built.name}")
    function = boto3.client("lambda", endpoint_url=moto.url, region_name=REGION).get_function(
        FunctionName=f"{BASE}-{built.name}")
    assert function["Configuration"]["PackageType"] == "Image"
    assert function["Code"]["ImageUri"] == image
    session.close()


def _section(section: dict[str, Any]) -> dict[str, Any]:
    from pywren_core import config as config_module

    return config_module.load({"backend": "aws", "aws": section}).backend_section(load_backend("aws").info)


def test_a_runtime_for_another_architecture_is_refused(moto: LocalServer, role: str,
                                                       numpy_runtime: runtimes.Runtime) -> None:
    section = _section({**_config(moto, role)["aws"], "architecture": "arm64"})
    with pytest.raises(ConfigError, match="built for x86_64"):
        load_backend("aws").open(section, runtime=numpy_runtime)


def test_remove_deletes_every_runtime_function(moto: LocalServer, bucket: str, role: str,
                                               numpy_runtime: runtimes.Runtime,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Its own functions (another base name), so the session's deployed ones stay."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", moto.url)
    section = _section({**_config(moto, role)["aws"], "function_name": "pywren-gone"})
    backend = load_backend("aws")
    for rt in (None, numpy_runtime):
        session = backend.open(section, runtime=rt)
        session.deploy()
        session.close()
    only = backend.open(section, runtime=numpy_runtime)  # pywren remove --runtime NAME
    assert only.remove() == f"removed Lambda function pywren-gone-{numpy_runtime.name}"
    only.close()
    for rt in (None, numpy_runtime):
        session = backend.open(section, runtime=rt)
        session.deploy()
        session.close()
    session = backend.open(section)
    assert session.remove() == f"removed Lambda functions pywren-gone, pywren-gone-{numpy_runtime.name}"
    assert session.remove() == "no Lambda function pywren-gone to remove"
    session.close()


def _fake_runtime(folder: Path, wheels: dict[str, list[str]]) -> runtimes.Runtime:
    for name, tags in wheels.items():
        (folder / "site" / f"{name}.dist-info").mkdir(parents=True)
        (folder / "site" / f"{name}.dist-info" / "WHEEL").write_text("".join(f"Tag: {t}\n" for t in tags))
    return runtimes.Runtime("rt-fake", folder, {"python": "3.11"})


def test_a_wheel_for_a_newer_glibc_than_lambdas_is_refused(tmp_path: Path) -> None:
    """Lambda's python3.11 runs on Amazon Linux 2 (glibc 2.26): numpy 2.3+ wheels (manylinux_2_28) cannot load."""
    fine = _fake_runtime(tmp_path / "fine", {
        "attrs-26.1.0": ["py3-none-any"],
        "numpy-2.2.6": ["cp311-cp311-manylinux_2_17_x86_64", "cp311-cp311-manylinux2014_x86_64"],
        "pyyaml-6.0.4": ["cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64", "cp311-cp311-manylinux_2_28_x86_64"],
    })
    deploy.check_glibc(fine, "3.11")
    new = _fake_runtime(tmp_path / "new", {"numpy-2.4.6": ["cp311-cp311-manylinux_2_27_x86_64",
                                                           "cp311-cp311-manylinux_2_28_x86_64"]})
    with pytest.raises(RuntimeBuildError, match=r"python3.11, which runs on Amazon Linux 2 \(glibc 2.26\): "
                                                         r"numpy 2.4.6 needs glibc 2.27"):
        deploy.check_glibc(new, "3.11")
    deploy.check_glibc(new, "3.12")  # Amazon Linux 2023: glibc 2.34


def test_report_timings() -> None:
    """Not a check: the figures of this module's run, printed for the README (``-s`` shows them)."""
    print({k: round(v, 2) for k, v in TIMINGS.items()})
