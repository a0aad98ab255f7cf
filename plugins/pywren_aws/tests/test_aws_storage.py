"""The storage hooks against moto's S3: the core's conformance kit plus AWS's own error cases."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from pywren_core.errors import AccessDeniedError, NotFoundError, StorageError, ThrottledError
from pywren_core.testing import HangUpServer, LocalServer, StorageConformance, open_session

from pywren_aws import storage as s3_storage
from pywren_aws.errors import from_code
from pywren_aws.plugin import S3_TRIES

import aws_services
from conftest import REGION


class TestS3Storage(StorageConformance):
    # Over the plugin's multipart threshold, with a last part shorter than the others.
    large_object_bytes = s3_storage.MULTIPART_THRESHOLD + s3_storage.PART_SIZE // 2

    def test_large_object_is_stored_in_parts(self, storage: Any, prefix: str, s3: Any, bucket: str) -> None:
        data = os.urandom(self.large_object_bytes)
        storage.put(prefix + "parts", data)
        head = s3.head_object(Bucket=bucket, Key=prefix + "parts")
        assert head["ContentLength"] == len(data)
        parts = -(-len(data) // s3_storage.PART_SIZE)
        assert head["ETag"].strip('"').endswith(f"-{parts}")  # a multipart ETag names its part count

    def test_missing_bucket_is_a_storage_error_not_a_missing_key(self, pywren_config: dict[str, Any]) -> None:
        config = {**pywren_config, "aws": {**pywren_config["aws"], "bucket": "no-such-bucket-here"}}
        session = open_session(config)
        with pytest.raises(StorageError, match="NoSuchBucket") as info:
            session.get("anything")
        assert not isinstance(info.value, NotFoundError)
        session.close()


@pytest.fixture(scope="module")
def moto_with_auth(service_logs: Path) -> Iterator[LocalServer]:
    """A second moto that checks IAM permissions after its first three requests (a user, its key, a bucket)."""
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
    service = aws_services.start_moto(service_logs, env, name="moto-auth")
    yield service
    service.stop()


def test_access_denied_is_permission_error(moto_with_auth: LocalServer,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    iam = boto3.client("iam", endpoint_url=moto_with_auth.url, region_name=REGION)
    iam.create_user(UserName="nobody")
    key = iam.create_access_key(UserName="nobody")["AccessKey"]
    boto3.client("s3", endpoint_url=moto_with_auth.url, region_name=REGION).create_bucket(Bucket="guarded")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.delenv("AWS_SESSION_TOKEN")
    session = open_session({"backend": "aws", "aws": {"bucket": "guarded", "region": REGION,
                                                      "endpoint_url": moto_with_auth.url}})
    with pytest.raises(AccessDeniedError, match="AccessDenied") as info:
        session.put("k", b"x")
    assert isinstance(info.value, PermissionError)
    assert key["SecretAccessKey"] not in str(info.value)
    session.close()


@pytest.mark.parametrize(("code", "status", "expected"), [
    ("NoSuchKey", 404, NotFoundError),
    ("404", 404, NotFoundError),
    ("AccessDenied", 403, AccessDeniedError),
    ("", 403, AccessDeniedError),
    ("SlowDown", 503, ThrottledError),
    ("InternalError", 500, ThrottledError),
    ("TooManyRequestsException", 429, ThrottledError),
    ("ServiceException", 500, ThrottledError),
    ("NoSuchBucket", 404, StorageError),
])
def test_error_codes_map_to_core_errors(code: str, status: int, expected: type) -> None:
    error = from_code(code, status, "message")
    assert type(error) is expected


def test_missing_bucket_is_named_before_anything_is_invoked(pywren_config: dict[str, Any]) -> None:
    import pywren_core as pw

    config = {**pywren_config, "aws": {**pywren_config["aws"], "bucket": "no-such-pywren-bucket"}}
    ex = pw.executor(config, progress=False)
    with pytest.raises(StorageError, match=r"s3://no-such-pywren-bucket/.*NoSuchBucket"):
        ex.map(abs, [1, 2])
    ex.shutdown(wait=False)


def test_missing_credentials_say_where_boto3_looked(pywren_config: dict[str, Any],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import pywren_core as pw

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role lookup from a test
    ex = pw.executor(pywren_config, progress=False)
    with pytest.raises(AccessDeniedError, match=r"no usable AWS credentials \(Unable to locate credentials\); set "
                                                 r"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"):
        ex.map(abs, [1])
    ex.shutdown(wait=False)


def test_a_broken_connection_is_tried_twice_then_is_a_storage_error() -> None:
    """Transport failures are botocore's to retry, once; the core adds no tries on top."""
    with HangUpServer() as server:
        session = open_session({"backend": "aws", "aws": {"bucket": "b", "region": REGION, "endpoint_url": server.url}})
        try:
            for operation in (lambda: session.get("k"), lambda: session.put("k", b"x"), lambda: session.list("k")):
                before = server.connections
                with pytest.raises(StorageError, match="ConnectionClosedError"):
                    operation()
                assert server.connections - before == S3_TRIES
        finally:
            session.close()
