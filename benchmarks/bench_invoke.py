"""Invocations per second through each cloud plugin against the fastest raw client, same endpoint, same run.

    python benchmarks/bench_invoke.py                       # aws gcp azure, 2,000 calls, 5 rounds
    python benchmarks/bench_invoke.py gcp --calls 3000 --repeats 7

Each case runs in a process of its own, on emulators of its own: in this interpreter when it has the
plugin installed, else in the plugin's nox virtualenv (``.nox/plugin-plugin-<name>``, which
``nox -s "plugin(plugin='gcp')"`` makes), with the core and the plugin from this tree first on the path.
The plugin's own test helpers start the emulators on 127.0.0.1, and the endpoint the calls go to
accepts them and runs nothing, so what is measured is how fast a client gets invocations accepted:

- aws: the tests' Lambda stand-in with no runtime process (``Event`` invokes answered 202), S3 on moto;
  raw client: boto3 ``invoke(InvocationType="Event")`` from a thread pool, reading each (empty) answer
  so that its connection is reused.
- gcp: functions-framework serving a function that answers as the real handler does (an
  acknowledgement line, then one line per payload) without running anything, storage on
  fake-gcs-server; raw client: POSTs through a keep-alive urllib3 connection pool, from a thread pool.
- azure queue: Azurite's queue; raw client: ``QueueClient.send_message`` from a thread pool.
- azure http: the tests' Functions host serving an HTTP trigger that answers 202 and runs nothing;
  raw client: POSTs through a keep-alive urllib3 connection pool. The plugin runs unpaced here
  (``invoke_rate: 0``): its default of 100/s for HTTP is a chosen pace, not a cost.

The plugin side is ``Executor.map`` of a no-op over ``--calls`` calls, timed from the call to
``map`` until every call is recorded as invoked (accepted by the platform), on a fresh executor
whose connections a first map of 64 calls warmed. The raw side sends the very payloads the plugin
sent (recorded in a warm-up run), JSON-encoding each as it sends it, from as many threads as the
core's invoker has (64), on clients warmed the same way. Plugin and raw runs alternate; each figure
is the median of ``--repeats`` runs, and the ratio is plugin / raw. Client CPU is this process's
CPU time per invocation (all threads), so a client that burns CPU shows here even where the
emulator sets the pace.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pywren_core as pw
from pywren_core import hookimpl

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("aws", "gcp", "azure")
#: The core's default ``invoke_threads``: the raw clients get as many threads.
THREADS = 64
WARM = 64


def noop(x: int) -> int:
    return x


@dataclass
class Case:
    """One way of invoking: the plugin's config, and the raw client that sends the same payloads."""

    name: str
    config: dict[str, Any]
    raw_name: str
    #: Given the payloads the plugin sent, a function sending payload ``i`` (modulo their number).
    make_raw: Callable[[list[dict[str, Any]]], Callable[[int], None]]
    #: Run before every measured run (emptying a queue, say).
    reset: Callable[[], None] = lambda: None
    plugin: list[float] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)
    plugin_cpu: list[float] = field(default_factory=list)
    raw_cpu: list[float] = field(default_factory=list)


class RecordPayloads:
    """A wrapper plugin that keeps a copy of each payload invoked (used in warm-up runs only)."""

    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []

    @hookimpl(wrapper=True)
    def pywren_invoke(self, session: Any, payload: Any) -> Any:
        self.payloads.append(dict(payload))
        return (yield)


def wait_invoked(futures: list[Any], give_up: float = 300.0) -> float:
    """The time.time() at which every future had been recorded as invoked (polled every 5 ms)."""
    deadline = time.monotonic() + give_up
    seen = 0
    while True:
        while seen < len(futures) and "invoked" in futures[seen].stats:
            seen += 1
        if seen == len(futures):
            return time.time()
        failed = futures[seen].done() and futures[seen].exception()
        if failed:
            raise RuntimeError(f"call {seen} failed before it was invoked: {failed}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {seen} of {len(futures)} calls invoked after {give_up} s")
        time.sleep(0.005)


def plugin_run(config: dict[str, Any], calls: int, recorder: RecordPayloads | None = None) -> tuple[float, float]:
    """(invocations/s, client CPU ms per invocation) of one Executor.map on a fresh, warmed executor."""
    wrappers = [recorder] if recorder else []
    ex = pw.executor(config, progress=False, wrappers=wrappers)
    try:
        wait_invoked(ex.map(noop, range(WARM)))
        cpu = time.process_time()
        started = time.time()
        futures = ex.map(noop, range(calls))
        ended = wait_invoked(futures)
        cpu = time.process_time() - cpu
    finally:
        ex.shutdown(wait=True, cancel_futures=True)
    return calls / (ended - started), cpu / calls * 1000


