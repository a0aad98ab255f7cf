"""Configuration: a YAML file, then the environment, then a dict in code, later ones winning.

The file is the first of ``$PYWREN_CONFIG_FILE``, ``./.pywren_config``, ``~/.pywren_config``. With
no file at all, ``backend: local`` runs. Top-level settings may be set as ``PYWREN_<NAME>``
(``PYWREN_BACKEND=gcp``) and backend settings as ``PYWREN_<BACKEND>_<KEY>`` (``PYWREN_GCP_BUCKET``);
any other ``PYWREN_*`` variable is an error unless :data:`OTHER_VARIABLES` lists it or an installed
plugin owns it (``PYWREN_<PLUGIN>_...``). Every error names the key and where its value came from.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from pywren_core.backend import REQUIRED, BackendInfo
from pywren_core.errors import ConfigError

FILE_ENV = "PYWREN_CONFIG_FILE"
#: ``PYWREN_*`` variables that are not settings, and what reads each. Any other ``PYWREN_*``
#: variable must be a setting (``PYWREN_<NAME>``, ``PYWREN_<BACKEND>_<KEY>``) or belong to an
#: installed plugin (``PYWREN_<PLUGIN>_...``, e.g. a wrapper's own); else it is an error, like an
#: unknown key in the file, so a misspelt one is never silently ignored.
OTHER_VARIABLES = {
    FILE_ENV: "the config file to read",
    "PYWREN_LOAD_PLUGINS": "the only plugins to load",
    "PYWREN_DISABLE_PLUGINS": "plugins not to load",
    "PYWREN_PAYLOAD_KEY": "a deployed function's payload key, read by its workers",
    "PYWREN_RUNTIMES_DIR": "where built runtimes are kept (default: ~/.cache/pywren/runtimes)",
    "PYWREN_AZURITE_DIR": "where pywren-azure's tests keep Azurite",
}
MASK = "********"


def _setting(default: Any, types: type | tuple[type, ...], help: str, optional: bool = False) -> Any:
    check = attrs.validators.instance_of(types)
    return attrs.field(
        default=default,
        validator=attrs.validators.optional(check) if optional else check,
        metadata={"type": types, "help": help},
    )


@attrs.frozen(kw_only=True)
class Config:
    """The effective configuration of one executor."""

    backend: str = _setting("local", str, "which installed backend runs the calls")
    timeout: float | None = _setting(
        None, (int, float), "seconds a call may run (default: the backend's maximum runtime)", optional=True
    )
    retries: int = _setting(2, int, "re-invocations of a call whose worker died, timed out or was lost")
    chunksize: int = _setting(1, int, "calls per invocation in map()")
    progress: bool = _setting(
        True, bool, "progress bars while a large map submits and while waiting, on a terminal or in a notebook"
    )
    cleanup: bool = _setting(True, bool, "delete a job's objects once all its results are collected")
    invoke_threads: int = _setting(64, int, "invocations in flight at once (capped by the backend's limit)")
    lost_grace: float = _setting(
        30.0, (int, float), "seconds past the timeout, with no progress at all, before a silent call counts as lost"
    )
    speculative: bool = _setting(False, bool, "back up straggling calls once half of a job is done")
    speculative_factor: float = _setting(
        3.0, (int, float), "a call is a straggler after this many times the median call's duration"
    )
    faults: Mapping[str, Any] = _setting({}, dict, "fault injection (off unless set; see pywren_core.faults)")
    runtime: Any = _setting(
        None, (str, dict), "the packages calls run with: {requirements: [...]} or a name from runtimes", optional=True
    )
    runtimes: Mapping[str, Any] = _setting({}, dict, "named runtimes, chosen with runtime: NAME or executor(runtime=)")
    fanout: str | int = _setting(
        "auto", (str, int), "invoke large maps from inside the platform: auto (from the backend's threshold), off, "
        "or the smallest number of invocations to fan out"
    )
    fanout_batch: int = _setting(500, int, "invocations each fan-out invoker makes")
    #: Raw sections for backends, by name (validated per backend by :meth:`backend_section`).
    sections: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    #: Where each key's value came from, for error messages.
    sources: Mapping[str, str] = attrs.field(factory=dict)

    def backend_section(self, info: BackendInfo) -> dict[str, Any]:
        """This backend's section, checked against its schema, with defaults and env filled in."""
        name = info.name
        raw = dict(self.sections.get(name, {}))
        sources = dict(self.sources)
        prefix = f"PYWREN_{name.upper()}_"
        for var, text in os.environ.items():
            if var.startswith(prefix):
                field = info.field(var[len(prefix) :].lower())
                if field is None:
                    key, known = var[len(prefix) :].lower(), [f.name for f in info.config]
                    raise ConfigError(
                        f"environment {var}: {name} has no setting {key!r}{_did_you_mean(key, known)}"
                        f"; its settings: {', '.join(known) or 'none'}"
                    )
                key = f"{name}.{field.name}"
                if key not in sources or sources[key].startswith("file"):
                    raw[field.name] = _parse_env(text, field.type, var)
                    sources[key] = f"environment {var}"
        section: dict[str, Any] = {}
        for key, value in raw.items():
            field = info.field(key)
            where = sources.get(f"{name}.{key}", "config")
            if field is None:
                known = [f.name for f in info.config]
                raise ConfigError(
                    f"{where}: {name!r} has no setting {key!r}{_did_you_mean(key, known)}; "
                    f"its settings: {', '.join(known) or 'none'}"
                )
            if not isinstance(value, field.type) or (isinstance(value, bool) and field.type in (int, float)):
                raise ConfigError(
                    f"{where}: {name}.{key} must be {_type_name(field.type)}, got {type(value).__name__} {value!r}"
                )
            section[key] = value
        for field in info.config:
            if field.name not in section:
                if field.default is REQUIRED:
                    raise ConfigError(
                        f"backend {name!r} needs {name}.{field.name} ({field.help or 'no default'}): set it in "
                        f"the config file under '{name}:' or as {prefix}{field.name.upper()}"
                    )
                section[field.name] = field.default
        return section

    def masked(self, info: BackendInfo | None) -> dict[str, Any]:
        """The effective config as a plain dict, secret values masked, for showing to people."""
        shown: dict[str, Any] = {
            f.name: getattr(self, f.name) for f in attrs.fields(Config) if f.name not in ("sections", "sources")
        }
        for name, section in self.sections.items():
            shown[name] = dict(section)
        if info is not None:
            section = self.backend_section(info)
            shown[info.name] = {k: (MASK if (f := info.field(k)) and f.secret and v else v) for k, v in section.items()}
        for name, section in shown.items():  # sections of other backends: mask anything that looks secret
            if isinstance(section, dict) and (info is None or name != info.name):
                shown[name] = {k: (MASK if _looks_secret(k) else v) for k, v in section.items()}
        return shown


