"""Benchmark the gcp plugin against local services: fake-gcs-server and functions-framework on 127.0.0.1.

    python plugins/pywren_gcp/benchmarks/bench_gcp.py [--calls 1000] [--repeats 5]

Prints medians over ``--repeats`` runs, each next to its baseline:

* invocations/s: how fast ``pywren_invoke`` gets calls accepted by the handler, against raw HTTP
  POSTs of the same payloads from 64 ``requests`` threads to a no-op function (the HTTP ceiling here);
* end-to-end time of ``--calls`` no-op calls (map + get_result);
* storage throughput through the plugin's hooks vs google-cloud-storage used directly, on the same
  emulator: small objects (put/get 4 KiB) and large ones (put/get 20 MiB); the goal is >= 0.95x.

The emulators bound what is measured: absolute numbers say little about Google Cloud, ratios do.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from google.auth.credentials import AnonymousCredentials  # noqa: E402
from google.cloud import storage  # noqa: E402

import pywren_core as pw  # noqa: E402
from pywren_core.testing import open_session, square  # noqa: E402
from pywren_gcp.deploy import build_package  # noqa: E402

from servers import BUCKET, start_fake_gcs, start_function, unpack_package  # noqa: E402

NOOP_FUNCTION = '''
def handler(request):
    request.get_data()
    return "ok"
'''


def median_of(repeats: int, run: Callable[[], float]) -> float:
    return statistics.median(run() for _ in range(repeats))


def config(storage_url: str, function_url: str) -> dict[str, Any]:
    return {"backend": "gcp", "gcp": {"bucket": BUCKET, "project": "bench", "storage_endpoint": storage_url,
                                      "function_url": function_url, "authenticated": False}}


def bench_invocations(cfg: dict[str, Any], calls: int, repeats: int) -> tuple[float, float]:
    """Invocations accepted per second, and end-to-end seconds, for ``calls`` no-op calls."""
    rates, totals = [], []
    for _ in range(repeats):
        with pw.executor(cfg, progress=False) as ex:
            started = time.time()
            futures = ex.map(square, range(calls))
            ex.get_result(futures)
            totals.append(time.time() - started)
            rates.append(calls / (max(f.stats["invoked"] for f in futures) - started))
    return statistics.median(rates), statistics.median(totals)


def bench_raw_posts(url: str, calls: int, repeats: int) -> float:
    """POSTs per second of same-sized JSON bodies to a no-op function, from 64 requests sessions."""
    body = json.dumps({"payloads": [{"calls": [{"call_id": "00000"}], "padding": "x" * 600}]}).encode()

    def run() -> float:
        with ThreadPoolExecutor(64) as pool:
            sessions: dict[int, requests.Session] = {}

            def post(_: int) -> None:
                import threading

                session = sessions.setdefault(threading.get_ident(), requests.Session())
                session.post(url, data=body, headers={"Content-Type": "application/json"}).raise_for_status()

            started = time.time()
            list(pool.map(post, range(calls)))
            return calls / (time.time() - started)

    return median_of(repeats, run)


def throughput(operation: Callable[[str], Any], keys: list[str], size: int) -> float:
    """MB/s of running ``operation`` on each key in turn."""
    started = time.perf_counter()
    for key in keys:
        operation(key)
    return size * len(keys) / (time.perf_counter() - started) / 1e6


def bench_storage(cfg: dict[str, Any], storage_url: str, repeats: int) -> list[tuple[str, float, float]]:
    """(case, plugin MB/s, raw MB/s) for small and large objects, put and get, one object at a time."""
    session = open_session(cfg)
    raw = storage.Client(project="bench", credentials=AnonymousCredentials(),
                         client_options={"api_endpoint": storage_url})
    bucket = raw.bucket(BUCKET)
    rows = []
    for label, size, count in (("4 KiB x 300", 4096, 300), ("20 MiB x 3", 20 * 2**20, 3)):
        data = os.urandom(size)
        keys = [f"bench/{size}/{i}" for i in range(count)]
        runs: dict[str, Callable[[str], Any]] = {
            "plugin put": lambda key, data=data: session.put(key, data),
            "raw put": lambda key, data=data: bucket.blob(key).upload_from_string(
                data, content_type="application/octet-stream"),
            "plugin get": lambda key: session.get(key),
            "raw get": lambda key: bucket.blob(key).download_as_bytes(),
        }
        # Interleave plugin and raw runs, so a busy moment of the machine hits both alike.
        results: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):
            for name, operation in runs.items():
                results[name].append(throughput(operation, keys, size))
        for verb in ("put", "get"):
            plugin, raw_rate = (statistics.median(results[f"{who} {verb}"]) for who in ("plugin", "raw"))
            rows.append((f"{verb} {label}", plugin, raw_rate))
        session.delete(keys)
    session.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for var in [v for v in os.environ if v.startswith("PYWREN_")]:
        del os.environ[var]
    with tempfile.TemporaryDirectory(prefix="bench-gcp-") as tmp:
        work = Path(tmp)
        services = []
        try:
            gcs, storage_url = start_fake_gcs(work)
            services.append(gcs)
            source = unpack_package(build_package(), work / "package")
            function, function_url = start_function(work, source, storage_url)
            services.append(function)
            (work / "noop").mkdir()
            (work / "noop" / "main.py").write_text(NOOP_FUNCTION)
            noop, noop_url = start_function(work / "noop", work / "noop" / "main.py", storage_url)
            services.append(noop)
            cfg = config(storage_url, function_url)

            print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; medians of {args.repeats}")
            rate, total = bench_invocations(cfg, args.calls, args.repeats)
            raw_rate = bench_raw_posts(noop_url, args.calls, args.repeats)
            print(f"invocations accepted/s       plugin {rate:8.0f}   raw POSTs to a no-op function {raw_rate:8.0f}"
                  f"   ratio {rate / raw_rate:.2f}")
            print(f"{args.calls} no-op calls end to end   {total:.2f} s ({args.calls / total:.0f} calls/s)")
            for name, plugin, raw in bench_storage(cfg, storage_url, args.repeats):
                print(f"{name:<20} plugin {plugin:8.1f} MB/s   raw google-cloud-storage {raw:8.1f} MB/s"
                      f"   ratio {plugin / raw:.2f}")
        finally:
            for service in reversed(services):
                service.stop()


if __name__ == "__main__":
    main()
