"""Runtimes: the packages a user's function needs, built once for the platform a backend runs on.

A runtime is a backend-neutral spec (``runtime: {requirements: [numpy, pandas>=2.2]}`` in the
config, or one of several named ones under ``runtimes:``). The core resolves it with pip for the
:class:`Platform` the backend declares (its OS, architecture and Python), adds the packages every
worker needs (pywren-core's dependencies and the plugin's, pinned to the client's versions, since a
pickle must load on the other side), and installs the pinned set into a tree under the user's cache
(``uv`` when it is installed, else pip). The runtime's name is a hash of that pinned set and the
platform, so an unchanged spec is built once and two runtimes live side by side. Plugins only turn
the tree, plus the client's own copies of pywren-core and the plugin (:func:`artifact_files`), into
their platform's artifact; ``local`` runs its workers in a virtual environment over the same tree.

Each runtime keeps a manifest (distributions and versions, the modules they provide, Python,
platform). Before a job is invoked the client checks the modules the pickled function refers to by
reference against it (:func:`check_modules`), so a missing package fails once, up front, with the
line to add, not a thousand times on the workers.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import attrs

from pywren_core.backend import Platform
from pywren_core.errors import ConfigError, RuntimeBuildError, RuntimeMismatchError

#: The import package whose client copy travels into every artifact (never resolved on PyPI: the
#: worker must run exactly the client's code).
CORE_PACKAGE = "pywren_core"
MANIFEST = "manifest.json"


@attrs.frozen
class RuntimeSpec:
    """What the user asked for: requirement lines, or a container image of their own."""

    #: The name the config gives it (``runtimes: {ml: ...}``), or "default".
    label: str = "default"
    requirements: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    image: str = ""

    @classmethod
    def from_config(cls, runtime: Any, runtimes: Mapping[str, Any], where: str = "config") -> RuntimeSpec:
        """The spec named or given by the ``runtime`` setting (a name from ``runtimes``, or a mapping)."""
        if runtime in (None, "", "default") and "default" not in runtimes:
            return cls()
        label = "default" if runtime in (None, "") else runtime
        if isinstance(label, str):
            if label not in runtimes:
                known = ", ".join(sorted(runtimes)) or "none"
                raise ConfigError(f"{where}: runtime {label!r} is not defined under 'runtimes:' (defined: {known})")
            body, where = runtimes[label], f"{where}: runtimes.{label}"
        elif isinstance(label, Mapping):
            body, label = label, "default"
        else:
            raise ConfigError(f"{where}: runtime must be a name from 'runtimes:' or a mapping, got {runtime!r}")
        if not isinstance(body, Mapping):
            raise ConfigError(f"{where}: a runtime is a mapping of requirements/requirements_file/image, got {body!r}")
        unknown = set(body) - {"requirements", "requirements_file", "image"}
        if unknown:
            raise ConfigError(
                f"{where}: unknown runtime setting {sorted(unknown)[0]!r}; "
                "a runtime takes requirements, requirements_file and image"
            )
        requirements = body.get("requirements", [])
        if isinstance(requirements, str) or not all(isinstance(r, str) for r in requirements):
            raise ConfigError(f"{where}: requirements must be a list of requirement strings, got {requirements!r}")
        lines = [r.strip() for r in requirements if r.strip()]
        if body.get("requirements_file"):
            path = Path(os.path.expanduser(str(body["requirements_file"])))
            try:
                text = path.read_text()
            except OSError as exc:
                raise ConfigError(f"{where}: cannot read requirements_file {str(path)!r}: {exc.strerror}") from None
            lines += [ln.split("#", 1)[0].strip() for ln in text.splitlines() if ln.split("#", 1)[0].strip()]
        image = body.get("image", "") or ""
        if not isinstance(image, str):
            raise ConfigError(f"{where}: image must be a string, got {image!r}")
        return cls(label=str(label), requirements=tuple(lines), image=image)


@attrs.frozen
class Runtime:
    """A built runtime: its tree of installed packages and its manifest."""

    name: str
    path: Path
    manifest: Mapping[str, Any]
    #: The config's name for it (``runtimes: {ml: ...}``); the same pinned set built under two
    #: labels is one runtime, so the manifest keeps only the first.
    label: str = attrs.field(default=attrs.Factory(lambda self: self.manifest.get("label", "default"), takes_self=True))

    @property
    def site(self) -> Path:
        """The installed packages, laid out like site-packages."""
        return self.path / "site"

    @property
    def distributions(self) -> dict[str, str]:
        return dict(self.manifest["distributions"])

    @property
    def image(self) -> str:
        return self.manifest.get("image", "")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


#: Where built runtimes are kept, when not under the user's cache (a CI cache, a shared disk).
DIR_ENV = "PYWREN_RUNTIMES_DIR"


def runtimes_dir() -> Path:
    from pywren_core.config import user_cache_dir

    return Path(os.environ.get(DIR_ENV) or user_cache_dir() / "pywren" / "runtimes")


def _installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _requirement_name(line: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
    if not match:
        raise ConfigError(f"runtime requirement {line!r} does not start with a distribution name")
    return canonical(match.group(1))


#: Distributions a worker must have at the client's very version: a pickle written by one
#: cloudpickle may not load in another.
SAME_AS_CLIENT = frozenset({"cloudpickle"})


def worker_requirements(platform: Platform, user_requirements: Sequence[str] = ()) -> list[str]:
    """What every worker needs besides the user's requirements: pywren-core's dependencies and the
    plugin's, pinned to the client's versions, except where the user's requirements name the
    distribution too: then only its own range, and the resolver reconciles both. cloudpickle
    always stays at the client's version."""
    named = {_requirement_name(line) for line in user_requirements}
    lines = [r for r in metadata.requires("pywren-core") or () if ";" not in r] + list(platform.requirements)
    out = []
    for line in lines:
        name = _requirement_name(line)
        version = _installed_version(name)
        out.append(f"{name}=={version}" if version and (name in SAME_AS_CLIENT or name not in named) else line)
    return out


