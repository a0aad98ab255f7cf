"""Benchmark a numpy runtime on the azure backend: the core's ``compute`` workload (what ``pywren
bench`` runs) through the DEPLOYED package, on Azurite and the test suite's Functions host.

1. Build the numpy runtime for the plugin's platform into a fresh folder (cold), then again (cached).
2. ``pywren deploy`` it (to the tests' ARM/Kudu stand-in) and unpack the zip it uploads.
3. Make a clean interpreter (a bare venv with azure-functions, what the Functions Python worker
   provides) and time, in fresh processes of it, importing what a cold worker imports before its
   first call (pywren_core.worker and the plugin, then numpy) from the unpacked package.
4. Start the host on the unpacked package with that interpreter; time the first call (a cold
   worker process importing numpy) and run ``pywren_core.bench.workloads.compute``.

Run: ``python plugins/pywren_azure/benchmarks/bench_runtime.py [--calls 4] [--n 512] [--loops 4]``
(the ``laptop`` preset of ``pywren bench``'s compute workload; needs PyPI for the build).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from importlib import metadata
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from bench_azure import ACCOUNT, CONTAINER, KEY, PAYLOAD_KEY  # noqa: E402
from pywren_azure import deploy, plugin  # noqa: E402
from servers import azurite_binary  # noqa: E402
from standin_arm import standin_arm  # noqa: E402

import pywren_core as pw  # noqa: E402
from pywren_core import config as config_module  # noqa: E402
from pywren_core import runtime  # noqa: E402
from pywren_core.bench import workloads  # noqa: E402
from pywren_core.plugins import load_backend  # noqa: E402
from pywren_core.testing import LocalServer, free_port, free_ports, http_status  # noqa: E402

APP = "pywren-bench"
RUNTIMES = {"numpy": {"requirements": ["numpy"]}}
IMPORTS = {
    "worker": "import pywren_core.worker, pywren_core.harness, pywren_azure.plugin",
    "numpy": "import numpy",
}


def first_numpy(x: int) -> float:
    import numpy

    return float(numpy.ones(3).sum()) + x


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--loops", type=int, default=4)
    parser.add_argument("--import-rounds", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pywren-bench-runtime-"))  # left for inspection: remove it after
    os.environ[runtime.DIR_ENV] = str(work / "runtimes")
    figures: dict[str, object] = {}

    spec = runtime.RuntimeSpec.from_config("numpy", RUNTIMES)
    started = time.perf_counter()
    built = runtime.build(spec, plugin.PLATFORM)
    figures["build_cold_s"] = time.perf_counter() - started
    started = time.perf_counter()
    runtime.build(spec, plugin.PLATFORM)
    figures["build_cached_s"] = time.perf_counter() - started
    figures["runtime"] = built.name
    figures["runtime_unpacked_mb"] = built.manifest["size_bytes"] / 1e6

    ports = free_ports(3)
    argv = [str(azurite_binary()), "--blobHost", "127.0.0.1", "--queueHost", "127.0.0.1", "--tableHost", "127.0.0.1",
            "--blobPort", str(ports[0]), "--queuePort", str(ports[1]), "--tablePort", str(ports[2]),
            "--inMemoryPersistence", "--skipApiVersionCheck", "--loose", "--disableTelemetry", "--silent"]
    azurite_env = {**os.environ, "AZURITE_ACCOUNTS": f"{ACCOUNT}:{KEY}"}
    azurite = LocalServer("azurite", argv, work / "azurite.log", env=azurite_env, cwd=work)
    servers = [azurite]
    try:
        blob, queue = f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}"
        azurite.wait_ready(lambda: http_status(blob) and http_status(queue), "blob and queue ports answer")
        connection = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
                      f"BlobEndpoint={blob}/{ACCOUNT};QueueEndpoint={queue}/{ACCOUNT};")
        section = {"connection_string": connection, "container": CONTAINER, "queue": "pywren-bench",
                   "trigger": "queue", "payload_key": PAYLOAD_KEY, "function_app": APP}

        cfg = config_module.load({"backend": "azure", "azure": section})
        backend = load_backend("azure")
        with standin_arm({f"{APP}-numpy": {}}) as arm:
            session = backend.open(cfg.backend_section(backend.info), role="client", runtime=built)
            started = time.perf_counter()
            session.deploy()
            figures["deploy_s"] = time.perf_counter() - started
            session.close()
        package = arm.package_of(f"{APP}-numpy")
        figures["package_zip_mb"] = len(package) / 1e6
        root = work / "wwwroot"
        with zipfile.ZipFile(io.BytesIO(package)) as archive:
            archive.extractall(root)
        figures["package_unpacked_mb"] = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e6

        venv = work / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        python = str(venv / "bin" / "python")
        subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", python, "install",
                        "--quiet", f"azure-functions=={metadata.version('azure-functions')}"], check=True)
        site = root / deploy.SITE_PACKAGES
        env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "PYTHONNOUSERSITE": "1", "PYTHONPATH": f"{root}:{site}"}
        # The zip holds no .pyc: on a read-only package (run from package) every cold worker compiles
        # what it imports; where the folder is writable, only the first one does.
        for mode, extra in (("read-only", {"PYTHONDONTWRITEBYTECODE": "1"}), ("pyc cached", {})):
            for what, statement in IMPORTS.items():
                code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
                rounds = [float(subprocess.run([python, "-c", code], env={**env, **extra}, capture_output=True,
                                               text=True, check=True).stdout) for _ in range(args.import_rounds)]
                figures[f"import {what} ({mode}), median s"] = round(statistics.median(rounds[1:] or rounds), 3)

        port = free_port()
        host_env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "PYTHONNOUSERSITE": "1",
                    "AzureWebJobsStorage": connection, "PYWREN_PAYLOAD_KEY": PAYLOAD_KEY,
                    "PYWREN_AZURE_MAX_CONCURRENCY": "4", "FUNCTIONS_TEST_KEY": "bench-key"}
        host = LocalServer("functions host", [python, str(TESTS / "functions_host.py"), "--port", str(port),
                                              "--concurrency", "4", "--host-json", str(root / "host.json"),
                                              "--app-dir", str(root)], work / "host.log", env=host_env, cwd=work)
        servers.append(host)
        url = f"http://127.0.0.1:{port}"
        host.wait_ready(lambda: http_status(f"{url}/admin/host/status") == 200, "GET /admin/host/status")
        config = {"backend": "azure", "azure": section, "runtimes": RUNTIMES, "runtime": "numpy", "progress": False}
        with pw.executor(config) as ex:
            started = time.perf_counter()
            ex.get_result(ex.call_async(first_numpy, 1))
            figures["first_call_s"] = time.perf_counter() - started
            started = time.perf_counter()
            ex.get_result(ex.call_async(first_numpy, 2))
            figures["warm_call_s"] = time.perf_counter() - started
            result = workloads.compute(ex, calls=args.calls, n=args.n, loops=args.loops)
        figures["compute"] = {"skipped": result["skipped"], **result["summary"]}
    finally:
        for server in reversed(servers):
            server.stop()
    print(json.dumps(figures, indent=1, default=str))


if __name__ == "__main__":
    main()