def raw_run(pool: concurrent.futures.ThreadPoolExecutor, send: Callable[[int], None], calls: int
            ) -> tuple[float, float]:
    cpu = time.process_time()
    started = time.perf_counter()
    list(pool.map(send, range(calls)))
    elapsed = time.perf_counter() - started
    return calls / elapsed, (time.process_time() - cpu) / calls * 1000


def measure(case: Case, calls: int, repeats: int) -> None:
    recorder = RecordPayloads()
    plugin_run(case.config, WARM, recorder)  # imports, the function's first upload, payloads to replay
    send = case.make_raw(recorder.payloads)
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(send, range(WARM)))  # warm the raw client's connections
        for repeat in range(repeats):
            sides = [("plugin", lambda: plugin_run(case.config, calls)), ("raw", lambda: raw_run(pool, send, calls))]
            for side, run in sides if repeat % 2 == 0 else reversed(sides):
                case.reset()
                rate, cpu = run()
                getattr(case, side).append(rate)
                getattr(case, f"{side}_cpu").append(cpu)
                print(f"    {case.name:<12} {side:<6} {rate:7.0f} inv/s  {cpu:.2f} ms CPU each", file=sys.stderr)


def report(cases: list[Case], calls: int, repeats: int, load: tuple[float, float]) -> None:
    print(f"\n{calls} invocations per run, medians of {repeats} alternating runs, {THREADS} threads on each side; "
          f"{os.cpu_count()} CPUs, load average {load[0]:.1f} before, {load[1]:.1f} after")
    print("| backend | plugin inv/s | raw client | raw inv/s | ratio | runs (plugin/raw) "
          "| client CPU ms/inv plugin, raw |")
    print("|---|---:|---|---:|---:|---|---:|")
    for case in cases:
        plugin, raw = statistics.median(case.plugin), statistics.median(case.raw)
        runs = " ".join(f"{p / r:.2f}" for p, r in zip(case.plugin, case.raw, strict=True))
        cpu = f"{statistics.median(case.plugin_cpu):.2f}, {statistics.median(case.raw_cpu):.2f}"
        print(f"| {case.name} | {plugin:.0f} | {case.raw_name} | {raw:.0f} | {plugin / raw:.2f}x | {runs} | {cpu} |")


# --- the backends ---------------------------------------------------------------------------------


def _tests_on_path(plugin: str) -> Path:
    tests = ROOT / "plugins" / f"pywren_{plugin}" / "tests"
    sys.path.insert(0, str(tests))
    return tests


