"""``pywren deploy`` / ``pywren remove`` for Azure: the function app's zip package and its upload.

The package is what Azure Functions runs: ``host.json``, a ``function_app.py`` that carries this
config's non-secret settings and imports :mod:`pywren_azure.function_app`, and the client's own
pywren-core and pywren-azure with their metadata (``pywren_core.runtime.artifact_files``), so the
worker finds the ``azure`` entry point and runs the very core version of the client.

Without a runtime, the third-party packages are a ``requirements.txt`` pinned to the versions this
client runs, installed by the platform's remote build. With one (``runtime: {requirements: [...]}``
in the config), the package carries everything, built by the core for Linux x86-64 and this
Python: the runtime's tree plus pywren-core and pywren-azure under ``.python_packages/lib/site-packages``
(where ``func pack`` puts an app's dependencies), and the app's remote build is switched off.

Runtimes coexist as one function app per runtime *label* (``function_app`` for the default,
``<function_app>-<label>`` for ``runtimes: {<label>: ...}``), each reading a queue and serving a
route named after its runtime's *name*, a hash of its packages (see :func:`pywren_azure.invoke.queue_name`).
Each deploy records the runtime an app now carries in the job container (``pywren.runtimes/``);
a client whose runtime no app carries is refused before it invokes, naming ``pywren deploy``.

Deploying needs ``payload_key``: it becomes the app setting ``PYWREN_PAYLOAD_KEY`` (through Azure
Resource Manager), never a file of the package, which Azure keeps in the storage account. Then
Kudu's zip deploy uploads the package. Both use a token from DefaultAzureCredential (the
``identity`` extra); the function app itself is created once with ``az functionapp create``.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import zipfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from azure.core.exceptions import ResourceNotFoundError

import pywren_azure
from pywren_azure.errors import mapped, scrub
from pywren_azure.invoke import PAYLOAD_KEY_COMMAND, QueueInvoker, app_name, http_route, queue_name, runtime_label
from pywren_azure.runtime import DEFAULT_TIME_LIMIT
from pywren_azure.session import RUNTIMES_PREFIX, AzureSession, default_credential
from pywren_core.errors import ConfigError, InvokeError
from pywren_core.protocol import PAYLOAD_KEY_ENV

#: Packages the function needs beyond the requirements of pywren-core and pywren-azure.
EXTRA_REQUIREMENTS = ("azure-functions", "azure-identity")
VENDORED = ("pywren-core", "pywren-azure")
#: The client's own code in every package: distribution -> import package.
PACKAGES = {"pywren-core": "pywren_core", "pywren-azure": "pywren_azure"}
#: Where an Azure Functions Python app's dependencies live in its package (on the worker's sys.path).
SITE_PACKAGES = ".python_packages/lib/site-packages"
#: What a runtime's worker needs besides pywren-core: pywren-azure's dependencies (pinned by the core
#: to the client's versions) and azure-identity, for a worker that signs in with its managed identity.
WORKER_REQUIREMENTS = ("azure-storage-blob", "azure-storage-queue", "requests", "urllib3", "azure-identity")
#: What the Functions Python worker itself provides: never installed into a runtime.
PROVIDED = ("azure-functions",)
#: App settings of a runtime's app: its package carries its packages, so no remote build.
RUNTIME_APP_SETTINGS = {"SCM_DO_BUILD_DURING_DEPLOYMENT": "false"}
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the same inputs make the same zip, byte for byte
DEPLOY_WAIT = 600.0
MANAGEMENT_URL = "https://management.azure.com"
SCM_URL = "https://{app}.scm.azurewebsites.net"


def host_json(config: Mapping[str, Any]) -> dict[str, Any]:
    """host.json: the queue trigger fetches about ``max_concurrency`` messages per instance and polls
    at least every 2 s (Azure's default backs off to a minute on an idle queue)."""
    cap = config["max_concurrency"]
    minutes, seconds = divmod(int(DEFAULT_TIME_LIMIT), 60)
    return {
        "version": "2.0",
        "functionTimeout": f"00:{minutes:02d}:{seconds:02d}",
        "extensionBundle": {"id": "Microsoft.Azure.Functions.ExtensionBundle", "version": "[4.*, 5.0.0)"},
        "extensions": {
            "queues": {
                "batchSize": min(32, cap),
                "newBatchThreshold": cap // 2,
                "maxPollingInterval": "00:00:02",
                "visibilityTimeout": "00:00:10",
                "maxDequeueCount": 3,
            }
        },
    }


def function_app_py(config: Mapping[str, Any], runtime: Any = None) -> str:
    """The app's entry module. App settings of the same names win, except for a runtime's queue and
    route, which must be the runtime's own (its clients send there, and nowhere else)."""
    settings = {
        "PYWREN_AZURE_QUEUE": config["queue"],
        "PYWREN_AZURE_MAX_CONCURRENCY": str(config["max_concurrency"]),
        "PYWREN_AZURE_TIME_LIMIT": str(int(DEFAULT_TIME_LIMIT)),
    }
    fixed = {}
    if runtime is not None:
        del settings["PYWREN_AZURE_QUEUE"]
        fixed = {"PYWREN_AZURE_QUEUE": queue_name(config, runtime), "PYWREN_AZURE_ROUTE": http_route(runtime),
                 "PYWREN_AZURE_RUNTIME": runtime.name}
    lines = [
        f'"""Generated by pywren-azure {pywren_azure.__version__}. App settings of the same names win'
        + (f' (but for runtime {runtime.name}\'s queue and route)."""' if runtime is not None else '."""'),
        "",
        "import os",
        "",
        *(f"os.environ[{name!r}] = {value!r}" for name, value in fixed.items()),
        *(f"os.environ.setdefault({name!r}, {value!r})" for name, value in settings.items()),
        "",
        "from pywren_azure.function_app import app  # noqa: E402,F401",
        "",
    ]
    return "\n".join(lines)


def requirements() -> list[str]:
    """Third-party requirements of the vendored distributions, pinned to what is installed here."""
    names: list[str] = []
    for dist_name in VENDORED:
        for text in metadata.requires(dist_name) or []:
            if ";" in text:  # extras and platform-specific requirements are not the function's
                continue
            name = re.match(r"[A-Za-z0-9._-]+", text).group(0)  # type: ignore[union-attr]
            if name not in VENDORED:
                names.append(name)
    names.extend(EXTRA_REQUIREMENTS)
    pinned = []
    for name in dict.fromkeys(names):
        try:
            pinned.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pinned.append(name)
    return pinned


def package_files(config: Mapping[str, Any], runtime: Any = None) -> dict[str, Path | bytes]:
    """Every file of the function app's package, by its path in the zip."""
    from pywren_core import runtime as core_runtime  # only to deploy: a worker never needs it

    files: dict[str, Path | bytes] = {
        "host.json": json.dumps(host_json(config), indent=2).encode(),
        "function_app.py": function_app_py(config, runtime).encode(),
    }
    if runtime is None:
        files["requirements.txt"] = ("\n".join(requirements()) + "\n").encode()
        files.update(core_runtime.artifact_files(None, PACKAGES))
    else:
        for name, content in core_runtime.artifact_files(runtime, PACKAGES).items():
            files[f"{SITE_PACKAGES}/{name}"] = content
    return files


def build_package(config: Mapping[str, Any], directory: str | os.PathLike[str], runtime: Any = None) -> Path:
    """Write the function app's zip package into ``directory`` and return its path."""
    suffix = f"-{runtime.name}" if runtime is not None else ""
    path = Path(directory) / f"pywren-azure-{pywren_azure.__version__}{suffix}.zip"
    files = package_files(config, runtime)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            content = files[name]
            info = zipfile.ZipInfo(name, _FIXED_TIME)
            executable = isinstance(content, Path) and content.stat().st_mode & 0o111
            info.external_attr = (0o755 if executable else 0o644) << 16
            data = content if isinstance(content, bytes) else content.read_bytes()
            archive.writestr(info, data, zipfile.ZIP_DEFLATED)
    return path


def _management_token() -> str:
    credential = default_credential("pywren deploy")
    with mapped("getting a token for Azure Resource Manager"):
        return credential.get_token("https://management.azure.com/.default").token


def deploy(session: AzureSession, config: Mapping[str, Any]) -> str:
    """Set the app's payload key, then upload the package with Kudu zip deploy and wait for it; with
    a runtime, to the runtime's app, then record in the job container which runtime it carries."""
    runtime = session.runtime
    app = app_name(config, runtime)
    if not app:
        raise ConfigError("pywren deploy for azure needs azure.function_app (create it with az functionapp create"
                          + (f"; runtime {runtime_label(runtime)!r} goes to <function_app>-{runtime_label(runtime)})"
                             if runtime is not None else ")"))
    if not config.get("payload_key"):
        # The app's queue trigger would run whatever anyone who can write to the queue sends it.
        raise ConfigError(
            "pywren deploy for azure needs azure.payload_key, so that the function app runs only what your "
            "clients send (its queue is readable and writable with the storage account key). Make one with: "
            f"{PAYLOAD_KEY_COMMAND}, put it in the azure section of your config (or PYWREN_AZURE_PAYLOAD_KEY), "
            "then run pywren deploy again"
        )
    headers = {"Authorization": f"Bearer {_management_token()}"}
    settings = {PAYLOAD_KEY_ENV: config["payload_key"].strip(), **(RUNTIME_APP_SETTINGS if runtime is not None else {})}
    if runtime is not None and runtime.image:
        return _deploy_image(session, config, runtime, app, headers, settings)
    _set_app_settings(session, headers, _site_id(session, headers, app), settings)
    with tempfile.TemporaryDirectory() as scratch:
        package = build_package(config, scratch, runtime)
        with open(package, "rb") as body:
            response = session.http.post(f"{SCM_URL.format(app=app)}/api/zipdeploy?isAsync=true",
                                         data=body, headers=headers, timeout=(20, 600))
    if response.status_code not in (200, 202):
        raise InvokeError(f"zip deploy to {app} answered HTTP {response.status_code}: {response.text[:200]}")
    status_url = response.headers.get("Location")
    give_up = time.monotonic() + DEPLOY_WAIT
    while status_url and time.monotonic() < give_up:
        state = session.http.get(status_url, headers=headers, timeout=(20, 60)).json()
        if state.get("complete"):
            if state.get("status") != 4:  # Kudu's DeployStatus.Success
                raise InvokeError(f"deployment to {app} failed: {state.get('status_text') or state.get('log_url')}")
            break
        time.sleep(3)
    record_runtime(session, config, runtime, app)
    carries = f"runtime {runtime.name} ({runtime_label(runtime)!r}), " if runtime is not None else ""
    return (f"deployed pywren-azure {pywren_azure.__version__} to function app {app} ({carries}"
            f"queue {queue_name(config, runtime)!r}, payload key set as app setting {PAYLOAD_KEY_ENV})")


def _deploy_image(session: AzureSession, config: Mapping[str, Any], runtime: Any, app: str,
                  headers: dict[str, str], settings: dict[str, str]) -> str:
    """A container image runtime: the app runs the user's image (pywren builds and uploads nothing);
    deploy gives the app the runtime's queue and route as app settings, and records it."""
    settings = {**settings, "PYWREN_AZURE_QUEUE": queue_name(config, runtime),
                "PYWREN_AZURE_ROUTE": http_route(runtime), "PYWREN_AZURE_RUNTIME": runtime.name,
                "PYWREN_AZURE_MAX_CONCURRENCY": str(config["max_concurrency"])}
    _set_app_settings(session, headers, _site_id(session, headers, app), settings)
    record_runtime(session, config, runtime, app)
    return (f"configured function app {app} for runtime {runtime.name} (image {runtime.image}): queue "
            f"{settings['PYWREN_AZURE_QUEUE']!r}, route {settings['PYWREN_AZURE_ROUTE']!r}, payload key set. Nothing "
            f"uploaded: the app must run the image (az functionapp create --image {runtime.image}), with host.json and "
            "function_app.py in /home/site/wwwroot (pywren_azure.deploy.write_app_files writes them)")


def write_app_files(directory: str | os.PathLike[str], config: Mapping[str, Any] | None = None) -> list[Path]:
    """host.json and function_app.py for a container image's /home/site/wwwroot (beside the code
    ``pywren runtime dockerfile`` writes); the queue and route come from the app settings deploy sets."""
    from pywren_azure.plugin import CONFIG

    config = {**{f.name: f.default for f in CONFIG}, **(config or {})}
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "host.json", folder / "function_app.py"]
    written[0].write_text(json.dumps(host_json(config), indent=2))
    written[1].write_text(function_app_py(config))
    return written


