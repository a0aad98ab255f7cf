"""Finding, loading and routing backend and wrapper plugins.

Backends come from the entry-point group ``pywren`` (the name is the backend key) plus the
built-in ``local``; wrapper plugins, applied to every backend, from ``pywren.wrappers``. Nothing
is imported until a backend is asked for, and a plugin that fails to import is reported by name
without hiding the others.

``PYWREN_LOAD_PLUGINS=a,b`` loads only those entry points (empty: none); ``PYWREN_DISABLE_PLUGINS``
names entry points to skip (``all`` or ``1``: every one). Built-in plugins always load.
"""

from __future__ import annotations

import functools
import importlib
import importlib.machinery
import os
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import pluggy

from pywren_core import __version__, hookspecs
from pywren_core.backend import API_VERSION, BackendInfo, Session
from pywren_core.errors import BackendNotFoundError, PluginError

BACKEND_GROUP = "pywren"
WRAPPER_GROUP = "pywren.wrappers"
BUILTIN_BACKENDS = {"local": "pywren_core.backends.local"}
BUILTIN_WRAPPERS: dict[str, str] = {}
#: Backends this project publishes, so a missing one comes with the line that installs it.
KNOWN_DISTRIBUTIONS = {"aws": "pywren-aws", "gcp": "pywren-gcp", "azure": "pywren-azure"}
REQUIRED_HOOKS = (
    "pywren_backend_info",
    "pywren_connect",
    "pywren_storage_put",
    "pywren_storage_get",
    "pywren_storage_list",
    "pywren_storage_delete",
    "pywren_invoke",
)
#: Required of a backend that declares ``BackendInfo.data_schemes``.
DATA_HOOKS = ("pywren_data_list", "pywren_data_get", "pywren_data_put", "pywren_data_delete")


@attrs.frozen
class PluginEntry:
    """An installed plugin, before or after loading: where it comes from."""

    name: str
    kind: str  # "backend" or "wrapper"
    target: str  # the module (or module:attr) it loads
    distribution: str
    version: str

    @property
    def builtin(self) -> bool:
        return self.distribution == "pywren-core" and self.target.startswith("pywren_core.")

    def load(self) -> Any:
        module_name, _, attr = self.target.partition(":")
        try:
            obj = importlib.import_module(module_name)
            for part in filter(None, attr.split(".")):
                obj = getattr(obj, part)
        except Exception as exc:
            raise PluginError(
                f"plugin {self.name!r} ({self.distribution} {self.version}, {self.target}) "
                f"failed to load: {type(exc).__name__}: {exc}"
            ) from exc
        return obj


def _core_version() -> str:
    return __version__


def _allowed(name: str) -> bool:
    only = os.environ.get("PYWREN_LOAD_PLUGINS")
    if only is not None:
        return name in {n.strip() for n in only.split(",") if n.strip()}
    disabled = {n.strip() for n in os.environ.get("PYWREN_DISABLE_PLUGINS", "").split(",")}
    return not (disabled & {"1", "all", "*", name})


def _entries(group: str, builtins: Mapping[str, str], kind: str) -> dict[str, PluginEntry]:
    core = _core_version()
    found = {name: PluginEntry(name, kind, target, "pywren-core", core) for name, target in builtins.items()}
    for ep_group, name, target, dist, version in _installed():
        if ep_group != group or name in builtins or not _allowed(name):
            continue
        found.setdefault(name, PluginEntry(name, kind, target, dist, version))
    return found


#: (group, name, target, distribution, version) of an installed entry point.
_EntryPoint = tuple[str, str, str, str, str]


