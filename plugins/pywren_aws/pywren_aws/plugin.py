"""The ``aws`` backend's hooks: job objects in S3, calls as asynchronous AWS Lambda invocations, and
objects at ``s3://`` URLs in any bucket (the data hooks).

Credentials come only from boto3's own chain (environment, ``~/.aws``, the function's or the
machine's role); no config field holds one, so nothing secret can travel in a payload. Endpoints
follow boto3's configuration too (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL_LAMBDA``), and the
``endpoint_url`` key points storage at an S3-compatible store.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
import boto3
from botocore.config import Config
from botocore.exceptions import ConnectionClosedError, NoRegionError, ReadTimeoutError
from pywren_core.backend import REQUIRED, BackendInfo, CallEvent, ConfigField, Limits, Platform
from pywren_core.errors import AmbiguousInvokeError, ConfigError, InvokeError
from pywren_core.hookspecs import hookimpl

from pywren_aws import notice, storage
from pywren_aws.errors import DATA_NOT_FOUND, error_code, mapped

HANDLER = "pywren_aws.handler.lambda_handler"
#: Lambda's async payload limit is 256 KB; stay a little under it.
MAX_PAYLOAD_BYTES = 250_000
#: Enough connections for the core's 32 storage threads plus multipart parts and user threads.
S3_POOL = 64
#: The core's invoker runs up to ``invoke_threads`` (64 by default) invocations at once.
LAMBDA_POOL = 128
#: HTTP tries botocore makes per S3 request. botocore cannot be told to retry transport errors only
#: (its retries cover throttling and 5xx too), and the core retries ``ThrottledError`` on top, so keep
#: it at one retry: a reset connection is retried here, a throttled operation mostly by the core.
S3_TRIES = 2

#: Distributions every Lambda Python runtime already provides: never put in a function's package.
PROVIDED_BY_LAMBDA = frozenset({"boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3"})
#: Lambda's limit for a function's unzipped code (262,144,000 bytes, layers included).
LAMBDA_UNZIPPED_BYTES = 250 * 2**20
#: What a runtime may take of it: the rest is kept for the client's pywren-core and pywren-aws, which
#: every package carries beside the runtime (about 1 MB today).
RUNTIME_MAX_BYTES = LAMBDA_UNZIPPED_BYTES - 10 * 2**20
#: Maps of at least this many invocations are fanned out (``pywren_core.fanout``): below it, the client
#: invokes as fast as a few invokers would, counting their start.
FANOUT_THRESHOLD = 1000
#: Guards a worker session's Lambda client, made on its first invocation (a fan-out invoker's threads).
_worker_lock = threading.Lock()
#: Lambda function names are at most 64 characters; a runtime's function adds ``-rt-<12 hex>``.
MAX_FUNCTION_NAME = 64
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
#: Where runtimes are built for: Lambda's Python runtime for the client's Python version (a worker
#: refuses another minor version), on Amazon Linux (manylinux wheels), x86_64 (see ``architecture``).
PLATFORM = Platform(
    python=PYTHON, os="linux", arch="x86_64", max_unzipped_bytes=RUNTIME_MAX_BYTES,
    # Lambda's python3.11 and older run on Amazon Linux 2, 3.12 and later on Amazon Linux 2023: the
    # core resolves only wheels their glibc loads (``deploy.check_glibc`` checks the built tree again).
    glibc="2.26" if sys.version_info < (3, 12) else "2.34",
    # boto3 and its dependencies, which pywren-aws needs too, ship with Lambda's runtime: nothing of the
    # plugin's own is installed (``requirements`` stays empty).
    provided=PROVIDED_BY_LAMBDA, requirements=(),
    image_base=f"public.ecr.aws/lambda/python:{PYTHON}", image_code_dir="/var/task",
)

CONFIG = (
    ConfigField("bucket", str, REQUIRED, help="S3 bucket that holds the job objects"),
    ConfigField("region", str, None, help="AWS region; default: boto3's (AWS_REGION, ~/.aws/config)"),
    ConfigField("function_name", str, "pywren-runner", help="the Lambda function that runs the calls"),
    ConfigField("endpoint_url", str, None,
                help="S3 endpoint of an S3-compatible store; default: boto3's (AWS_ENDPOINT_URL_S3 or AWS)"),
    ConfigField("invoke_timeout", (int, float), 10.0, help="seconds to wait for Lambda to accept one invocation"),
    ConfigField("role_arn", str, None, help="IAM role the function runs as (needed by `pywren deploy`)"),
    ConfigField("memory", int, 1024, help="function memory in MB, set by `pywren deploy`"),
    ConfigField("function_timeout", int, 900, help="function time limit in seconds, set by `pywren deploy`"),
    ConfigField("architecture", str, "x86_64", help="x86_64 or arm64, set by `pywren deploy`"),
    ConfigField("notices", bool, True,
                help="the function posts each finished call to an SQS queue of the client's own, so the client "
                     "notices it at once; false: the client lists the bucket only"),
)


@hookimpl
def pywren_backend_info() -> BackendInfo:
    return BackendInfo(
        name="aws",
        # The hook API this plugin was written for, stated rather than defaulted, so a core speaking
        # another API version refuses it at load time.
        api_version=1,
        limits=Limits(max_payload_bytes=MAX_PAYLOAD_BYTES, max_runtime=900.0, max_concurrency=1000),
        config=CONFIG,
        handler=HANDLER,
        poll_interval=(0.1, 2.0),
        # s3://BUCKET/KEY in any bucket the credentials reach, through the session's own S3 client (on the
        # client to list, in the function to read by range).
        data_schemes=("s3",),
        platform=PLATFORM,
        features={
            "storage": "S3 (and S3-compatible stores)",
            "trigger": "Lambda asynchronous invoke (InvocationType=Event)",
            "completion": "an SQS queue per client that the function posts to, long-polled (aws.notices)",
            "isolation": "one invocation per sandbox at a time, a working directory per call",
        },
    )


@attrs.define(eq=False)
class AwsSession:
    """The clients one pywren session uses; ``lambda_`` exists on the client side only."""

    config: Mapping[str, Any]
    boto: boto3.session.Session
    s3: Any
    lambda_: Any = None
    #: "client", or "worker": a worker makes its Lambda client only if it fans out.
    role: str = "client"
    #: Where the function reports finished calls to this client (``aws.notices``); clients only.
    notices: notice.NoticeQueue | None = None
    #: The runtime (``pywren_core.runtime.Runtime``) the calls run in, or None: the default package.
    runtime: Any = None

    @property
    def bucket(self) -> str:
        return self.config["bucket"]

    @property
    def function_name(self) -> str:
        """The Lambda function that carries the session's runtime: ``function_name`` itself for the
        default package, ``<function_name>-<runtime name>`` for a runtime, so runtimes live side by side."""
        return function_name(self.config["function_name"], self.runtime)

    def control_client(self) -> Any:
        """A Lambda client for deploy and remove: boto3's usual retries, patient timeouts."""
        return self.boto.client("lambda", config=Config(retries={"mode": "standard"}, read_timeout=300))