def _did_you_mean(key: str, known: list[str]) -> str:
    close = _close_matches(key, known)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _close_matches(word: str, candidates: list[str]) -> list[str]:
    import difflib  # for error messages only: a fresh process need not import it

    return difflib.get_close_matches(word, candidates, n=1)


def _check_environment(settings: Mapping[str, Any], section_names: set[str]) -> None:
    """Raise for a ``PYWREN_*`` variable that is no setting, no other known variable, and no plugin's."""
    known = sorted({f"PYWREN_{key.upper()}" for key in settings} | set(OTHER_VARIABLES))
    unknown = [
        var
        for var in os.environ
        if var.startswith("PYWREN_")
        and var not in known
        and not var.startswith(tuple(f"PYWREN_{name.upper()}_" for name in section_names))
    ]
    if not unknown:
        return
    from pywren_core.plugins import plugin_names  # every installed plugin's name, enabled or not

    owned = tuple(f"PYWREN_{name.upper()}_" for name in plugin_names())
    for var in sorted(unknown):
        if var.startswith(owned):
            continue
        rest = var[len("PYWREN_") :].partition("_")[2]  # PYWREN_LOACL_WORKERS: a misspelt backend
        candidates = known + [f"PYWREN_{name.upper()}_{rest}" for name in sorted(section_names) if rest]
        close = _close_matches(var, candidates)
        raise ConfigError(
            f"environment {var}: unknown setting{f' (did you mean {close[0]}?)' if close else ''}; "
            f"settings are PYWREN_<NAME> ({', '.join(sorted(settings))}) and PYWREN_<BACKEND>_<KEY> "
            f"(backends: {', '.join(sorted(section_names))}); fix its name or unset it"
        )


