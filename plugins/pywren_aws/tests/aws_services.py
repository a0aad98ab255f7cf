"""Local stand-ins for AWS, started as processes of their own on 127.0.0.1: moto (S3, IAM, the
Lambda control plane) and ``lambda_api_server.py`` (Lambda invocations run by ``awslambdaric``).

Used by the tests' fixtures and by the benchmark, each as a ``pywren_core.testing.LocalServer``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any

from pywren_core.testing import LocalServer, free_port, http_status

HERE = Path(__file__).resolve().parent


def start_moto(log_dir: Path, env: dict[str, str] | None = None, name: str = "moto") -> LocalServer:
    """moto's server with every service it has, on a free port of 127.0.0.1."""
    for _ in range(3):  # the free port may be taken by someone else before moto binds it
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        service = LocalServer(name, [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              log_dir / f"{name}.log", env, url=url)
        try:
            # The probe runs within this iteration, so it sees this iteration's url.
            service.wait_ready(lambda: http_status(f"{url}/moto-api/") == 200, "GET /moto-api/", timeout=60)  # noqa: B023
            return service
        except RuntimeError:
            if "address already in use" not in service.log_tail().lower():
                raise
    raise RuntimeError("moto could not bind a free port three times in a row")


def start_lambda(log_dir: Path, function: str, env: dict[str, str], runtimes: int = 4,
                 timeout: float = 60.0, handler: str = "pywren_aws.handler.lambda_handler",
                 deployed: dict[str, str] | None = None) -> LocalServer:
    """The Lambda stand-in with ``runtimes`` runtime processes, started with ``env``.

    ``deployed``: run the function's deployed package instead of this environment's packages, with
    the keys ``moto_url``, ``bucket`` (where ``pywren deploy`` staged it), ``code_dir`` (where to
    unpack it) and ``python`` (a clean interpreter: :func:`lambda_python`)."""
    port_file = log_dir / f"lambda-{function}.port"
    port_file.unlink(missing_ok=True)
    args = [sys.executable, str(HERE / "lambda_api_server.py"), "--function", function, "--handler", handler,
            "--port-file", str(port_file), "--runtimes", str(runtimes), "--timeout", str(timeout),
            "--log", str(log_dir / f"lambda-{function}-runtimes.log")]
    if deployed:
        args += ["--code-from", deployed["moto_url"], "--code-bucket", deployed["bucket"],
                 "--code-dir", deployed["code_dir"], "--python", deployed["python"]]
    service = LocalServer("lambda_api_server", args, log_dir / f"lambda-{function}.log", env)
    service.wait_ready(port_file.exists, "port file written", timeout=60)
    service.url = f"http://127.0.0.1:{port_file.read_text()}"
    service.wait_ready(lambda: http_status(service.url + "/_control/stats") == 200, "GET /_control/stats", timeout=60)
    return service


def control(service: LocalServer, command: str, **args: Any) -> Any:
    """Ask the Lambda stand-in to do something (``throttle``, ``drop``, ``configure``, ``reset``,
    ``purge``) or to report (``stats``, ``payloads``, ``dropped``)."""
    if args or command in ("reset", "purge"):
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
               AWS_ENDPOINT_URL_SQS=moto_url,
               LAMBDA_TASK_ROOT=str(task_root), AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    return env


#: What Lambda's Python runtime gives a function besides its package: boto3 (with its dependencies) and
#: the runtime client that runs the handler.
LAMBDA_PROVIDES = ("boto3", "awslambdaric")


def lambda_python(folder: Path) -> Path:
    """A fresh virtual environment at ``folder`` with nothing but what Lambda's Python runtime
    provides (:data:`LAMBDA_PROVIDES`, at this environment's versions, from the package index);
    made once, its interpreter returned."""
    python = folder / "bin" / "python"
    if (folder / "complete").exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(folder)], check=True, capture_output=True)
    pins = [f"{name}=={metadata.version(name)}" for name in LAMBDA_PROVIDES]
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pins],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"installing {pins} into {folder} failed:\n{done.stderr[-3000:]}")
    (folder / "complete").touch()
    return python
