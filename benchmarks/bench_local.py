"""The local backend against concurrent.futures.ProcessPoolExecutor, measured in the same run.

The process pool is the physical limit for running Python calls in parallel on this machine, so
the ratio is pywren's own overhead: pickling through storage, status records, polling.

    python benchmarks/bench_local.py            # the standard set, warm then cold (a few minutes on 2 cores)
    python benchmarks/bench_local.py --cold     # only the cold set: each run in a fresh interpreter
    python benchmarks/bench_local.py --cold --baseline /tmp/before   # and another checkout's, same rounds
    python benchmarks/bench_local.py --scale    # 10k / 30k / 100k no-op calls: time and memory

The cold set is what a new script pays: a fresh interpreter, ``import pywren_core`` done, creates
the executor (or the pool) and runs one workload. ``--baseline`` runs another checkout's
pywren_core (``git worktree add /tmp/before <commit>``) in the same rounds, against the same pool.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import subprocess
import sys
import tempfile
import time

import pywren_core as pw

WORKERS = os.cpu_count() or 2


def noop(x):
    return x


def cpu_50ms(x):
    return cpu_seconds(0.05)


def cpu_30ms(x):
    return cpu_seconds(0.03)


def cpu_seconds(seconds):
    end = time.process_time() + seconds
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
    print(f"storage: {ex.section['storage_dir']}; load average at the start: {load_average()}")
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
    cold(repeats)


# The cold set: each run is a fresh interpreter that imports what it needs, then times creating the
# executor (or the pool) and one workload. The workloads come from this file, which the pool's
# workers import by name and pywren sends by value, as any user's module.
COLD_SETUP = f"""
import sys, time
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import bench_local
"""
COLD_PYWREN = """
import pywren_core as pw
func, n = getattr(bench_local, sys.argv[1]), int(sys.argv[2])
start = time.perf_counter()
ex = pw.executor(backend="local", progress=False, local={"workers": %d})
ready = time.perf_counter()
if n == 1:
    assert ex.call_async(abs, -1).result() == 1
else:
    assert len(ex.get_result(ex.map(func, range(n)))) == n
done = time.perf_counter()
print(done - start, done - ready)
"""
COLD_POOL = """
import concurrent.futures
func, n = getattr(bench_local, sys.argv[1]), int(sys.argv[2])
start = time.perf_counter()
with concurrent.futures.ProcessPoolExecutor(%d) as pool:
    if n == 1:
        assert pool.submit(abs, -1).result() == 1
    else:
        assert len([f.result() for f in [pool.submit(func, i) for i in range(n)]]) == n
    done = time.perf_counter()
print(done - start, done - start)
"""


def fresh_python(code: str, *args: str, checkout: str | None = None) -> list[float]:
    """The figures a new interpreter prints, with bytecode caching on as in any normal install.

    It runs in the temporary directory, so a pywren_core in the current one cannot shadow the one
    meant; ``checkout`` (a directory holding pywren_core) goes first on its path.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    if checkout:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.abspath(checkout), env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=tempfile.gettempdir(),
    ).stdout
    return [float(x) for x in out.split()]


def cold(repeats: int, baseline: str | None = None) -> None:
    """The cold set: medians of alternating fresh-interpreter runs, pywren then the pool (and, with
    ``baseline``, the pywren_core of that checkout too, in the same rounds)."""
    ours_code, pool_code = COLD_SETUP + COLD_PYWREN % WORKERS, COLD_SETUP + COLD_POOL % WORKERS
    sides = [("pywren", None)] + ([("baseline", baseline)] if baseline else [])
    for _, checkout in sides:  # compile and cache bytecode once, as an install does
        fresh_python(ours_code, "noop", "1", checkout=checkout)
    # (name, function, calls, seconds of CPU per call)
    workloads = [("first result", "noop", 1, 0.0), ("no-op", "noop", 1000, 0.0), ("30 ms CPU", "cpu_30ms", 200, 0.03)]
    print("\ncold: a fresh interpreter per run, timed from creating the executor (pywren) or the pool")
    print(f"load average at the start: {load_average()}")
    if baseline:
        print(f"baseline: the pywren_core in {baseline}, run in the same rounds")
    print(f"{'workload':<14}{'calls':>7}{'side':>10}{'s':>8}{'after executor()':>18}{'pool s':>9}{'ratio':>8}")
    for name, func, n, cpu in workloads:
        runs: dict[str, list[list[float]]] = {side: [] for side, _ in [*sides, ("pool", None)]}
        for _ in range(repeats):
            for side, checkout in sides:
                runs[side].append(fresh_python(ours_code, func, str(n), checkout=checkout))
            runs["pool"].append(fresh_python(pool_code, func, str(n)))
        base = statistics.median(r[0] for r in runs["pool"])
        for side, _ in sides:
            ours = statistics.median(r[0] for r in runs[side])
            after = statistics.median(r[1] for r in runs[side])
            print(f"{name:<14}{n:>7}{side:>10}{ours:>8.3f}{after:>18.3f}{base:>9.3f}{ours / base:>8.2f}x", end="")
            if cpu:  # what each side adds to the work itself, spread over the workers
                ideal = n * cpu / WORKERS
                print(f"   over {ideal:.2f} s of work: +{ours - ideal:.2f} s, pool +{base - ideal:.2f} s", end="")
            print()
    print(f"load average at the end: {load_average()}")


def load_average() -> str:
    """The machine's 1, 5 and 15 minute load averages: figures taken under load are not comparable."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


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
    parser.add_argument("--cold", action="store_true", help="run only the cold set (fresh interpreters)")
    parser.add_argument("--baseline", metavar="CHECKOUT", help="in the cold set, also run the pywren_core found there")
    parser.add_argument("--storage-dir", help="where the local backend keeps objects (default: its own default)")
    args = parser.parse_args()
    if args.scale:
        scale()
    elif args.cold:
        cold(args.repeats, args.baseline)
    else:
        standard(args.repeats, args.storage_dir)