def record_runtime(session: AzureSession, config: Mapping[str, Any], runtime: Any, app: str) -> None:
    """Record in the job container that ``app`` now carries ``runtime`` (None: no runtime), and
    forget the runtime it carried before, whose clients must now be told to deploy again."""
    with mapped(f"list {RUNTIMES_PREFIX!r}", session.secrets):
        for key in session.container.list_blob_names(name_starts_with=RUNTIMES_PREFIX):
            if runtime is not None and key == f"{RUNTIMES_PREFIX}{runtime.name}.json":
                continue
            try:
                record = json.loads(session.container.download_blob(key).readall())
            except (ResourceNotFoundError, ValueError):
                continue
            if record.get("app") == app:
                try:
                    session.container.delete_blob(key)
                except ResourceNotFoundError:
                    pass
    if runtime is None:
        return
    record = {
        "runtime": runtime.name, "label": runtime_label(runtime), "app": app, "queue": queue_name(config, runtime),
        "route": http_route(runtime), "python": runtime.manifest.get("python"),
        "distributions": runtime.distributions, "pywren_azure": pywren_azure.__version__, "deployed_at": time.time(),
    }
    key = f"{RUNTIMES_PREFIX}{runtime.name}.json"
    with mapped(f"put {key!r}", session.secrets):
        session.container.upload_blob(key, json.dumps(record, indent=1, sort_keys=True).encode(), overwrite=True)


