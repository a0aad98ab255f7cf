"""Runtimes: built with real pip from the package index, run by real local workers.

The runtimes here are built once per module (pip downloads a few small wheels) into a directory
that outlives each test's isolated home, as ``PYWREN_RUNTIMES_DIR`` lets a CI cache do.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from importlib.metadata import distributions
from pathlib import Path

import pytest

import pywren_core as pw
from pywren_core import cli, runtime
from pywren_core.backend import HOST, Platform
from pywren_core.errors import ConfigError, RuntimeBuildError, RuntimeMismatchError

SMALL = runtime.RuntimeSpec(label="small", requirements=("six==1.16.0",))


@pytest.fixture(scope="module")
def runtimes_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("runtimes")


@pytest.fixture(autouse=True)
def shared_runtimes(runtimes_dir, monkeypatch):
    monkeypatch.setenv(runtime.DIR_ENV, str(runtimes_dir))


@pytest.fixture(scope="module")
def small(runtimes_dir):
    os.environ[runtime.DIR_ENV] = str(runtimes_dir)
    try:
        return runtime.build(SMALL, HOST)
    finally:
        del os.environ[runtime.DIR_ENV]


def test_a_runtime_holds_the_pinned_requirements_and_what_every_worker_needs(small):
    dists = small.distributions
    assert dists["six"] == "1.16.0"
    for name in ("cloudpickle", "attrs", "pluggy", "pyyaml", "tqdm"):  # pinned to the client's versions
        assert dists[name] == runtime._installed_version(name), name
    assert small.manifest["modules"]["six"] == "six" and small.manifest["modules"]["yaml"] == "pyyaml"
    assert (small.site / "six.py").is_file()
    assert small.name.startswith("rt-") and small.manifest["label"] == "small"
    assert small.manifest["size_bytes"] == sum(p.stat().st_size for p in small.site.rglob("*") if p.is_file())


def test_building_an_unchanged_spec_again_is_a_no_op(small, monkeypatch):
    def no_pip(*args, **kwargs):
        raise AssertionError("an unchanged spec ran pip again")

    monkeypatch.setattr(runtime, "resolve", no_pip)
    monkeypatch.setattr(runtime, "_install", no_pip)
    again = runtime.build(SMALL, HOST)
    assert again.name == small.name and again.manifest["built_at"] == small.manifest["built_at"]


def test_the_same_set_under_another_label_is_the_same_runtime_named_as_asked(small):
    again = runtime.build(runtime.RuntimeSpec(label="other", requirements=SMALL.requirements), HOST)
    assert again.name == small.name and again.label == "other" and small.label == "small"


def test_another_spec_gets_its_own_runtime_beside_the_first(small):
    other = runtime.build(runtime.RuntimeSpec(requirements=("six==1.15.0",)), HOST)
    assert other.name != small.name and other.distributions["six"] == "1.15.0"
    assert {r.name for r in runtime.built()} >= {small.name, other.name}
    runtime.remove(other.name)
    assert other.name not in {r.name for r in runtime.built()}
    assert runtime.load(small.name).distributions["six"] == "1.16.0"


def uses_six(x):
    import six

    return x, six.__version__, sys.prefix, [p for p in sys.path if "site" in p]


def test_local_calls_run_in_a_venv_of_the_runtime_and_nothing_of_the_clients(small, pywren_config):
    config = {**pywren_config, "runtimes": {"small": {"requirements": ["six==1.16.0"]}}}
    with pw.executor(config, runtime="small", progress=False) as ex:
        assert ex.runtime.name == small.name
        results = ex.get_result(ex.map(uses_six, [1, 2]))
    assert [r[0] for r in results] == [1, 2]
    for _, version, prefix, site_paths in results:
        assert version == "1.16.0" and Path(prefix) == small.path / "venv"
        assert all(str(small.path) in p for p in site_paths), site_paths  # no client site-packages


def needs_hypothesis(x):
    import hypothesis  # noqa: F401  (at call time: the pickle does not refer to it)

    return x


def test_a_module_the_runtime_lacks_fails_on_the_worker_with_a_note_naming_the_runtime(small, pywren_config):
    with pw.executor({**pywren_config, "runtime": {"requirements": ["six==1.16.0"]}}, progress=False) as ex:
        future = ex.call_async(needs_hypothesis, 1)
        with pytest.raises(ModuleNotFoundError) as info:
            future.result(timeout=60)
    notes = "\n".join(info.value.__notes__)
    assert f"runtime {small.name}" in notes and "cannot import 'hypothesis'" in notes
    assert f"hypothesis=={runtime._installed_version('hypothesis')}" in notes


def test_a_function_needing_a_missing_distribution_is_refused_before_any_call(small, pywren_config):
    import hypothesis.strategies as st

    def draws(x):
        return st.integers()

    with pw.executor({**pywren_config, "runtime": {"requirements": ["six==1.16.0"]}}, progress=False) as ex:
        with pytest.raises(RuntimeMismatchError) as info:
            ex.map(draws, range(1000))
        assert not ex.session.list("")  # nothing was written, nothing invoked
        assert ex.get_result(ex.map(uses_six, [3]))[0][1] == "1.16.0"  # the executor still works
    message = str(info.value)
    assert f"runtime {small.name}" in message and "module 'hypothesis'" in message
    assert f"add 'hypothesis=={runtime._installed_version('hypothesis')}'" in message


def test_a_distribution_of_another_release_is_refused_with_the_pin_to_use(small):
    manifest = json.loads(json.dumps(small.manifest))
    manifest["distributions"]["attrs"] = "0.9.0"
    mine = runtime._installed_version("attrs")
    with pytest.raises(RuntimeMismatchError) as info:
        runtime.check_modules(runtime.Runtime(small.name, small.path, manifest), {"attr._make", "os.path", "__main__"})
    assert f"the runtime has attrs 0.9.0, this client {mine}" in str(info.value)
    assert f"pin 'attrs=={mine}'" in str(info.value)
    runtime.check_modules(small, {"attr", "yaml.loader", "json"})  # the client's releases: no error


def test_distributions_the_platform_provides_and_the_plugins_own_are_never_missing(small):
    manifest = {**small.manifest, "provided": ["hypothesis"]}
    runtime.check_modules(runtime.Runtime(small.name, small.path, manifest), {"hypothesis"})
    runtime.check_modules(small, {"hypothesis"}, own_distributions=["hypothesis"])


def test_a_runtime_for_another_platform_gets_that_platforms_wheels():
    arm = Platform(python="3.11", os="linux", arch="aarch64")
    built = runtime.build(runtime.RuntimeSpec(requirements=("pyyaml==6.0.2",)), arm)
    compiled = [p.name for p in built.site.rglob("*.so")]
    assert compiled and all("aarch64" in name for name in compiled), compiled
    # The user's pin of a distribution pywren-core needs wins over the client's own version.
    assert built.manifest["platform"]["arch"] == "aarch64" and built.distributions["pyyaml"] == "6.0.2"


def test_cloudpickle_stays_at_the_clients_version_whatever_the_requirements_say():
    with pytest.raises(RuntimeBuildError) as info:
        runtime.build(runtime.RuntimeSpec(requirements=("cloudpickle==2.2.1",)), HOST)
    assert f"cloudpickle=={runtime._installed_version('cloudpickle')}" in str(info.value)
    assert "conflicting" in str(info.value)


def test_a_runtime_over_the_platforms_size_limit_is_refused_naming_its_largest_packages():
    tiny = Platform(python="3.11", os="linux", arch="x86_64", max_unzipped_bytes=200_000)
    with pytest.raises(RuntimeBuildError) as info:
        runtime.build(runtime.RuntimeSpec(requirements=("six==1.16.0",)), tiny)
    message = str(info.value)
    assert "over the platform's 0 MB limit" in message
    assert "largest: " in message and "yaml" in message  # pyyaml's compiled wheel is among the largest
    assert not [p for p in runtime.runtimes_dir().glob("rt-*") if not (p / runtime.MANIFEST).exists()]


def test_an_unresolvable_requirement_names_itself():
    with pytest.raises(RuntimeBuildError) as info:
        runtime.build(runtime.RuntimeSpec(requirements=("pywren-no-such-distribution-xyz",)), HOST)
    assert "pywren-no-such-distribution-xyz" in str(info.value)


def test_runtime_settings_are_checked_with_where_they_came_from(tmp_path, pywren_config):
    with pytest.raises(ConfigError, match=r"runtime 'ml' is not defined under 'runtimes:' \(defined: small\)"):
        pw.executor({**pywren_config, "runtimes": {"small": {"requirements": []}}}, runtime="ml")
    with pytest.raises(ConfigError, match=r"runtimes.small: unknown runtime setting 'requirement'"):
        runtime.RuntimeSpec.from_config("small", {"small": {"requirement": ["x"]}})
    with pytest.raises(ConfigError, match="requirements must be a list"):
        runtime.RuntimeSpec.from_config({"requirements": "numpy"}, {})
    with pytest.raises(ConfigError, match="cannot read requirements_file"):
        runtime.RuntimeSpec.from_config({"requirements_file": str(tmp_path / "missing.txt")}, {})
    (tmp_path / "reqs.txt").write_text("# comment\nnumpy>=2  # inline\n\npandas\n")
    body = {"requirements": ["six"], "requirements_file": str(tmp_path / "reqs.txt")}
    spec = runtime.RuntimeSpec.from_config(body, {})
    assert spec.requirements == ("six", "numpy>=2", "pandas")
    assert runtime.RuntimeSpec.from_config(None, {}) == runtime.RuntimeSpec()


def test_a_backend_without_a_platform_refuses_a_runtime(pywren_config):
    with pytest.raises(ConfigError, match="the fixture backend builds no runtimes"):
        pw.executor({"backend": "fixture"}, runtime={"requirements": ["six"]})
    with pytest.raises(ConfigError, match="the local backend takes no container images"):
        pw.executor(pywren_config, runtime={"image": "example/image:1"})


def test_the_runtime_command_builds_lists_shows_and_removes(small, capsys, tmp_path, monkeypatch):
    config = tmp_path / "config.yaml"
    config.write_text("runtimes:\n  small:\n    requirements: [six==1.16.0]\n")
    monkeypatch.setenv("PYWREN_CONFIG_FILE", str(config))
    assert cli.main(["runtime", "build", "--runtime", "small"]) == 0
    assert f"runtime {small.name} (small) for local: " in capsys.readouterr().out
    assert cli.main(["runtime", "list"]) == 0
    assert small.name in capsys.readouterr().out
    assert cli.main(["runtime", "show", small.name]) == 0
    assert json.loads(capsys.readouterr().out)["distributions"]["six"] == "1.16.0"
    assert cli.main(["runtime", "build"]) == 1  # no runtime chosen: says how to configure one
    assert "no runtime configured" in capsys.readouterr().err
    assert cli.main(["runtime", "show", "rt-nothing"]) == 1
    assert "no runtime 'rt-nothing'" in capsys.readouterr().err


def test_a_dockerfile_installs_the_manifests_pins_on_the_platforms_base_image(small):
    lambda_like = Platform(image_base="public.ecr.aws/lambda/python:3.11", image_code_dir="/var/task")
    text = runtime.dockerfile(small, lambda_like, "pywren_aws.handler.handler")
    assert text.splitlines()[3] == "FROM public.ecr.aws/lambda/python:3.11"
    assert "pip install --no-cache-dir --target /var/task" in text and "'six==1.16.0'" in text
    assert "COPY code/ /var/task/" in text and "ENV PYTHONPATH=/var/task" in text
    assert text.rstrip().endswith('CMD ["pywren_aws.handler.handler"]')
    served = Platform(image_base="python:3.11-slim", image_command=("functions-framework", "--target", "handler"),
                      image_packages=("functions-framework",))
    text = runtime.dockerfile(small, served, "unused")
    assert "RUN pip install --no-cache-dir 'functions-framework'\n" in text
    assert text.rstrip().endswith('CMD ["functions-framework", "--target", "handler"]')


def test_an_artifact_holds_the_runtime_and_the_clients_own_pywren(small, tmp_path):
    files = runtime.artifact_files(small, {"pywren-core": "pywren_core"})
    assert "six.py" in files and "pywren_core/__init__.py" in files and "pywren_core/runtime.py" in files
    info = next(name for name in files if name.startswith("pywren_core-") and name.endswith("/METADATA"))
    assert f"Version: {pw.__version__}" in files[info].decode()
    assert not [name for name in files if name.startswith("pywren_core/") and "__pycache__" in name]
    assert f"__pycache__/six.{sys.implementation.cache_tag}.pyc" in files  # compiled when built
    archive = tmp_path / "artifact.zip"  # what a plugin makes of it: here, a zip that imports alone
    with zipfile.ZipFile(archive, "w") as zf:
        for name, content in files.items():
            zf.writestr(name, content if isinstance(content, bytes) else content.read_bytes())
    code = "import six, yaml, cloudpickle, pywren_core; print(pywren_core.__file__)"
    import subprocess

    out = subprocess.run([sys.executable, "-I", "-S", "-c", f"import sys; sys.path[:0] = [{str(archive)!r}]; {code}"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(str(archive))


@pytest.mark.parametrize("installer", ["pip", "uv"])
def test_pip_and_uv_install_the_same_pinned_set(installer):
    if installer == "uv" and runtime._uv() is None:
        pytest.skip("uv is not installed")
    lambda_like = Platform(python="3.11", os="linux", arch="x86_64")
    spec = runtime.RuntimeSpec(requirements=("six==1.16.0",))
    built = runtime.build(spec, lambda_like, upgrade=True, installer=installer)
    assert built.manifest["installer"] == installer
    installed = {runtime.canonical(d.metadata["Name"]): d.version for d in distributions(path=[str(built.site)])}
    assert installed == built.distributions
    assert [p.name for p in built.site.rglob("*.so")] and all("x86_64" in p.name for p in built.site.rglob("*.so"))


def test_wheels_needing_a_newer_glibc_than_the_platforms_are_never_chosen():
    """numpy 2.3 and later publish manylinux_2_27/2_28 wheels only: Lambda's Python 3.11 (Amazon
    Linux 2, glibc 2.26) must get an older numpy, a glibc 2.28 platform the newest."""
    old_os = runtime.resolve(["numpy"], Platform(python="3.11", glibc="2.26"))["numpy"]
    new_os = runtime.resolve(["numpy"], Platform(python="3.11", glibc="2.28"))["numpy"]
    assert tuple(map(int, old_os.split(".")[:2])) < (2, 3) <= tuple(map(int, new_os.split(".")[:2])), (old_os, new_os)
