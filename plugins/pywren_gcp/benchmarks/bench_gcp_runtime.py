"""A runtime on the gcp plugin, against local services: build, package, cold import, compute.

    python plugins/pywren_gcp/benchmarks/bench_gcp_runtime.py [--requirements numpy] [--rounds 3]

For a runtime built for the Cloud Run functions platform (``pywren_gcp.deploy.platform``):

* build time cold (a new runtimes directory and an empty pip cache: every wheel from the index),
  and cached (the same spec again: no pip at all);
* its size unpacked, the source package's size zipped and the time to zip it;
* what Cloud Build's step costs here: a fresh venv with the package's requirements.txt;
* the import time of the requirements on a cold worker: a fresh interpreter of that venv importing
  them from the unpacked package (with the bytecode compiled at build time), against one that
  imports nothing;
* the first result of a numpy call on a function just started (the executor opened first);
* the core's ``compute`` workload (numpy matmul, ``pywren bench``'s laptop size and a larger one)
  through functions-framework and fake-gcs-server: GFLOPS per worker and across the calls.

Medians over ``--rounds``. The emulators run on this machine: GFLOPS measure its cores.
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import pywren_core as pw  # noqa: E402
from pywren_core import runtime  # noqa: E402
from pywren_core.bench import workloads  # noqa: E402
from pywren_gcp import deploy  # noqa: E402

from servers import clean_function_python, start_fake_gcs, start_function, unpack_package  # noqa: E402


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _python_seconds(python: Path, code: str, cwd: Path) -> float:
    env = {"PATH": os.environ["PATH"], "HOME": str(cwd)}
    start = time.perf_counter()
    subprocess.run([str(python), "-c", code], cwd=cwd, env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requirements", nargs="+", default=["numpy"])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-gcp-runtime-"))
    spec = runtime.RuntimeSpec(label="bench", requirements=tuple(args.requirements))
    platform = deploy.platform()
    figures: dict[str, list[float]] = {}

    def note(key: str, value: float) -> None:
        figures.setdefault(key, []).append(value)

    built = None
    for round_ in range(args.rounds):
        os.environ[runtime.DIR_ENV] = str(scratch / f"runtimes-{round_}")
        os.environ["PIP_CACHE_DIR"] = str(scratch / f"pip-cache-{round_}")
        seconds, built = _timed(lambda: runtime.build(spec, platform))
        note("build cold s", seconds)
        note("build cached s", _timed(lambda: runtime.build(spec, platform))[0])
        seconds, package = _timed(lambda rt=built: deploy.build_package(rt=rt))
        note("zip s", seconds)
    assert built is not None
    note("unpacked MB", built.manifest["size_bytes"] / 1e6)
    note("zipped MB", len(package) / 1e6)
    with zipfile.ZipFile(io.BytesIO(package)) as archive:
        note("package files", len(archive.namelist()))

    package_dir = scratch / "package"
    unpack_package(package, package_dir)
    seconds, python = _timed(lambda: clean_function_python(package_dir, scratch / "venv"))
    note("clean venv (Cloud Build step) s", seconds)
    imports = "; ".join(f"import {runtime._requirement_name(r).replace('-', '_')}" for r in args.requirements)
    code = f"import sys; sys.path.insert(0, {str(package_dir)!r}); {imports}"
    for _ in range(args.rounds):
        bare = _python_seconds(python, "pass", package_dir)
        note("cold import s (minus bare interpreter)", _python_seconds(python, code, package_dir) - bare)
        note("cold import pywren_core.worker + numpy s (minus bare)",
             _python_seconds(python, f"import sys; sys.path.insert(0, {str(package_dir)!r}); "
                                     "import pywren_core.harness, pywren_core.worker, numpy", package_dir) - bare)

    gcs, storage_url = start_fake_gcs(scratch / "logs")
    try:
        compute_results = {}
        for round_ in range(args.rounds):
            function, url = start_function(scratch / "logs", package_dir / "main.py", storage_url, threads=8,
                                           name=f"function-{round_}", python=python)
            try:
                config = {"backend": "gcp", "runtime": {"requirements": list(args.requirements)},
                          "gcp": {"bucket": "pywren-test", "project": "bench", "storage_endpoint": storage_url,
                                  "runtime_urls": {built.name: url}, "authenticated": False}}
                with pw.executor(config, progress=False) as ex:
                    seconds, _ = _timed(lambda: ex.get_result(ex.map(workloads.matmul, [0], extra_args=(64, 1))))
                    note("first numpy result on a fresh function s", seconds)
                    for size, settings in {"laptop": {"calls": 4, "n": 512, "loops": 4},
                                           "larger": {"calls": 2, "n": 2048, "loops": 4}}.items():
                        summary = workloads.compute(ex, **settings)["summary"]
                        compute_results[size] = {**settings, **summary}
                        note(f"compute {size} aggregate GFLOPS", summary["aggregate_gflops"])
                        note(f"compute {size} worker GFLOPS p50", summary["worker_gflops"]["p50"])
            finally:
                function.stop()
    finally:
        gcs.stop()
    print(json.dumps({"runtime": built.name, "requirements": args.requirements, "rounds": args.rounds,
                      "distributions": len(built.distributions), "cpus": os.cpu_count(),
                      "medians": {k: round(statistics.median(v), 3) for k, v in figures.items()},
                      "all": {k: [round(x, 3) for x in v] for k, v in figures.items()}}, indent=1))


if __name__ == "__main__":
    main()
