"""Benchmark the azure backend against local Azurite and the test suite's Functions host.

1. End to end: 1,000 no-op calls through the queue trigger and through the HTTP trigger (submit to
   last result), beside baselines measured in the same run: the local backend on the same calls,
   and the raw SDK sending, receiving and deleting 1,000 queue messages of the same size (the
   least queue traffic the queue trigger needs: its floor on this emulator).
2. Storage: put/get of small and large objects and a 1,000-key list, through the plugin's hooks
   (a core Session) and through raw azure-storage-blob against the same Azurite; medians of
   several rounds and the ratio plugin speed / raw speed (goal: >= 0.95).

Run: ``python plugins/pywren_azure/benchmarks/bench_azure.py [--calls 1000] [--rounds 5]``.
Starts and stops its own Azurite and host on 127.0.0.1 (Azurite installed as for the tests).
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from servers import azurite_binary  # noqa: E402

import pywren_core as pw  # noqa: E402
from pywren_core.protocol import new_id  # noqa: E402
from pywren_core.testing import LocalServer, free_port, free_ports, http_status, open_session  # noqa: E402

ACCOUNT = "benchaccount"
KEY = base64.b64encode(os.urandom(32)).decode()
PAYLOAD_KEY = os.urandom(32).hex()  # the function app's PYWREN_PAYLOAD_KEY, and the clients' payload_key
QUEUE = "pywren-bench"
CONTAINER = "pywren-bench"


def noop(x: int) -> int:
    return x


def start_servers(workdir: Path, concurrency: int) -> tuple[list[LocalServer], str, str]:
    ports = free_ports(3)
    argv = [str(azurite_binary()), "--blobHost", "127.0.0.1", "--queueHost", "127.0.0.1", "--tableHost", "127.0.0.1",
            "--blobPort", str(ports[0]), "--queuePort", str(ports[1]), "--tablePort", str(ports[2]),
            "--inMemoryPersistence", "--skipApiVersionCheck", "--loose", "--disableTelemetry", "--silent"]
    env = {**os.environ, "AZURITE_ACCOUNTS": f"{ACCOUNT}:{KEY}"}
    azurite = LocalServer("azurite", argv, workdir / "azurite.log", env=env, cwd=workdir)
    blob, queue = f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}"
    azurite.wait_ready(lambda: http_status(blob) and http_status(queue), "blob and queue ports answer")
    connection = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
                  f"BlobEndpoint={blob}/{ACCOUNT};QueueEndpoint={queue}/{ACCOUNT};")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYWREN_")}
    env.update({"AzureWebJobsStorage": connection, "PYWREN_AZURE_CONNECTION_STRING": connection,
                "PYWREN_AZURE_QUEUE": QUEUE, "PYWREN_AZURE_MAX_CONCURRENCY": str(concurrency),
                "PYWREN_PAYLOAD_KEY": PAYLOAD_KEY,
                "FUNCTIONS_TEST_KEY": "bench-key"})
    host = LocalServer("functions host", [sys.executable, str(TESTS / "functions_host.py"), "--port", str(port),
                                     "--concurrency", str(concurrency)], workdir / "host.log", env=env, cwd=workdir)
    url = f"http://127.0.0.1:{port}"
    host.wait_ready(lambda: http_status(f"{url}/admin/host/status") == 200, "GET /admin/host/status")
    return [host, azurite], connection, url


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run_calls(config: dict, calls: int) -> float:
    # cleanup=False: the local backend's cleanup of one job can race the next job's writes (a core
    # issue, reported); every backend runs the same way here.
    with pw.executor(config, progress=False, cleanup=False) as ex:
        ex.get_result(ex.map(noop, range(2)))  # warm: container, queue, connections, the host's imports

        def job() -> None:
            assert ex.get_result(ex.map(noop, range(calls))) == list(range(calls))

        return timed(job)


def raw_queue_round_trip(connection: str, calls: int) -> tuple[float, float]:
    """The queue traffic one call needs at the least, through the raw SDK: send (64 threads, as the
    client's invokers), then receive in pages of 32 and delete (16 threads, as the host's slots)."""
    queue = QueueClient.from_connection_string(connection, f"{QUEUE}-raw",
                                               message_encode_policy=TextBase64EncodePolicy())
    queue.create_queue()
    message = "x" * 900  # about the size of one pywren payload
    with ThreadPoolExecutor(64) as pool:
        send = timed(lambda: list(pool.map(lambda _: queue.send_message(message), range(calls))))

    def drain() -> None:
        with ThreadPoolExecutor(16) as pool:
            left = calls
            while left:
                page = list(queue.receive_messages(messages_per_page=32, max_messages=32))
                list(pool.map(queue.delete_message, page))
                left -= len(page)

    receive = timed(drain)
    queue.delete_queue()
    return send, send + receive


def bench_calls(connection: str, url: str, calls: int, rounds: int) -> None:
    section = {"connection_string": connection, "container": CONTAINER, "queue": QUEUE, "payload_key": PAYLOAD_KEY}
    configs = {
        "azure queue": {"backend": "azure", "azure": {**section, "trigger": "queue"}},
        "azure http": {"backend": "azure", "azure": {**section, "trigger": "http", "function_url": f"{url}/api/pywren",
                                                     "function_key": "bench-key", "invoke_rate": 2000}},
        "local backend (baseline)": {"backend": "local", "local": {"storage_dir": tempfile.mkdtemp()}},
    }
    print(f"\n{calls} no-op calls, end to end (median of {rounds})")
    for name, config in configs.items():
        samples = [run_calls(config, calls) for _ in range(rounds)]
        median = statistics.median(samples)
        runs = ", ".join(f"{s:.2f}" for s in samples)
        print(f"  {name:28s} {median:7.2f} s   {calls / median:7.0f} calls/s   (runs: {runs})")
    raw = [raw_queue_round_trip(connection, calls) for _ in range(rounds)]
    for index, name in enumerate(("raw SDK: send only", "raw SDK: send+receive+delete")):
        median = statistics.median(r[index] for r in raw)
        print(f"  {name:28s} {median:7.2f} s   {calls / median:7.0f} msgs/s")


def bench_storage(connection: str, rounds: int) -> None:
    session = open_session({"backend": "azure", "azure": {"connection_string": connection, "container": CONTAINER}})
    raw = BlobServiceClient.from_connection_string(connection).get_container_client(CONTAINER)
    small, large = os.urandom(1024), os.urandom(16 * 2**20)
    prefix = f"bench/{new_id()}/"
    keys = [f"{prefix}list/{i:05d}" for i in range(1000)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: raw.upload_blob(k, b"x", overwrite=True), keys))

    def small_puts(put: Callable[[str, bytes], object]) -> Callable[[], None]:
        return lambda: [put(f"{prefix}small/{i}", small) for i in range(200)]

    def small_gets(get: Callable[[str], object]) -> Callable[[], None]:
        return lambda: [get(f"{prefix}small/{i}") for i in range(200)]

    cases = [
        ("put 1 KiB x200", 200, "ops", small_puts(session.put),
         small_puts(lambda k, d: raw.upload_blob(k, d, overwrite=True))),
        ("get 1 KiB x200", 200, "ops", small_gets(session.get), small_gets(lambda k: raw.download_blob(k).readall())),
        ("put 16 MiB", 16, "MiB", lambda: session.put(prefix + "large", large),
         lambda: raw.upload_blob(prefix + "large", large, overwrite=True, max_concurrency=4)),
        ("get 16 MiB", 16, "MiB", lambda: session.get(prefix + "large"),
         lambda: raw.download_blob(prefix + "large", max_concurrency=4).readall()),
        ("list 1,000 keys", 1000, "keys", lambda: session.list(prefix + "list/"),
         lambda: list(raw.list_blob_names(name_starts_with=prefix + "list/"))),
    ]
    print(f"\nstorage through the plugin vs raw azure-storage-blob, same Azurite (median of {rounds})")
    print(f"  {'case':18s} {'plugin':>14s} {'raw SDK':>14s}   plugin/raw speed")
    for name, amount, unit, through_plugin, through_raw in cases:
        through_raw()  # warm both paths
        through_plugin()
        plugin_runs, raw_runs = [], []
        for round_number in range(rounds):  # alternate which goes first, so drift in load hits both alike
            pair = [(plugin_runs, through_plugin), (raw_runs, through_raw)]
            for runs, fn in pair if round_number % 2 == 0 else reversed(pair):
                runs.append(timed(fn))
        plugin_s, raw_s = statistics.median(plugin_runs), statistics.median(raw_runs)
        speed = f"{amount / plugin_s:9.1f} {unit}/s {amount / raw_s:9.1f} {unit}/s"
        print(f"  {name:18s} {speed}   {raw_s / plugin_s:5.2f}x")
    session.delete(session.list(prefix))
    session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--concurrency", type=int, default=16, help="the host's and the function's call slots")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        servers, connection, url = start_servers(Path(workdir), args.concurrency)
        try:
            print(f"Azurite and the test Functions host on 127.0.0.1; {os.cpu_count()} CPUs; "
                  f"host concurrency {args.concurrency}")
            bench_storage(connection, args.rounds)
            bench_calls(connection, url, args.calls, max(1, args.rounds // 2))
        finally:
            for server in servers:
                server.stop()


if __name__ == "__main__":
    main()
