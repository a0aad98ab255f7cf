"""Plugin loading and routing: entry points, broken plugins, wrappers, the contract checks."""

from __future__ import annotations

import json
import types

import pytest

import pywren_core as pw
from pywren_core import config as config_module
from pywren_core import plugins
from pywren_core.backend import BackendInfo, Limits
from pywren_core.errors import BackendNotFoundError, NotFoundError, PluginError
from pywren_core.plugins import Backend, PluginEntry, load_backend


def test_entry_point_backend_runs_a_map():
    """The fixture distribution's backend, found through its entry point, runs the real protocol."""
    ex = pw.executor(backend="fixture", progress=False)
    assert ex.backend.entry.distribution == "pywren-fixture"
    assert ex.get_result(ex.map(abs, [-1, -2, 3])) == [1, 2, 3]
    ex.shutdown()


def test_wrapper_plugin_applies_to_every_backend(pywren_config):
    from pywren_fixture.wrapper import PUTS

    counts = []
    for config in (pywren_config, {"backend": "fixture"}):
        PUTS.clear()
        ex = pw.executor(config, progress=False)
        ex.get_result(ex.map(abs, [1, 2]))
        ex.shutdown()
        counts.append(PUTS["pywren.jobs"])
    # local: the client's put of the function (its workers are other processes); fixture: the
    # function plus both statuses, written by workers running in this process.
    assert counts == [1, 3]


def test_broken_plugin_is_named_and_others_still_load():
    with pytest.raises(
        PluginError,
        match=r"plugin 'broken' \(pywren-fixture 0.1.0, pywren_fixture.broken\) failed to load: "
        r"ModuleNotFoundError",
    ):
        load_backend("broken")
    assert load_backend("local").name == "local"
    assert load_backend("fixture").name == "fixture"


def test_unknown_backend_lists_installed_and_install_line():
    with pytest.raises(BackendNotFoundError) as info:
        pw.executor(backend="gcp")
    message = str(info.value)
    assert "backend 'gcp' is not installed" in message
    assert "local" in message and "fixture" in message
    assert "pip install pywren-gcp (from the package index)" in message
    assert "pip install ./plugins/pywren_gcp (from a clone of the pywren repository)" in message


def test_load_plugins_env_limits_entry_points(monkeypatch):
    monkeypatch.setenv("PYWREN_LOAD_PLUGINS", "fixture")
    plugins.reset()
    assert set(plugins.backend_entries()) == {"local", "fixture"}
    monkeypatch.setenv("PYWREN_LOAD_PLUGINS", "")
    plugins.reset()
    assert set(plugins.backend_entries()) == {"local"}
    assert plugins.wrapper_entries() == {}


def test_disable_plugins_env(monkeypatch):
    monkeypatch.setenv("PYWREN_DISABLE_PLUGINS", "broken")
    assert "broken" not in plugins.backend_entries() and "fixture" in plugins.backend_entries()
    monkeypatch.setenv("PYWREN_DISABLE_PLUGINS", "all")
    plugins.reset()
    assert set(plugins.backend_entries()) == {"local"}
    with pytest.raises(BackendNotFoundError, match="disabled by PYWREN_LOAD_PLUGINS / PYWREN_DISABLE_PLUGINS"):
        load_backend("fixture")


def _distribution(root, folder, name, version, entry_points):
    meta = root / folder
    meta.mkdir(parents=True)
    (meta / ("PKG-INFO" if folder.endswith(".egg-info") else "METADATA")).write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n\nName: not a header\n"
    )
    (meta / "entry_points.txt").write_text(entry_points)


def test_entry_points_are_found_as_importlib_metadata_finds_them(tmp_path, monkeypatch):
    """The core reads entry points without importlib.metadata, and must find what it finds: the
    first distribution of a name on sys.path wins, .egg-info folders count, other groups do not."""
    from importlib import metadata

    first, second = tmp_path / "first", tmp_path / "second"
    _distribution(first, "pywren_shadow-2.0.dist-info", "pywren-shadow", "2.0", "[pywren]\nshadow = shadow_new\n")
    _distribution(second, "pywren.Shadow-1.0.dist-info", "pywren-shadow", "1.0", "[pywren]\nshadow = shadow_old\n")
    _distribution(
        second,
        "legacy-0.3.egg-info",
        "legacy",
        "0.3",
        "# a comment\n[console_scripts]\nlegacy = legacy:main\n\n"
        "[pywren.wrappers]\n# another\nlegacy = legacy.wrap:Plugin [extra]\n",
    )
    monkeypatch.setattr("sys.path", [str(first), str(second), *__import__("sys").path])
    plugins.reset()
    entries = {**plugins.backend_entries(), **plugins.wrapper_entries()}
    assert entries["shadow"] == PluginEntry("shadow", "backend", "shadow_new", "pywren-shadow", "2.0")
    assert entries["legacy"] == PluginEntry("legacy", "wrapper", "legacy.wrap:Plugin [extra]", "legacy", "0.3")
    for group, kind in ((plugins.BACKEND_GROUP, "backend"), (plugins.WRAPPER_GROUP, "wrapper")):
        expected = {
            ep.name: PluginEntry(ep.name, kind, ep.value, ep.dist.name, ep.dist.version)
            for ep in metadata.entry_points(group=group)
        }
        assert {k: v for k, v in entries.items() if v.kind == kind and not v.builtin} == expected


