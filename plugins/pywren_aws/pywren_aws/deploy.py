"""``pywren deploy`` / ``pywren remove`` for AWS: the bucket, the function's package, and the Lambda API calls.

The package is a zip of ``pywren_core.runtime.artifact_files``: the client's own pywren-core and
pywren-aws (the worker refuses a client whose Python or pywren-core version differs, so the client's
code is exactly what the function must run), with minimal ``.dist-info`` so the worker finds the
plugin, plus the runtime's tree when one is configured (built by the core for :data:`plugin.PLATFORM`:
manylinux wheels for Lambda's Python, compiled extensions included). Without a runtime the package
carries, as before, the pure-Python dependencies of pywren-core and pywren-aws copied from the
client's environment (their compiled extensions are left out: the current ones are only optional
speed-ups). boto3 and its dependencies are never packaged: every Lambda Python runtime ships them.

Each runtime gets a function of its own (:func:`plugin.function_name`), so runtimes live side by
side. A package over Lambda's 50 MB direct-upload limit goes up to the job bucket first
(``pywren.deploy/<function>/<sha256>.zip``) and is handed to Lambda as ``S3Bucket``/``S3Key``; a
runtime that is a container image (``runtime: {image: ...}``) is deployed as ``PackageType=Image``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import re
import sys
import zipfile
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from pywren_core import runtime as runtimes
from pywren_core.errors import ConfigError, NotFoundError, PywrenError, RuntimeBuildError, StorageError

from pywren_aws import storage
from pywren_aws.errors import mapped
from pywren_aws.plugin import HANDLER, LAMBDA_UNZIPPED_BYTES, PROVIDED_BY_LAMBDA, AwsSession, function_name

ROOT_DISTRIBUTION = "pywren-aws"
#: The client's own code that travels in every package: distribution -> import package.
OWN_PACKAGES = {"pywren-core": "pywren_core", "pywren-aws": "pywren_aws"}
#: Lambda's limit for a zip uploaded directly with the API call; larger ones go through S3.
MAX_ZIP_BYTES = 50 * 2**20
#: Lambda's limit for a zip handed over through S3 (its unzipped limit applies too).
MAX_S3_ZIP_BYTES = LAMBDA_UNZIPPED_BYTES
#: Where packages too large for a direct upload are staged in the job bucket.
STAGING_PREFIX = "pywren.deploy/"
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


#: glibc of the OS under Lambda's Python runtimes: python3.8 to python3.11 run on Amazon Linux 2,
#: python3.12 on and later on Amazon Linux 2023.
AMAZON_LINUX_2_GLIBC, AMAZON_LINUX_2023_GLIBC = (2, 26), (2, 34)
#: The glibc an old-style manylinux tag stands for.
_LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}


def lambda_glibc(python: str) -> tuple[int, int]:
    """The glibc of Lambda's runtime for Python ``python`` (``"3.11"``)."""
    major, minor = (int(part) for part in python.split(".")[:2])
    return AMAZON_LINUX_2_GLIBC if (major, minor) <= (3, 11) else AMAZON_LINUX_2023_GLIBC


def _glibc_needed(platform_tag: str) -> tuple[int, int] | None:
    """The glibc a wheel's platform tag needs; None when it needs none (``any``) or says nothing."""
    match = re.match(r"manylinux_(\d+)_(\d+)_", platform_tag)
    if match:
        return int(match.group(1)), int(match.group(2))
    return _LEGACY_MANYLINUX.get(platform_tag.split("_")[0])


