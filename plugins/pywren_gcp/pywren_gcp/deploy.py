"""``pywren deploy`` / ``pywren remove`` for Google Cloud: the source package and the Cloud Functions API.

The source package is built from :func:`pywren_core.runtime.artifact_files`: this client's own
copies of ``pywren_core`` and ``pywren_gcp`` (so the worker runs exactly the versions that deployed
it) with their ``.dist-info`` metadata (so the ``gcp`` entry point is found there like on the
client, without pip installing anything), plus ``main.py``, the entry point Cloud Functions looks
for, and a ``requirements.txt`` that Cloud Build installs once, at deploy time.

- With no runtime configured, ``requirements.txt`` pins every third-party dependency of the two
  distributions to the version installed here (and ``functions-framework``).
- With a runtime (``runtime: {requirements: [...]}``), its tree, built by the core for
  :data:`PLATFORM` (Linux x86_64, manylinux wheels, this Python), is *vendored* into the package
  beside them, and ``requirements.txt`` holds ``functions-framework`` alone (the platform's own
  part, which Cloud Run functions installs anyway). Vendoring, not listing the manifest's pins in
  ``requirements.txt``: the function then runs exactly the files the client built and checked calls
  against, Cloud Build needs no access to the user's package index (a company's library on a
  private index deploys as well as numpy), and nothing is resolved again at deploy time. The cost
  is a larger upload (the zip is the runtime, compressed).

Each runtime is its own function, ``<function_name>-<runtime name>`` (``pywren-runner-rt-…``), so
runtimes live side by side; ``main.py`` records the runtime it carries and the handler refuses a
payload asking for another one.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import sys
import time
import zipfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import requests

from pywren_core.backend import Platform
from pywren_core.errors import ConfigError, PywrenError

API = "https://cloudfunctions.googleapis.com/v2"
#: Distributions copied into the package, with the import packages they hold.
VENDORED = {"pywren-core": "pywren_core", "pywren-gcp": "pywren_gcp"}
#: Needed at run time on the platform but not a dependency of the plugin itself.
RUNTIME_EXTRAS = ("functions-framework",)
#: Dependencies only the client uses (the invoker): the function does not install them.
CLIENT_ONLY = frozenset({"aiohttp", "async-timeout"})
_FIXED_TIME = (2020, 1, 1, 0, 0, 0)  # zip timestamps, so the same code always gives the same archive
OPERATION_TIMEOUT = 1800.0
#: zlib level 1: a runtime of 100 MB zips in a few seconds, only ~10% larger than at the default level.
COMPRESS_LEVEL = 1

MAIN_PY = '''"""Entry point of the pywren worker function, written by `pywren deploy` (pywren-gcp {version}, {what})."""

import os
import sys

# The copies of pywren_core and pywren_gcp (and the runtime's packages) in this package match the
# client that deployed them.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pywren_gcp import handler as _handler  # noqa: E402

_handler.DEPLOYED_RUNTIME = {runtime!r}  # payloads asking for another runtime are refused
from pywren_gcp.handler import handler  # noqa: E402,F401
'''


class DeployError(PywrenError):
    """Deploying or removing the function failed; the message carries the API's answer."""


def runtime() -> str:
    """The Cloud Functions runtime matching this Python: the worker refuses any other minor version."""
    return f"python{sys.version_info.major}{sys.version_info.minor}"


def _requirement_names(distribution: str) -> dict[str, str]:
    names: dict[str, str] = {}
    for requirement in metadata.requires(distribution) or ():
        if "extra ==" in requirement or ";" in requirement:
            continue
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
        if match and match.group(0).lower() not in VENDORED and match.group(0).lower() not in CLIENT_ONLY:
            names[match.group(0).lower()] = match.group(0)
    return names


def worker_needs() -> tuple[str, ...]:
    """The worker's own third-party needs besides pywren-core's (bare names: the core pins each to
    the client's version when it builds a runtime)."""
    return tuple(sorted(_requirement_names("pywren-gcp").values(), key=str.lower))


