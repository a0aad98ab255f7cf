"""In-cloud fan-out: how long until every call of a large map is invoked, over a slow client link.

    python benchmarks/bench_fanout.py                      # aws azure, 10,000 calls, 50 ms per request, 3 rounds
    python benchmarks/bench_fanout.py aws --calls 2000 --rounds 1

Each backend runs in a fresh process on its own emulators with real workers (the stacks of
``bench_data.py``: moto and the Lambda stand-in, Azurite and the Functions host with its queue
trigger; 4 calls at a time). The client reaches every endpoint (storage, invoke, notice queue)
through a proxy that holds each chunk the client sends for ``--delay`` seconds before passing it
on: a link with that one-way latency, so each request waits that long more. Workers and
invokers reach the emulators directly, as functions reach their platform from inside it.

One warm executor maps ``--calls`` no-op calls with fan-out off (``fanout: off``: the client
invokes every call) and on (``fanout: auto``: the backend's threshold; invokers of ``fanout_batch``
invocations each), alternating, ``--rounds`` times. Measured: from ``map`` to the moment the last
call's invocation was accepted (``stats["invoked"]``, which a fan-out invoker's report carries;
client and platform share this machine's clock). Then the map's calls are cancelled and the
platform's backlog of calls not yet started is dropped, so the next run starts on an idle
platform.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).parent))

from bench_data import backend_parser, platform_here, run_elsewhere  # noqa: E402

BACKENDS = ("aws", "azure")


def noop(x: int) -> int:
    return x


class SlowLink:
    """A TCP proxy to ``target`` (``http://host:port``) that delays every chunk the client sends by
    ``delay`` seconds (order kept): each request on it takes ``delay`` longer."""

    def __init__(self, target: str, delay: float):
        parts = urlsplit(target)
        self.target = (parts.hostname, parts.port)
        self.delay = delay
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait()
        self.url = f"http://127.0.0.1:{self.port}{parts.path}"

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read_client() -> None:
            while data := await client_r.read(65536):
                queue.put_nowait((self.loop.time() + self.delay, data))
            queue.put_nowait((self.loop.time() + self.delay, b""))

        async def send_on() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - self.loop.time()))
                if not data:
                    server_w.write_eof() if server_w.can_write_eof() else None
                    return
                server_w.write(data)
                await server_w.drain()

        async def answer() -> None:
            while data := await server_r.read(65536):
                client_w.write(data)
                await client_w.drain()
            client_w.close()

        try:
            await asyncio.gather(read_client(), send_on(), answer())
        except (ConnectionError, OSError):
            pass
        finally:
            server_w.close()
            client_w.close()


def slowed(backend: str, config: dict[str, Any], delay: float) -> dict[str, Any]:
    """``config`` with every endpoint the client uses behind a SlowLink (environment included)."""
    config = json.loads(json.dumps(config))
    if backend == "aws":
        section = config["aws"]
        section["endpoint_url"] = SlowLink(section["endpoint_url"], delay).url
        for var in ("AWS_ENDPOINT_URL_LAMBDA", "AWS_ENDPOINT_URL_SQS"):
            os.environ[var] = SlowLink(os.environ[var], delay).url
    else:
        section = config["azure"]
        parts = dict(p.split("=", 1) for p in section["connection_string"].strip(";").split(";"))
        for name in ("BlobEndpoint", "QueueEndpoint"):
            parts[name] = SlowLink(parts[name], delay).url
        section["connection_string"] = ";".join(f"{k}={v}" for k, v in parts.items()) + ";"
    return config


def purge(backend: str, config: dict[str, Any], lambda_url: str | None) -> None:
    """Drop the invocations the platform accepted but has not started (``config``: the direct one)."""
    if backend == "aws":  # the Lambda stand-in's control API
        request = urllib.request.Request(f"{lambda_url}/_control/purge", b"{}", method="POST")
        urllib.request.urlopen(request, timeout=30).close()
    else:
        from azure.storage.queue import QueueClient

        section = config["azure"]
        QueueClient.from_connection_string(section["connection_string"], section["queue"]).clear_messages()


def measure(config: dict[str, Any], calls: int, fanout: str) -> dict[str, Any]:
    import pywren_core as pw

    with pw.executor({**config, "fanout": fanout}, progress=False) as ex:
        ex.get_result(ex.map(noop, range(8)), timeout=120)  # warm workers, connections, the notice queue
        started = time.time()
        futures = ex.map(noop, range(calls))
        mapped = time.time() - started
        give_up = time.monotonic() + 600
        while not all("invoked" in f.stats or f.done() for f in futures):
            if time.monotonic() > give_up:
                missing = [f for f in futures if "invoked" not in f.stats]
                raise TimeoutError(f"{len(missing)} calls not invoked within 600 s, e.g. {missing[0]!r}: "
                                   f"{missing[0].stats}")
            time.sleep(0.05)
        failed = [f for f in futures if f.done() and f.exception() is not None]
        if failed:
            raise RuntimeError(f"{len(failed)} calls failed, e.g. {failed[0].exception()!r}")
        invoked = max(f.stats["invoked"] for f in futures) - started
        fanout = ex._engine.invoker.fanout
        invokers = fanout.invokers if fanout is not None else 0
        for f in futures:
            f.cancel()
    return {"map_s": mapped, "all_invoked_s": invoked, "invokers": invokers,
            "extra_runs": sum(f.stats.get("ambiguous_invokes", 0) for f in futures)}


def run_here(backend: str, args: argparse.Namespace) -> None:
    with platform_here(backend, args, "fanout") as (platform, result):
        result["runs"] = {"off": [], "auto": []}
        direct, lambda_url = platform.cases[0].config, os.environ.get("AWS_ENDPOINT_URL_LAMBDA")
        config = slowed(backend, direct, args.delay)
        for _ in range(args.rounds):
            for mode in ("off", "auto"):
                result["runs"][mode].append(measure(config, args.calls, mode))
                purge(backend, direct, lambda_url)
                time.sleep(2)


def main() -> None:
    parser = backend_parser(__doc__, BACKENDS)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--delay", type=float, default=0.05, help="seconds each request from the client waits")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.here:
        run_here(args.backends[0], args)
        return
    print(f"{args.calls:,} calls, {args.delay * 1000:.0f} ms per client request, medians of {args.rounds}\n")
    print("| backend | direct: all invoked s | fanned out: all invoked s | ratio | invokers | map() returns s "
          "(direct / fanned) | extra runs | load |\n|---|---:|---:|---:|---:|---|---:|---|")
    for backend in args.backends or BACKENDS:
        result = run_elsewhere(__file__, backend, args)
        if result is None:
            continue
        off, auto = result["runs"]["off"], result["runs"]["auto"]

        def med(runs: list[dict[str, Any]], key: str) -> float:
            return statistics.median(r[key] for r in runs)

        load = "-".join(f"{x:.1f}" for x in result["load"])
        print(f"| {backend} | {med(off, 'all_invoked_s'):.2f} | {med(auto, 'all_invoked_s'):.2f} | "
              f"{med(auto, 'all_invoked_s') / med(off, 'all_invoked_s'):.2f}x | {auto[0]['invokers']} | "
              f"{med(off, 'map_s'):.2f} / {med(auto, 'map_s'):.2f} | "
              f"{sum(r['extra_runs'] for r in off + auto)} | {load} |", flush=True)
        print("  per round, direct:", " ".join(f"{r['all_invoked_s']:.2f}" for r in off),
              " fanned:", " ".join(f"{r['all_invoked_s']:.2f}" for r in auto), flush=True)


if __name__ == "__main__":
    main()