def check_glibc(runtime: Any, python: str) -> None:
    """Refuse a runtime holding a wheel built for a newer glibc than Lambda's OS for ``python`` has:
    its compiled modules would not load there (``GLIBC_2.27 not found``) on any call. The core
    resolves only wheels for the glibc ``PLATFORM`` declares; this checks the tree actually built
    (a runtime built by an older core, or resolved for another platform)."""
    have = lambda_glibc(python)
    problems = []
    for wheel in sorted(runtime.site.glob("*.dist-info/WHEEL")):
        tags = [line.split(":", 1)[1].strip() for line in wheel.read_text().splitlines() if line.startswith("Tag:")]
        needs = [_glibc_needed(p) for tag in tags for p in tag.split("-")[-1].split(".")]
        if not tags or None in needs or min(needs) <= have:  # type: ignore[type-var]
            continue
        name, _, version = wheel.parent.name.removesuffix(".dist-info").partition("-")
        least = min(needs)  # type: ignore[type-var]
        problems.append(f"{name} {version} needs glibc {least[0]}.{least[1]} (its wheel: {', '.join(tags)})")
    if problems:
        os_name = "Amazon Linux 2" if have == AMAZON_LINUX_2_GLIBC else "Amazon Linux 2023"
        raise RuntimeBuildError(
            f"runtime {runtime.name} cannot run on Lambda's python{python}, which runs on {os_name} (glibc "
            f"{have[0]}.{have[1]}): " + "; ".join(problems) + ". Pin releases that publish manylinux2014 wheels "
            "in the runtime's requirements (numpy<2.3, for one), or run the client on Python 3.12 or later"
        )


def package_files(runtime: Any = None) -> dict[str, Path | bytes]:
    """Every file of the function's package, by its path in the zip: ``artifact_files`` of the
    runtime (or of none) and, without a runtime, the client's pure-Python third-party dependencies."""
    files: dict[str, Path | bytes] = {}
    if runtime is None:
        for dist in distributions():
            if _canonical(dist.metadata["Name"]) not in OWN_PACKAGES:
                files.update(_files(dist))
    files.update(runtimes.artifact_files(runtime, OWN_PACKAGES))
    return files


