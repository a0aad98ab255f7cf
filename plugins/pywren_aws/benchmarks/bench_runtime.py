"""A numpy runtime on the Lambda stand-in: build, deploy, cold start and the compute workload.

Starts moto and the Lambda stand-in on 127.0.0.1 (``tests/aws_services.py``); the stand-in runs the
DEPLOYED package, fetched back from moto, in a fresh virtual environment holding only boto3 and
awslambdaric (what Lambda provides). Prints: the runtime's build time cold (an empty runtimes
folder; pip's own download cache as it is) and cached, its size and its zip's, the deploy time, a
cold worker's import time (the plugin and the core's worker, and ``import numpy`` in a fresh interpreter
over the unpacked package), the first map's time on fresh sandboxes, and ``pywren bench``'s compute
workload (numpy matmul, GFLOPS per call and aggregate):

    python plugins/pywren_aws/benchmarks/bench_runtime.py [--calls 4] [--n 512] [--loops 4] [--runtimes 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
import pywren_core as pw
from pywren_core import runtime as runtimes
from pywren_core.bench import workloads

from pywren_aws import deploy
from pywren_aws.plugin import PLATFORM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import aws_services  # noqa: E402

BASE, BUCKET, REGION = "pywren-bench-rt", "pywren-bench-rt", "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
#: numpy 2.3 and later need glibc 2.28, which Lambda's python3.11 and older (Amazon Linux 2) lack.
REQUIREMENTS = ["numpy<2.3"] if sys.version_info < (3, 12) else ["numpy"]


def cold_imports(python: Path, code_dir: str) -> dict[str, float]:
    """Seconds a fresh interpreter over the unpacked package takes to import the worker side and numpy
    (best of three: the files are in the page cache, as on a sandbox that Lambda has just started)."""
    code = ("import time, json; t=time.perf_counter(); import pywren_aws.plugin, pywren_core.harness, "
            "pywren_core.worker; h=time.perf_counter()-t; t=time.perf_counter(); import numpy; "
            "n=time.perf_counter()-t; print(json.dumps([h, n]))")
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": code_dir, "HOME": os.environ.get("HOME", "/tmp"), **CREDENTIALS,
           "AWS_DEFAULT_REGION": REGION}
    best = [float("inf"), float("inf")]
    for _ in range(3):
        out = subprocess.run([str(python), "-c", code], env=env, cwd=code_dir, capture_output=True, text=True,
                             check=True)
        best = [min(a, b) for a, b in zip(best, json.loads(out.stdout.splitlines()[-1]), strict=True)]
    return {"import pywren_aws.plugin, pywren_core.harness and .worker": best[0], "import numpy": best[1]}


def _compute_summary(run: Any) -> Any:
    """The compute workload's summary in a ``pywren bench run`` file."""
    workloads_run = run.get("workloads", run)
    found = workloads_run.get("compute") if isinstance(workloads_run, dict) else None
    if found is None and isinstance(workloads_run, list):
        found = next((w for w in workloads_run if w.get("name") == "compute"), None)
    return {"summary": found.get("summary"), "skipped": found.get("skipped")} if found else "not found"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=4)
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--loops", type=int, default=4)
    parser.add_argument("--runtimes", type=int, default=2, help="runtime processes of the stand-in")
    parser.add_argument("--bench-run", metavar="FILE",
                        help="then run `pywren bench run --suite standard -o FILE` with the numpy runtime too")
    args = parser.parse_args()
    for var in list(os.environ):
        if var.startswith(("AWS_", "PYWREN_")):
            del os.environ[var]
    os.environ.update(CREDENTIALS, AWS_DEFAULT_REGION=REGION)
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="pywren-bench-rt-") as scratch_dir:
        scratch = Path(scratch_dir)
        os.environ[runtimes.DIR_ENV] = str(scratch / "runtimes")
        spec = runtimes.RuntimeSpec(requirements=REQUIREMENTS)
        started = time.monotonic()
        built = runtimes.build(spec, PLATFORM)
        figures["build cold s"] = time.monotonic() - started
        started = time.monotonic()
        runtimes.build(spec, PLATFORM)
        figures["build cached s"] = time.monotonic() - started
        figures["runtime MB unzipped"] = built.manifest["size_bytes"] / 1e6
        figures["distributions"] = built.distributions

        logs = scratch / "logs"
        logs.mkdir()
        moto = aws_services.start_moto(logs)
        try:
            os.environ["AWS_ENDPOINT_URL_SQS"] = moto.url  # the completion-notice queues
            boto3.client("s3", endpoint_url=moto.url, region_name=REGION).create_bucket(Bucket=BUCKET)
            iam = boto3.client("iam", endpoint_url=moto.url, region_name=REGION)
            role = iam.create_role(RoleName="bench", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
            config = {"backend": "aws", "progress": False, "runtime": {"requirements": REQUIREMENTS},
                      "aws": {"bucket": BUCKET, "region": REGION, "function_name": BASE, "endpoint_url": moto.url,
                              "role_arn": role}}
            os.environ["AWS_ENDPOINT_URL_LAMBDA"] = moto.url
            deploy.MAX_ZIP_BYTES = 0  # staged in S3, where the stand-in can fetch it from moto
            started = time.monotonic()
            zipped = deploy.build_zip(built)
            figures["zip s"] = time.monotonic() - started
            figures["zip MB"] = len(zipped) / 1e6
            with pw.executor(config) as ex:
                started = time.monotonic()
                figures["deploy"] = ex.session.deploy()
                figures["deploy s"] = time.monotonic() - started

            started = time.monotonic()
            python = aws_services.lambda_python(scratch / "lambda-python")
            figures["clean venv s"] = time.monotonic() - started
            code_dir = str(scratch / "task")
            started = time.monotonic()
            stand_in = aws_services.start_lambda(
                logs, f"{BASE}-{built.name}", aws_services.lambda_env(moto.url, scratch, CREDENTIALS),
                runtimes=args.runtimes, deployed={"moto_url": moto.url, "bucket": BUCKET, "code_dir": code_dir,
                                                  "python": str(python)})
            figures["stand-in ready s (fetch, unzip, start)"] = time.monotonic() - started
            try:
                figures["cold imports s"] = cold_imports(python, code_dir)
                os.environ["AWS_ENDPOINT_URL_LAMBDA"] = stand_in.url
                with pw.executor(config) as ex:
                    started = time.monotonic()
                    ex.get_result(ex.map(workloads.matmul, range(args.runtimes), extra_args=(64, 1)), timeout=300)
                    figures["first map s (fresh sandboxes)"] = time.monotonic() - started
                    result = workloads.compute(ex, calls=args.calls, n=args.n, loops=args.loops)
                figures["compute"] = result["summary"]
                figures["compute skipped"] = result["skipped"]
                if args.bench_run:
                    import yaml
                    from pywren_core import cli

                    (scratch / "config.yaml").write_text(yaml.safe_dump(config))
                    os.environ["PYWREN_CONFIG_FILE"] = str(scratch / "config.yaml")
                    started = time.monotonic()
                    cli.main(["bench", "run", "--suite", "standard", "-o", args.bench_run])
                    figures["pywren bench run s"] = time.monotonic() - started
                    run = json.loads(Path(args.bench_run).read_text())
                    figures["pywren bench compute"] = _compute_summary(run)
            finally:
                stand_in.stop()
        finally:
            moto.stop()
    for name, value in figures.items():
        print(f"{name}: {json.dumps(value) if not isinstance(value, float) else round(value, 3)}")


if __name__ == "__main__":
    main()
