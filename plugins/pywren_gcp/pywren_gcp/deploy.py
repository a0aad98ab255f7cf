"""``pywren deploy`` / ``pywren remove`` for Google Cloud: the source package and the Cloud Functions API.

The source package holds this client's own copies of ``pywren_core`` and ``pywren_gcp`` (so the
worker runs exactly the versions that deployed it), their ``.dist-info`` metadata (so the ``gcp``
entry point is found there like on the client, without pip installing anything), a
``requirements.txt`` pinning every third-party dependency to the version installed here (Cloud Build
installs them once, at deploy time: nothing is downloaded when an instance starts), and ``main.py``,
the entry point Cloud Functions looks for.
"""

from __future__ import annotations

import io
import os
import re
import sys
import time
import zipfile
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import requests

from pywren_core.errors import PywrenError

API = "https://cloudfunctions.googleapis.com/v2"
#: Distributions copied into the package, with the import packages they hold.
VENDORED = {"pywren-core": "pywren_core", "pywren-gcp": "pywren_gcp"}
#: Needed at run time on the platform but not a dependency of the plugin itself.
RUNTIME_EXTRAS = ("functions-framework",)
#: Dependencies only the client uses (the invoker): the function does not install them.
CLIENT_ONLY = frozenset({"aiohttp", "async-timeout"})
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # zip timestamps, so the same code always gives the same archive
OPERATION_TIMEOUT = 1800.0

MAIN_PY = '''"""Entry point of the pywren worker function, written by `pywren deploy` (pywren-gcp {version})."""

import os
import sys

# The copies of pywren_core and pywren_gcp in this package match the client that deployed them.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pywren_gcp.handler import handler  # noqa: E402,F401
'''


class DeployError(PywrenError):
    """Deploying or removing the function failed; the message carries the API's answer."""


def runtime() -> str:
    """The Cloud Functions runtime matching this Python: the worker refuses any other minor version."""
    return f"python{sys.version_info.major}{sys.version_info.minor}"


def requirements() -> list[str]:
    """Every third-party dependency of the vendored distributions, pinned to the installed version."""
    names: dict[str, str] = {}
    for dist in VENDORED:
        for requirement in metadata.requires(dist) or ():
            if "extra ==" in requirement:
                continue
            match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
            if match and match.group(0).lower() not in VENDORED and match.group(0).lower() not in CLIENT_ONLY:
                names[match.group(0).lower()] = match.group(0)
    for extra in RUNTIME_EXTRAS:
        names.setdefault(extra, extra)
    lines = []
    for key in sorted(names):
        try:
            lines.append(f"{names[key]}=={metadata.version(names[key])}")
        except metadata.PackageNotFoundError:
            lines.append(names[key])  # not installed here (functions-framework): the platform's choice
    return lines


def _package_tree(package: str) -> Iterator[tuple[str, bytes]]:
    root = Path(__import__(package).__file__).parent
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            yield f"{package}/{path.relative_to(root).as_posix()}", path.read_bytes()


def _dist_info(dist_name: str) -> Iterator[tuple[str, bytes]]:
    dist = metadata.distribution(dist_name)
    folder = f"{dist_name.replace('-', '_')}-{dist.version}.dist-info"
    yield f"{folder}/METADATA", f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {dist.version}\n".encode()
    groups: dict[str, list[str]] = {}
    for ep in dist.entry_points:
        if ep.group.startswith("pywren"):
            groups.setdefault(ep.group, []).append(f"{ep.name} = {ep.value}")
    if groups:
        text = "".join(f"[{group}]\n" + "\n".join(lines) + "\n\n" for group, lines in sorted(groups.items()))
        yield f"{folder}/entry_points.txt", text.encode()


def package_files() -> dict[str, bytes]:
    """The source package as ``{path: content}``."""
    from pywren_gcp import __version__

    files = {"main.py": MAIN_PY.format(version=__version__).encode(),
             "requirements.txt": ("\n".join(requirements()) + "\n").encode()}
    for dist_name, package in VENDORED.items():
        files.update(_package_tree(package))
        files.update(_dist_info(dist_name))
    return files