def _arm(session: AzureSession, headers: dict[str, str], method: str, path: str, **kwargs: Any) -> Any:
    """One Azure Resource Manager request; its JSON answer. An error shows only ARM's error code and
    message, never a body (the settings list holds the app's connection strings)."""
    response = session.http.request(method, f"{MANAGEMENT_URL}{path}", headers=headers, timeout=(20, 60), **kwargs)
    if response.status_code >= 300:
        try:
            error = response.json().get("error") or {}
        except ValueError:
            error = {}
        detail = scrub(f"{error.get('code', '')}: {error.get('message', '')}", session.secrets)
        raise InvokeError(f"Azure Resource Manager answered {method} {path.split('?')[0]} with HTTP "
                          f"{response.status_code} {detail}")
    return response.json()


def _site_id(session: AzureSession, headers: dict[str, str], app: str) -> str:
    """The resource id of the function app named ``app``, in whichever subscription holds it
    (app names are unique across Azure)."""
    found = f"resourceType eq 'Microsoft.Web/sites' and name eq '{app}'"
    for subscription in _arm(session, headers, "GET", "/subscriptions?api-version=2020-01-01")["value"]:
        path = f"/subscriptions/{subscription['subscriptionId']}/resources"
        sites = _arm(session, headers, "GET", path, params={"$filter": found, "api-version": "2021-04-01"})["value"]
        if sites:
            return sites[0]["id"]
    raise ConfigError(f"no function app named {app!r} in the subscriptions these credentials can see: create it "
                      "with az functionapp create, or sign in as someone who can manage it")