def _looks_secret(key: str) -> bool:
    return any(
        word in key.lower() for word in ("secret", "key", "token", "password", "connection_string", "credential")
    )


def _type_name(types: type | tuple[type, ...]) -> str:
    names = [t.__name__ for t in (types if isinstance(types, tuple) else (types,))]
    return " or ".join(names)


def _parse_env(text: str, types: type | tuple[type, ...], var: str) -> Any:
    candidates = types if isinstance(types, tuple) else (types,)
    if bool in candidates:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
    for kind in candidates:
        if kind is bool:
            continue
        try:
            return kind(text)
        except (TypeError, ValueError):
            continue
    raise ConfigError(f"environment {var}: {text!r} is not {_type_name(types)}")


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME`` or ``~/.cache``: where pywren keeps what outlives a process on this machine."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path("~/.cache").expanduser())


def config_file() -> Path | None:
    """The config file that applies, if any."""
    explicit = os.environ.get(FILE_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"environment {FILE_ENV}: no config file at {path}")
        return path
    for path in (Path(".pywren_config"), Path.home() / ".pywren_config"):
        if path.is_file():
            return path
    return None


def _read_file(path: Path) -> dict[str, Any]:
    import yaml  # only needed when there is a file

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"file {path}: cannot read it as YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"file {path}: the config must be a mapping of settings, got {type(data).__name__}")
    return data


def load(config: Mapping[str, Any] | None = None, **overrides: Any) -> Config:
    """Merge file, environment, ``config`` and ``overrides`` (in that order) into a checked Config."""
    from pywren_core.plugins import KNOWN_DISTRIBUTIONS, backend_entries

    settings = {f.name: f for f in attrs.fields(Config) if f.name not in ("sections", "sources")}
    section_names = set(backend_entries()) | set(KNOWN_DISTRIBUTIONS)
    values: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}

    def merge(layer: Mapping[str, Any], where: str) -> None:
        for key, value in layer.items():
            if key in settings:
                values[key] = value
                sources[key] = where
            elif key in section_names:
                if not isinstance(value, Mapping):
                    raise ConfigError(f"{where}: {key!r} must be a mapping of {key} settings, got {value!r}")
                sections.setdefault(key, {}).update(value)
                sources.update({f"{key}.{k}": where for k in value})
            else:
                raise ConfigError(
                    f"{where}: unknown setting {key!r}{_did_you_mean(key, [*settings, *section_names])}; "
                    f"settings: {', '.join(sorted(settings))}; "
                    f"backend sections: {', '.join(sorted(section_names))}"
                )

    path = config_file()
    if path is not None:
        merge(_read_file(path), f"file {path}")
    _check_environment(settings, section_names)
    for key, field in settings.items():
        var = f"PYWREN_{key.upper()}"
        if var in os.environ:
            values[key] = _parse_env(os.environ[var], field.metadata["type"], var)
            sources[key] = f"environment {var}"
    if config is not None:
        merge(config, "config dict")
    merge(overrides, "executor() argument")
    for key, value in values.items():
        if isinstance(value, bool) and settings[key].metadata["type"] in (int, (int, float)):
            raise ConfigError(
                f"{sources[key]}: {key} must be {_type_name(settings[key].metadata['type'])}, got {value!r}"
            )
    try:
        return Config(**values, sections=sections, sources=sources)
    except TypeError as exc:
        field = exc.args[1] if len(exc.args) > 1 else None
        name = getattr(field, "name", "?")
        expected = _type_name(settings[name].metadata["type"]) if name in settings else "?"
        raise ConfigError(
            f"{sources.get(name, 'config')}: {name} must be {expected}, got {values.get(name)!r}"
        ) from None