@functools.cache
def _installed() -> tuple[_EntryPoint, ...]:
    """Every entry point of our groups, found once per process (:func:`reset` forgets them).

    Found as ``importlib.metadata.entry_points`` finds them (the first distribution of a name on
    ``sys.path`` wins), but by reading the few files involved: importing ``importlib.metadata``
    alone costs a fresh process about 20 ms, a quarter of its first ``executor()``. Where
    distributions may come from elsewhere (a zip on ``sys.path``, an import hook that finds
    distributions), ``importlib.metadata`` itself answers.
    """
    groups = (BACKEND_GROUP, WRAPPER_GROUP)
    if any(getattr(f, "find_distributions", None) and f is not importlib.machinery.PathFinder for f in sys.meta_path):
        return _installed_by_importlib(groups)
    found: list[_EntryPoint] = []
    seen: set[str] = set()
    for root in sys.path:
        try:
            children = os.listdir(root or ".")
        except NotADirectoryError:  # a zip archive
            return _installed_by_importlib(groups)
        except OSError:
            continue
        for directory, name in _distribution_dirs(root, children):
            if name in seen:
                continue
            seen.add(name)
            points = _parse_entry_points(_read_text(os.path.join(directory, "entry_points.txt")), groups)
            if points:
                dist, version = _name_and_version(directory)
                found.extend((group, ep_name, target, dist, version) for group, ep_name, target in points)
    return tuple(found)


def _distribution_dirs(root: str, children: list[str]) -> Iterable[tuple[str, str]]:
    """The metadata folders among ``children`` of ``root``, with their normalized names, in
    importlib.metadata's order: ``.dist-info`` and ``.egg-info`` ones, then an egg's own."""
    eggs = []
    base = os.path.basename(root).lower()
    for child in children:
        low = child.lower()
        if low.endswith((".dist-info", ".egg-info")):
            yield os.path.join(root, child), _normalize(low.rpartition(".")[0].partition("-")[0])
        elif low == "egg-info" and base.endswith(".egg"):
            eggs.append((os.path.join(root, child), _normalize(base.rpartition(".")[0].partition("-")[0])))
    yield from eggs


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _parse_entry_points(text: str | None, groups: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """``(group, name, target)`` of each entry point in ``groups`` in an ``entry_points.txt``."""
    found: list[tuple[str, str, str]] = []
    section = None
    for line in (text or "").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section in groups and "=" in line:
            name, _, target = line.partition("=")
            found.append((section, name.strip(), target.strip()))
    return found


def _name_and_version(directory: str) -> tuple[str, str]:
    """The distribution's name and version, from its metadata's headers."""
    text = _read_text(os.path.join(directory, "METADATA"))
    if text is None:
        text = _read_text(os.path.join(directory, "PKG-INFO"))
    headers: dict[str, str] = {}
    for line in (text or "").splitlines():
        if not line.strip():
            break
        key, colon, value = line.partition(":")
        if colon and not line[0].isspace():
            headers.setdefault(key.strip().lower(), value.strip())
    return headers.get("name", "unknown"), headers.get("version", "unknown")


def _installed_by_importlib(groups: tuple[str, ...]) -> tuple[_EntryPoint, ...]:
    from importlib import metadata

    return tuple(
        (group, ep.name, ep.value, ep.dist.name if ep.dist else "unknown", ep.dist.version if ep.dist else "unknown")
        for group in groups
        for ep in metadata.entry_points(group=group)
    )


def backend_entries() -> dict[str, PluginEntry]:
    """Every installed backend by key, without importing any of them."""
    return _entries(BACKEND_GROUP, BUILTIN_BACKENDS, "backend")


def wrapper_entries() -> dict[str, PluginEntry]:
    return _entries(WRAPPER_GROUP, BUILTIN_WRAPPERS, "wrapper")


def plugin_names() -> set[str]:
    """The name of every installed plugin, backend or wrapper, enabled or not (a plugin's own
    variables are ``PYWREN_<NAME>_...``), without importing any."""
    return set(BUILTIN_BACKENDS) | set(BUILTIN_WRAPPERS) | {name for _, name, *_ in _installed()}


@functools.cache
def _wrappers() -> tuple[tuple[str, Any], ...]:
    # A broken wrapper must not silently drop behaviour it promised (encryption, say): fail loudly.
    return tuple((entry.name, entry.load()) for entry in wrapper_entries().values())


class Backend:
    """A loaded backend plugin: its info, and sessions opened through a plugin manager of its own."""

    def __init__(self, entry: PluginEntry, plugin: Any, wrappers: Iterable[tuple[str, Any]] = ()):
        self.entry = entry
        self.name = entry.name
        self.plugin = plugin
        self.wrappers = tuple(wrappers)
        pm = self._manager()
        missing = [h for h in REQUIRED_HOOKS if not _implemented(pm, h, plugin)]
        if missing:
            raise PluginError(f"backend {self.name!r} ({entry.distribution}) does not implement {', '.join(missing)}")
        info = pm.hook.pywren_backend_info()
        if not isinstance(info, BackendInfo):
            raise PluginError(f"backend {self.name!r}: pywren_backend_info must return a BackendInfo, got {info!r}")
        if info.api_version != API_VERSION:
            raise PluginError(
                f"backend {self.name!r} ({entry.distribution} {entry.version}) was built for hook API "
                f"{info.api_version}, but pywren-core {_core_version()} speaks API {API_VERSION}: "
                f"install matching versions (pip install -U pywren-core {entry.distribution})"
            )
        missing = [h for h in DATA_HOOKS if info.data_schemes and not _implemented(pm, h, plugin)]
        if missing:
            raise PluginError(
                f"backend {self.name!r} ({entry.distribution}) declares data_schemes "
                f"{list(info.data_schemes)} but does not implement {', '.join(missing)}"
            )
        self.info = info

    def _manager(self, extra: Iterable[Any] = ()) -> pluggy.PluginManager:
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        pm.register(self.plugin, name=f"backend:{self.name}")
        for name, wrapper in self.wrappers:
            pm.register(wrapper, name=f"wrapper:{name}")
        for wrapper in extra:
            pm.register(wrapper)
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"backend {self.name!r}: {exc}") from exc
        return pm

    def open(
        self, config: Mapping[str, Any], role: str = "client", wrappers: Iterable[Any] = (), runtime: Any = None
    ) -> Session:
        """Connect with this backend's config section; ``wrappers`` apply to this session alone.
        ``runtime`` is the built runtime the client's calls must run in (None: the plugin's default)."""
        return Session(self.name, self.info, self._manager(wrappers).hook, config, role, runtime)