def _set_app_settings(session: AzureSession, headers: dict[str, str], site: str, wanted: Mapping[str, str]) -> None:
    """Set these app settings and keep the others (the API replaces them all at once)."""
    settings = _arm(session, headers, "POST", f"{site}/config/appsettings/list?api-version=2022-03-01")
    properties = settings.get("properties") or {}
    if any(properties.get(name) != value for name, value in wanted.items()):
        _arm(session, headers, "PUT", f"{site}/config/appsettings?api-version=2022-03-01",
             json={"properties": {**properties, **wanted}})


def remove(session: AzureSession, config: Mapping[str, Any]) -> str:
    """Delete the call queue and its poison queue (the session's runtime's, when it has one); the
    function app and the container are left."""
    if session.runtime is not None:
        key = f"{RUNTIMES_PREFIX}{session.runtime.name}.json"
        with mapped(f"delete {key!r}", session.secrets):
            try:
                session.container.delete_blob(key)
            except ResourceNotFoundError:
                pass
    if not isinstance(session.invoker, QueueInvoker):
        return (f"nothing to remove for trigger {config['trigger']!r}; "
                "delete the function app with az functionapp delete")
    queue, poison = session.invoker.queue, session.invoker.poison
    for client in (queue, poison):
        with mapped(f"delete queue {client.queue_name!r}", session.secrets):
            try:
                client.delete_queue()
            except ResourceNotFoundError:
                pass
    return (f"deleted queues {queue.queue_name!r} and {poison.queue_name!r}; the function app "
            f"{config.get('function_app') or ''} is left (az functionapp delete removes it)")