def build_zip(runtime: Any = None) -> bytes:
    """The function's deployment package, byte for byte reproducible from the same files."""
    entries = package_files(runtime)
    buffer = io.BytesIO()
    unzipped = 0
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(entries):
            content = entries[name]
            info = zipfile.ZipInfo(name, _FIXED_TIME)
            # Lambda's runtime user must be able to read every file (and run the runtime's executables).
            executable = isinstance(content, Path) and content.stat().st_mode & 0o111
            info.external_attr = (0o755 if executable else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            data = content if isinstance(content, bytes) else content.read_bytes()
            unzipped += len(data)
            archive.writestr(info, data)
    data = buffer.getvalue()
    what = "the function package" if runtime is None else f"the package of runtime {runtime.name}"
    if unzipped > LAMBDA_UNZIPPED_BYTES:
        raise PywrenError(f"{what} is {unzipped / 2**20:.1f} MB unzipped, over Lambda's 250 MB limit: drop "
                          "requirements the function does not need, or use a container image (runtime.image)")
    if len(data) > MAX_S3_ZIP_BYTES:
        raise PywrenError(f"{what} is {len(data) / 2**20:.1f} MB zipped, over what Lambda takes")
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


def _stage(session: AwsSession, name: str, code: bytes) -> dict[str, str]:
    """Put a package too large for a direct upload into the job bucket; Lambda reads it from there.
    Older packages of the same function are deleted (Lambda keeps its own copy of the code)."""
    prefix = f"{STAGING_PREFIX}{name}/"
    key = f"{prefix}{hashlib.sha256(code).hexdigest()}.zip"
    storage.put(session.s3, session.bucket, key, code)
    storage.delete(session.s3, session.bucket, [k for k in storage.list_keys(session.s3, session.bucket, prefix)
                                                if k != key])
    return {"S3Bucket": session.bucket, "S3Key": key}


def _label(runtime: Any) -> str:
    if runtime is None:
        return "default package"
    return f"runtime {runtime.name} ({runtime.label!r})"


def deploy(session: AwsSession, config: Mapping[str, Any]) -> str:
    """Create the bucket if missing, create or update the function that carries the session's runtime
    (the default package without one), wait until it can be invoked, and turn off Lambda's own retries."""
    rt = session.runtime
    name = function_name(config["function_name"], rt)
    if not config["role_arn"]:
        raise ConfigError("aws.role_arn: deploying needs the ARN of the IAM role the function runs as "
                          "(allowed to read and write the bucket)")
    bucket = ensure_bucket(session)
    settings: dict[str, Any] = {"Role": config["role_arn"], "MemorySize": config["memory"],
                                "Timeout": config["function_timeout"]}
    if rt is not None and rt.image:
        # The user's image (``pywren runtime dockerfile`` writes one on Lambda's base image, with the
        # client's pywren-core and pywren-aws in /var/task): Lambda pulls it from ECR.
        code: dict[str, Any] = {"ImageUri": rt.image}
        create = {"PackageType": "Image", "Code": code, "ImageConfig": {"Command": [HANDLER]}}
        package = f"image {rt.image}"
    else:
        if rt is not None:
            check_glibc(rt, rt.manifest.get("python") or runtime().removeprefix("python"))
        zipped = build_zip(rt)
        code = {"ZipFile": zipped} if len(zipped) <= MAX_ZIP_BYTES else _stage(session, name, zipped)
        settings.update(Handler=HANDLER, Runtime=runtime())
        create = {"Code": code}
        via = f", through s3://{code['S3Bucket']}/{code['S3Key']}" if "S3Key" in code else ""
        package = f"package {len(zipped) / 2**20:.1f} MB{via}"
    client = session.control_client()
    description = "pywren worker" if rt is None else f"pywren worker, runtime {rt.name}"
    with mapped(f"deploying Lambda function {name}", default=PywrenError):
        try:
            client.get_function(FunctionName=name)
        except client.exceptions.ResourceNotFoundException:
            client.create_function(FunctionName=name, Architectures=[config["architecture"]],
                                   Description=description, **create, **settings)
            action = "created"
        else:
            client.update_function_code(FunctionName=name, Architectures=[config["architecture"]], **code)
            client.get_waiter("function_updated_v2").wait(FunctionName=name)
            client.update_function_configuration(FunctionName=name, **settings)
            action = "updated"
        client.get_waiter("function_active_v2").wait(FunctionName=name)
        client.get_waiter("function_updated_v2").wait(FunctionName=name)
        # The core retries failed calls itself; Lambda's two automatic retries would run them again.
        client.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=0)
    what = "" if rt is None else f"{_label(rt)}, "
    return (f"{action} Lambda function {name} ({what}{runtime()}, {config['architecture']}, {config['memory']} MB, "
            f"{config['function_timeout']} s, {package}){bucket}")


def _runtime_functions(client: Any, base: str) -> list[str]:
    """The functions of every runtime deployed under ``base`` (``<base>-rt-...``, ``<base>-img-...``)."""
    found = []
    for page in client.get_paginator("list_functions").paginate():
        for function in page["Functions"]:
            if function["FunctionName"].startswith((f"{base}-rt-", f"{base}-img-")):
                found.append(function["FunctionName"])
    return sorted(found)


def remove(session: AwsSession, config: Mapping[str, Any]) -> str:
    """Delete the function, every runtime's function beside it, and their staged packages; with a
    runtime (``pywren remove --runtime NAME``), that runtime's function alone."""
    base = config["function_name"]
    client = session.control_client()
    removed = []
    with mapped(f"removing Lambda function {base}", default=PywrenError):
        names = [function_name(base, session.runtime)] if session.runtime is not None else [
            base, *_runtime_functions(client, base)]
        for name in names:
            try:
                client.delete_function(FunctionName=name)
                removed.append(name)
            except client.exceptions.ResourceNotFoundException:
                continue
    try:
        staged = storage.list_keys(session.s3, session.bucket, f"{STAGING_PREFIX}{base}")
        storage.delete(session.s3, session.bucket, [k for k in staged if k.split("/")[1] in removed])
    except (NotFoundError, StorageError):
        pass  # no bucket (any more): nothing staged there
    if not removed:
        return f"no Lambda function {base} to remove"
    return f"removed Lambda function{'s' if len(removed) > 1 else ''} {', '.join(removed)}"