def function_name(base: str, runtime: Any) -> str:
    """The function for ``runtime`` (None: the default package) under the configured ``function_name``."""
    name = base if runtime is None else f"{base}-{runtime.name}"
    if len(name) > MAX_FUNCTION_NAME:
        raise ConfigError(f"aws.function_name: {base!r} is too long for runtime functions ({name!r} is over "
                          f"Lambda's {MAX_FUNCTION_NAME} characters); keep it to "
                          f"{MAX_FUNCTION_NAME - len(name) + len(base)} characters")
    return name


@hookimpl
def pywren_connect(config: Mapping[str, Any], role: str, runtime: Any, notify: Callable[[], None]) -> AwsSession:
    s3_config = Config(max_pool_connections=S3_POOL, retries={"mode": "standard", "total_max_attempts": S3_TRIES})
    # Opening a session reads the profile, and making a client resolves credentials: a missing profile
    # or half-set credentials fail here.
    with mapped("opening the AWS clients", default=ConfigError):
        boto = boto3.session.Session(region_name=config["region"])
        session = AwsSession(config, boto, boto.client("s3", endpoint_url=config["endpoint_url"], config=s3_config),
                             role=role)
    if runtime is not None:
        session.runtime = runtime
        session.function_name  # noqa: B018  (a name too long for Lambda fails here, not at the first invoke)
        built_for = runtime.manifest.get("platform", {}).get("arch")
        if not runtime.image and built_for and built_for != _lambda_arch(config["architecture"]):
            raise ConfigError(f"aws.architecture is {config['architecture']}, but runtime {runtime.name} was built "
                              f"for {built_for}: runtimes are built for x86_64 functions only")
    if role == "client":
        session.lambda_ = _lambda_client(boto, config)
        if config["notices"]:
            session.notices = notice.NoticeQueue(boto, notify)
    return session


def _lambda_client(boto: boto3.session.Session, config: Mapping[str, Any]) -> Any:
    """The client that invokes: on the client, and in a fan-out invoker (``pywren_core.fanout``).

    No botocore retries: a throttled or ambiguous invocation must reach the core's invoker, which
    backs off and invokes again (and counts a possible duplicate), instead of botocore retrying
    unseen. Parameters are built here, not by users, so validating them only costs CPU.
    """
    timeout = config["invoke_timeout"]
    invoke_config = Config(max_pool_connections=LAMBDA_POOL, retries={"total_max_attempts": 1},
                           connect_timeout=timeout, read_timeout=timeout, parameter_validation=False)
    try:
        return boto.client("lambda", config=invoke_config)
    except NoRegionError:
        raise ConfigError(
            "aws.region is not set and boto3 found no default region (AWS_REGION, AWS_DEFAULT_REGION "
            "or ~/.aws/config): set aws.region"
        ) from None


def _lambda_arch(architecture: str) -> str:
    return {"arm64": "aarch64"}.get(architecture, architecture)