def _pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]


def _platform_args(platform: Platform) -> list[str]:
    if platform.is_host:
        return []
    args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", platform.python_version]
    for tag in platform.pip_tags():
        args += ["--platform", tag]
    return args


def _run(command: list[str], what: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        errors = [ln for ln in done.stderr.splitlines() if ln.startswith("ERROR") or "error" in ln.lower()]
        detail = "\n".join(errors[-6:] or done.stderr.splitlines()[-6:])
        raise RuntimeBuildError(f"{what} failed (exit {done.returncode}):\n{detail}")
    return done


def resolve(requirements: Sequence[str], platform: Platform) -> dict[str, str]:
    """The pinned set (canonical name -> version) pip resolves for ``requirements`` on ``platform``,
    without installing anything."""
    with tempfile.TemporaryDirectory(prefix="pywren-resolve-") as scratch:
        report = os.path.join(scratch, "report.json")
        target = ["--target", os.path.join(scratch, "t")] if not platform.is_host else ["--ignore-installed"]
        _run(_pip("install", "--dry-run", "--quiet", "--report", report, *target, *_platform_args(platform),
                  *requirements),
             f"resolving {', '.join(requirements)} for {platform.describe()}")
        with open(report) as f:
            installs = json.load(f)["install"]
    return {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}


def _uv() -> str | None:
    """The uv binary when installed (on PATH or as the ``uv`` wheel): it installs much faster than pip."""
    try:
        import uv  # type: ignore[import-not-found]

        return uv.find_uv_bin()
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


#: The glibc versions uv names as targets (``x86_64-manylinux_2_31``); 17 is manylinux2014.
_UV_GLIBC = (17, 28, *range(31, 41))


def _uv_target(platform: Platform) -> str:
    """uv's target: the newest glibc it knows that the platform's does not exceed. The pins were
    resolved by pip for exactly the platform's glibc; uv only fetches their wheels."""
    newest = int(platform.glibc.split(".")[1])
    return f"{platform.arch}-manylinux_2_{max(m for m in _UV_GLIBC if m <= newest)}"


def _install(pins: Sequence[str], platform: Platform, target: Path, installer: str) -> None:
    if installer == "uv":
        uv = _uv()
        if uv is None:
            raise RuntimeBuildError("installer 'uv' asked for, but uv is not installed: pip install uv")
        args = [uv, "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                "--python-version", platform.python_version]
        if not platform.is_host:
            args += ["--only-binary", ":all:", "--python-platform", _uv_target(platform)]
        else:
            args += ["--python", sys.executable]
        _run([*args, *pins], f"installing the runtime with uv into {target}")
    else:
        _run(_pip("install", "--quiet", "--no-deps", "--no-compile", "--target", str(target),
                  *_platform_args(platform), *pins),
             f"installing the runtime with pip into {target}")


def _compile(site: Path, platform: Platform) -> bool:
    """Compile the tree's modules once, here, when the platform runs this Python: a cold worker then
    loads bytecode instead of compiling numpy and pandas anew on every start (the code directory
    of a function is read-only, so it could never keep its own). Unchecked-hash files, because
    artifacts carry fixed timestamps that a timestamp check would take for stale sources."""
    if platform.python_version != f"{sys.version_info.major}.{sys.version_info.minor}":
        return False
    import compileall
    import py_compile

    mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
    compileall.compile_dir(str(site), quiet=2, workers=0, invalidation_mode=mode)  # a test file's syntax error: fine
    return True


def _top_levels(site: Path) -> dict[str, str]:
    """Importable top-level name -> canonical distribution, from the tree's ``.dist-info`` records."""
    modules: dict[str, str] = {}
    for dist in metadata.distributions(path=[str(site)]):
        name = canonical(dist.metadata["Name"])
        text = dist.read_text("top_level.txt")
        tops = {ln.strip() for ln in text.splitlines() if ln.strip()} if text else set()
        if not tops:
            for file in dist.files or ():
                first = file.parts[0]
                if first.endswith((".dist-info", ".data")) or first.startswith(("..", "__")):
                    continue
                if len(file.parts) > 1 or file.suffix in (".py", ".so"):
                    tops.add(first.split(".")[0])
        for top in tops:
            modules.setdefault(top.replace("/", "."), name)
    return modules


def _sizes(site: Path) -> dict[str, int]:
    """Bytes per top-level entry of the tree (a package directory counts whole)."""
    sizes: dict[str, int] = {}
    for entry in site.iterdir():
        if entry.is_dir():
            sizes[entry.name] = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
        else:
            sizes[entry.name] = entry.stat().st_size
    return sizes


def check_size(sizes: Mapping[str, int], platform: Platform, name: str) -> None:
    """Refuse a runtime over the platform's unpacked limit, naming its largest packages."""
    limit = platform.max_unzipped_bytes
    total = sum(sizes.values())
    if limit is None or total <= limit:
        return
    largest = sorted(sizes.items(), key=lambda item: -item[1])[:5]
    listing = ", ".join(f"{entry} {size / 1e6:.1f} MB" for entry, size in largest)
    raise RuntimeBuildError(
        f"runtime {name} is {total / 1e6:.1f} MB unpacked, over the platform's {limit / 1e6:.0f} MB limit; "
        f"largest: {listing}. Drop packages the function does not need, or use a container image (runtime.image)"
    )


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _platform_identity(platform: Platform) -> dict[str, Any]:
    identity = {"python": platform.python_version, "os": platform.os, "arch": platform.arch,
                "glibc": platform.glibc, "provided": sorted(platform.provided)}
    if platform.is_host:
        identity["arch"] = sysconfig.get_platform()  # a host runtime may hold sdists built for this machine
    return identity


def _spec_key(spec: RuntimeSpec, platform: Platform) -> str:
    return _digest({"requirements": [*spec.requirements, *worker_requirements(platform, spec.requirements)],
                    "image": spec.image, "platform": _platform_identity(platform)})[:24]


def load(name: str) -> Runtime:
    """A runtime already built, by name."""
    path = runtimes_dir() / name
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise ConfigError(f"no runtime {name!r} under {runtimes_dir()}: see `pywren runtime list`") from None
    return Runtime(name, path, manifest)


def built() -> list[Runtime]:
    """Every runtime built on this machine, newest first."""
    folder = runtimes_dir()
    found = []
    for entry in sorted(folder.iterdir()) if folder.is_dir() else ():
        if (entry / MANIFEST).is_file():
            found.append(load(entry.name))
    return sorted(found, key=lambda r: -r.manifest.get("built_at", 0))


def for_config(config: Any, info: Any, log: Any = None, *, upgrade: bool = False,
               installer: str | None = None) -> Runtime | None:
    """The runtime a config asks for (an executor's, a command's), built when missing; None when it
    asks for none."""
    spec = RuntimeSpec.from_config(config.runtime, config.runtimes, config.sources.get("runtime", "config"))
    if not spec.requirements and not spec.image:
        return None
    if info.platform is None:
        raise ConfigError(
            f"{config.sources.get('runtime', 'config')}: the {info.name} backend builds no runtimes "
            "(its plugin declares no platform); remove the runtime setting or choose another backend"
        )
    if spec.image and not info.platform.image_base:
        where = config.sources.get("runtime", "config")
        raise ConfigError(f"{where}: the {info.name} backend takes no container images")
    return build(spec, info.platform, upgrade=upgrade, installer=installer, log=log)


def build(spec: RuntimeSpec, platform: Platform, *, upgrade: bool = False, installer: str | None = None,
          log: Any = None) -> Runtime:
    """The runtime for ``spec`` on ``platform``: from the cache when this spec was built before
    (unless ``upgrade``), else resolved, installed, checked against the platform's size limit and
    given a manifest. ``installer`` is ``"uv"`` or ``"pip"`` (default: uv when installed)."""
    say = log or (lambda text: None)
    folder = runtimes_dir()
    spec_file = folder / "specs" / f"{_spec_key(spec, platform)}.json"
    if not upgrade:
        try:
            return attrs.evolve(load(json.loads(spec_file.read_text())["name"]), label=spec.label)
        except (FileNotFoundError, ConfigError, KeyError, json.JSONDecodeError):
            pass
    if spec.image:
        return _image_runtime(spec, platform, spec_file)
    started = time.monotonic()
    requirements = [*spec.requirements, *worker_requirements(platform, spec.requirements)]
    say(f"resolving {len(requirements)} requirements for {platform.describe()}")
    resolved = resolve(requirements, platform)
    provided = {canonical(p) for p in platform.provided}
    pins = sorted(f"{name}=={version}" for name, version in resolved.items() if name not in provided)
    name = "rt-" + _digest({"pins": pins, "image": spec.image, "platform": _platform_identity(platform)})[:12]
    path = folder / name
    if upgrade or not (path / MANIFEST).is_file():
        installer = installer or ("uv" if _uv() else "pip")
        say(f"installing {len(pins)} distributions with {installer} into {path}")
        scratch = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=_ensure(folder)))
        try:
            installed_at = time.monotonic()
            try:
                _install(pins, platform, scratch / "site", installer)
            except RuntimeBuildError as exc:
                if installer != "uv":
                    raise
                # uv names fewer glibc targets than pip takes: a wheel it cannot place, pip can.
                say(f"uv could not install the pinned set ({exc}); installing it with pip")
                installer = "pip"
                shutil.rmtree(scratch / "site", ignore_errors=True)
                _install(pins, platform, scratch / "site", installer)
            compiled_at = time.monotonic()
            compiled = _compile(scratch / "site", platform)
            sizes = _sizes(scratch / "site")
            check_size(sizes, platform, name)
            manifest = {
                "name": name, "label": spec.label, "requirements": list(spec.requirements), "image": spec.image,
                "python": platform.python_version, "platform": _platform_identity(platform),
                "distributions": {n: v for n, v in resolved.items() if n not in provided},
                "provided": sorted(provided), "modules": _top_levels(scratch / "site"),
                "size_bytes": sum(sizes.values()), "installer": installer, "bytecode": compiled,
                "build_seconds": round(time.monotonic() - started, 2), "built_at": time.time(),
                "seconds": {"resolve": round(installed_at - started, 2),
                            "install": round(compiled_at - installed_at, 2),
                            "compile": round(time.monotonic() - compiled_at, 2)},
            }
            (scratch / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
            shutil.rmtree(path, ignore_errors=True)
            os.replace(scratch, path)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    _ensure(spec_file.parent)
    spec_file.write_text(json.dumps({"name": name, "label": spec.label}))
    return attrs.evolve(load(name), label=spec.label)


def _image_runtime(spec: RuntimeSpec, platform: Platform, spec_file: Path) -> Runtime:
    """A user's container image: nothing to build, nothing known of its contents."""
    name = "img-" + _digest({"image": spec.image, "platform": _platform_identity(platform)})[:12]
    path = _ensure(runtimes_dir() / name)
    manifest = {"name": name, "label": spec.label, "image": spec.image, "requirements": [],
                "python": platform.python_version, "platform": _platform_identity(platform),
                "distributions": {}, "provided": [], "modules": {}, "size_bytes": 0, "built_at": time.time()}
    (path / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    _ensure(spec_file.parent)
    spec_file.write_text(json.dumps({"name": name, "label": spec.label}))
    return attrs.evolve(load(name), label=spec.label)


def _ensure(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def remove(name: str) -> None:
    runtime = load(name)
    shutil.rmtree(runtime.path)
    for spec_file in (runtimes_dir() / "specs").glob("*.json"):
        try:
            if json.loads(spec_file.read_text()).get("name") == name:
                spec_file.unlink()
        except (OSError, json.JSONDecodeError):
            continue


# --- the check before invoking ----------------------------------------------------------------


@functools.cache
def _client_providers() -> Mapping[str, list[str]]:
    return metadata.packages_distributions()


def _release(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])


def check_modules(runtime: Runtime, modules: Iterable[str], own_distributions: Iterable[str] = ()) -> None:
    """Refuse a function whose by-reference modules the runtime cannot import, or imports from
    another release (major.minor) of the distribution than the client's, naming the line to add."""
    if runtime.image:
        return  # a user's image: nothing known of its contents
    shipped = runtime.manifest["modules"]
    provided = set(runtime.manifest.get("provided", ()))
    own = {canonical(d) for d in own_distributions}
    problems = []
    for top in sorted({m.partition(".")[0] for m in modules}):
        if top in (CORE_PACKAGE, "__main__") or top in sys.stdlib_module_names or top in sys.builtin_module_names:
            continue
        client_dists = [canonical(d) for d in _client_providers().get(top, ())]
        if any(d in provided or d in own for d in client_dists):
            continue  # the platform's, or the plugin's own code, which travels in every artifact
        dist = shipped.get(top)
        if dist is None:
            if not client_dists:
                continue  # not from a distribution: the user's own code, which travels by value
            mine = client_dists[0]
            version = _installed_version(mine)
            problems.append(f"module {top!r} (distribution {mine} {version} here) is not in the runtime: "
                            f"add '{mine}=={version}' to its requirements")
            continue
        mine = _installed_version(dist)
        theirs = runtime.manifest["distributions"].get(dist)
        if mine and theirs and _release(mine) != _release(theirs):
            problems.append(f"module {top!r}: the runtime has {dist} {theirs}, this client {mine}; "
                            f"pin '{dist}=={mine}' in its requirements (or install {dist}=={theirs} here)")
    if problems:
        raise RuntimeMismatchError(
            f"the function cannot run in runtime {runtime.name} ({runtime.label!r}):\n  " + "\n  ".join(problems)
            + "\nthen `pywren runtime build` (and `pywren deploy`) again"
        )


# --- what plugins and local make of a runtime -------------------------------------------------


def _package_files(package: str) -> Iterator[tuple[str, Path]]:
    root = Path(__import__(package).__file__).parent
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
            yield f"{package}/{path.relative_to(root).as_posix()}", path


def dist_info(distribution: str, groups: Iterable[str] = ("pywren", "pywren.wrappers")) -> dict[str, bytes]:
    """A minimal ``.dist-info`` for the client's copy of ``distribution``: its version and its pywren
    entry points, enough for the worker to find the plugin as the client does, with no pip run."""
    dist = metadata.distribution(distribution)
    folder = f"{distribution.replace('-', '_')}-{dist.version}.dist-info"
    files = {f"{folder}/METADATA": f"Metadata-Version: 2.1\nName: {distribution}\nVersion: {dist.version}\n".encode()}
    by_group: dict[str, list[str]] = {}
    for ep in dist.entry_points:
        if ep.group in groups:
            by_group.setdefault(ep.group, []).append(f"{ep.name} = {ep.value}")
    if by_group:
        text = "".join(f"[{g}]\n" + "\n".join(lines) + "\n\n" for g, lines in sorted(by_group.items()))
        files[f"{folder}/entry_points.txt"] = text.encode()
    return files


def artifact_files(runtime: Runtime | None, packages: Mapping[str, str]) -> dict[str, Path | bytes]:
    """Every file of a function artifact, by its path inside the artifact: the runtime's tree, then
    the client's own copies of ``packages`` (distribution -> import package, e.g.
    ``{"pywren-core": "pywren_core", "pywren-aws": "pywren_aws"}``) with minimal metadata.
    Plugins lay these out as their platform wants (a zip, ``.python_packages``, an image)."""
    files: dict[str, Path | bytes] = {}
    if runtime is not None:  # with its bytecode, compiled for the platform's Python at build time
        for path in sorted(runtime.site.rglob("*")):
            if path.is_file():
                files[path.relative_to(runtime.site).as_posix()] = path
    for distribution, package in packages.items():
        files.update(_package_files(package))
        files.update(dist_info(distribution))
    return files


def dockerfile(runtime: Runtime, platform: Platform, handler: str) -> str:
    """A Dockerfile that puts the runtime on the platform's base image (for ``runtime.image``)."""
    if not platform.image_base:
        raise ConfigError("this backend's platform takes no container images")
    pins = " \\\n      ".join(f"'{d}=={v}'" for d, v in sorted(runtime.distributions.items()))
    code = platform.image_code_dir
    server = "".join(f" '{p}'" for p in platform.image_packages)  # on the image's own path: its commands too
    return (
        f"# Runtime {runtime.name} ({runtime.label}), written by `pywren runtime dockerfile`.\n"
        f"# The pins are the runtime's manifest; code/ holds the client's pywren-core and plugin\n"
        f"# (`pywren runtime dockerfile` writes it beside this file).\n"
        f"FROM {platform.image_base}\n"
        + (f"RUN pip install --no-cache-dir{server}\n" if server else "")
        + f"RUN pip install --no-cache-dir --target {code} \\\n      {pins}\n"
        f"COPY code/ {code}/\n"
        f"ENV PYTHONPATH={code}\n"
        f"CMD {json.dumps(list(platform.image_command or [handler]))}\n"
    )


def local_environment(runtime: Runtime) -> Path:
    """A virtual environment over the runtime's tree (made once), whose interpreter ``local`` starts
    its workers with: they import exactly what the cloud's workers import, plus this client's
    pywren-core (linked, so the workers always run the client's code)."""
    venv = runtime.path / "venv"
    python = venv / "bin" / "python"
    core = runtime.path / "core"
    core.mkdir(exist_ok=True)
    here = Path(__import__(CORE_PACKAGE).__file__).parent
    link = core / CORE_PACKAGE
    if not link.is_symlink() or link.resolve() != here.resolve():
        scratch_link = core / f".{CORE_PACKAGE}.{os.getpid()}"
        scratch_link.unlink(missing_ok=True)
        scratch_link.symlink_to(here, target_is_directory=True)
        os.replace(scratch_link, link)
    if not python.exists():
        scratch = runtime.path / f"venv.{os.getpid()}"
        shutil.rmtree(scratch, ignore_errors=True)
        _run([sys.executable, "-m", "venv", "--without-pip", str(scratch)],
             f"making the virtual environment of runtime {runtime.name}")
        site = next(scratch.glob("lib/python*/site-packages"))
        (site / "pywren-runtime.pth").write_text(f"{runtime.site}\n{core}\n")
        try:
            os.replace(scratch, venv)
        except OSError:  # another process made it meanwhile
            shutil.rmtree(scratch, ignore_errors=True)
    return python