def build_package(destination: str | os.PathLike[str] | None = None) -> bytes:
    """The source package as a zip archive (also written to ``destination`` when given).

    The archive is reproducible: the same installed code always gives the same bytes.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in sorted(package_files().items()):
            info = zipfile.ZipInfo(name, _FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, content)
    data = buffer.getvalue()
    if destination is not None:
        Path(destination).write_bytes(data)
    return data


# --- the Cloud Functions v2 API -----------------------------------------------------------------


def function_path(config: Mapping[str, Any]) -> str:
    if not config.get("project"):
        raise DeployError("gcp.project must be set to deploy or look up the function")
    return f"projects/{config['project']}/locations/{config['region']}/functions/{config['function_name']}"


def function_spec(config: Mapping[str, Any], storage_source: Mapping[str, Any]) -> dict[str, Any]:
    """The Function resource: an HTTP function running ``main.handler`` with this Python.

    One gunicorn thread per concurrent request (``THREADS``); the calls of a request run in threads
    the handler starts, so the instance concurrency counts requests, as Cloud Run does.
    """
    from pywren_gcp import __version__

    service: dict[str, Any] = {
        "timeoutSeconds": int(config["function_timeout"]),
        "availableMemory": config["memory"],
        "availableCpu": config["cpu"],
        "maxInstanceRequestConcurrency": int(config["concurrency"]),
        "maxInstanceCount": int(config["max_instances"]),
        "ingressSettings": "ALLOW_ALL",
        "allTrafficOnLatestRevision": True,
        "environmentVariables": {"WORKERS": "1", "THREADS": str(int(config["concurrency"]))},
    }
    if config.get("service_account"):
        service["serviceAccountEmail"] = config["service_account"]
    return {
        "name": function_path(config),
        "description": f"pywren worker (pywren-gcp {__version__})",
        "environment": "GEN_2",
        "labels": {"pywren": "worker"},
        "buildConfig": {"runtime": runtime(), "entryPoint": "handler",
                        "source": {"storageSource": dict(storage_source)}},
        "serviceConfig": service,
    }


def _check(response: requests.Response, what: str) -> dict[str, Any]:
    if response.status_code >= 400:
        raise DeployError(f"{what}: HTTP {response.status_code}: {response.text[:500]}")
    return response.json() if response.content else {}


def _wait(http: Any, operation: dict[str, Any], what: str) -> dict[str, Any]:
    deadline = time.monotonic() + OPERATION_TIMEOUT
    while not operation.get("done"):
        if time.monotonic() > deadline:
            raise DeployError(f"{what}: operation {operation.get('name')} still running after {OPERATION_TIMEOUT} s")
        time.sleep(5)
        operation = _check(http.get(f"{API}/{operation['name']}", timeout=60), what)
    if "error" in operation:
        raise DeployError(f"{what}: {operation['error'].get('message', operation['error'])}")
    return operation


def lookup_url(http: Any, config: Mapping[str, Any]) -> str:
    """The deployed function's HTTPS URL."""
    function = _check(http.get(f"{API}/{function_path(config)}", timeout=60), "looking up the function")
    url = function.get("serviceConfig", {}).get("uri") or function.get("url")
    if not url:
        raise DeployError(f"{function_path(config)} has no URL yet (state {function.get('state')}): deploy it first")
    return url


def deploy(http: Any, config: Mapping[str, Any]) -> str:
    """Upload the package and create or update the function; wait until it serves."""
    path = function_path(config)
    parent = path.rsplit("/functions/", 1)[0]
    upload = _check(http.post(f"{API}/{parent}/functions:generateUploadUrl", json={}, timeout=60),
                    "asking for an upload URL")
    put = requests.put(upload["uploadUrl"], data=build_package(), headers={"Content-Type": "application/zip"},
                       timeout=600)
    _check(put, "uploading the source package")
    spec = function_spec(config, upload["storageSource"])
    exists = http.get(f"{API}/{path}", timeout=60).status_code == 200
    if exists:
        operation = http.patch(f"{API}/{path}", json=spec, timeout=60)
    else:
        operation = http.post(f"{API}/{parent}/functions", params={"functionId": config["function_name"]},
                              json=spec, timeout=60)
    _wait(http, _check(operation, f"{'updating' if exists else 'creating'} {path}"), f"deploying {path}")
    return f"{'updated' if exists else 'created'} {path} ({runtime()}) at {lookup_url(http, config)}"


def remove(http: Any, config: Mapping[str, Any]) -> str:
    path = function_path(config)
    response = http.delete(f"{API}/{path}", timeout=60)
    if response.status_code == 404:
        return f"{path} does not exist: nothing to remove"
    _wait(http, _check(response, f"deleting {path}"), f"removing {path}")
    return f"removed {path} (the bucket gs://{config['bucket']} and its objects were left alone)"
