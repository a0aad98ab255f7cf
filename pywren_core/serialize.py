"""Pickling functions and data for the trip to a worker.

Installed packages travel by reference (the worker imports its own copy); the user's own modules,
which a worker cannot import, travel by value inside the pickle. A module counts as the user's when
it is neither in the standard library nor part of an installed distribution.
"""

from __future__ import annotations

import functools
import io
import json
import os
import sys
import sysconfig
import threading
import types
import urllib.parse
from importlib import metadata
from typing import Any

import cloudpickle

_by_value_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _installed_roots() -> tuple[frozenset[str], tuple[str, ...]]:
    """Top-level names of installed distributions, and the directories installed code lives in."""
    names = frozenset(metadata.packages_distributions())
    paths = sysconfig.get_paths()
    dirs = {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    for dist in metadata.distributions():  # editable installs live in their project's directory
        try:
            info = json.loads(dist.read_text("direct_url.json") or "{}")
        except ValueError:
            continue
        if info.get("dir_info", {}).get("editable") and info.get("url", "").startswith("file://"):
            dirs.add(os.path.realpath(urllib.parse.unquote(info["url"][len("file://") :])))
    return names, tuple(sorted(dirs))


@functools.lru_cache(maxsize=4096)
def is_user_module(name: str) -> bool:
    """True for a module the worker cannot be expected to import: the user's own code."""
    top = name.partition(".")[0]
    if name == "__main__" or top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return False
    module = sys.modules.get(name)
    filename = getattr(module, "__file__", None)
    if module is None or not filename:
        return False
    real = os.path.realpath(filename)
    names, install_dirs = _installed_roots()
    if any(real.startswith(d + os.sep) for d in install_dirs):
        return False
    return top not in names


class _ModuleRecorder(cloudpickle.Pickler):
    """Notes every module a pickle refers to by name, so user modules can be re-pickled by value."""

    def __init__(self, file: io.BytesIO):
        super().__init__(file, protocol=cloudpickle.DEFAULT_PROTOCOL)
        self.modules: set[str] = set()

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.ModuleType):
            self.modules.add(obj.__name__)
        elif isinstance(obj, (type, types.FunctionType)):
            module = getattr(obj, "__module__", None)
            if isinstance(module, str):
                self.modules.add(module)
        return super().reducer_override(obj)


def _dump(obj: Any) -> tuple[bytes, set[str]]:
    buffer = io.BytesIO()
    pickler = _ModuleRecorder(buffer)
    pickler.dump(obj)
    return buffer.getvalue(), pickler.modules


def dumps(obj: Any) -> bytes:
    """Pickle ``obj`` so that a worker with the same installed packages can load it."""
    data, modules = _dump(obj)
    user = {m for m in modules if is_user_module(m)}
    if not user:
        return data
    with _by_value_lock:
        added = []
        try:
            # Registering a module can reveal further user modules it refers to: repeat until stable.
            while user:
                for name in user:
                    cloudpickle.register_pickle_by_value(sys.modules[name])
                    added.append(name)
                data, modules = _dump(obj)
                user = {m for m in modules if is_user_module(m)} - set(added)
        finally:
            for name in added:
                cloudpickle.unregister_pickle_by_value(sys.modules[name])
    return data


def loads(data: bytes) -> Any:
    return cloudpickle.loads(data)
