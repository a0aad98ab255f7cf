"""The local backend against concurrent.futures.ProcessPoolExecutor, measured in the same run.

The process pool is the physical limit for running Python calls in parallel on this machine, so
the ratio is pywren's own overhead: pickling through storage, status records, polling.

    python benchmarks/bench_local.py            # the standard set (a few minutes on 2 cores)
    python benchmarks/bench_local.py --scale    # 10k / 30k / 100k no-op calls: time and memory
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import subprocess
import sys
import time

import pywren_core as pw

WORKERS = os.cpu_count() or 2


def noop(x):
    return x


def cpu_50ms(x):
    end = time.process_time() + 0.05
    n = 0
    while time.process_time() < end:
        n += 1
    return n


def one_mb(x):
    return b"x" * 2**20


def run_pywren(ex, func, n):
    start = time.perf_counter()
    results = ex.get_result(ex.map(func, range(n)))
    elapsed = time.perf_counter() - start
    assert len(results) == n
    return elapsed


def run_pool(pool, func, n):
    start = time.perf_counter()
    results = [f.result() for f in [pool.submit(func, i) for i in range(n)]]
    elapsed = time.perf_counter() - start
    assert len(results) == n
    return elapsed


def compare(repeats, ours, base, *args):
    """Medians of alternating runs, so drift in machine load hits both sides alike."""
    pairs = [(ours(*args), base(*args)) for _ in range(repeats)]
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def standard(repeats: int, storage_dir: str | None) -> None:
    local = {"workers": WORKERS, **({"storage_dir": storage_dir} if storage_dir else {})}
    ex = pw.executor(backend="local", progress=False, local=local)
    print(f"storage: {ex.section['storage_dir']}")
    pool = concurrent.futures.ProcessPoolExecutor(WORKERS)
    run_pywren(ex, noop, 50)  # warm both: processes started, modules imported
    run_pool(pool, noop, 50)
    workloads = [
        ("no-op", noop, 100),
        ("no-op", noop, 1000),
        ("no-op", noop, 10000),
        ("50 ms CPU", cpu_50ms, 200),
        ("1 MB result", one_mb, 100),
    ]
    print(f"{'workload':<14}{'calls':>7}{'pywren s':>11}{'pool s':>10}{'ratio':>8}", end="")
    print(f"   (medians of {repeats} alternating runs, {WORKERS} workers)")
    for name, func, n in workloads:
        ours, base = compare(repeats, lambda f, k: run_pywren(ex, f, k), lambda f, k: run_pool(pool, f, k), func, n)
        print(f"{name:<14}{n:>7}{ours:>11.3f}{base:>10.3f}{ours / base:>8.2f}x")
    ex.shutdown()
    pool.shutdown()
    first_result(repeats)


FIRST_PYWREN = """
import time; t = time.perf_counter()
import pywren_core as pw
imported = time.perf_counter()
ex = pw.executor(backend="local", progress=False)
ready = time.perf_counter()
assert ex.call_async(abs, -1).result() == 1
done = time.perf_counter()
print(done - ready, done - imported, done - t)
"""
FIRST_POOL = """
import time; t = time.perf_counter()
import concurrent.futures
with concurrent.futures.ProcessPoolExecutor(%d) as pool:
    assert pool.submit(abs, -1).result() == 1
    print(time.perf_counter() - t)
"""


def fresh_python(code: str) -> list[float]:
    """The figures a new interpreter prints, with bytecode caching on as in any normal install."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    return [float(x) for x in out.split()]


def first_result(repeats: int) -> None:
    fresh_python(FIRST_PYWREN)  # compile and cache bytecode once, as an install does
    runs = [(fresh_python(FIRST_PYWREN), fresh_python(FIRST_POOL % WORKERS)[0]) for _ in range(repeats)]
    call, executor_and_call, with_import = (statistics.median(r[0][i] for r in runs) for i in range(3))
    pool = statistics.median(r[1] for r in runs)
    print(
        f"first result of one call_async: {call * 1000:.0f} ms after pw.executor() returned, "
        f"{executor_and_call * 1000:.0f} ms including pw.executor(); in a fresh process with imports "
        f"pywren {with_import * 1000:.0f} ms, ProcessPoolExecutor {pool * 1000:.0f} ms"
    )


SCALE = """
import resource, time
import pywren_core as pw
ex = pw.executor(backend="local", progress=False)
ex.get_result(ex.map(abs, range(100)))
t = time.perf_counter()
results = ex.get_result(ex.map(abs, range(%d)))
elapsed = time.perf_counter() - t
assert results == list(range(%d))
print(elapsed, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def scale() -> None:
    print(f"{'calls':>8}{'seconds':>10}{'µs/call':>10}{'client peak MB':>16}")
    for n in (10_000, 30_000, 100_000):
        elapsed, peak = fresh_python(SCALE % (n, n))
        print(f"{n:>8}{elapsed:>10.2f}{elapsed / n * 1e6:>10.1f}{peak:>16.0f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scale", action="store_true", help="run the 10k-100k scaling study instead")
    parser.add_argument("--storage-dir", help="where the local backend keeps objects (default: its own default)")
    args = parser.parse_args()
    scale() if args.scale else standard(args.repeats, args.storage_dir)
