"""The ``pywren`` command line, as users see it."""

from pywren_core import cli, hookimpl


def test_backends_explains_a_broken_plugin_and_still_lists_the_others(capsys):
    """tests/fixture_plugin installs ``broken``, whose import fails, next to a working ``fixture``."""
    assert cli.main(["backends"]) == 0
    backends_table = capsys.readouterr().out.split("\n\n")[0]  # wrapper plugins follow, if any
    rows = {line.split()[0]: line for line in backends_table.splitlines()[2:]}
    broken = rows["broken"]
    assert "pywren-fixture" in broken and "0.1.0" in broken
    assert "BROKEN: plugin 'broken'" in broken
    assert "ModuleNotFoundError: No module named 'pywren_fixture_missing_dependency'" in broken
    assert rows["fixture"].endswith("ok") and rows["local"].endswith("ok")


def _keep_a_job(pywren_config):
    import pywren_core as pw

    ex = pw.executor(pywren_config, progress=False, cleanup=False)
    futures = ex.map(abs, [-1, -2])
    assert ex.get_result(futures) == [1, 2]
    ex.shutdown()
    return ex, f"{ex.executor_id}/{futures[0].job_id}"


def test_clean_removes_a_jobs_objects_and_its_manifest(pywren_config, monkeypatch, capsys):
    from pywren_core import manifests
    from pywren_core.cli import main

    monkeypatch.setenv("PYWREN_LOCAL_STORAGE_DIR", pywren_config["local"]["storage_dir"])
    ex, job = _keep_a_job(pywren_config)
    assert main(["status", job]) == 0 and "2 success" in capsys.readouterr().out
    assert main(["clean", job]) == 0
    assert "deleted 3 objects of 1 job" in capsys.readouterr().out  # the function and two statuses
    assert ex.session.list("pywren.jobs/") == []
    assert not list(manifests.manifest_dir().glob("*/*.json"))
    assert main(["status", job]) == 1, "status must not describe a job that is gone"


def test_clean_older_than_removes_only_old_executors(pywren_config, monkeypatch, capsys):
    import time

    from pywren_core.cli import main

    monkeypatch.setenv("PYWREN_LOCAL_STORAGE_DIR", pywren_config["local"]["storage_dir"])
    old, _ = _keep_a_job(pywren_config)
    time.sleep(2.1)
    new, _ = _keep_a_job(pywren_config)
    assert main(["clean", "--older-than", "1d"]) == 0
    assert old.session.list("pywren.jobs/"), "a young job was cleaned"
    assert main(["clean", "--older-than", "2s"]) == 0
    assert "of 1 executor" in capsys.readouterr().out
    assert old.session.list(f"pywren.jobs/{old.executor_id}/") == []
    assert new.session.list(f"pywren.jobs/{new.executor_id}/")
    assert main(["clean", "--older-than", "soon"]) == 1
    assert "--older-than wants an age" in capsys.readouterr().err


def test_clean_and_status_refuse_paths(capsys):
    from pywren_core.cli import main

    assert main(["clean", "../.."]) == 1
    assert "not a job or executor id" in capsys.readouterr().err
    assert main(["status", "../../../../fake"]) == 1
    assert "EXECUTOR_ID/JOB_ID" in capsys.readouterr().err


def test_commands_that_invoke_nothing_start_no_workers(pywren_config, monkeypatch, capsys):
    from pywren_core.backends.local import WorkerPool
    from pywren_core.cli import main

    monkeypatch.setenv("PYWREN_LOCAL_STORAGE_DIR", pywren_config["local"]["storage_dir"])
    monkeypatch.setenv("PYWREN_LOCAL_WORKERS", "3")  # a pool size no other test uses
    _, job = _keep_a_job({**pywren_config, "local": {**pywren_config["local"], "workers": 1}})
    WorkerPool._shared.pop(3, None)
    assert main(["status", job]) == 0
    assert main(["clean", job]) == 0
    assert main(["deploy"]) == 0 and "nothing to deploy" in capsys.readouterr().out
    assert 3 not in WorkerPool._shared


def test_numeric_options_refuse_counts_that_are_not_positive(capsys):
    """``pywren test --calls -5`` once ran nothing and printed "0 calls on 0 workers"."""
    import pytest

    from pywren_core.cli import main

    for argv, message in [
        (["test", "--calls", "-5"], "argument --calls: must be more than 0, not -5"),
        (["test", "--calls", "0"], "argument --calls: must be more than 0, not 0"),
        (["test", "--calls", "2.5"], "argument --calls: '2.5' is not an integer"),
        (["test", "--timeout", "-1"], "argument --timeout: must be more than 0, not -1"),
        (["test", "--timeout", "nan"], "argument --timeout: must be more than 0, not nan"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err, argv


def test_bench_parameters_must_be_positive_numbers(tmp_path, capsys):
    from pywren_core.cli import main

    for setting, message in [
        ("throughput.calls=0", "throughput.calls=0: must be an integer above 0, like the preset's 1000"),
        ("latency.burst=-3", "latency.burst=-3: must be an integer above 0"),
        ("latency.burst=many", "latency.burst='many': must be an integer above 0"),
        ("latency.sequential=2.5", "latency.sequential=2.5: must be an integer above 0"),
    ]:
        assert main(["bench", "run", "--suite", "quick", "--set", setting, "-o", str(tmp_path / "run.json")]) == 1
        assert message in capsys.readouterr().err, setting
    assert not (tmp_path / "run.json").exists()


class RecordBackends:
    """A wrapper plugin that records which backend each invocation went to."""

    seen: list[str] = []

    @staticmethod
    @hookimpl(wrapper=True)
    def pywren_invoke(session, payload, backend):
        RecordBackends.seen.append(backend)
        return (yield)


def test_wrappers_are_listed_and_told_which_backend_they_wrap(capsys, monkeypatch, pywren_config):
    import pywren_core as pw
    from pywren_core import plugins

    monkeypatch.setitem(plugins.BUILTIN_WRAPPERS, "recorder", f"{__name__}:RecordBackends")
    plugins.reset()
    assert cli.main(["backends"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "wrapper plugins (each wraps every backend above):" in lines
    assert any(line.startswith("recorder") and line.endswith("ok") for line in lines), lines
    RecordBackends.seen.clear()
    with pw.executor(pywren_config, progress=False) as ex:
        assert ex.get_result(ex.map(abs, [-1, -2])) == [1, 2]
    assert RecordBackends.seen and set(RecordBackends.seen) == {"local"}