def platform() -> Platform:
    """Where the function runs: Cloud Run functions (gen2), Linux x86_64, the client's Python (the
    worker refuses another minor version; deploy picks the matching ``pythonXY`` runtime).

    Gen2 documents no deployment size limit (1st gen: 100 MB compressed, 500 MB unpacked), so none
    is declared. The platform installs ``functions-framework`` itself (it serves ``main.py``), so
    a runtime never carries it. Container images start from the Python image of that version.
    """
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return Platform(python=python, os="linux", arch="x86_64", max_unzipped_bytes=None,
                    provided=frozenset(RUNTIME_EXTRAS), requirements=worker_needs(),
                    image_base=f"python:{python}-slim", image_code_dir="/app",
                    image_packages=("functions-framework",),
                    image_command=("functions-framework", "--source", "/app/pywren_gcp/handler.py",
                                   "--target", "handler", "--port", "8080"))


def _pinned(name: str) -> str:
    try:
        return f"{name}=={metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return name  # not installed here (functions-framework): the platform's choice


def requirements(rt: Any = None) -> list[str]:
    """``requirements.txt``: with no runtime, every third-party dependency of the vendored
    distributions, pinned to the installed version; with one (vendored whole), the platform's
    ``functions-framework`` alone."""
    names: dict[str, str] = {}
    if rt is None:
        for dist in VENDORED:
            names.update(_requirement_names(dist))
    for extra in RUNTIME_EXTRAS:
        names.setdefault(extra, extra)
    return [_pinned(names[key]) for key in sorted(names)]


def function_name(config: Mapping[str, Any], rt: Any = None) -> str:
    """The function that carries ``rt``: ``function_name`` for the default, suffixed by the runtime's
    name (``pywren-runner-rt-0123456789ab``) for a runtime, so runtimes live side by side."""
    return f"{config['function_name']}-{rt.name}" if rt is not None else config["function_name"]


def package_files(rt: Any = None) -> dict[str, Path | bytes]:
    """The source package as ``{path: content}`` (a file's content as its path, to be read when
    zipped): :func:`pywren_core.runtime.artifact_files` for ``rt`` (None: the default), main.py and
    requirements.txt."""
    from pywren_core.runtime import artifact_files
    from pywren_gcp import __version__

    if rt is not None and rt.image:
        raise DeployError(f"runtime {rt.name} is a container image ({rt.image}): the Cloud Functions API deploys "
                          "source packages only; deploy the image as a Cloud Run service yourself and give its URL "
                          "in gcp.runtime_urls (see the plugin's README)")
    files = artifact_files(rt, VENDORED)
    clash = {"main.py", "requirements.txt"} & set(files)
    if clash:
        raise DeployError(f"the runtime holds {sorted(clash)[0]}, which the source package needs for itself")
    what = f"runtime {rt.name} ({rt.label})" if rt is not None else "default runtime"
    files["main.py"] = MAIN_PY.format(version=__version__, what=what, runtime=rt.name if rt else "").encode()
    files["requirements.txt"] = ("\n".join(requirements(rt)) + "\n").encode()
    return files


def build_package(destination: str | os.PathLike[str] | None = None, rt: Any = None) -> bytes:
    """The source package of ``rt`` (None: the default runtime) as a zip archive (also written to
    ``destination`` when given).

    The archive is reproducible: the same installed code (and runtime) always gives the same bytes.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in sorted(package_files(rt).items()):
            info = zipfile.ZipInfo(name, _FIXED_TIME)
            mode = 0o755 if isinstance(content, Path) and os.access(content, os.X_OK) else 0o644
            info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            info._compresslevel = COMPRESS_LEVEL  # type: ignore[attr-defined]  # (3.13: .compress_level)
            if isinstance(content, bytes):
                archive.writestr(info, content)
            else:
                with content.open("rb") as source, archive.open(info, "w") as target:
                    shutil.copyfileobj(source, target, 1 << 20)
    data = buffer.getvalue()
    if destination is not None:
        Path(destination).write_bytes(data)
    return data


# --- the Cloud Functions v2 API -----------------------------------------------------------------


def function_path(config: Mapping[str, Any], rt: Any = None) -> str:
    if not config.get("project"):
        raise DeployError("gcp.project must be set to deploy or look up the function")
    return f"projects/{config['project']}/locations/{config['region']}/functions/{function_name(config, rt)}"


def function_spec(config: Mapping[str, Any], storage_source: Mapping[str, Any], rt: Any = None) -> dict[str, Any]:
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
    labels = {"pywren": "worker"}
    description = f"pywren worker (pywren-gcp {__version__})"
    if rt is not None:
        labels["pywren-runtime"] = rt.name
        description += f", runtime {rt.name} ({rt.label})"
    return {
        "name": function_path(config, rt),
        "description": description,
        "environment": "GEN_2",
        "labels": labels,
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


def lookup_url(http: Any, config: Mapping[str, Any], rt: Any = None) -> str:
    """The deployed function's HTTPS URL (the function that carries ``rt``)."""
    path = function_path(config, rt)
    response = http.get(f"{API}/{path}", timeout=60)
    if response.status_code == 404:
        raise DeployError(f"{path} is not deployed: {_deploy_hint(rt)}")
    function = _check(response, f"looking up {path}")
    url = function.get("serviceConfig", {}).get("uri") or function.get("url")
    if not url:
        raise DeployError(f"{path} has no URL yet (state {function.get('state')}): {_deploy_hint(rt)}")
    return url


