"""pywren: run ``map(f, items)`` at massive scale on serverless functions, on any cloud.

import pywren_core as pw
ex = pw.executor()                        # the configured backend; ``local`` by default
futures = ex.map(lambda x: x * x, range(1000))
print(ex.get_result(futures))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from pywren_core.backend import BackendInfo, ConfigField, Limits  # noqa: E402
from pywren_core.futures import (  # noqa: E402
    ALL_COMPLETED,
    ALWAYS,
    ANY_COMPLETED,
    FIRST_EXCEPTION,
    ResponseFuture,
    get_result,
    wait,
)
from pywren_core.hookspecs import hookimpl  # noqa: E402

if TYPE_CHECKING:
    from pywren_core.data import Storage
    from pywren_core.executors import Executor


def executor(config: Any = None, *, wrappers: Any = (), **overrides: Any) -> Executor:
    """An executor for the configured backend.

    ``config`` is a dict of settings (or a loaded :class:`~pywren_core.config.Config`); keyword
    ``overrides`` win over it, it wins over the environment, which wins over the config file.
    ``wrappers`` are plugin objects with ``@hookimpl(wrapper=True)`` hooks that apply to this
    executor's storage and invoke calls alone (installed wrapper plugins apply to every executor).
    """
    from pywren_core import config as config_module
    from pywren_core.executors import Executor

    if not isinstance(config, config_module.Config):
        config = config_module.load(config, **overrides)
    return Executor(config, wrappers)


def storage(config: Any = None, **overrides: Any) -> Storage:
    """Objects at URLs of the configured backend's schemes, from the client: ``put``, ``get``,
    ``list``, ``delete`` and ``open`` (the same API as ``current_call().storage`` in a call)."""
    from pywren_core import config as config_module
    from pywren_core.data import Storage
    from pywren_core.plugins import load_backend

    if not isinstance(config, config_module.Config):
        config = config_module.load(config, **overrides)
    backend = load_backend(config.backend)
    return Storage(backend.open(config.backend_section(backend.info), role="client"))


def __getattr__(name: str) -> Any:
    if name == "Executor":
        from pywren_core.executors import Executor

        return Executor
    raise AttributeError(name)


__all__ = [
    "ALL_COMPLETED",
    "ALWAYS",
    "ANY_COMPLETED",
    "FIRST_EXCEPTION",
    "BackendInfo",
    "ConfigField",
    "Executor",
    "Limits",
    "ResponseFuture",
    "__version__",
    "executor",
    "get_result",
    "hookimpl",
    "storage",
    "wait",
]
