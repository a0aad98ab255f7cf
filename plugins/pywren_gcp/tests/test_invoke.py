"""Invocation edge cases through a recording proxy in front of the real handler: credentials never
leave the client except in the Authorization header; refusals are waited out; bad requests are refused."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import pywren_core as pw
from pywren_core.errors import InvokeError
from pywren_core.testing import LocalServer, echo_and_print, fail_with, free_port, square

from conftest import gcp_config
from servers import BUCKET, RecordingProxy, raw_client

TOKEN = "PLANTED-invoke-token-6f1d2c"
KEY_MARKER = "PLANTED-private-key-material-93ab"


@pytest.fixture
def proxy(function_url: str) -> Iterator[RecordingProxy]:
    proxy = RecordingProxy(int(function_url.rsplit(":", 1)[1]))
    yield proxy
    proxy.close()


def _planted_credentials(tmp_path: Path) -> Path:
    path = tmp_path / "PLANTED-credentials-file.json"
    path.write_text(json.dumps({"type": "service_account", "private_key": KEY_MARKER, "client_email": "x@y.z"}))
    return path


def test_planted_secrets_never_leave_the_client(storage_url: str, proxy: RecordingProxy, tmp_path: Path,
                                                fake_gcs: tuple[LocalServer, str], function: tuple[LocalServer, str],
                                                caplog: pytest.LogCaptureFixture,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    credentials_file = _planted_credentials(tmp_path)
    config = gcp_config(storage_url, proxy.url, authenticated=True, invoke_token=TOKEN,
                        credentials_file=str(credentials_file))
    caplog.set_level(logging.DEBUG)
    with pw.executor(config, progress=False, cleanup=False) as ex:
        futures = ex.map(echo_and_print, ["a", "b", "c"]) + [ex.call_async(fail_with, "boom"),
                                                             ex.call_async(square, b"x" * 300_000)]
        pw.wait(futures)
        executor_id = ex.executor_id
    assert [f.result() for f in futures[:3]] == ["a", "b", "c"]
    assert isinstance(futures[3].exception(), KeyError) and isinstance(futures[4].exception(), TypeError)

    secrets = [TOKEN, KEY_MARKER, str(credentials_file), credentials_file.name]
    assert proxy.requests, "no invocation went through the proxy"
    for head, body in proxy.requests:
        assert f"Authorization: Bearer {TOKEN}".encode() in head  # the token is used, in its header only
        for secret in secrets:
            assert secret.encode() not in body
        for payload in json.loads(body)["payloads"]:
            assert not {"invoke_token", "credentials_file"} & set(payload["config"])

    stored = list(raw_client(storage_url).list_blobs(BUCKET, prefix=f"pywren.jobs/{executor_id}/"))
    assert len(stored) >= 6  # the function and five statuses
    for blob in stored:
        data = blob.download_as_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f"{secret!r} found in {blob.name}"

    outputs = [caplog.text, *capsys.readouterr(), fake_gcs[0].log_tail(), function[0].log_tail()]
    outputs += [str(f.exception()) + str(f.exception().__cause__) for f in futures[3:]]
    for text in outputs:
        for secret in secrets:
            assert secret not in text


def test_refused_invocations_are_waited_out(storage_url: str, function_url: str) -> None:
    proxy = RecordingProxy(int(function_url.rsplit(":", 1)[1]), refuse=6, refuse_status=429)
    try:
        with pw.executor(gcp_config(storage_url, proxy.url), progress=False) as ex:
            futures = ex.map(square, range(4))
            assert ex.get_result(futures, timeout=120) == [0, 1, 4, 9]
        assert proxy.refused == 6
        assert sum(f.stats["invoke_retries"] for f in futures) == 6
    finally:
        proxy.close()


def test_server_errors_are_retried_too(storage_url: str, function_url: str) -> None:
    proxy = RecordingProxy(int(function_url.rsplit(":", 1)[1]), refuse=2, refuse_status=503)
    try:
        with pw.executor(gcp_config(storage_url, proxy.url), progress=False) as ex:
            assert ex.call_async(square, 5).result(timeout=120) == 25
    finally:
        proxy.close()


def test_a_request_that_is_not_an_invocation_is_refused(function_url: str) -> None:
    import requests

    response = requests.post(function_url, data=b"not json", timeout=30)
    assert response.status_code == 400 and "not a pywren invocation" in response.text


def test_a_missing_function_fails_the_calls(storage_url: str, function_url: str) -> None:
    proxy = RecordingProxy(int(function_url.rsplit(":", 1)[1]), refuse=10**6, refuse_status=404)
    try:
        with pw.executor(gcp_config(storage_url, proxy.url), progress=False) as ex:
            future = ex.call_async(square, 3)
            with pytest.raises(InvokeError, match="HTTP 404"):
                future.result(timeout=60)
    finally:
        proxy.close()


def test_nothing_listening_fails_the_calls_at_once(storage_url: str) -> None:
    """A refused connection is not throttling and not ambiguous: an InvokeError naming the URL, at once."""
    url = f"http://127.0.0.1:{free_port()}"
    with pw.executor(gcp_config(storage_url, url), progress=False) as ex:
        started = time.monotonic()
        futures = ex.map(square, range(3))
        for future in futures:
            with pytest.raises(InvokeError, match=f"cannot connect to the function at {url}"):
                future.result(timeout=60)
        assert time.monotonic() - started < 5