def _deploy_hint(rt: Any) -> str:
    if rt is None:
        return "run `pywren deploy` first"
    label = rt.label
    flag = f" --runtime {label}" if label != "default" else ""
    return f"run `pywren deploy{flag}` first to deploy runtime {rt.name} ({label!r})"


def runtime_url(config: Mapping[str, Any], rt: Any) -> str:
    """The URL configured for ``rt`` in ``runtime_urls`` (by its name, then its label), or ''."""
    urls = config.get("runtime_urls") or {}
    if not isinstance(urls, Mapping):
        raise ConfigError(f"gcp.runtime_urls must map runtime names or labels to URLs, got {urls!r}")
    return str(urls.get(rt.name) or urls.get(rt.label) or "")


def deploy(http: Any, config: Mapping[str, Any], rt: Any = None) -> str:
    """Upload the package (of ``rt``, None: the default runtime) and create or update its function;
    wait until it serves."""
    path = function_path(config, rt)
    parent = path.rsplit("/functions/", 1)[0]
    package = build_package(rt=rt)
    upload = _check(http.post(f"{API}/{parent}/functions:generateUploadUrl", json={}, timeout=60),
                    "asking for an upload URL")
    put = requests.put(upload["uploadUrl"], data=package, headers={"Content-Type": "application/zip"},
                       timeout=600)
    _check(put, "uploading the source package")
    spec = function_spec(config, upload["storageSource"], rt)
    exists = http.get(f"{API}/{path}", timeout=60).status_code == 200
    if exists:
        operation = http.patch(f"{API}/{path}", json=spec, timeout=60)
    else:
        operation = http.post(f"{API}/{parent}/functions", params={"functionId": function_name(config, rt)},
                              json=spec, timeout=60)
    _wait(http, _check(operation, f"{'updating' if exists else 'creating'} {path}"), f"deploying {path}")
    carried = f", runtime {rt.name} {len(package) / 1e6:.1f} MB zipped" if rt is not None else ""
    return f"{'updated' if exists else 'created'} {path} ({runtime()}{carried}) at {lookup_url(http, config, rt)}"


def runtime_functions(http: Any, config: Mapping[str, Any]) -> list[str]:
    """The paths of the functions deployed for runtimes beside the default one
    (``<function_name>-rt-...``, labelled ``pywren-runtime``), every page."""
    parent = function_path(config).rsplit("/functions/", 1)[0]
    prefix = f"{parent}/functions/{config['function_name']}-"
    found, token = [], ""
    while True:
        params = {"pageSize": 1000, **({"pageToken": token} if token else {})}
        page = _check(http.get(f"{API}/{parent}/functions", params=params, timeout=60), "listing the functions")
        for function in page.get("functions", ()):
            name = function.get("name", "")
            if name.startswith(prefix) and "pywren-runtime" in (function.get("labels") or {}):
                found.append(name)
        token = page.get("nextPageToken", "")
        if not token:
            return found


def _delete(http: Any, path: str) -> bool:
    response = http.delete(f"{API}/{path}", timeout=60)
    if response.status_code == 404:
        return False
    _wait(http, _check(response, f"deleting {path}"), f"removing {path}")
    return True


def remove(http: Any, config: Mapping[str, Any], rt: Any = None) -> str:
    """Delete the function of ``rt``; with None, the default's and every runtime's."""
    paths = [function_path(config, rt)] + (runtime_functions(http, config) if rt is None else [])
    removed = [path for path in paths if _delete(http, path)]
    if not removed:
        return f"{paths[0]} does not exist: nothing to remove"
    return (f"removed {', '.join(removed)} (the bucket gs://{config['bucket']} and its objects were left alone)")
