"""What differs between this client and the backend's workers: ``pywren doctor``.

A call that works locally and fails on the cloud usually meets a different Python, a package the
worker lacks, or another version of one (cloudpickle above all: a function pickled by one version
may not load in another). ``pywren doctor`` runs one call on the configured backend and compares.

The distributions compared are those that provide the modules the client has imported (for the
command: pywren and what it pickles with; ``--package`` and ``--function`` add the user's), and
for a function given, those its pickle refers to by reference: the ones it *needs*.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterable
from typing import Any

import attrs

#: What every worker needs at the client's version: the pickle format and the protocol.
CORE_DISTRIBUTIONS = ("pywren-core", "cloudpickle")


@functools.cache
def _providers() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distributions_of(modules: Iterable[str]) -> set[str]:
    """Installed distributions that provide these (top-level) modules."""
    found = set()
    for module in modules:
        found.update(_providers().get(module.partition(".")[0], ()))
    return found


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _memory_bytes() -> int | None:
    """The memory this process may use: the cgroup's limit where there is one (a container, a
    function instance), else the machine's."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            return int(text)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def facts(distributions: Iterable[str]) -> dict[str, Any]:
    """This interpreter's environment, and the versions it has of ``distributions`` (None: absent).
    Runs on the client and, as a call, on a worker."""
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": sys.platform,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "temp_free_bytes": shutil.disk_usage(tempfile.gettempdir()).free,
        "distributions": {name: _version(name) for name in sorted(set(distributions))},
    }


@attrs.frozen
class Row:
    what: str
    client: str
    worker: str
    #: "same", "differs" (worth knowing) or "breaks" (what the function needs differs).
    verdict: str


def compare(client: dict[str, Any], worker: dict[str, Any], needed: Iterable[str]) -> list[Row]:
    """One row per fact; a different Python minor version or a needed distribution that is
    missing or at another version on the worker ``breaks``."""
    rows = []
    minor = [".".join(str(f["python"]).split(".")[:2]) for f in (client, worker)]
    rows.append(_row("python", client["python"], worker["python"], "breaks" if minor[0] != minor[1] else "differs"))
    for key in ("implementation", "platform", "machine", "cpus"):
        rows.append(_row(key, client[key], worker[key], "differs"))
    for key in ("memory_bytes", "temp_free_bytes"):
        rows.append(_row(key.replace("_bytes", ""), _size(client[key]), _size(worker[key]), "differs"))
    needed = set(needed)
    for name, version in sorted(client["distributions"].items()):
        theirs = worker["distributions"].get(name)
        rows.append(_row(name, version or "-", theirs or "missing", "breaks" if name in needed else "differs"))
    return rows


def _row(what: str, client: Any, worker: Any, if_different: str) -> Row:
    return Row(what, str(client), str(worker), "same" if client == worker else if_different)


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.1f} GiB"


def check(executor: Any, function: Any = None, packages: Iterable[str] = (), timeout: float = 300) -> list[Row]:
    """Run one call on ``executor``'s backend and compare its worker with this client."""
    from pywren_core import serialize

    needed = set(CORE_DISTRIBUTIONS) | set(packages)
    if function is not None:
        _, modules = serialize._dump(function)
        needed |= distributions_of(m for m in modules if not serialize.is_user_module(m))
    imported = distributions_of(name for name in list(sys.modules) if "." not in name)
    names = sorted(needed | imported)
    mine = facts(names)
    theirs = executor.call_async(facts, names).result(timeout=timeout)
    return compare(mine, theirs, needed)


def import_note(exc: BaseException, backend: str, runtime: str | None = None) -> str | None:
    """For an ImportError raised on a worker: which distribution the client has the module from,
    and what to do; None when the client lacks the module too (then it is the code's own error)."""
    name = getattr(exc, "name", None)
    if not isinstance(exc, ImportError) or not name:
        return None
    providers = sorted(distributions_of([name]))
    if not providers:
        return None
    pins = ", ".join(f"{d}=={_version(d)}" for d in providers)
    where = f"runtime {runtime}" if runtime else f"the {backend} backend's default runtime"
    return (
        f"the {backend} workers ({where}) cannot import {name!r}, which this client has from {pins}: add "
        f"'{pins}' to the runtime's requirements in the config (runtime: {{requirements: [...]}}); "
        f"`pywren deploy` then builds and deploys it. `pywren doctor` compares the client with the workers"
    )
