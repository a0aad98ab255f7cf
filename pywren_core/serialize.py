"""Pickling functions and data for the trip to a worker.

Installed packages travel by reference (the worker imports its own copy); the user's own modules,
which a worker cannot import, travel by value inside the pickle. A module counts as the user's when
it is neither in the standard library nor installed (see :func:`is_user_module`).
"""

from __future__ import annotations

import collections
import functools
import io
import os
import pickle
import site
import sys
import sysconfig
import threading
import types
from typing import Any

import cloudpickle

_by_value_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _install_locations() -> tuple[tuple[str, ...], frozenset[str]]:
    """Where installed code lives: trees (stdlib, site-packages) and the directories that .pth
    files add to sys.path (editable installs), in which only top-level modules count."""
    paths = sysconfig.get_paths()
    trees = {os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    site_dirs = [*site.getsitepackages(), site.getusersitepackages()]
    trees.update(os.path.realpath(d) for d in site_dirs)
    pth_dirs = set()
    for site_dir in site_dirs:
        try:
            names = os.listdir(site_dir)
        except OSError:
            continue
        for name in (n for n in names if n.endswith(".pth")):
            try:
                lines = open(os.path.join(site_dir, name), encoding="utf-8").read().splitlines()
            except OSError:
                continue
            pth_dirs.update(
                os.path.realpath(line.strip())
                for line in lines
                if line.strip() and not line.startswith(("#", "import"))
            )
    return tuple(sorted(trees)), frozenset(pth_dirs)


@functools.lru_cache(maxsize=64)
def _distributed_beside(directory: str) -> frozenset[str]:
    """Top-level names that the ``.dist-info`` folders in ``directory`` say they installed there: a
    deploy package puts its dependencies beside the handler, not in site-packages. Reads one
    folder's listing, and small files only for the distributions found in it."""
    names: set[str] = set()
    try:
        infos = [e for e in os.listdir(directory) if e.endswith(".dist-info")]
    except OSError:
        return frozenset()
    for info in infos:
        base = os.path.join(directory, info)
        try:
            with open(os.path.join(base, "top_level.txt"), encoding="utf-8") as f:
                names.update(line.strip() for line in f if line.strip())
            continue
        except OSError:
            pass
        try:  # no top_level.txt (newer build backends): the first path part of each file recorded
            with open(os.path.join(base, "RECORD"), encoding="utf-8") as f:
                names.update(line.split("/", 1)[0].split(",", 1)[0].removesuffix(".py") for line in f)
        except OSError:
            continue
    return frozenset(names)


def is_user_module(name: str) -> bool:
    """True for a module the worker cannot be expected to import: the user's own code.

    Installed code is the standard library, pywren_core itself, site-packages, top-level modules
    in directories that .pth files put on sys.path (editable installs), and packages that a
    ``.dist-info`` beside them says a distribution installed; anything else is the user's. A worker
    so sends pywren_core's classes (its errors) by reference, and the client catches them as its own.
    """
    top_name = name.partition(".")[0]
    if name == "__main__" or top_name in sys.stdlib_module_names or top_name in sys.builtin_module_names:
        return False
    if top_name == "pywren_core":
        return False
    top = sys.modules.get(top_name)
    filename = getattr(top, "__file__", None)
    if top is None or not filename:
        return False
    location = os.path.realpath(filename)
    parent = os.path.dirname(os.path.dirname(location) if location.endswith("__init__.py") else location)
    trees, pth_dirs = _install_locations()
    if parent in pth_dirs or any(location.startswith(tree + os.sep) for tree in trees):
        return False
    return top_name not in _distributed_beside(parent)


def _code_keeping_filename(code: types.CodeType) -> Any:
    """cloudpickle's reduction of a code object, with the real file name instead of
    ``<dynamic-code>``, so a remote traceback names the user's file and line."""
    constructor, args = cloudpickle.cloudpickle._code_reduce(code)
    return constructor, tuple(code.co_filename if arg == "<dynamic-code>" else arg for arg in args)


class _ModuleRecorder(cloudpickle.Pickler):
    """Notes every module a pickle refers to by name, so user modules can be re-pickled by value."""

    dispatch_table = collections.ChainMap({types.CodeType: _code_keeping_filename}, cloudpickle.Pickler.dispatch_table)

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


_PLAIN_SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None)})
_PLAIN_CONTAINERS = frozenset({tuple, list, set, frozenset})


def _plain(obj: Any, budget: int = 256) -> bool:
    """Whether ``obj`` is built-in data only (numbers, strings, bytes and containers of them, up to
    ``budget`` items): what the standard pickler writes exactly as cloudpickle would. A loop over a
    stack, not recursion: it runs for every call's arguments."""
    stack = [obj]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _PLAIN_SCALARS:
            continue
        if kind not in _PLAIN_CONTAINERS and kind is not dict:
            return False
        budget -= len(item)
        if budget < 0:
            return False
        stack.extend(item)
        if kind is dict:
            stack.extend(item.values())
    return True


def dumps(obj: Any, by_reference: set[str] | None = None) -> bytes:
    """Pickle ``obj`` so that a worker with the same installed packages can load it.

    ``by_reference``, when given, receives the names of the modules the pickle refers to by name:
    the ones the worker must be able to import (checked against a runtime before invoking).
    """
    if _plain(obj):  # most call arguments: the C pickler, without cloudpickle's per-object hook
        return pickle.dumps(obj, protocol=cloudpickle.DEFAULT_PROTOCOL)
    data, modules = _dump(obj)
    user = {m for m in modules if is_user_module(m)}
    if by_reference is not None:
        by_reference.update(modules - user)
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
                if by_reference is not None:
                    by_reference.update(m for m in modules if not is_user_module(m))
        finally:
            for name in added:
                cloudpickle.unregister_pickle_by_value(sys.modules[name])
    return data


def loads(data: bytes) -> Any:
    return cloudpickle.loads(data)
