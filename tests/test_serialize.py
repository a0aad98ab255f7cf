"""Which modules travel by value (the user's own) and which by reference (installed ones)."""

from __future__ import annotations

import importlib
import sys

import pytest

from pywren_core import serialize


@pytest.fixture
def package_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    serialize._distributed_beside.cache_clear()
    yield tmp_path
    serialize._distributed_beside.cache_clear()
    for name in ("beside_pkg", "beside_mod", "plain_user_pkg"):
        sys.modules.pop(name, None)


def test_a_package_with_its_dist_info_beside_it_is_installed(package_dir) -> None:
    """A deploy package puts dependencies next to the handler with their .dist-info: installed."""
    (package_dir / "beside_pkg").mkdir()
    (package_dir / "beside_pkg" / "__init__.py").write_text("")
    (package_dir / "beside_pkg-1.0.dist-info").mkdir()
    (package_dir / "beside_pkg-1.0.dist-info" / "top_level.txt").write_text("beside_pkg\n")
    (package_dir / "beside_mod.py").write_text("")
    (package_dir / "other-2.0.dist-info").mkdir()  # no top_level.txt: its RECORD names the files
    (package_dir / "other-2.0.dist-info" / "RECORD").write_text("beside_mod.py,sha256=x,0\n")
    (package_dir / "plain_user_pkg").mkdir()
    (package_dir / "plain_user_pkg" / "__init__.py").write_text("")
    for name in ("beside_pkg", "beside_mod", "plain_user_pkg"):
        importlib.import_module(name)
    assert not serialize.is_user_module("beside_pkg") and not serialize.is_user_module("beside_mod")
    assert serialize.is_user_module("plain_user_pkg")


def test_pywren_core_is_never_the_users(monkeypatch) -> None:
    """Wherever it sits (a deploy package, a checkout), the core's classes travel by reference, so
    an error raised on a worker is caught on the client as the client's own class."""
    monkeypatch.setattr(serialize, "_install_locations", lambda: ((), frozenset()))
    assert not serialize.is_user_module("pywren_core.errors")
    from pywren_core.errors import NotFoundError

    assert serialize.loads(serialize.dumps(NotFoundError("x"))).__class__ is NotFoundError
