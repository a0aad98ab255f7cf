"""``pywren doctor`` and the note on a worker's ImportError: what differs between client and workers."""

from __future__ import annotations

import sys

import pytest

import pywren_core as pw
from pywren_core import cli, doctor


@pytest.fixture
def install_on_client_only(tmp_path, monkeypatch):
    """Puts a distribution ``clientonly`` 1.2.3 (module ``clientonly_mod``) on this client's sys.path
    only, once called: local workers already running (whether started fresh or forked) lack it."""
    (tmp_path / "clientonly_mod").mkdir()
    (tmp_path / "clientonly_mod" / "__init__.py").write_text("VALUE = 7\n")
    info = tmp_path / "clientonly-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: clientonly\nVersion: 1.2.3\n")
    (info / "top_level.txt").write_text("clientonly_mod\n")

    def install() -> None:
        monkeypatch.syspath_prepend(str(tmp_path))
        doctor._providers.cache_clear()

    yield install
    doctor._providers.cache_clear()
    sys.modules.pop("clientonly_mod", None)


def uses_the_client_only_module(x):
    import clientonly_mod

    return clientonly_mod.VALUE + x


def test_compare_tells_what_breaks_calls_from_what_merely_differs() -> None:
    client = doctor.facts(["pywren-core", "cloudpickle"])
    core = client["distributions"]["pywren-core"]
    worker = {**client, "python": "3.9.1", "cpus": 64, "distributions": {"pywren-core": core}}
    rows = {r.what: r for r in doctor.compare(client, worker, needed={"cloudpickle"})}
    assert rows["python"].verdict == "breaks" and rows["cpus"].verdict == "differs"
    assert rows["cloudpickle"].verdict == "breaks" and rows["cloudpickle"].worker == "missing"
    assert rows["pywren-core"].verdict == "same"
    same_minor = {**worker, "python": client["python"].rsplit(".", 1)[0] + ".99"}
    assert {r.what: r for r in doctor.compare(client, same_minor, needed=())}["python"].verdict == "differs"


def test_doctor_finds_nothing_wrong_with_local_workers(capsys) -> None:
    assert cli.main(["doctor", "--backend", "local"]) == 0
    assert "nothing calls depend on differs on the local workers" in capsys.readouterr().out


def test_doctor_names_a_distribution_the_workers_lack(install_on_client_only, pywren_config) -> None:
    with pw.executor(pywren_config, progress=False) as ex:
        ex.get_result(ex.map(abs, [1, 2]))  # the workers run before the distribution appears
        install_on_client_only()
        rows = {r.what: r for r in doctor.check(ex, uses_the_client_only_module, packages=["clientonly"])}
    assert rows["clientonly"].client == "1.2.3" and rows["clientonly"].worker == "missing"
    assert rows["clientonly"].verdict == "breaks"


def test_a_workers_import_error_names_the_clients_distribution(install_on_client_only, pywren_config) -> None:
    with pw.executor(pywren_config, progress=False) as ex:
        ex.get_result(ex.map(abs, [1, 2]))
        install_on_client_only()
        future = ex.call_async(uses_the_client_only_module, 1)
        with pytest.raises(ModuleNotFoundError) as info:
            future.result(timeout=60)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "the local workers (the local backend's default runtime) cannot import 'clientonly_mod'" in notes
    assert "clientonly==1.2.3" in notes and "runtime's requirements" in notes
    assert "pywren doctor" in notes


def test_an_import_error_the_client_shares_gets_no_note(pywren_config) -> None:
    def imports_nothing_real(x):
        import no_such_module_anywhere  # noqa: F401

    with pw.executor(pywren_config, progress=False) as ex:
        with pytest.raises(ModuleNotFoundError) as info:
            ex.call_async(imports_nothing_real, 1).result(timeout=60)
    assert not getattr(info.value, "__notes__", None)
