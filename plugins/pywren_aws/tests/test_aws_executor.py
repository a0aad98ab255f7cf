"""End to end: the executor invokes the real handler under awslambdaric through the Lambda stand-in,
with every object in moto's S3."""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from typing import Any

import pytest
import pywren_core as pw
from pywren_core.errors import CallTimeoutError, InvokeError
from pywren_core.testing import (
    BenchConformance,
    ExecutorConformance,
    FaultConformance,
    LocalServer,
    free_port,
    sleep_then_return,
    square,
)

import aws_services
from conftest import PLANTED


@pytest.fixture
def pywren_config(pywren_config: dict[str, Any], lambda_server: LocalServer) -> dict[str, Any]:
    return pywren_config


class TestLambdaExecutor(ExecutorConformance):
    map_size = 200
    short_timeout = 3.0
    # A fresh runtime process replaces one ended by a timeout; on a loaded machine that takes a while.
    lost_grace = 20.0


def test_throttled_invocations_are_retried_not_lost(pywren_config: dict[str, Any],
                                                    lambda_server: LocalServer) -> None:
    aws_services.control(lambda_server, "reset")
    aws_services.control(lambda_server, "throttle", seconds=3)
    with pw.executor(pywren_config, progress=False) as ex:
        futures = ex.map(square, range(100))
        assert ex.get_result(futures, timeout=180) == [x * x for x in range(100)]
    stats = aws_services.control(lambda_server, "stats")
    assert stats["throttled"] > 0
    assert stats["accepted"] == 100  # every call was accepted once: none lost, none doubled
    assert sum(f.stats["invoke_retries"] for f in futures) == stats["throttled"]


def test_lost_answers_are_invoked_again_and_counted(pywren_config: dict[str, Any],
                                                    lambda_server: LocalServer) -> None:
    """Lambda accepts every fourth invocation and runs it, but the connection drops before the answer:
    the core invokes again, no call fails, and those calls count a possible duplicate run."""
    aws_services.control(lambda_server, "reset")
    aws_services.control(lambda_server, "drop", every=4)
    try:
        with pw.executor(pywren_config, progress=False) as ex:
            futures = ex.map(square, range(100))
            assert ex.get_result(futures, timeout=180) == [x * x for x in range(100)]
    finally:
        aws_services.control(lambda_server, "drop", every=0)
    stats = aws_services.control(lambda_server, "stats")
    assert stats["dropped"] >= 100 // 4  # a call's second invocation may be dropped too
    assert sum(f.stats.get("ambiguous_invokes", 0) for f in futures) == stats["dropped"]
    dropped = {call["call_id"] for payload in aws_services.control(lambda_server, "dropped")
               for call in json.loads(payload)["calls"]}
    assert all(f.stats.get("ambiguous_invokes", 0) >= 1 for f in futures if f.call_id in dropped)
    assert all(f.stats.get("ambiguous_invokes", 0) == 0 for f in futures if f.call_id not in dropped)


def test_unreachable_lambda_endpoint_fails_the_calls_at_once(pywren_config: dict[str, Any],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused connection is neither throttling nor ambiguous: an InvokeError naming the endpoint."""
    endpoint = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_LAMBDA", endpoint)
    with pw.executor(pywren_config, progress=False) as ex:
        started = time.monotonic()
        futures = ex.map(square, range(3))
        for future in futures:
            with pytest.raises(InvokeError, match=re.escape(endpoint)):
                future.result(timeout=60)
        assert time.monotonic() - started < 5


def test_handler_stops_before_the_platform_time_limit(pywren_config: dict[str, Any],
                                                      lambda_server: LocalServer) -> None:
    """The function's own limit (not the job's timeout) is what ends this call: the worker reports it."""
    aws_services.control(lambda_server, "configure", timeout=6)
    try:
        with pw.executor(pywren_config, progress=False, retries=0) as ex:
            started = time.monotonic()
            future = ex.call_async(sleep_then_return, 120)
            with pytest.raises(CallTimeoutError, match="platform's time limit"):
                future.result(timeout=90)
            assert time.monotonic() - started < 60
    finally:
        aws_services.control(lambda_server, "configure", timeout=60)


def test_missing_function_fails_the_calls(pywren_config: dict[str, Any], lambda_server: LocalServer) -> None:
    config = {**pywren_config, "aws": {**pywren_config["aws"], "function_name": "not-deployed"}}
    with pw.executor(config, progress=False) as ex:
        with pytest.raises(InvokeError, match="ResourceNotFoundException"):
            ex.call_async(square, 3).result(timeout=60)


def _texts(value: Any) -> list[bytes]:
    """Every string inside a JSON value, raw and, when it is base64, decoded too."""
    if isinstance(value, dict):
        return [t for v in value.values() for t in _texts(v)]
    if isinstance(value, list):
        return [t for v in value for t in _texts(v)]
    if not isinstance(value, str):
        return []
    found = [value.encode()]
    try:
        found.append(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        pass
    return found


def test_no_credential_travels_or_is_stored(pywren_config: dict[str, Any], lambda_server: LocalServer,
                                           s3: Any, bucket: str, service_logs: Any) -> None:
    aws_services.control(lambda_server, "reset")
    with pw.executor(pywren_config, progress=False, cleanup=False) as ex:
        small = ex.map(square, range(20))
        large = ex.call_async(len, b"x" * 300_000)  # arguments over the payload limit go through S3
        assert ex.get_result(small) == [x * x for x in range(20)] and large.result(timeout=60) == 300_000
        prefix = f"pywren.jobs/{ex.executor_id}/"
    payloads = aws_services.control(lambda_server, "payloads")
    keys = [obj["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for obj in page.get("Contents", ())]
    assert len(payloads) == 21 and len(keys) >= 21
    haystacks = [t for p in payloads for t in _texts(json.loads(p))] + [p.encode() for p in payloads]
    haystacks += [s3.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys]
    haystacks += [path.read_bytes() for path in service_logs.glob("lambda-*.log")]
    for name, secret in PLANTED.items():
        leaks = [h[:200] for h in haystacks if secret.encode() in h]
        assert not leaks, f"{name} found in {leaks}"
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys]})


class TestLambdaFaults(FaultConformance):
    """The core's fault suite (dropped and throttled invocations, storage errors, dying workers,
    corrupted reads) through boto3, the Lambda stand-in and moto."""

    fault_calls = 200
    lost_grace = 20.0


class TestLambdaBench(BenchConformance):
    """``pywren bench``'s standard suite, small, through the Lambda stand-in and moto."""
