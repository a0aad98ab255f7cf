"""Fixtures: fake-gcs-server and functions-framework, started once per test session on 127.0.0.1."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pywren_core.testing import LocalServer, isolated_pywren  # noqa: F401  (autouse: the machine's pywren setup stays out)
from pywren_gcp.deploy import build_package

from servers import (
    BUCKET,
    DATA_BUCKET,
    StatusAnswer,
    clean_function_python,
    raw_client,
    start_fake_gcs,
    start_function,
    unpack_package,
)


@pytest.fixture(autouse=True)
def no_machine_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests name the emulator in their config; one the machine points the SDK at must not apply."""
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def fake_gcs(log_dir: Path) -> Iterator[tuple[LocalServer, str]]:
    service, url = start_fake_gcs(log_dir)
    yield service, url
    service.stop()


@pytest.fixture(scope="session")
def storage_url(fake_gcs: tuple[LocalServer, str]) -> str:
    return fake_gcs[1]


@pytest.fixture(scope="session")
def pywren_data_url(storage_url: str) -> str:
    """A data bucket of its own (not the job bucket), for maps over ``gs://`` URLs."""
    client = raw_client(storage_url)
    if client.lookup_bucket(DATA_BUCKET) is None:
        client.create_bucket(DATA_BUCKET)
    client.close()
    return f"gs://{DATA_BUCKET}/"


@pytest.fixture(scope="session")
def package_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The deploy package, unpacked: the functions-framework below serves its main.py."""
    directory = tmp_path_factory.mktemp("package")
    unpack_package(build_package(), directory)
    return directory


@pytest.fixture(scope="session")
def function(log_dir: Path, package_dir: Path, storage_url: str) -> Iterator[tuple[LocalServer, str]]:
    service, url = start_function(log_dir, package_dir / "main.py", storage_url)
    yield service, url
    service.stop()


@pytest.fixture(scope="session")
def function_url(function: tuple[LocalServer, str]) -> str:
    return function[1]


# --- a runtime (numpy), built once per test session, deployed as its own source package and served
# by functions-framework in a clean interpreter: only what Cloud Build would install for it -------

#: The runtime the tests build: the config's ``runtimes:`` section, and the name they select.
RUNTIMES = {"ml": {"requirements": ["numpy"]}}


@pytest.fixture(scope="session")
def runtimes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this session's runtimes are built (``PYWREN_RUNTIMES_DIR``): built once, then cached."""
    return tmp_path_factory.mktemp("runtimes")


@pytest.fixture(scope="session")
def ml_runtime(runtimes_dir: Path) -> Any:
    from pywren_core import runtime
    from pywren_gcp.deploy import platform

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(runtime.DIR_ENV, str(runtimes_dir))
        return runtime.build(runtime.RuntimeSpec.from_config("ml", RUNTIMES), platform())


@pytest.fixture(scope="session")
def ml_package(ml_runtime: Any) -> bytes:
    """The runtime's source package: the zip ``pywren deploy`` uploads."""
    return build_package(rt=ml_runtime)


@pytest.fixture(scope="session")
def ml_package_dir(tmp_path_factory: pytest.TempPathFactory, ml_package: bytes) -> Path:
    """The runtime's source package, unpacked."""
    directory = tmp_path_factory.mktemp("ml-package")
    unpack_package(ml_package, directory)
    return directory


@pytest.fixture(scope="session")
def ml_function(tmp_path_factory: pytest.TempPathFactory, log_dir: Path, ml_package_dir: Path,
                storage_url: str) -> Iterator[tuple[LocalServer, str]]:
    """functions-framework in a fresh venv of only what Cloud Build installs for the package."""
    python = clean_function_python(ml_package_dir, tmp_path_factory.mktemp("ml-venv") / "venv")
    service, url = start_function(log_dir, ml_package_dir / "main.py", storage_url, threads=8,
                                  name="functions-framework-ml", python=python)
    yield service, url
    service.stop()


@pytest.fixture
def ml_config(monkeypatch: pytest.MonkeyPatch, runtimes_dir: Path, ml_runtime: Any, storage_url: str,
              ml_function: tuple[LocalServer, str]) -> dict[str, Any]:
    """A config selecting the ``ml`` runtime, its function's URL under ``runtime_urls`` (by label)."""
    monkeypatch.setenv("PYWREN_RUNTIMES_DIR", str(runtimes_dir))  # the isolation fixture removed it
    config = gcp_config(storage_url, "", runtime_urls={"ml": ml_function[1]})
    return {**config, "runtimes": RUNTIMES, "runtime": "ml"}


def gcp_config(storage_url: str, function_url: str, **settings: Any) -> dict[str, Any]:
    section = {"bucket": BUCKET, "project": "pywren-test", "storage_endpoint": storage_url,
               "function_url": function_url, "authenticated": False, **settings}
    return {"backend": "gcp", "gcp": section}


@pytest.fixture
def pywren_config(storage_url: str, function_url: str) -> dict[str, Any]:
    return gcp_config(storage_url, function_url)



@pytest.fixture
def refusing_endpoint() -> Iterator[http.server.ThreadingHTTPServer]:
    """A storage endpoint answering every request with ``.status`` (500 unless a test sets it)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StatusAnswer)
    server.status = 500  # type: ignore[attr-defined]
    server.requests = 0  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()