@hookimpl
def pywren_storage_put(session: AwsSession, key: str, data: bytes) -> None:
    storage.put(session.s3, session.bucket, key, data)


@hookimpl
def pywren_storage_get(session: AwsSession, key: str, byte_range: tuple[int, int] | None) -> bytes:
    return storage.get(session.s3, session.bucket, key, byte_range)


@hookimpl
def pywren_storage_list(session: AwsSession, prefix: str) -> list[str]:
    return storage.list_keys(session.s3, session.bucket, prefix)


@hookimpl
def pywren_storage_delete(session: AwsSession, keys: Sequence[str]) -> None:
    storage.delete(session.s3, session.bucket, keys)


# --- data: objects at s3:// URLs in any bucket, through the same S3 client as the job bucket ------------
# The same functions as the job bucket's, except that a missing bucket is NotFoundError naming the URL.


@hookimpl
def pywren_data_list(session: AwsSession, bucket: str, prefix: str) -> Iterable[tuple[str, int]]:
    # A list, not the generator: the core retries a throttled hook call, so the listing must happen inside it.
    return list(storage.keys_and_sizes(session.s3, bucket, prefix, missing=DATA_NOT_FOUND))


@hookimpl
def pywren_data_get(session: AwsSession, bucket: str, key: str, byte_range: tuple[int, int] | None) -> bytes:
    return storage.get(session.s3, bucket, key, byte_range, missing=DATA_NOT_FOUND)


@hookimpl
def pywren_data_open(session: AwsSession, bucket: str, key: str, byte_range: tuple[int, int]) -> Any:
    return storage.open_range(session.s3, bucket, key, byte_range, missing=DATA_NOT_FOUND)


@hookimpl
def pywren_data_put(session: AwsSession, bucket: str, key: str, data: bytes) -> None:
    storage.put(session.s3, bucket, key, data, missing=DATA_NOT_FOUND)


@hookimpl
def pywren_data_delete(session: AwsSession, bucket: str, keys: Sequence[str]) -> None:
    storage.delete(session.s3, bucket, keys, missing=DATA_NOT_FOUND)


@hookimpl
def pywren_invoke(session: AwsSession, payload: Mapping[str, Any]) -> None:
    """One asynchronous invocation, tried once: every retry is the core's (see the README's "Retries").

    429 and 5xx become ThrottledError (see ``errors.THROTTLED``); an answer lost after the request was
    sent, AmbiguousInvokeError; an endpoint that cannot be reached at all, InvokeError naming it.
    """
    if session.lambda_ is None:  # a worker that fans out: it invokes the function it runs in
        with _worker_lock:
            if session.lambda_ is None:
                session.lambda_ = _lambda_client(session.boto, session.config)
    name = session.function_name
    if session.role == "worker":
        name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", name)
    queue_url = session.notices.url if session.notices is not None else None
    event = {**payload, notice.PAYLOAD_KEY: queue_url} if queue_url else payload
    body = json.dumps(event, separators=(",", ":")).encode()
    what = f"Lambda invoke of {name} at {session.lambda_.meta.endpoint_url}"
    with mapped(what, default=InvokeError):
        try:
            response = session.lambda_.invoke(FunctionName=name, InvocationType="Event", Payload=body)
            # Read the (empty) answer to its end: that hands the connection back to the pool. Left unread,
            # every invocation opened a new connection (and, on AWS, a new TLS session).
            response["Payload"].read()
        except (ConnectionClosedError, ReadTimeoutError) as exc:
            raise AmbiguousInvokeError(f"{what}: the request was sent but its answer was lost "
                                       f"({type(exc).__name__}); Lambda may have accepted it") from None
        except session.lambda_.exceptions.ResourceNotFoundException as exc:
            if session.runtime is None or error_code(exc) != "ResourceNotFoundException":
                raise
            label = session.runtime.label
            flag = "" if label == "default" else f" --runtime {label}"
            raise ConfigError(
                f"{what}: runtime {session.runtime.name} ({label!r}) is not deployed (no function {name}); "
                f"run `pywren deploy{flag}` with this config first"
            ) from None


@hookimpl
def pywren_fanout(session: AwsSession) -> int:
    return FANOUT_THRESHOLD


@hookimpl
def pywren_prepare(session: AwsSession) -> None:
    """An executor opens: create its notice queue in the background (invocations carry its URL once it exists)."""
    if session.notices is not None:
        session.notices.start()


@hookimpl
def pywren_poll_events(session: AwsSession) -> list[CallEvent]:
    return session.notices.events() if session.notices is not None else []


@hookimpl
def pywren_deploy(session: AwsSession, config: Mapping[str, Any]) -> str:
    from pywren_aws import deploy

    return deploy.deploy(session, config)


@hookimpl
def pywren_remove(session: AwsSession, config: Mapping[str, Any]) -> str:
    from pywren_aws import deploy

    return deploy.remove(session, config)


@hookimpl
def pywren_close(session: AwsSession) -> None:
    if session.notices is not None:
        session.notices.close()
    session.s3.close()
    if session.lambda_ is not None:
        session.lambda_.close()
