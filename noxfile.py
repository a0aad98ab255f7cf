"""Test sessions. ``nox`` runs them all; ``nox -s tests`` just the core's; ``nox -l`` lists them.

Each session builds its own virtualenv and installs only what its distribution declares, so a
plugin's session proves the plugin works with the core alone and no other cloud's SDK.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nox

nox.options.reuse_venv = "yes"
nox.options.error_on_missing_interpreters = True
ROOT = Path(__file__).parent
PLUGINS = sorted(
    p.name.removeprefix("pywren_") for p in (ROOT / "plugins").glob("pywren_*") if (p / "pyproject.toml").exists()
)
CLOUD_SDKS = (
    "boto3",
    "botocore",
    "google-cloud-storage",
    "google-auth",
    "azure-storage-blob",
    "azure-core",
    "requests",
)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "pywren_core", "tests", "plugins", "benchmarks", "noxfile.py")


@nox.session
def tests(session: nox.Session) -> None:
    """The core and the local backend: unit tests and the conformance kit."""
    session.install("-e", ".[test]")
    session.install("-e", "tests/fixture_plugin")
    session.run("pytest", "tests", *session.posargs)


@nox.session
def core_wheel(session: nox.Session) -> None:
    """The built core wheel, installed alone, brings no cloud SDK and runs a map on local."""
    session.install("build")
    dist = Path(session.create_tmp()) / "dist"
    session.run("python", "-m", "build", "--wheel", "--outdir", str(dist), ".")
    session.install(str(next(dist.glob("pywren_core-*.whl"))))
    installed = session.run("python", "-m", "pip", "list", "--format=freeze", silent=True)
    names = {line.split("==")[0].lower() for line in installed.splitlines()}
    leaked = sorted(names & set(CLOUD_SDKS))
    if leaked:
        session.error(f"the core wheel pulled in cloud SDKs: {leaked}")
    session.run(
        "python",
        "-c",
        "import pywren_core as pw; ex = pw.executor(progress=False); "
        "assert ex.get_result(ex.map(abs, range(-5, 5))) == [abs(x) for x in range(-5, 5)]; print('ok')",
    )
    session.run("pywren", "backends")


@nox.session
@nox.parametrize("plugin", PLUGINS)
def plugin(session: nox.Session, plugin: str) -> None:
    """One cloud plugin, installed with the core alone, against its local emulators."""
    session.install(".", f"./plugins/pywren_{plugin}[test]")
    session.run("pytest", f"plugins/pywren_{plugin}/tests", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """The docs are built from the code: the hook reference and the example code they show are current."""
    session.install("ruff")
    session.run("ruff", "check", "docs", "examples")
    session.run("python", "docs/build.py", "--check")


@nox.session
def example_folder(session: nox.Session) -> None:
    """The example backend, installed with the core alone and tested from its own folder, as a third party would."""
    session.install(".", "./examples/pywren_folder[test]")
    session.chdir("examples/pywren_folder")
    session.run("pytest", *session.posargs)


@nox.session
def example_metrics(session: nox.Session) -> None:
    """The example wrapper plugin, in a virtualenv of its own (it wraps every backend installed there).

    The folder example is installed too, so the wrapper is shown working on two backends.
    """
    session.install(".", "./examples/pywren_folder", "./examples/pywren_metrics[test]")
    session.chdir("examples/pywren_metrics")
    session.run("pytest", *session.posargs)


@nox.session
def template(session: nox.Session) -> None:
    """A plugin rendered from plugins/_template installs, loads through its entry point, and wires the kit."""
    session.install(".", "pytest")
    into = Path(session.create_tmp()) / "rendered"
    shutil.rmtree(into, ignore_errors=True)
    session.run("python", "docs/new_plugin.py", "acme", "--into", str(into))
    session.install(str(into / "pywren_acme"))
    listing = session.run("pywren", "backends", silent=True)
    session.log(listing)
    if not re.search(r"^acme\s+pywren-acme\s+0\.1\.0\s.*\sok$", listing, re.MULTILINE):
        session.error("the rendered plugin is not listed as a working backend")
    session.run("pytest", "--collect-only", "-q", str(into / "pywren_acme" / "tests"))
