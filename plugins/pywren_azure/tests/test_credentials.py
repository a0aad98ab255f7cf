"""Without usable Azure credentials every command says what to set, the same way, and prints no
traceback and no secret.

Signing in without a key goes through azure-identity's DefaultAzureCredential. Here a stand-in of
it answers as the real one does on a machine where nobody signed in (``get_token`` raises
ClientAuthenticationError), so no test asks a metadata endpoint or Azure itself for a token.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
from azure.core.exceptions import ClientAuthenticationError
from conftest import ACCOUNT, CONTAINER, PAYLOAD_KEY, QUEUE, Azurite

from pywren_core.cli import main
from pywren_core.testing import free_port

HINT = ("no usable Azure credentials (ClientAuthenticationError); set azure.connection_string (or "
        "AZURE_STORAGE_CONNECTION_STRING), or azure.storage_account with azure.account_key, or sign in for "
        "DefaultAzureCredential")
COMMANDS = [["test", "--calls", "2"], ["clean", "--all"], ["deploy"], ["remove"]]


class NobodySignedIn:
    """DefaultAzureCredential where no credential of its chain applies."""

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token from the included "
                                        "credentials.\nAttempted credentials:\n\tEnvironmentCredential: ...")

    get_token_info = get_token

    def close(self) -> None:
        pass


@pytest.fixture
def signed_in_nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    identity = types.ModuleType("azure.identity")
    identity.DefaultAzureCredential = NobodySignedIn  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "azure.identity", identity)


def settings(monkeypatch: pytest.MonkeyPatch, **section: str) -> None:
    monkeypatch.setenv("PYWREN_BACKEND", "azure")
    section = {"container": CONTAINER, "queue": QUEUE, "function_app": "pywren-app", "payload_key": PAYLOAD_KEY,
               **section}
    for key, value in section.items():
        monkeypatch.setenv(f"PYWREN_AZURE_{key.upper()}", value)


@pytest.mark.parametrize("argv", COMMANDS)
def test_every_command_explains_a_sign_in_that_yields_no_token(
    argv: list[str], signed_in_nowhere: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The SDK sends a token only over HTTPS, which Azurite does not serve here: the endpoint is a
    # closed local port, never reached, since the token is asked for before any connection.
    closed = f"https://127.0.0.1:{free_port()}/{ACCOUNT}"
    settings(monkeypatch, storage_account=ACCOUNT, blob_endpoint=closed, queue_endpoint=closed)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"pywren: create container '{CONTAINER}': {HINT}"), err


@pytest.mark.parametrize("argv", COMMANDS)
def test_every_command_explains_no_credentials_at_all(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings(monkeypatch)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("pywren: azure: no storage credentials: set azure.connection_string"), err


def test_deploy_explains_a_sign_in_that_yields_no_management_token(
    azurite: Azurite, signed_in_nowhere: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Storage by connection string (Azurite) works; deploying also needs a token for Azure Resource Manager."""
    settings(monkeypatch, connection_string=azurite.connection_string)
    assert main(["deploy"]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f"pywren: getting a token for Azure Resource Manager: {HINT}"), captured.err
    assert azurite.key not in captured.err + captured.out and PAYLOAD_KEY not in captured.err + captured.out
