"""A wrapper plugin: counts storage puts on any backend, without changing them."""

from __future__ import annotations

from collections import Counter
from typing import Any

from pywren_core import hookimpl

PUTS: Counter[str] = Counter()


@hookimpl(wrapper=True)
def pywren_storage_put(session: Any, key: str, data: bytes) -> Any:
    result = yield
    PUTS[key.split("/")[0]] += 1
    return result
