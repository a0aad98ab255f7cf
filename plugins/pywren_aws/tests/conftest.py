"""Fixtures: moto and the Lambda stand-in as real local servers, and fake but recognisable credentials.

The credentials are planted in the environment of the tests and of the function's runtime
processes, so a test can scan everything that travelled or was stored for them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from pywren_core.testing import LocalServer, isolated_pywren  # noqa: F401  (autouse: the machine's pywren setup stays out)

import aws_services

FUNCTION = "pywren-tests"
BUCKET = "pywren-tests"
#: A second bucket for data at s3:// URLs: the data hooks reach any bucket, not only the job bucket.
DATA_BUCKET = "pywren-tests-data"
REGION = "us-east-1"
PLANTED = {
    "AWS_ACCESS_KEY_ID": "AKIAPLANTEDKEY7Q3XZ",
    "AWS_SECRET_ACCESS_KEY": "planted-SECRET-do-not-leak/4f9c2e7a81b3",
    "AWS_SESSION_TOKEN": "planted-TOKEN-do-not-leak-b5d0e13c",
}


@pytest.fixture(scope="session", autouse=True)
def aws_environment() -> Iterator[None]:
    """Only the planted credentials and no AWS setting of this machine (profiles, endpoints) apply."""
    with pytest.MonkeyPatch.context() as mp:
        for var in list(os.environ):
            if var.startswith("AWS_"):
                mp.delenv(var)
        for var, value in PLANTED.items():
            mp.setenv(var, value)
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        # Any AWS service a test does not point at a local server goes to a closed port of this machine,
        # never to AWS.
        mp.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        yield


@pytest.fixture(scope="session")
def service_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service-logs")


@pytest.fixture(scope="session")
def moto(service_logs: Path) -> Iterator[LocalServer]:
    """moto; the clients' SQS (the completion-notice queues) reaches it by AWS_ENDPOINT_URL_SQS."""
    service = aws_services.start_moto(service_logs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL_SQS", service.url)
        yield service
    service.stop()


@pytest.fixture(scope="session")
def lambda_server(moto: LocalServer, service_logs: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalServer]:
    """The Lambda stand-in running the real handler; boto3 in the tests reaches it by AWS_ENDPOINT_URL_LAMBDA."""
    env = aws_services.lambda_env(moto.url, tmp_path_factory.mktemp("task-root"), PLANTED)
    service = aws_services.start_lambda(service_logs, FUNCTION, env)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL_LAMBDA", service.url)
        yield service
    service.stop()


@pytest.fixture(scope="session")
def bucket(moto: LocalServer) -> str:
    boto3.client("s3", endpoint_url=moto.url, region_name=REGION).create_bucket(Bucket=BUCKET)
    return BUCKET


@pytest.fixture(scope="session")
def data_bucket(moto: LocalServer) -> str:
    boto3.client("s3", endpoint_url=moto.url, region_name=REGION).create_bucket(Bucket=DATA_BUCKET)
    return DATA_BUCKET


@pytest.fixture(scope="session")
def pywren_data_url(data_bucket: str) -> str:
    """Where the data tests (the core's DataConformance among them) write and read their objects."""
    return f"s3://{data_bucket}/"


@pytest.fixture
def s3(moto: LocalServer) -> Any:
    """A plain boto3 client on moto, to look at what the plugin did."""
    return boto3.client("s3", endpoint_url=moto.url, region_name=REGION)


@pytest.fixture
def pywren_config(moto: LocalServer, bucket: str) -> dict[str, Any]:
    return {"backend": "aws",
            "aws": {"bucket": bucket, "region": REGION, "function_name": FUNCTION, "endpoint_url": moto.url}}
