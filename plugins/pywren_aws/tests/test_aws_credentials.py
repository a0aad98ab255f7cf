"""Without usable AWS credentials every command says what to set, the same way, and prints no
traceback and no secret. The CLI runs in a process of its own with no credentials in its
environment, no instance-role lookup, and S3 and Lambda pointed at the local stand-ins."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pywren_core.testing import LocalServer

from conftest import BUCKET, FUNCTION, PLANTED, REGION

HINT = "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE naming a profile"


def pywren(argv: list[str], tmp_path: Path, moto: LocalServer, lambda_server: LocalServer,
           **aws: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYWREN_"))}
    env.update(HOME=str(tmp_path), AWS_DEFAULT_REGION=REGION, AWS_CONFIG_FILE=os.devnull,
               AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_EC2_METADATA_DISABLED="true",
               AWS_ENDPOINT_URL_S3=moto.url, AWS_ENDPOINT_URL_LAMBDA=lambda_server.url,
               AWS_ENDPOINT_URL_SQS=moto.url, PYWREN_BACKEND="aws",
               PYWREN_AWS_BUCKET=BUCKET, PYWREN_AWS_FUNCTION_NAME=FUNCTION,
               PYWREN_AWS_ROLE_ARN="arn:aws:iam::123456789012:role/pywren", **aws)
    return subprocess.run([sys.executable, "-m", "pywren_core.cli", *argv], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("argv", [["test", "--calls", "2"], ["clean", "--all"], ["deploy"], ["remove"]])
def test_every_command_explains_missing_credentials(argv: list[str], tmp_path: Path, moto: LocalServer,
                                                    lambda_server: LocalServer) -> None:
    done = pywren(argv, tmp_path, moto, lambda_server)
    assert done.returncode == 1, done.stderr
    assert re.fullmatch(rf"pywren: [^\n]+: no usable AWS credentials \(Unable to locate credentials\); {HINT}[^\n]+\n",
                        done.stderr), done.stderr


@pytest.mark.parametrize(
    ("aws", "detail"),
    [
        ({"AWS_ACCESS_KEY_ID": PLANTED["AWS_ACCESS_KEY_ID"], "AWS_SESSION_TOKEN": PLANTED["AWS_SESSION_TOKEN"]},
         "Partial credentials found in env, missing: AWS_SECRET_ACCESS_KEY"),
        ({"AWS_PROFILE": "no-such-profile"}, r"The config profile \(no-such-profile\) could not be found"),
    ],
    ids=["half the key", "a missing profile"],
)
def test_unusable_credentials_are_explained_without_the_secret(aws: dict[str, str], detail: str, tmp_path: Path,
                                                               moto: LocalServer, lambda_server: LocalServer) -> None:
    """botocore raises these while the session opens, before any request: once a raw traceback."""
    done = pywren(["test"], tmp_path, moto, lambda_server, **aws)
    assert done.returncode == 1, done.stderr
    assert re.fullmatch(rf"pywren: opening the AWS clients: no usable AWS credentials \({detail}\); {HINT}[^\n]+\n",
                        done.stderr), done.stderr
    assert not any(secret in done.stderr + done.stdout for secret in PLANTED.values())
