"""``pywren deploy`` / ``pywren remove`` for AWS: the bucket, the function's zip package, and the Lambda API calls.

The package holds pywren-core, pywren-aws and their pure-Python dependencies, copied from the
client's own environment: the worker refuses a client whose Python or pywren-core version differs,
so the client's installation is exactly what the function must run. boto3 and its dependencies are
left out because every Lambda Python runtime ships them. Compiled extensions are left out too (the
function may run on another architecture); the current dependencies only use theirs as optional
speed-ups.
"""

from __future__ import annotations

import importlib.util
import io
import re
import sys
import zipfile
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from pywren_core.errors import ConfigError, NotFoundError, PywrenError

from pywren_aws.errors import mapped
from pywren_aws.plugin import HANDLER, AwsSession

ROOT_DISTRIBUTION = "pywren-aws"
#: Distributions every Lambda Python runtime already provides.
PROVIDED_BY_LAMBDA = {"boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3"}
#: Lambda's limit for a zip uploaded directly with the API call.
MAX_ZIP_BYTES = 50 * 2**20
_SKIPPED_SUFFIXES = {".pyc", ".pyo", ".so", ".pyd", ".dylib", ".pth"}
_SKIPPED_METADATA = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the same files give the same zip, hence the same CodeSha256


def runtime() -> str:
    """Lambda's runtime identifier for this interpreter's version, e.g. ``python3.11``."""
    return f"python{sys.version_info.major}.{sys.version_info.minor}"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dependencies(dist: metadata.Distribution) -> Iterator[str]:
    for requirement in dist.requires or ():
        spec, _, marker = requirement.partition(";")
        if "extra" not in marker:
            yield re.match(r"[A-Za-z0-9._-]+", spec.strip()).group(0)  # type: ignore[union-attr]


def distributions() -> list[metadata.Distribution]:
    """pywren-aws and every distribution it needs at run time that Lambda does not provide."""
    found: dict[str, metadata.Distribution] = {}
    todo = [ROOT_DISTRIBUTION]
    while todo:
        name = _canonical(todo.pop())
        if name in found or name in PROVIDED_BY_LAMBDA:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            if name in ("pywren-aws", "pywren-core"):
                raise
            continue  # a dependency for another Python version or platform
        found[name] = dist
        todo.extend(_dependencies(dist))
    return sorted(found.values(), key=lambda d: _canonical(d.metadata["Name"]))


def _top_level_names(dist: metadata.Distribution) -> set[str]:
    """Importable names of ``dist``; an editable install lists none, so fall back to its own name."""
    text = dist.read_text("top_level.txt")
    if text:
        return {line.strip() for line in text.splitlines() if line.strip()}
    names = set()
    for file in dist.files or ():
        first = file.parts[0]
        if len(file.parts) == 1 and file.suffix != ".py":
            continue
        if first == ".." or first.endswith((".dist-info", ".egg-info", ".data")) or first.startswith("__"):
            continue
        names.add(first.removesuffix(".py"))
    return names or {dist.metadata["Name"].replace("-", "_").lower()}


def _files(dist: metadata.Distribution) -> Iterator[tuple[str, Path]]:
    """(archive name, source path) of the distribution's modules and of its metadata."""
    for name in sorted(_top_level_names(dist)):
        spec = importlib.util.find_spec(name)
        if spec is None:
            continue
        if spec.submodule_search_locations:  # a package: take its directory, wherever it is installed
            root = Path(next(iter(spec.submodule_search_locations)))
            for path in sorted(root.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts and path.suffix not in _SKIPPED_SUFFIXES:
                    yield f"{name}/{path.relative_to(root).as_posix()}", path
        elif spec.origin and spec.origin.endswith(".py"):
            yield f"{name}.py", Path(spec.origin)
    for file in dist.files or ():
        if file.parts[0].endswith(".dist-info") and file.name not in _SKIPPED_METADATA:
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                yield file.as_posix(), path


def build_zip() -> bytes:
    """The function's deployment package, byte for byte reproducible from the same installation."""
    entries: dict[str, Path] = {}
    for dist in distributions():
        entries.update(_files(dist))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, _FIXED_TIME)
            info.external_attr = 0o644 << 16  # Lambda's runtime user must be able to read every file
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, entries[name].read_bytes())
    data = buffer.getvalue()
    if len(data) > MAX_ZIP_BYTES:
        raise PywrenError(f"the function package is {len(data) / 2**20:.1f} MB, over Lambda's 50 MB limit")
    return data


def ensure_bucket(session: AwsSession) -> str:
    """Create the job bucket in the session's region if it is missing; say so, or return ''.

    A bucket that exists but cannot be looked up (another account's, or no ``s3:ListBucket``) is an
    ``AccessDeniedError``, never a second bucket.
    """
    s3, bucket = session.s3, session.bucket
    try:
        with mapped(f"looking up S3 bucket {bucket}"):
            s3.head_bucket(Bucket=bucket)
        return ""
    except NotFoundError:
        pass
    region = s3.meta.region_name
    # us-east-1 is the one region that refuses a LocationConstraint naming it.
    where = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    with mapped(f"creating S3 bucket {bucket} in {region}", default=PywrenError):
        s3.create_bucket(Bucket=bucket, **where)
    return f"; created S3 bucket {bucket} in {region}"


def deploy(session: AwsSession, config: Mapping[str, Any]) -> str:
    """Create the bucket if missing, create or update the function, wait until it can be invoked, and
    turn off Lambda's own retries."""
    name = config["function_name"]
    if not config["role_arn"]:
        raise ConfigError("aws.role_arn: deploying needs the ARN of the IAM role the function runs as "
                          "(allowed to read and write the bucket)")
    bucket = ensure_bucket(session)
    code = build_zip()
    client = session.control_client()
    settings = {"Role": config["role_arn"], "Handler": HANDLER, "Runtime": runtime(),
                "MemorySize": config["memory"], "Timeout": config["function_timeout"]}
    with mapped(f"deploying Lambda function {name}", default=PywrenError):
        try:
            client.get_function(FunctionName=name)
        except client.exceptions.ResourceNotFoundException:
            client.create_function(FunctionName=name, Code={"ZipFile": code}, Architectures=[config["architecture"]],
                                   Description="pywren worker", **settings)
            action = "created"
        else:
            client.update_function_code(FunctionName=name, ZipFile=code, Architectures=[config["architecture"]])
            client.get_waiter("function_updated_v2").wait(FunctionName=name)
            client.update_function_configuration(FunctionName=name, **settings)
            action = "updated"
        client.get_waiter("function_active_v2").wait(FunctionName=name)
        client.get_waiter("function_updated_v2").wait(FunctionName=name)
        # The core retries failed calls itself; Lambda's two automatic retries would run them again.
        client.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=0)
    return (f"{action} Lambda function {name} ({runtime()}, {config['architecture']}, {config['memory']} MB, "
            f"{config['function_timeout']} s, package {len(code) / 2**20:.1f} MB){bucket}")


def remove(session: AwsSession, config: Mapping[str, Any]) -> str:
    name = config["function_name"]
    client = session.control_client()
    with mapped(f"removing Lambda function {name}", default=PywrenError):
        try:
            client.delete_function(FunctionName=name)
        except client.exceptions.ResourceNotFoundException:
            return f"no Lambda function {name} to remove"
    return f"removed Lambda function {name}"
