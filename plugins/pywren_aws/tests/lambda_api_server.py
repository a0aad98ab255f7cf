"""A small stand-in for AWS Lambda, for tests and benchmarks: standard library only.

In front it serves the Invoke API that boto3 calls (``POST /2015-03-31/functions/{name}/invocations``
with ``X-Amz-Invocation-Type`` Event → 202, RequestResponse → 200, DryRun → 204; unknown function →
404 ``ResourceNotFoundException``; over 256 KB → 413; while throttling → 429
``TooManyRequestsException``; in drop mode, every Nth Event invocation is accepted and run but its
connection is closed before the answer, as a lossy network does). Behind it, N processes of AWS's own runtime client
(``python -m awslambdaric HANDLER``) each poll a Runtime API of their own, so the server knows which
process runs which invocation: like Lambda, it kills a process whose invocation passes its deadline
(sent as ``Lambda-Runtime-Deadline-Ms``) and starts a fresh one when a process exits.

Run: ``python lambda_api_server.py --function NAME --handler MOD.FUNC --port-file FILE [--runtimes N]
[--timeout S] [--log FILE]``; the port it bound on 127.0.0.1 is written to ``--port-file`` once it
serves. By default the runtime processes run this interpreter with its environment (fast: the tests'
own packages). With ``--code-from MOTO_URL --code-bucket BUCKET --code-dir DIR --python PYTHON`` they
run the DEPLOYED function instead, as Lambda does: the server asks moto's Lambda API for the function
(``GetFunction``: its handler, ``CodeSha256`` and ``Code.Location``), fetches the package from moto's S3
(the key of ``Code.Location`` in ``BUCKET``, where ``pywren deploy`` staged it; moto keeps no copy of a
direct upload that can be fetched), checks its SHA-256, unpacks it into DIR and starts ``PYTHON -m
awslambdaric HANDLER`` with only DIR on ``PYTHONPATH`` (``LAMBDA_TASK_ROOT``, the working directory):
PYTHON should be a fresh virtual environment holding what Lambda provides (boto3, awslambdaric).
Tests steer it with ``/_control/`` requests: ``stats``, ``payloads``, ``dropped`` (the payloads
whose answer was dropped), ``throttle``, ``drop`` and ``configure`` (JSON bodies), ``reset``,
``purge`` (drop the accepted invocations that have not started: a benchmark's backlog).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlparse

MAX_ASYNC_PAYLOAD = 256 * 1024
MAX_DROPS = 2
RUNTIME_PREFIX = "/2018-06-01/runtime/"
ARN_PREFIX = "arn:aws:lambda:us-east-1:123456789012:function:"
#: What the runtime processes of the deployed code inherit from this process's environment: nothing
#: that would point Python at the tests' packages (PYTHONPATH, a virtual environment) passes.
_NOT_INHERITED = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV", "PYTHONSAFEPATH")


def _moto_get(url: str, service: str) -> bytes:
    """GET from moto's server, which tells the services apart by the credential scope of a request's
    signature (and checks no signature): an anonymous GET would reach S3, and be refused there."""
    scope = f"AWS4-HMAC-SHA256 Credential=AKIASTANDIN/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host"
    request = urllib.request.Request(url, headers={"Authorization": f"{scope}, Signature=0"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return response.read()


def fetch_code(moto_url: str, function: str, bucket: str, code_dir: str) -> dict[str, Any]:
    """Unpack the deployed package of ``function`` from moto into ``code_dir``; its facts."""
    described = json.loads(_moto_get(f"{moto_url}/2015-03-31/functions/{function}", "lambda"))
    configuration, location = described["Configuration"], described["Code"]["Location"]
    key = urlparse(location).path.lstrip("/")
    package = _moto_get(f"{moto_url}/{bucket}/{key}", "s3")
    digest = base64.b64encode(hashlib.sha256(package).digest()).decode()
    if digest != configuration["CodeSha256"]:
        raise SystemExit(f"s3://{bucket}/{key} is not the code of {function}: SHA-256 {digest}, "
                         f"the function's {configuration['CodeSha256']}")
    with zipfile.ZipFile(io.BytesIO(package)) as archive:
        for member in archive.infolist():
            path = archive.extract(member, code_dir)
            mode = member.external_attr >> 16
            if mode and not member.is_dir():
                os.chmod(path, mode & 0o777)
    return {"sha256": digest, "bytes": len(package), "handler": configuration["Handler"], "dir": code_dir,
            "key": key, "unzipped_bytes": sum(m.file_size for m in zipfile.ZipFile(io.BytesIO(package)).infolist())}



def _calls_of(text: str) -> str:
    """The job and calls an invocation carries (the same for a re-invocation of the same calls)."""
    try:
        payload = json.loads(text)
        return f"{payload['executor_id']}/{payload['job_id']}/" + ",".join(c["call_id"] for c in payload["calls"])
    except (ValueError, KeyError, TypeError):
        return text

class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # the default backlog of 5 resets connections when 64 invoker threads connect at once


class Invocation:
    def __init__(self, payload: bytes):
        self.id = str(uuid.uuid4())
        self.payload = payload
        self.deadline = 0.0
        self.done = threading.Event()
        self.result = b""
        self.error_type: str | None = None

    def finish(self, result: bytes, error_type: str | None = None) -> None:
        if not self.done.is_set():
            self.result, self.error_type = result, error_type
            self.done.set()


class Runtime:
    """One runtime process and the Runtime API endpoint that only it polls."""

    def __init__(self, index: int, server: Server):
        self.index = index
        self.server = server
        self.process: subprocess.Popen | None = None
        self.current: Invocation | None = None
        self.started = 0.0


class Lambda:
    def __init__(self, args: argparse.Namespace, log: Any):
        self.function = args.function
        self.handler = args.handler
        self.python = args.python or sys.executable
        self.code: dict[str, Any] = {}
        if args.code_from:
            self.code = fetch_code(args.code_from, args.function, args.code_bucket, args.code_dir)
            self.handler = self.code["handler"]
        self.timeout = args.timeout
        self.log = log
        self.queue: queue.Queue[Invocation] = queue.Queue()
        self.invocations: dict[str, Invocation] = {}
        self.lock = threading.Lock()
        self.closing = False
        self.throttle_until = 0.0
        self.drop_every = 0
        self.reset()
        #: The Invoke API, which the runtimes reach too (AWS_ENDPOINT_URL_LAMBDA): a fan-out invoker invokes.
        self.front = self._serve(runtime_index=None)
        self.runtimes = [Runtime(i, self._serve(runtime_index=i)) for i in range(args.runtimes)]
        for runtime in self.runtimes:
            self._spawn(runtime)
        threading.Thread(target=self._supervise, daemon=True).start()

    def reset(self) -> None:
        with self.lock:
            self.payloads: list[str] = []
            self.dropped: list[str] = []
            #: Answers dropped per payload: a payload's answer is dropped at most MAX_DROPS times, so a
            #: run of re-invocations never meets the core's limit on lost answers in a row by chance.
            self.drops_of: dict[str, int] = {}  # by the calls the payload carries
            self.stats = {"accepted": 0, "throttled": 0, "dropped": 0, "succeeded": 0, "failed": 0, "timed_out": 0,
                          "exited": 0}

    def count(self, name: str) -> None:
        with self.lock:
            self.stats[name] += 1

    def _serve(self, runtime_index: int | None) -> Server:
        server = Server(("127.0.0.1", 0), Handler)
        server.app, server.runtime_index = self, runtime_index  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def _spawn(self, runtime: Runtime) -> None:
        env = dict(os.environ, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{runtime.server.server_address[1]}",
                   AWS_LAMBDA_FUNCTION_NAME=self.function, AWS_LAMBDA_FUNCTION_MEMORY_SIZE="1024",
                   AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
                   AWS_ENDPOINT_URL_LAMBDA=f"http://127.0.0.1:{self.front.server_address[1]}")
        if self.code:  # the deployed package alone, as in Lambda's /var/task
            for name in _NOT_INHERITED:
                env.pop(name, None)
            env.update(PYTHONPATH=self.code["dir"], LAMBDA_TASK_ROOT=self.code["dir"])
        runtime.current = None
        runtime.started = time.time()
        runtime.process = subprocess.Popen(
            [self.python, "-m", "awslambdaric", self.handler], env=env, cwd=env.get("LAMBDA_TASK_ROOT"),
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
        )

    def _supervise(self) -> None:
        """Lambda's side of a sandbox's life: time limits, crashes, and fresh sandboxes after them."""
        while not self.closing:
            time.sleep(0.05)
            for runtime in self.runtimes:
                process, current = runtime.process, runtime.current
                if process is None:
                    continue
                if process.poll() is None and current is not None and time.time() > current.deadline:
                    process.kill()
                    process.wait()
                    self.count("timed_out")
                    current.finish(json.dumps({"errorMessage": f"Task timed out after {self.timeout} seconds",
                                               "errorType": "Sandbox.Timedout"}).encode(), "Unhandled")
                elif process.poll() is not None and not self.closing:
                    self.count("exited")
                    if current is not None:
                        current.finish(b'{"errorMessage": "Runtime exited", "errorType": "Runtime.ExitError"}',
                                       "Unhandled")
                else:
                    continue
                if time.time() - runtime.started < 1.0:  # a runtime that cannot start: do not spin
                    time.sleep(1.0)
                self._spawn(runtime)

    def invoke(self, payload: bytes, kind: str) -> tuple[Invocation, bool]:
        """Queue the invocation; True as second value when its answer is to be dropped."""
        invocation = Invocation(payload)
        text = payload.decode("utf-8", "replace")
        with self.lock:
            self.invocations[invocation.id] = invocation
            self.payloads.append(text)
            self.stats["accepted"] += 1
            drop = kind == "Event" and self.drop_every > 0 and self.stats["accepted"] % self.drop_every == 0
            calls = _calls_of(text)
            drop = drop and self.drops_of.get(calls, 0) < MAX_DROPS
            if drop:
                self.drops_of[calls] = self.drops_of.get(calls, 0) + 1
                self.dropped.append(text)
                self.stats["dropped"] += 1
        self.queue.put(invocation)
        return invocation, drop

    def next_for(self, runtime: Runtime) -> Invocation | None:
        while not self.closing:
            try:
                invocation = self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            invocation.deadline = time.time() + self.timeout
            runtime.current = invocation
            return invocation
        return None

    def finished(self, runtime: Runtime, invocation_id: str, body: bytes, error_type: str | None) -> None:
        with self.lock:
            invocation = self.invocations.pop(invocation_id, None)
        if invocation is not None:
            invocation.finish(body, error_type)
            self.count("failed" if error_type else "succeeded")
        if runtime.current is invocation:
            runtime.current = None

    def close(self) -> None:
        self.closing = True
        for runtime in self.runtimes:
            if runtime.process is not None:
                runtime.process.terminate()
        for runtime in self.runtimes:
            if runtime.process is not None:
                try:
                    runtime.process.wait(5)
                except subprocess.TimeoutExpired:
                    runtime.process.kill()
                    runtime.process.wait()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: boto3 and the runtime client reuse their connections

    @property
    def app(self) -> Lambda:
        return self.server.app  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # one line per request would drown the log
        pass

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def error(self, status: int, error_type: str, message: str) -> None:
        self.reply(status, json.dumps({"Type": "User", "message": message}).encode(),
                   {"x-amzn-ErrorType": error_type, "Content-Type": "application/json"})

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        index = self.server.runtime_index  # type: ignore[attr-defined]
        if index is not None and self.path == RUNTIME_PREFIX + "invocation/next":
            runtime = self.app.runtimes[index]
            invocation = self.app.next_for(runtime)
            if invocation is None:  # shutting down: the runtime is being stopped too
                self.close_connection = True
                return
            return self.reply(200, invocation.payload, {
                "Lambda-Runtime-Aws-Request-Id": invocation.id,
                "Lambda-Runtime-Deadline-Ms": str(int(invocation.deadline * 1000)),
                "Lambda-Runtime-Invoked-Function-Arn": f"{ARN_PREFIX}{self.app.function}",
                "Lambda-Runtime-Trace-Id": f"Root=1-{invocation.id[:8]}",
                "Content-Type": "application/json",
            })
        if self.path == "/_control/stats":
            with self.app.lock:
                stats = {**self.app.stats, "queued": self.app.queue.qsize(), "code": self.app.code}
                return self.reply(200, json.dumps(stats).encode())
        if self.path == "/_control/payloads":
            with self.app.lock:
                return self.reply(200, json.dumps(self.app.payloads).encode())
        if self.path == "/_control/dropped":
            with self.app.lock:
                return self.reply(200, json.dumps(self.app.dropped).encode())
        self.reply(404)

    def do_POST(self) -> None:
        body = self.body()
        index = self.server.runtime_index  # type: ignore[attr-defined]
        if index is not None and self.path.startswith(RUNTIME_PREFIX):
            runtime = self.app.runtimes[index]
            parts = self.path[len(RUNTIME_PREFIX):].split("/")
            if parts[0] == "invocation" and len(parts) == 3 and parts[2] in ("response", "error"):
                error_type = "Unhandled" if parts[2] == "error" else None
                self.app.finished(runtime, parts[1], body, error_type)
                return self.reply(202, b"{}")
            if parts == ["init", "error"]:
                self.app.log.write(f"runtime {index} failed to start: {body.decode(errors='replace')}\n".encode())
                return self.reply(202, b"{}")
            return self.reply(404)
        if self.path.startswith("/_control/"):
            return self.control(self.path[len("/_control/"):], json.loads(body or b"{}"))
        parts = self.path.split("?")[0].split("/")
        if len(parts) == 5 and parts[1:3] == ["2015-03-31", "functions"] and parts[4] == "invocations":
            return self.invoke(unquote(parts[3]), body)
        self.reply(404)

    def invoke(self, name: str, payload: bytes) -> None:
        app = self.app
        if name.split(":function:")[-1].split(":")[0] != app.function:
            return self.error(404, "ResourceNotFoundException", f"Function not found: {name}")
        kind = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if time.time() < app.throttle_until:
            app.count("throttled")
            return self.error(429, "TooManyRequestsException", "Rate Exceeded.")
        if kind == "DryRun":
            return self.reply(204)
        if kind == "Event" and len(payload) > MAX_ASYNC_PAYLOAD:
            return self.error(413, "RequestTooLargeException", f"Request must be under {MAX_ASYNC_PAYLOAD} bytes")
        invocation, drop = app.invoke(payload, kind)
        if drop:  # accepted and running, but the client never hears so: no reply, connection closed
            self.close_connection = True
            return
        if kind == "Event":
            return self.reply(202)
        invocation.done.wait(app.timeout + 30)
        headers = {"X-Amz-Executed-Version": "$LATEST", "Content-Type": "application/json"}
        if invocation.error_type:
            headers["X-Amz-Function-Error"] = invocation.error_type
        self.reply(200, invocation.result, headers)

    def control(self, command: str, args: dict[str, Any]) -> None:
        app = self.app
        if command == "throttle":
            app.throttle_until = time.time() + float(args["seconds"])
        elif command == "drop":
            app.drop_every = int(args["every"])
        elif command == "configure":
            app.timeout = float(args.get("timeout", app.timeout))
        elif command == "reset":
            app.reset()
        elif command == "purge":
            while True:
                try:
                    app.queue.get_nowait()
                except queue.Empty:
                    break
        else:
            return self.reply(404)
        self.reply(200, b"{}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--function", required=True)
    parser.add_argument("--handler", required=True)
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--runtimes", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=60.0, help="the function's time limit, in seconds")
    parser.add_argument("--log", default=None, help="file for the runtimes' output (default: this stderr)")
    parser.add_argument("--python", default=None, help="the runtime processes' interpreter (default: this one)")
    parser.add_argument("--code-from", default=None, metavar="MOTO_URL",
                        help="run the function's deployed package, fetched from moto (see the module's doc)")
    parser.add_argument("--code-bucket", default=None, help="the S3 bucket of the staged package (--code-from)")
    parser.add_argument("--code-dir", default=None, help="where to unpack the package (--code-from)")
    args = parser.parse_args()
    log = open(args.log, "ab", buffering=0) if args.log else sys.stderr.buffer
    app = Lambda(args, log)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(app.front.server_address[1]))
    os.replace(tmp, args.port_file)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        app.close()


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    main()
