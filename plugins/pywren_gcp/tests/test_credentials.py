"""Without Google credentials every command says what to set, the same way, and prints no traceback
and no secret. The CLI runs in a process of its own whose environment holds no credentials and
whose metadata-server lookups go to a closed local port, so nothing leaves 127.0.0.1."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pywren_core.testing import free_port

from servers import BUCKET

HINT = ("no usable Google credentials (DefaultCredentialsError); set gcp.credentials_file (or "
        "GOOGLE_APPLICATION_CREDENTIALS) to a service-account key file, or sign in with "
        "`gcloud auth application-default login`")


def pywren(argv: list[str], tmp_path: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    """``pywren ARGV`` with the gcp backend, ``settings`` as PYWREN_GCP_<KEY>, and no credentials."""
    closed = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYWREN_", "GOOGLE_", "CLOUDSDK_", "GCE_")) and k != "STORAGE_EMULATOR_HOST"}
    env.update(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"), NO_GCE_CHECK="true",
               GCE_METADATA_HOST=closed, GCE_METADATA_IP=closed, PYWREN_BACKEND="gcp",
               PYWREN_GCP_BUCKET=BUCKET, PYWREN_GCP_PROJECT="pywren-test")
    env.update({f"PYWREN_GCP_{key.upper()}": value for key, value in settings.items()})
    return subprocess.run([sys.executable, "-m", "pywren_core.cli", *argv], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("argv", [["test", "--calls", "2"], ["clean", "--all"], ["deploy"], ["remove"]])
def test_every_command_explains_missing_credentials(argv: list[str], tmp_path: Path) -> None:
    """On Google's storage (no emulator) the storage client looks for credentials as it opens."""
    done = pywren(argv, tmp_path)
    assert done.returncode == 1, done.stderr
    assert done.stderr == f"pywren: opening Cloud Storage: {HINT}\n"


def test_test_and_deploy_explain_missing_credentials_next_to_an_emulator(
    tmp_path: Path, storage_url: str, function_url: str
) -> None:
    """With storage in the emulator, credentials are first needed to invoke (an ID token for the
    function) or to deploy (the Cloud Functions API): the same explanation, for that step."""
    done = pywren(["test", "--calls", "2"], tmp_path, storage_endpoint=storage_url, function_url=function_url)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"pywren: minting an ID token for {function_url}: {HINT}, or set gcp.invoke_token")
    assert "Traceback" not in done.stderr
    done = pywren(["deploy"], tmp_path, storage_endpoint=storage_url)
    assert done.returncode == 1, done.stderr
    assert done.stderr == f"pywren: loading Google credentials: {HINT}\n"


def test_an_unreadable_key_file_is_explained_without_its_contents_or_path(tmp_path: Path) -> None:
    key = tmp_path / "PLANTED-key-file.json"
    key.write_text('{"type": "service_account", "private_key": "PLANTED-SECRET-KEY-7f3a"}')
    done = pywren(["test"], tmp_path, credentials_file=str(key))
    assert done.returncode == 1, done.stderr
    assert re.fullmatch(r"pywren: loading Google credentials: no usable Google credentials \(\w+\); set "
                        r"gcp.credentials_file .*\n", done.stderr), done.stderr
    assert "PLANTED" not in done.stderr + done.stdout
