"""Local stand-ins for AWS, started as processes of their own on 127.0.0.1: moto (S3, IAM, the
Lambda control plane) and ``lambda_api_server.py`` (Lambda invocations run by ``awslambdaric``).

Used by the tests' fixtures and by the benchmark. Each server logs to a file (never to a pipe that
nobody reads), is polled until it answers, and is terminated, then killed, when done.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
START_TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """A server process, its log file and its base URL."""

    def __init__(self, name: str, args: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.name = name
        self.log_path = log_path
        self.url = ""
        self._log = open(log_path, "ab")
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=env, start_new_session=True)

    def wait_until(self, ready: Any, what: str) -> None:
        """Poll ``ready()`` until it is true; fail with the server's log if it dies or never gets there."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(f"{self.name} exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                if ready():
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready ({what}) in {START_TIMEOUT} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def _answers(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status == 200


def start_moto(log_dir: Path, env: dict[str, str] | None = None, name: str = "moto") -> Service:
    """moto's server with every service it has, on a free port of 127.0.0.1."""
    for _ in range(3):  # the free port may be taken by someone else before moto binds it
        port = free_port()
        service = Service(name, [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                          log_dir / f"{name}.log", env)
        service.url = f"http://127.0.0.1:{port}"
        try:
            service.wait_until(functools.partial(_answers, f"{service.url}/moto-api/"), "GET /moto-api/")
            return service
        except RuntimeError:
            if "address already in use" not in service.log_tail().lower():
                raise
    raise RuntimeError("moto could not bind a free port three times in a row")


def start_lambda(log_dir: Path, function: str, env: dict[str, str], runtimes: int = 4,
                 timeout: float = 60.0, handler: str = "pywren_aws.handler.lambda_handler") -> Service:
    """The Lambda stand-in with ``runtimes`` runtime processes, started with ``env``."""
    port_file = log_dir / f"lambda-{function}.port"
    port_file.unlink(missing_ok=True)
    args = [sys.executable, str(HERE / "lambda_api_server.py"), "--function", function, "--handler", handler,
            "--port-file", str(port_file), "--runtimes", str(runtimes), "--timeout", str(timeout),
            "--log", str(log_dir / f"lambda-{function}-runtimes.log")]
    service = Service("lambda_api_server", args, log_dir / f"lambda-{function}.log", env)
    service.wait_until(port_file.exists, "port file written")
    service.url = f"http://127.0.0.1:{port_file.read_text()}"
    service.wait_until(lambda: _answers(service.url + "/_control/stats"), "GET /_control/stats")
    return service


def control(service: Service, command: str, **args: Any) -> Any:
    """Ask the Lambda stand-in to do something (``throttle``, ``configure``, ``reset``) or to report."""
    if args or command in ("reset",):
        request = urllib.request.Request(f"{service.url}/_control/{command}", json.dumps(args).encode(), method="POST")
    else:
        request = urllib.request.Request(f"{service.url}/_control/{command}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def lambda_env(moto_url: str, task_root: Path, credentials: dict[str, str]) -> dict[str, str]:
    """The environment of the runtime processes: what Lambda gives a function, pointed at moto."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYWREN_"))}
    env.update(credentials)
    env.update(AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL_S3=moto_url,
               LAMBDA_TASK_ROOT=str(task_root), AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    return env
