"""How fast the aws backend issues invocations and moves bytes, next to raw boto3 on the same servers.

Starts its own moto server and Lambda stand-in on 127.0.0.1 (see ``tests/aws_services.py``); the
stand-in runs no function here, so the figures are the client's own issuing rate. Each plugin
figure is measured alternately with its raw-boto3 baseline (so load from elsewhere on the machine
hits both alike) and printed as the median of ``--runs`` runs with its ratio to the baseline:

    python plugins/pywren_aws/benchmarks/bench_aws.py [--runs 5] [--invocations 3000]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pywren_core as pw
from botocore.config import Config
from pywren_core.testing import open_session, square

from pywren_aws import storage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import aws_services  # noqa: E402

FUNCTION, BUCKET, REGION = "pywren-bench", "pywren-bench", "us-east-1"
THREADS = 64  # the core's default invoke_threads
IO_THREADS = 32  # the core's storage_concurrency


def rate(count: int, action: Callable[[int], Any], threads: int, cpu: list[float] | None = None) -> float:
    """Operations per second of ``action(i)`` for i in range(count), from ``threads`` threads.

    ``cpu`` collects this process's CPU milliseconds per operation: the client's own cost, which
    bounds its rate whatever the server (here the servers share the machine's CPUs with it).
    """
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(action, range(min(count, threads))))  # warm the connections
        started, cpu_started = time.perf_counter(), time.process_time()
        list(pool.map(action, range(count)))
        elapsed = time.perf_counter() - started
    if cpu is not None:
        cpu.append((time.process_time() - cpu_started) / count * 1000)
    return count / elapsed


def throughput(nbytes: int, action: Callable[[], Any]) -> float:
    """MB/s of one ``action()`` that moves ``nbytes``."""
    started = time.perf_counter()
    action()
    return nbytes / (time.perf_counter() - started) / 2**20


def executor_rate(config: dict[str, Any], count: int) -> float:
    """Invocations per second issued by ``Executor.map``, from the call to the last accepted invocation."""
    ex = pw.executor(config, progress=False)
    try:
        ex.map(square, range(THREADS))  # warm: threads started, connections open
        started = time.time()
        futures = ex.map(square, range(count))
        while not all("invoked" in f.stats for f in futures):
            time.sleep(0.01)
        return count / (max(f.stats["invoked"] for f in futures) - started)
    finally:
        ex.shutdown(wait=False, cancel_futures=True)


def compare(runs: int, unit: str, measures: dict[str, Callable[[], float]],
            notes: dict[str, list[float]] | None = None) -> None:
    """Run the measures in turn, ``runs`` times (alternating their order), and print their medians.

    The first measure is the baseline; ``notes`` maps a label to its CPU ms per operation.
    """
    results: dict[str, list[float]] = {label: [] for label in measures}
    order = list(measures)
    for run in range(runs):
        for label in order if run % 2 == 0 else reversed(order):
            results[label].append(measures[label]())
    baseline = statistics.median(results[order[0]])
    for label in order:
        value = statistics.median(results[label])
        ratio = f"   {value / baseline:.2f}x raw" if label != order[0] else ""
        note = ""
        if notes and notes.get(label):
            per_call = statistics.median(notes[label])
            note = f"   (client CPU {per_call:.2f} ms each: ~{1000 / per_call:.0f}/s on one core)"
        print(f"  {label:<40} {value:>9.1f} {unit}{ratio}{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--invocations", type=int, default=3000)
    parser.add_argument("--small-objects", type=int, default=1000)
    parser.add_argument("--single-mb", type=int, default=32, help="a large object still sent in one PUT")
    parser.add_argument("--multipart-mb", type=int, default=128, help="an object over the multipart threshold")
    args = parser.parse_args()
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        del os.environ[var]
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION=REGION,
                      AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    logs = Path(tempfile.mkdtemp(prefix="pywren-bench-"))
    moto = aws_services.start_moto(logs)
    lam = aws_services.start_lambda(logs, FUNCTION, aws_services.lambda_env(moto.url, logs, {}), runtimes=0)
    os.environ["AWS_ENDPOINT_URL_LAMBDA"] = lam.url
    os.environ["AWS_ENDPOINT_URL_SQS"] = moto.url  # the completion-notice queues
    try:
        raw_s3 = boto3.client("s3", endpoint_url=moto.url, config=Config(max_pool_connections=64))
        raw_s3.create_bucket(Bucket=BUCKET)
        config = {"backend": "aws", "aws": {"bucket": BUCKET, "region": REGION, "function_name": FUNCTION,
                                            "endpoint_url": moto.url}}
        session = open_session(config)
        print(f"pywren-aws benchmark: medians of {args.runs} runs, moto and the Lambda stand-in on 127.0.0.1, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")

        payload = {"calls": [{"call_id": "00000", "attempt": 0, "args": {"inline": "x" * 600}}], "secret": "0" * 64}
        body = json.dumps(payload).encode()
        raw_lambda = boto3.client("lambda", config=Config(max_pool_connections=128, retries={"total_max_attempts": 1}))
        n = args.invocations
        print(f"Lambda invocations issued ({n} Event invokes, {THREADS} threads, {len(body)} B payloads)")
        cpu: dict[str, list[float]] = {"raw boto3 invoke": [], "plugin hook (Session.invoke)": []}
        compare(args.runs, "inv/s", {
            "raw boto3 invoke": lambda: rate(n, lambda i: raw_lambda.invoke(
                FunctionName=FUNCTION, InvocationType="Event", Payload=body), THREADS, cpu["raw boto3 invoke"]),
            "plugin hook (Session.invoke)": lambda: rate(
                n, lambda i: session.invoke(payload), THREADS, cpu["plugin hook (Session.invoke)"]),
            "Executor.map, submit to last accepted": lambda: executor_rate(config, n),
        }, cpu)

        count, small = args.small_objects, os.urandom(4096)
        print(f"\nS3 small objects ({count} x 4 KB, {IO_THREADS} threads)")
        cpu = {label: [] for label in ("raw boto3 put_object", "plugin put", "raw boto3 get_object", "plugin get")}
        compare(args.runs, "put/s", {
            "raw boto3 put_object": lambda: rate(count, lambda i: raw_s3.put_object(
                Bucket=BUCKET, Key=f"small/{i}", Body=small), IO_THREADS, cpu["raw boto3 put_object"]),
            "plugin put": lambda: rate(
                count, lambda i: session.put(f"small/{i}", small), IO_THREADS, cpu["plugin put"]),
        }, cpu)
        compare(args.runs, "get/s", {
            "raw boto3 get_object": lambda: rate(count, lambda i: raw_s3.get_object(
                Bucket=BUCKET, Key=f"small/{i}")["Body"].read(), IO_THREADS, cpu["raw boto3 get_object"]),
            "plugin get": lambda: rate(count, lambda i: session.get(f"small/{i}"), IO_THREADS, cpu["plugin get"]),
        }, cpu)

        for megabytes in (args.single_mb, args.multipart_mb):
            data = os.urandom(megabytes * 2**20)
            multipart = len(data) >= storage.MULTIPART_THRESHOLD
            print(f"\nS3 one {megabytes} MB object ({'multipart' if multipart else 'one PUT'} in the plugin)")
            raw_puts = {  # for a multipart size, the SDK's own multipart upload is the fair baseline
                "raw boto3 upload_fileobj": lambda: raw_s3.upload_fileobj(io.BytesIO(data), BUCKET, "large"),  # noqa: B023
                "raw boto3 put_object": lambda: raw_s3.put_object(Bucket=BUCKET, Key="large", Body=data),  # noqa: B023
            }
            raw_label = "raw boto3 upload_fileobj" if multipart else "raw boto3 put_object"
            compare(args.runs, "MB/s", {
                raw_label: lambda: throughput(len(data), raw_puts[raw_label]),  # noqa: B023
                "plugin put": lambda: throughput(len(data), lambda: session.put("large", data)),  # noqa: B023
            })
            compare(args.runs, "MB/s", {
                "raw boto3 get_object": lambda: throughput(
                    len(data), lambda: raw_s3.get_object(Bucket=BUCKET, Key="large")["Body"].read()),  # noqa: B023
                "plugin get": lambda: throughput(len(data), lambda: session.get("large")),  # noqa: B023
            })
        session.close()
    finally:
        lam.stop()
        moto.stop()


if __name__ == "__main__":
    main()
