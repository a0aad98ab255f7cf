"""A stand-in for Azure Resource Manager and Kudu on 127.0.0.1, for ``pywren deploy``: it knows the
function apps in ``apps`` (in subscription s1 of two), keeps each app's settings, and keeps every
zip package deployed to it. ``patched`` points the plugin's deploy module at it."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import pytest
from pywren_azure import deploy

TOKEN = "test-token"


def site(app: str) -> str:
    return f"/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Web/sites/{app}"


@attrs.define
class StandInArm:
    """What the stand-in holds and saw."""

    #: App name -> its settings; only these apps exist.
    apps: dict[str, dict[str, str]]
    url: str = ""
    requests: list[str] = attrs.field(factory=list)
    #: (app, zip bytes), in the order deployed.
    packages: list[tuple[str, bytes]] = attrs.field(factory=list)

    def package_of(self, app: str) -> bytes:
        return [body for name, body in self.packages if name == app][-1]


def _handler(state: StandInArm) -> type[BaseHTTPRequestHandler]:
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
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self.answer(401, {"error": {"code": "InvalidAuthenticationToken", "message": "no"}})
            if url.path == "/subscriptions":
                return self.answer(200, {"value": [{"subscriptionId": "s0"}, {"subscriptionId": "s1"}]})
            if url.path.endswith("/resources"):
                wanted = parse_qs(url.query)["$filter"][0]
                found = [{"id": site(app)} for app in state.apps
                         if url.path.startswith("/subscriptions/s1/") and f"name eq '{app}'" in wanted]
                return self.answer(200, {"value": found})
            for app, settings in state.apps.items():
                if url.path == f"{site(app)}/config/appsettings/list":
                    return self.answer(200, {"properties": settings})
                if url.path == f"{site(app)}/config/appsettings" and self.command == "PUT":
                    state.apps[app] = json.loads(body)["properties"]
                    return self.answer(200, {"properties": state.apps[app]})
                if url.path == f"/scm/{app}/api/zipdeploy":
                    state.packages.append((app, body))
                    return self.answer(202, headers={"Location": f"{state.url}/scm/{app}/api/deployments/latest"})
                if url.path == f"/scm/{app}/api/deployments/latest":
                    return self.answer(200, {"complete": True, "status": 4})
            self.answer(404, {"error": {"code": "NotFound", "message": url.path}})

        do_GET = do_POST = do_PUT = handle_one

    return Handler


@contextlib.contextmanager
def standin_arm(apps: dict[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch | None = None) -> Iterator[StandInArm]:
    """The stand-in serving ``apps``, with the deploy module pointed at it until the block ends."""
    state = StandInArm(apps)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    with contextlib.ExitStack() as stack:
        patch = monkeypatch or stack.enter_context(pytest.MonkeyPatch.context())
        patch.setattr(deploy, "MANAGEMENT_URL", state.url)
        patch.setattr(deploy, "SCM_URL", state.url + "/scm/{app}")
        patch.setattr(deploy, "_management_token", lambda: TOKEN)
        try:
            yield state
        finally:
            server.shutdown()
            server.server_close()