def encoded(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def http_sender(url: str, headers: dict[str, str], body: Callable[[int], bytes], accepted: Callable[[Any], bool]
                ) -> Callable[[int], None]:
    """POST ``body(i)`` through one keep-alive urllib3 pool as large as the thread pool. A pooled
    connection the server closed while idle is reopened (one retry), as any keep-alive client does."""
    import urllib3

    pool = urllib3.connection_from_url(url, maxsize=THREADS, block=True, retries=urllib3.Retry(1, redirect=0, status=0))
    path = urllib3.util.parse_url(url).request_uri

    def send(i: int) -> None:
        response = pool.urlopen("POST", path, body=body(i), headers=headers)
        if not accepted(response):
            raise RuntimeError(f"{url} answered {response.status}: {response.data[:200]!r}")

    return send


@contextlib.contextmanager
def aws_cases(work: Path) -> Iterator[list[Case]]:
    import boto3
    from botocore.config import Config

    _tests_on_path("aws")
    import aws_services

    function, bucket, region = "pywren-bench", "pywren-bench", "us-east-1"
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        del os.environ[var]
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION=region,
                      AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    moto = aws_services.start_moto(work)
    lam = aws_services.start_lambda(work, function, aws_services.lambda_env(moto.url, work, {}), runtimes=0)
    try:
        os.environ["AWS_ENDPOINT_URL_LAMBDA"] = lam.url
        os.environ["AWS_ENDPOINT_URL_SQS"] = moto.url  # the completion-notice queues
        boto3.client("s3", endpoint_url=moto.url).create_bucket(Bucket=bucket)
        config = {"backend": "aws", "aws": {"bucket": bucket, "region": region, "function_name": function,
                                            "endpoint_url": moto.url}}
        raw = boto3.client("lambda", config=Config(max_pool_connections=THREADS, retries={"total_max_attempts": 1},
                                                   parameter_validation=False))

        def make_raw(payloads: list[dict[str, Any]]) -> Callable[[int], None]:
            def send(i: int) -> None:
                body = encoded(payloads[i % len(payloads)])
                answer = raw.invoke(FunctionName=function, InvocationType="Event", Payload=body)
                answer["Payload"].read()  # hands the connection back to the pool (unread: a new one each time)

            return send

        yield [Case("aws", config, "boto3 invoke (Event)", make_raw,
                    reset=lambda: aws_services.control(lam, "reset"))]
    finally:
        lam.stop()
        moto.stop()


#: A function that answers like pywren_gcp.handler (acknowledgement, then a line per payload), running nothing.
GCP_NOOP = '''
import json


def handler(request):
    payloads = request.get_json(force=True)["payloads"]

    def lines():
        yield b'{"accepted":%d}\\n' % len(payloads)
        for payload in payloads:
            record = {"job_id": payload.get("job_id"), "calls": len(payload["calls"]), "error": ""}
            yield json.dumps(record).encode() + b"\\n"

    return lines(), 200, {"Content-Type": "application/x-ndjson"}
'''


@contextlib.contextmanager
def gcp_cases(work: Path) -> Iterator[list[Case]]:
    _tests_on_path("gcp")
    from servers import BUCKET, start_fake_gcs, start_function

    os.environ.pop("STORAGE_EMULATOR_HOST", None)
    services = []
    try:
        gcs, storage_url = start_fake_gcs(work)
        services.append(gcs)
        source = work / "noop" / "main.py"
        source.parent.mkdir()
        source.write_text(GCP_NOOP)
        function, url = start_function(work, source, storage_url)
        services.append(function)
        config = {"backend": "gcp", "gcp": {"bucket": BUCKET, "project": "bench", "storage_endpoint": storage_url,
                                            "function_url": url, "authenticated": False}}

        def make_raw(payloads: list[dict[str, Any]]) -> Callable[[int], None]:
            def body(i: int) -> bytes:
                return b'{"payloads":[' + encoded(payloads[i % len(payloads)]) + b"]}"

            return http_sender(url, {"Content-Type": "application/json"}, body,
                               lambda r: r.status == 200 and r.data.startswith(b'{"accepted":'))

        yield [Case("gcp", config, "urllib3 POSTs (keep-alive)", make_raw)]
    finally:
        for service in reversed(services):
            service.stop()


#: A function app whose HTTP trigger accepts a payload as pywren_azure's does (202) and runs nothing.
AZURE_NOOP = '''
import azure.functions as func

app = func.FunctionApp()


@app.function_name("pywren_http")
@app.route(route="pywren", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def pywren_http(req: func.HttpRequest) -> func.HttpResponse:
    req.get_json()
    return func.HttpResponse(status_code=202)
'''


@contextlib.contextmanager
def azure_cases(work: Path) -> Iterator[list[Case]]:
    from azure.storage.queue import QueueClient, TextBase64EncodePolicy

    tests = _tests_on_path("azure")
    from servers import azurite_binary

    from pywren_core.testing import LocalServer, free_port, free_ports, http_status

    account, key = "benchaccount", base64.b64encode(os.urandom(32)).decode()
    ports = free_ports(3)
    argv = [str(azurite_binary()), "--blobHost", "127.0.0.1", "--queueHost", "127.0.0.1", "--tableHost", "127.0.0.1",
            "--blobPort", str(ports[0]), "--queuePort", str(ports[1]), "--tablePort", str(ports[2]),
            "--inMemoryPersistence", "--skipApiVersionCheck", "--loose", "--disableTelemetry", "--silent"]
    services = [LocalServer("azurite", argv, work / "azurite.log", env={**os.environ, "AZURITE_ACCOUNTS":
                                                                       f"{account}:{key}"}, cwd=work)]
    try:
        blob, queue = f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}"
        services[0].wait_ready(lambda: http_status(blob) and http_status(queue), "blob and queue ports answer")
        connection = (f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};"
                      f"BlobEndpoint={blob}/{account};QueueEndpoint={queue}/{account};")
        (work / "bench_noop_app.py").write_text(AZURE_NOOP)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYWREN_")}
        env.update(FUNCTIONS_TEST_KEY="bench-key", PYTHONPATH=os.pathsep.join([str(work), env.get("PYTHONPATH", "")]))
        host = LocalServer("functions host", [sys.executable, str(tests / "functions_host.py"), "--port", str(port),
                                              "--concurrency", "64", "--app", "bench_noop_app:app"],
                           work / "host.log", env=env, cwd=work)
        services.append(host)
        url = f"http://127.0.0.1:{port}"
        host.wait_ready(lambda: http_status(f"{url}/admin/host/status") == 200, "GET /admin/host/status")

        section = {"connection_string": connection, "container": "pywren-bench", "queue": "pywren-bench",
                   "payload_key": os.urandom(32).hex()}
        queue_config = {"backend": "azure", "azure": {**section, "trigger": "queue"}}
        http_config = {"backend": "azure", "azure": {**section, "trigger": "http", "function_url": f"{url}/api/pywren",
                                                     "function_key": "bench-key", "invoke_rate": 0}}
        raw_queue = QueueClient.from_connection_string(connection, "pywren-bench",
                                                       message_encode_policy=TextBase64EncodePolicy())

        def make_raw_queue(payloads: list[dict[str, Any]]) -> Callable[[int], None]:
            return lambda i: raw_queue.send_message(json.dumps(payloads[i % len(payloads)], separators=(",", ":")))

        def make_raw_http(payloads: list[dict[str, Any]]) -> Callable[[int], None]:
            headers = {"Content-Type": "application/json", "x-functions-key": "bench-key"}
            return http_sender(f"{url}/api/pywren", headers, lambda i: encoded(payloads[i % len(payloads)]),
                               lambda r: r.status == 202)

        yield [Case("azure queue", queue_config, "send_message", make_raw_queue, reset=raw_queue.clear_messages),
               Case("azure http", http_config, "urllib3 POSTs (keep-alive)", make_raw_http)]
    finally:
        for service in reversed(services):
            service.stop()


