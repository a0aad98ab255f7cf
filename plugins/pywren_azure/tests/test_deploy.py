"""``pywren deploy`` against a stand-in for Azure Resource Manager and Kudu on 127.0.0.1: the payload
key becomes the app setting PYWREN_PAYLOAD_KEY and never enters the package; no key, no deploy."""

from __future__ import annotations

import io
import json
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import pytest
from pywren_azure import deploy

from pywren_core.errors import ConfigError
from pywren_core.testing import open_session

APP = "my-pywren-app"
SITE = f"/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Web/sites/{APP}"
KEY = "ab" * 32


@attrs.define
class Azure:
    """What the stand-in holds and saw."""

    url: str
    settings: dict[str, str]
    requests: list[str] = attrs.field(factory=list)
    packages: list[bytes] = attrs.field(factory=list)


@pytest.fixture
def azure(monkeypatch: pytest.MonkeyPatch) -> Iterator[Azure]:
    state = Azure("", {"AzureWebJobsStorage": "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=S0VZ",
                       "FUNCTIONS_WORKER_RUNTIME": "python"})

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def answer(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def handle_one(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            url = urlsplit(self.path)
            state.requests.append(f"{self.command} {url.path}")
            if self.headers.get("Authorization") != "Bearer test-token":
                return self.answer(401, {"error": {"code": "InvalidAuthenticationToken", "message": "no"}})
            if url.path == "/subscriptions":
                return self.answer(200, {"value": [{"subscriptionId": "s0"}, {"subscriptionId": "s1"}]})
            if url.path.endswith("/resources"):
                wanted = url.path.startswith("/subscriptions/s1/") and f"'{APP}'" in parse_qs(url.query)["$filter"][0]
                return self.answer(200, {"value": [{"id": SITE}] if wanted else []})
            if url.path == f"{SITE}/config/appsettings/list":
                return self.answer(200, {"properties": state.settings})
            if url.path == f"{SITE}/config/appsettings" and self.command == "PUT":
                state.settings = json.loads(body)["properties"]
                return self.answer(200, {"properties": state.settings})
            if url.path == f"/scm/{APP}/api/zipdeploy":
                state.packages.append(body)
                return self.answer(202, headers={"Location": f"{state.url}/scm/{APP}/api/deployments/latest"})
            if url.path == f"/scm/{APP}/api/deployments/latest":
                return self.answer(200, {"complete": True, "status": 4})
            self.answer(404, {"error": {"code": "NotFound", "message": url.path}})

        do_GET = do_POST = do_PUT = handle_one

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(deploy, "MANAGEMENT_URL", state.url)
    monkeypatch.setattr(deploy, "SCM_URL", state.url + "/scm/{app}")
    monkeypatch.setattr(deploy, "_management_token", lambda: "test-token")
    yield state
    server.shutdown()
    server.server_close()


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
