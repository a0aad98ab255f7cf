"""Azurite, installed on first use, for the tests and the benchmark.

Azurite and the test Functions host each run as a ``pywren_core.testing.LocalServer`` on 127.0.0.1.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

AZURITE_VERSION = "3.35.0"
#: Shared by test runs on this machine, so npm installs Azurite once (~20 s) rather than per run.
AZURITE_HOME = Path(os.environ.get("PYWREN_AZURITE_DIR") or Path.home() / ".cache" / "pywren-azurite") / AZURITE_VERSION
INSTALL_TIMEOUT = 600.0


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
