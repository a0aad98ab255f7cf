"""``pywren deploy`` against a stand-in for Azure Resource Manager and Kudu on 127.0.0.1: the payload
key becomes the app setting PYWREN_PAYLOAD_KEY and never enters the package; no key, no deploy."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
from standin_arm import StandInArm, site, standin_arm

from pywren_core.errors import ConfigError
from pywren_core.testing import open_session

APP = "my-pywren-app"
SITE = site(APP)
KEY = "ab" * 32


@attrs.frozen
class Azure:
    """The stand-in, seen through its one app."""

    arm: StandInArm

    @property
    def settings(self) -> dict[str, str]:
        return self.arm.apps[APP]

    @property
    def requests(self) -> list[str]:
        return self.arm.requests

    @property
    def packages(self) -> list[bytes]:
        return [body for app, body in self.arm.packages if app == APP]


@pytest.fixture
def azure(monkeypatch: pytest.MonkeyPatch) -> Iterator[Azure]:
    settings = {"AzureWebJobsStorage": "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=S0VZ",
                "FUNCTIONS_WORKER_RUNTIME": "python"}
    with standin_arm({APP: settings}, monkeypatch) as arm:
        yield Azure(arm)


def run_deploy(storage_section: dict[str, Any], **section: Any) -> str:
    session = open_session({"backend": "azure", "azure": {**storage_section, "function_app": APP, **section}})
    try:
        return session.deploy() or ""
    finally:
        session.close()


def test_deploy_without_a_payload_key_is_refused_before_touching_azure(storage_section: dict[str, Any],
                                                                       azure: Azure) -> None:
    with pytest.raises(ConfigError, match="payload_key") as info:
        run_deploy(storage_section)
    assert "secrets.token_hex(32)" in str(info.value)
    assert azure.requests == [] and "PYWREN_PAYLOAD_KEY" not in azure.settings


def test_deploy_sets_the_payload_key_as_an_app_setting_not_in_the_package(storage_section: dict[str, Any],
                                                                          azure: Azure) -> None:
    before = dict(azure.settings)
    assert "PYWREN_PAYLOAD_KEY" in run_deploy(storage_section, payload_key=KEY)
    assert azure.settings == {**before, "PYWREN_PAYLOAD_KEY": KEY}
    with zipfile.ZipFile(io.BytesIO(azure.packages[0])) as archive:
        files = b"".join(archive.read(name) for name in archive.namelist())
    assert KEY.encode() not in files and bytes.fromhex(KEY) not in files

    run_deploy(storage_section, payload_key=KEY)  # the same key again: the settings are left alone
    assert azure.requests.count(f"PUT {SITE}/config/appsettings") == 1
    assert len(azure.packages) == 2


def test_deploy_names_an_app_it_cannot_find(storage_section: dict[str, Any], azure: Azure) -> None:
    with pytest.raises(ConfigError, match="no function app named 'other-app'"):
        run_deploy(storage_section, payload_key=KEY, function_app="other-app")


def test_payload_key_must_be_32_bytes_of_hex(storage_section: dict[str, Any]) -> None:
    for bad in ("abc", "zz" * 32, KEY + "00"):
        with pytest.raises(ConfigError, match="64 hex digits") as info:
            open_session({"backend": "azure", "azure": {**storage_section, "payload_key": bad}})
        assert bad not in str(info.value)
