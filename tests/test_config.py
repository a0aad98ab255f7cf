"""Config precedence (file < environment < dict < arguments) and errors that name key and source."""

from __future__ import annotations

import pytest

import pywren_core as pw
from pywren_core import config
from pywren_core.errors import ConfigError
from pywren_core.plugins import load_backend


def write(path, text):
    path.write_text(text)
    return path


def test_no_config_at_all_runs_local():
    cfg = config.load()
    assert cfg.backend == "local" and cfg.retries == 2 and cfg.timeout is None


def test_precedence_file_env_dict_arguments(tmp_path, monkeypatch):
    monkeypatch.setenv("PYWREN_CONFIG_FILE", str(write(tmp_path / "c.yaml", "retries: 1\ntimeout: 10\nchunksize: 3\n")))
    assert config.load().retries == 1
    monkeypatch.setenv("PYWREN_RETRIES", "4")
    monkeypatch.setenv("PYWREN_TIMEOUT", "20")
    cfg = config.load({"timeout": 30})
    assert (cfg.retries, cfg.timeout, cfg.chunksize) == (4, 30, 3)
    assert config.load({"timeout": 30}, timeout=40).timeout == 40
    assert cfg.sources["retries"] == "environment PYWREN_RETRIES"


def test_file_lookup_order(tmp_path, monkeypatch):
    write(tmp_path / ".pywren_config", "retries: 5\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert config.load().retries == 5
    work = tmp_path / "work"
    work.mkdir()
    write(work / ".pywren_config", "retries: 6\n")
    monkeypatch.chdir(work)
    assert config.load().retries == 6
    monkeypatch.setenv("PYWREN_CONFIG_FILE", str(write(tmp_path / "explicit.yaml", "retries: 7\n")))
    assert config.load().retries == 7


def test_unknown_key_names_key_and_file(tmp_path, monkeypatch):
    path = write(tmp_path / "c.yaml", "timeot: 3\n")
    monkeypatch.setenv("PYWREN_CONFIG_FILE", str(path))
    with pytest.raises(ConfigError, match=rf"file {path}: unknown setting 'timeot' \(did you mean 'timeout'\?\)"):
        config.load()


def test_wrong_type_names_key_and_source(tmp_path, monkeypatch):
    monkeypatch.setenv("PYWREN_CONFIG_FILE", str(write(tmp_path / "c.yaml", "retries: many\n")))
    with pytest.raises(ConfigError, match=r"c.yaml: retries must be int, got 'many'"):
        config.load()
    with pytest.raises(ConfigError, match=r"config dict: retries must be int, got True"):
        config.load({"retries": True}, backend="local")


def test_backend_section_is_checked(tmp_path, monkeypatch):
    info = load_backend("local").info
    monkeypatch.setenv("PYWREN_CONFIG_FILE", str(write(tmp_path / "c.yaml", "local:\n  wrokers: 2\n")))
    with pytest.raises(ConfigError, match=r"c.yaml: 'local' has no setting 'wrokers' \(did you mean 'workers'\?\)"):
        config.load().backend_section(info)
    monkeypatch.setenv("PYWREN_CONFIG_FILE", str(write(tmp_path / "c.yaml", "local:\n  workers: two\n")))
    with pytest.raises(ConfigError, match=r"local.workers must be int, got str 'two'"):
        config.load().backend_section(info)


def test_backend_section_from_environment(monkeypatch):
    info = load_backend("local").info
    monkeypatch.setenv("PYWREN_LOCAL_WORKERS", "3")
    assert config.load().backend_section(info)["workers"] == 3
    monkeypatch.setenv("PYWREN_LOCAL_WORKERS", "three")
    with pytest.raises(ConfigError, match="PYWREN_LOCAL_WORKERS: 'three' is not int"):
        config.load().backend_section(info)


def test_required_backend_setting_says_how_to_set_it():
    info = load_backend("fixture").info  # installed by nox from tests/fixture_plugin
    from pywren_core.backend import REQUIRED, ConfigField

    strict = type(info)(
        name="fixture", limits=info.limits, config=(ConfigField("bucket", str, REQUIRED, help="where"),)
    )
    with pytest.raises(ConfigError, match=r"needs fixture.bucket .*PYWREN_FIXTURE_BUCKET"):
        config.load().backend_section(strict)


def test_missing_config_file_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PYWREN_CONFIG_FILE", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="no config file at"):
        config.load()


def test_not_a_mapping(tmp_path, monkeypatch):
    monkeypatch.setenv("PYWREN_CONFIG_FILE", str(write(tmp_path / "c.yaml", "- a\n- b\n")))
    with pytest.raises(ConfigError, match="must be a mapping"):
        config.load()


def test_timeout_beyond_backend_maximum_is_refused(pywren_config):
    with pytest.raises(ConfigError, match="timeout must be between 0 and 3600"):
        pw.executor(pywren_config, timeout=10_000)


def test_secrets_are_masked():
    cfg = config.load({"backend": "fixture", "fixture": {"token": "s3cr3t-value"}, "aws": {"secret_key": "abc"}})
    shown = cfg.masked(load_backend("fixture").info)
    assert shown["fixture"]["token"] == config.MASK
    assert shown["aws"]["secret_key"] == config.MASK
    assert "s3cr3t-value" not in repr(shown)


@pytest.mark.parametrize(
    ("var", "meant"),
    [("PYWREN_TIMOUT", "PYWREN_TIMEOUT"), ("PYWREN_LOACL_WORKERS", "PYWREN_LOCAL_WORKERS"),
     ("PYWREN_CONFIG_FLE", "PYWREN_CONFIG_FILE")],
)
def test_unknown_environment_variable_is_an_error_like_an_unknown_key(monkeypatch, var, meant):
    monkeypatch.setenv(var, "5")
    with pytest.raises(ConfigError, match=rf"environment {var}: unknown setting \(did you mean {meant}\?\)"):
        config.load()
    with pytest.raises(ConfigError, match=var):
        pw.executor()


def test_pywren_variables_that_are_not_settings_are_accepted(tmp_path, monkeypatch):
    """The core's own variables, backend settings of any installed or known backend, and a plugin's
    own variables (PYWREN_<PLUGIN>_...), even while that plugin is disabled."""
    monkeypatch.setenv("PYWREN_CONFIG_FILE", str(write(tmp_path / "c.yaml", "retries: 1\n")))
    for var in ("PYWREN_PAYLOAD_KEY", "PYWREN_AZURITE_DIR", "PYWREN_AWS_BUCKET", "PYWREN_FIXTURE_STORE",
                "PYWREN_COUNTING_FILE"):
        monkeypatch.setenv(var, "x")
    monkeypatch.setenv("PYWREN_DISABLE_PLUGINS", "counting")
    assert config.load().retries == 1
    monkeypatch.setenv("PYWREN_COUNTNG_FILE", "x")
    with pytest.raises(ConfigError, match="PYWREN_COUNTNG_FILE: unknown setting"):
        config.load()
