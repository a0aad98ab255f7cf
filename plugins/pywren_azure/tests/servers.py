"""Starting and stopping the local servers the tests talk to: Azurite and the test Functions host.

Each server binds to 127.0.0.1 only, writes its output to a log file (never an unread pipe), is
polled until it answers, and on teardown is terminated, waited for, then killed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import requests

AZURITE_VERSION = "3.35.0"
#: Shared by test runs on this machine, so npm installs Azurite once (~20 s) rather than per run.
AZURITE_HOME = Path(os.environ.get("PYWREN_AZURITE_DIR") or Path.home() / ".cache" / "pywren-azurite") / AZURITE_VERSION
READY_TIMEOUT = 120.0
INSTALL_TIMEOUT = 600.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def azurite_binary() -> Path:
    """Azurite's launcher, installed with npm into AZURITE_HOME on first use (under a file lock,
    since other test runs on the machine may be installing it at the same moment)."""
    binary = AZURITE_HOME / "node_modules" / ".bin" / "azurite"
    if binary.exists():
        return binary
    if shutil.which("npm") is None:
        raise RuntimeError("the Azure tests need node and npm to install Azurite (apt-get install nodejs npm)")
    AZURITE_HOME.mkdir(parents=True, exist_ok=True)
    with open(AZURITE_HOME / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.exists():
            log = AZURITE_HOME / "npm-install.log"
            with open(log, "w") as out:
                result = subprocess.run(
                    ["npm", "install", "--prefix", str(AZURITE_HOME), "--no-audit", "--no-fund",
                         f"azurite@{AZURITE_VERSION}"],
                    cwd=AZURITE_HOME, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    timeout=INSTALL_TIMEOUT,
                )
            if result.returncode != 0 or not binary.exists():
                raise RuntimeError(f"npm could not install azurite@{AZURITE_VERSION}:\n{log.read_text()[-3000:]}")
    return binary


class Server:
    """A server process with its log file; ``ready`` polls until ``probe()`` is true."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None):
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.process = subprocess.Popen(
            list(argv), stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None, cwd=cwd,
        )

    def log_tail(self, chars: int = 4000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def ready(self, probe: Callable[[], bool], timeout: float = READY_TIMEOUT) -> None:
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                if probe():
                    return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} did not become ready within {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


def answers(url: str) -> bool:
    """Any HTTP answer at all (Azurite answers 400 to a bare GET): the port is served."""
    requests.get(url, timeout=2)
    return True
