"""Runtimes: how long building one takes with pip and with uv, cold and cached; its size; its import
time on a cold worker; and the first result of a local executor that runs in it.

    python benchmarks/bench_runtime.py                         # numpy pandas, 3 rounds
    python benchmarks/bench_runtime.py --requirements numpy --rounds 5

Each round builds the runtime for a Lambda-like platform (linux x86_64, this Python) three ways
per installer, alternating pip and uv:

- cold: a new runtimes directory and new, empty download caches (every wheel comes from the index);
- warm: a new runtimes directory, the download cache of the cold build (resolving and installing,
  no downloads);
- cached: the same spec again (the runtime exists: no pip at all).

Then, for a runtime built for this machine (what ``local`` runs): the size of its tree and of a
deflated zip of what a plugin would deploy (``runtime.artifact_files``), the wall time of a fresh
interpreter of its venv importing the requirements from the bytecode compiled at build time,
against the same import compiling every module (what a read-only code directory without that
bytecode costs each cold start) and against an interpreter that imports nothing, and the
time from ``pw.executor(runtime=...)`` to the first result of a no-op call, against the same
executor without a runtime (the workers then fork from the client). Medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from pywren_core import runtime
from pywren_core.backend import HOST, Platform


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def build_times(spec: runtime.RuntimeSpec, installer: str, scratch: Path) -> dict[str, float]:
    platform = Platform(os="linux", arch="x86_64")
    caches = Path(tempfile.mkdtemp(dir=scratch))
    os.environ.update(PIP_CACHE_DIR=str(caches / "pip"), UV_CACHE_DIR=str(caches / "uv"))
    times = {}
    for kind in ("cold", "warm"):
        os.environ[runtime.DIR_ENV] = tempfile.mkdtemp(dir=scratch)
        times[kind], built = _timed(lambda: runtime.build(spec, platform, installer=installer))
        times.update({f"{kind} {step}": t for step, t in built.manifest["seconds"].items()})
    times["cached"], again = _timed(lambda: runtime.build(spec, platform, installer=installer))
    assert again.name == built.name
    times["size_mb"] = built.manifest["size_bytes"] / 1e6
    return times


def _import_seconds(python: str, modules: list[str], bytecode: bool = True) -> float:
    """A fresh interpreter importing ``modules``; without ``bytecode`` it finds none (a prefix
    directory that stays empty) and compiles every module, as a read-only code directory would."""
    code = f"import {', '.join(modules)}" if modules else "pass"
    flags = [] if bytecode else ["-X", f"pycache_prefix={tempfile.mkdtemp()}"]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return _timed(lambda: subprocess.run([python, *flags, "-c", code], check=True, env=env))[0]


FIRST_RESULT = """
import json, sys, time
start = time.perf_counter()
import pywren_core as pw
with pw.executor(progress=False, **json.loads(sys.argv[1])) as ex:
    ex.get_result([ex.call_async(abs, -1)])
    print(time.perf_counter() - start)
"""


def _first_result(**settings) -> float:
    """From a fresh client process's import of pywren to its first result (local's workers are
    shared by a process's executors, so only a new process shows a cold start)."""
    out = subprocess.run([sys.executable, "-c", FIRST_RESULT, json.dumps(settings)], check=True,
                         capture_output=True, text=True).stdout
    return float(out.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requirements", nargs="+", default=["numpy", "pandas"])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    spec = runtime.RuntimeSpec(requirements=tuple(args.requirements))
    modules = [r.split("=")[0].split(">")[0].split("<")[0].strip().replace("-", "_") for r in args.requirements]
    installers = ["pip", "uv"] if runtime._uv() else ["pip"]
    scratch = Path(tempfile.mkdtemp(prefix="bench-runtime-"))
    saved = dict(os.environ)
    builds: dict[str, list[dict[str, float]]] = {i: [] for i in installers}
    try:
        for _ in range(args.rounds):
            for installer in installers:
                builds[installer].append(build_times(spec, installer, scratch))
        os.environ.clear()
        os.environ.update(saved)
        os.environ[runtime.DIR_ENV] = str(scratch / "host")
        host = runtime.build(spec, HOST)
        python = str(runtime.local_environment(host))
        archive = scratch / "artifact.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, content in runtime.artifact_files(host, {"pywren-core": "pywren_core"}).items():
                zf.writestr(name, content if isinstance(content, bytes) else content.read_bytes())
        artifact_mb = archive.stat().st_size / 1e6
        bare, imports, uncompiled, plain_first, runtime_first = [], [], [], [], []
        for _ in range(args.rounds):
            bare.append(_import_seconds(python, []))
            imports.append(_import_seconds(python, modules))
            uncompiled.append(_import_seconds(python, modules, bytecode=False))
            plain_first.append(_first_result())
            runtime_first.append(_first_result(runtime={"requirements": list(args.requirements)}))
    finally:
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(scratch, ignore_errors=True)

    med = statistics.median
    load = os.getloadavg()[0]
    print(f"# runtime {' '.join(args.requirements)}: medians of {args.rounds} rounds, load {load:.1f}, "
          f"Python {sys.version_info.major}.{sys.version_info.minor}")
    print("\n| installer | cold | of which resolve / install / compile | warm (downloads cached) | "
          "of which resolve / install / compile | cached (no-op) | tree |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for installer, rounds in builds.items():
        m = {k: med(r[k] for r in rounds) for k in rounds[0]}
        steps = {kind: " / ".join(f"{m[f'{kind} {s}']:.1f}" for s in ("resolve", "install", "compile"))
                 for kind in ("cold", "warm")}
        print(f"| {installer} | {m['cold']:.1f} s | {steps['cold']} | {m['warm']:.1f} s | {steps['warm']} | "
              f"{m['cached'] * 1000:.0f} ms | {m['size_mb']:.0f} MB |")
    if len(installers) == 2:
        ratio = {k: med(r[k] for r in builds["uv"]) / med(r[k] for r in builds["pip"]) for k in ("cold", "warm")}
        print(f"\nuv / pip: cold {ratio['cold']:.2f}x, warm {ratio['warm']:.2f}x")
    print(f"\nhost runtime {host.name}: tree {host.manifest['size_bytes'] / 1e6:.0f} MB, "
          f"deflated artifact {artifact_mb:.0f} MB")
    print(f"cold interpreter of its venv: {med(bare) * 1000:.0f} ms bare, {med(imports) * 1000:.0f} ms importing "
          f"{', '.join(modules)} from the runtime's bytecode, {med(uncompiled) * 1000:.0f} ms compiling them "
          f"(as without it on a read-only code directory): {med(imports) / med(uncompiled):.2f}x")
    print(f"first result of a no-op call from a new local executor: {med(runtime_first) * 1000:.0f} ms in the "
          f"runtime (spawned venv workers) against {med(plain_first) * 1000:.0f} ms without one (forked workers): "
          f"{med(runtime_first) / med(plain_first):.2f}x")


if __name__ == "__main__":
    main()