CASES = {"aws": aws_cases, "gcp": gcp_cases, "azure": azure_cases}
#: How many cases each backend's function yields; each runs in a process (and on emulators) of its own.
CASE_COUNT = {"aws": 1, "gcp": 1, "azure": 2}


def run_here(backend: str, index: int, calls: int, repeats: int) -> None:
    for var in [v for v in os.environ if v.startswith("PYWREN_")]:
        del os.environ[var]
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix=f"bench-invoke-{backend}-") as tmp, CASES[backend](Path(tmp)) as cases:
        measure(cases[index], calls, repeats)
        report([cases[index]], calls, repeats, (load, os.getloadavg()[0]))


def interpreter_for(backend: str) -> str | None:
    """This interpreter if it has the plugin, else the plugin's nox virtualenv's, else None."""
    probe = [sys.executable, "-c", f"import pywren_{backend}"]
    if subprocess.run(probe, capture_output=True).returncode == 0:
        return sys.executable
    venv = ROOT / ".nox" / f"plugin-plugin-{backend}" / "bin" / "python"
    return str(venv) if venv.exists() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=textwrap.dedent(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backends", nargs="*", metavar="BACKEND", help=f"any of {', '.join(BACKENDS)} (default: all)")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--here", type=int, metavar="CASE", help="run one case of one backend in this process")
    args = parser.parse_args()
    unknown = set(args.backends) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backend(s) {sorted(unknown)}: choose from {', '.join(BACKENDS)}")
    if args.here is not None:
        run_here(args.backends[0], args.here, args.calls, args.repeats)
        return
    for backend in args.backends or BACKENDS:
        python = interpreter_for(backend)
        if python is None:
            print(f"\n{backend}: skipped: pywren_{backend} is not installed here and "
                  f".nox/plugin-plugin-{backend} does not exist (nox -s \"plugin(plugin='{backend}')\" makes it)")
            continue
        print(f"\n## {backend} ({python})", flush=True)
        # The core and the plugin from this tree, whatever copies the interpreter has installed.
        path = [str(ROOT), str(ROOT / "plugins" / f"pywren_{backend}"), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path))}
        for index in range(CASE_COUNT[backend]):
            command = [python, __file__, backend, "--here", str(index), "--calls", str(args.calls),
                       "--repeats", str(args.repeats)]
            subprocess.run(command, check=False, env=env)


if __name__ == "__main__":
    main()