def _implemented(pm: pluggy.PluginManager, hook_name: str, plugin: Any) -> bool:
    impls = getattr(pm.hook, hook_name).get_hookimpls()
    return any(i.plugin is plugin and not (i.wrapper or i.hookwrapper) for i in impls)


@functools.cache
def load_backend(name: str) -> Backend:
    """The backend registered under ``name``; a clear error if it is missing or broken."""
    entries = backend_entries()
    entry = entries.get(name)
    if entry is None:
        raise BackendNotFoundError(missing_backend_message(name, entries))
    return Backend(entry, entry.load(), _wrappers())


def missing_backend_message(name: str, entries: Mapping[str, PluginEntry]) -> str:
    message = f"backend {name!r} is not installed; installed backends: {', '.join(sorted(entries))}."
    if name in KNOWN_DISTRIBUTIONS:
        message += (
            f" To add it: pip install {KNOWN_DISTRIBUTIONS[name]} (from the package index), or"
            f" pip install ./plugins/pywren_{name} (from a clone of the pywren repository)."
        )
    if not _allowed(name):
        message += " (it may be installed but disabled by PYWREN_LOAD_PLUGINS / PYWREN_DISABLE_PLUGINS)"
    return message


def reset(*, installed: bool = True) -> None:
    """Forget loaded plugins, so a changed environment or install takes effect (tests use this);
    ``installed`` False keeps the entry points found, for a process whose install is the same."""
    load_backend.cache_clear()
    _wrappers.cache_clear()
    if installed:
        _installed.cache_clear()
