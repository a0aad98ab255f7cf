"""``pywren deploy`` / ``remove``: the package builder, and the Lambda API calls against moto."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import boto3
import pytest
from pywren_core.errors import ConfigError
from pywren_core.testing import LocalServer, open_session

from pywren_aws import deploy

from conftest import REGION


@pytest.fixture(scope="module")
def package() -> bytes:
    return deploy.build_zip()


def test_package_holds_the_worker_and_its_pure_python_dependencies(package: bytes) -> None:
    names = zipfile.ZipFile(io.BytesIO(package)).namelist()
    tops = {name.split("/")[0] for name in names}
    for module in ("pywren_core/worker.py", "pywren_aws/handler.py", "pywren_aws/plugin.py", "cloudpickle/__init__.py",
                   "pluggy/__init__.py", "attr/__init__.py", "tqdm/__init__.py"):
        assert module in names
    entry_points = next(n for n in names if n.startswith("pywren_aws-") and n.endswith(".dist-info/entry_points.txt"))
    assert "aws = pywren_aws.plugin" in zipfile.ZipFile(io.BytesIO(package)).read(entry_points).decode()
    assert not tops & {"boto3", "botocore", "s3transfer", "urllib3", "dateutil", "jmespath", "tests"}
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".so", ".pth", "RECORD"))]
    assert len(package) < deploy.MAX_ZIP_BYTES
    assert deploy.build_zip() == package  # reproducible, so an unchanged install keeps its CodeSha256


def _installed_path(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    return Path(spec.submodule_search_locations[0] if spec.submodule_search_locations else spec.origin)


def test_package_loads_the_backend_with_only_what_lambda_provides(package: bytes, tmp_path: Path) -> None:
    """No site-packages: the zip and the SDK that Lambda's runtime ships must be enough."""
    task = tmp_path / "task"
    zipfile.ZipFile(io.BytesIO(package)).extractall(task)
    provided = tmp_path / "lambda-runtime"
    provided.mkdir()
    for module in ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six", "urllib3"):
        source = _installed_path(module)
        (provided / source.name).symlink_to(source)
    code = ("import sys; sys.path[:0] = sys.argv[1:3]; from pywren_core.plugins import load_backend; "
            "backend = load_backend('aws'); import pywren_aws.handler as h; "
            "print(backend.entry.distribution, backend.info.handler, h.__file__)")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(task), str(provided)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    distribution, handler, handler_file = out.stdout.split()
    assert (distribution, handler) == ("pywren-aws", "pywren_aws.handler.lambda_handler")
    assert Path(handler_file).is_relative_to(task)


@pytest.fixture
def moto_lambda(moto: LocalServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Lambda's control plane on moto (which stores functions but cannot run them without Docker)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", moto.url)
    return boto3.client("lambda", endpoint_url=moto.url, region_name=REGION)


@pytest.fixture
def role_arn(moto: LocalServer) -> str:
    iam = boto3.client("iam", endpoint_url=moto.url, region_name=REGION)
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                     "Principal": {"Service": "lambda.amazonaws.com"}}]}
    try:
        return iam.create_role(RoleName="pywren-runner", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    except iam.exceptions.EntityAlreadyExistsException:
        return iam.get_role(RoleName="pywren-runner")["Role"]["Arn"]


def test_deploy_creates_updates_and_removes_the_function(pywren_config: dict[str, Any], moto_lambda: Any,
                                                         role_arn: str, package: bytes) -> None:
    aws = {**pywren_config["aws"], "function_name": "pywren-deployed", "role_arn": role_arn,
           "memory": 512, "function_timeout": 120}
    session = open_session({**pywren_config, "aws": aws})
    assert session.deploy().startswith("created Lambda function pywren-deployed")
    function = moto_lambda.get_function(FunctionName="pywren-deployed")["Configuration"]
    expected = {"Runtime": deploy.runtime(), "Handler": "pywren_aws.handler.lambda_handler", "Role": role_arn,
                "MemorySize": 512, "Timeout": 120, "State": "Active", "CodeSize": len(package)}
    assert {k: function[k] for k in expected} == expected
    retries = moto_lambda.get_function_event_invoke_config(FunctionName="pywren-deployed")
    assert retries["MaximumRetryAttempts"] == 0  # the core retries calls itself

    session = open_session({**pywren_config, "aws": {**aws, "memory": 2048}})
    assert session.deploy().startswith("updated Lambda function pywren-deployed")
    assert moto_lambda.get_function(FunctionName="pywren-deployed")["Configuration"]["MemorySize"] == 2048

    assert session.remove() == "removed Lambda function pywren-deployed"
    with pytest.raises(moto_lambda.exceptions.ResourceNotFoundException):
        moto_lambda.get_function(FunctionName="pywren-deployed")
    assert session.remove() == "no Lambda function pywren-deployed to remove"
    session.close()


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1"])
def test_deploy_creates_a_missing_bucket_in_its_region(pywren_config: dict[str, Any], moto: LocalServer,
                                                       moto_lambda: Any, role_arn: str, region: str) -> None:
    """The first map needs the bucket: deploy makes it (us-east-1 refuses a LocationConstraint, others need one)."""
    bucket = f"pywren-made-by-deploy-{region}"
    aws = {**pywren_config["aws"], "bucket": bucket, "region": region, "function_name": f"pywren-{region}",
           "role_arn": role_arn}
    session = open_session({**pywren_config, "aws": aws})
    assert session.deploy().endswith(f"; created S3 bucket {bucket} in {region}")
    location = boto3.client("s3", endpoint_url=moto.url, region_name=region).get_bucket_location(Bucket=bucket)
    assert location["LocationConstraint"] == (None if region == "us-east-1" else region)
    assert "bucket" not in session.deploy()  # it exists now: nothing to say about it
    session.put("pywren.jobs/probe", b"ok")
    assert session.get("pywren.jobs/probe") == b"ok"
    session.remove()
    session.close()


def test_deploy_needs_a_role(pywren_config: dict[str, Any], moto_lambda: Any) -> None:
    session = open_session(pywren_config)
    with pytest.raises(ConfigError, match="aws.role_arn"):
        session.deploy()
    session.close()