def test_a_zip_on_sys_path_is_searched_by_importlib_metadata(tmp_path, monkeypatch):
    import zipfile

    archive = tmp_path / "plugins.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("pywren_zipped-1.0.dist-info/METADATA", "Name: pywren-zipped\nVersion: 1.0\n")
        z.writestr("pywren_zipped-1.0.dist-info/entry_points.txt", "[pywren]\nzipped = zipped_backend\n")
    monkeypatch.setattr("sys.path", [str(archive), *__import__("sys").path])
    plugins.reset()
    assert plugins.backend_entries()["zipped"].distribution == "pywren-zipped"


def test_creating_an_executor_does_not_import_importlib_metadata(tmp_path):
    """importlib.metadata alone costs a fresh process about 20 ms of its first executor()."""
    import subprocess
    import sys

    code = (
        "import sys, pywren_core as pw; ex = pw.executor(progress=False, local={'storage_dir': sys.argv[1]}); "
        "ex.shutdown(); print(sorted(m for m in sys.modules if m.startswith('importlib.metadata')))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _entry(name="tiny"):
    return PluginEntry(name, "backend", "tests:tiny", "tiny-dist", "9.9")


def test_plugin_missing_required_hooks_is_refused():
    plugin = types.SimpleNamespace()
    plugin.pywren_backend_info = pw.hookimpl(lambda: BackendInfo(name="tiny", limits=Limits(1, 1, 1)))
    with pytest.raises(PluginError, match="does not implement pywren_connect, pywren_storage_put"):
        Backend(_entry(), plugin)


def test_plugin_for_another_api_version_is_refused():
    local = load_backend("local").plugin

    class Future:
        @pw.hookimpl
        def pywren_backend_info(self):
            return BackendInfo(name="tiny", limits=Limits(1, 1, 1), api_version=99)

    class Mixed(Future):
        pass

    for hook in plugins.REQUIRED_HOOKS[1:]:
        setattr(Mixed, hook, staticmethod(getattr(local, hook)))
    with pytest.raises(PluginError, match=r"built for hook API 99, but pywren-core .* speaks API 1.*pip install -U"):
        Backend(_entry(), Mixed())


def test_misspelt_hook_is_a_loud_error():
    class Typo:
        @pw.hookimpl
        def pywren_storage_putt(self, session, key, data):
            pass

    with pytest.raises(PluginError, match="pywren_storage_putt"):
        Backend(_entry(), Typo())


def test_session_wrappers_apply_to_one_executor_only(pywren_config):
    seen = []

    class Spy:
        @pw.hookimpl(wrapper=True)
        def pywren_invoke(self, session, payload):
            seen.append(payload["job_id"])
            return (yield)

    spied = pw.executor(pywren_config, wrappers=[Spy()], progress=False)
    plain = pw.executor(pywren_config, progress=False)
    spied.get_result(spied.map(abs, [1, 2]))
    plain.get_result(plain.map(abs, [1, 2]))
    assert seen == ["j0000", "j0000"]


class _PassThrough:
    """A wrapper that changes nothing: its presence makes a session dispatch through pluggy."""

    def __init__(self):
        self.hooks = []

    @pw.hookimpl(wrapper=True)
    def pywren_storage_get(self, key):
        self.hooks.append("get")
        return (yield)

    @pw.hookimpl(wrapper=True)
    def pywren_poll_events(self):
        self.hooks.append("poll_events")
        return (yield)

    @pw.hookimpl(wrapper=True)
    def pywren_fanout(self):
        self.hooks.append("fanout")
        return (yield)


def test_a_session_calls_a_lone_hook_directly_and_answers_as_pluggy_does(pywren_config):
    """Without wrappers a session calls the backend's hook itself; what it answers, and raises, is
    what pluggy's dispatch gives with a wrapper in the way (a list for a hook that collects answers,
    the answer itself for a firstresult hook)."""
    backend = load_backend("local")
    section = config_module.load(pywren_config).backend_section(backend.info)
    spy = _PassThrough()
    direct, dispatched = backend.open(section), backend.open(section, wrappers=[spy])
    try:
        direct.put("probe/a", b"bytes")
        for session in (direct, dispatched):
            assert session.get("probe/a") == b"bytes"
            assert session.get("probe/a", (1, 3)) == b"yt"
            with pytest.raises(NotFoundError):
                session.get("probe/missing")
            assert session._call("pywren_poll_events") == direct._hook.pywren_poll_events(
                backend="local", session=direct.handle)
            assert session.fanout_threshold() is None
        assert spy.hooks == ["get", "get", "get", "poll_events", "fanout"]
        assert not hasattr(direct._callers["pywren_storage_get"], "get_hookimpls")  # the plugin's own function
        assert hasattr(dispatched._callers["pywren_storage_get"], "get_hookimpls")  # pluggy's hook caller
    finally:
        direct.delete(["probe/a"])
        direct.close()
        dispatched.close()


def test_arguments_beyond_the_payload_limit_travel_through_storage():
    from pywren_fixture import backend as fixture

    fixture.INVOKED.clear()
    ex = pw.executor(backend="fixture", progress=False)
    big = b"x" * 10_000  # the fixture backend takes payloads of at most 4,096 bytes
    assert ex.get_result(ex.map(len, [big, b"small"])) == [10_000, 5]
    assert all(len(json.dumps(p)) <= 4096 for p in fixture.INVOKED)
    assert all("key" in call["args"] for p in fixture.INVOKED for call in p["calls"])
    small = ex.get_result(ex.map(len, [b"a", b"bb"]))
    assert small == [1, 2] and "inline" in fixture.INVOKED[-1]["calls"][0]["args"]
    ex.shutdown()
