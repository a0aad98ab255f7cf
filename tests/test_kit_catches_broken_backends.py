"""The conformance kit fails a subtly broken backend, and fails it fast.

Each case is a copy of the example backend (``examples/pywren_folder``) broken one way, installed
as its own plugin (``broken``) on a path the test and its worker processes share; the kit runs
against it in a pytest of its own, and must fail the named tests within the case's bound. A
control run of the unbroken copy passes the same tests, so the failures are the breakage's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parents[1] / "examples" / "pywren_folder" / "pywren_folder"

NON_ATOMIC_PUT = (
    "plugin.py",
    """            os.replace(staged, path)  # atomic: a reader sees the old object or all of the new one""",
    """            with open(path, "wb") as out:  # broken: half of the object is visible for 20 ms
                out.write(data[: len(data) // 2])
                out.flush()
                time.sleep(0.02)
                out.write(data[len(data) // 2 :])
            os.unlink(staged)""",
)
BYTES_AS_TEXT = (
    "plugin.py",
    """                f.write(data)
""",
    """                f.write(str(data).encode())  # broken: stores the bytes' repr
""",
)
FIRST_PAGE_ONLY = (
    "plugin.py",
    """    return [key for key in map(unquote, names) if key.startswith(prefix)]""",
    """    return [key for key in map(unquote, sorted(names)) if key.startswith(prefix)][:1000]  # broken""",
)
MISSES_ONE_IN_50 = (
    "plugin.py",
    """    return [key for key in map(unquote, names) if key.startswith(prefix)]""",
    """    import re  # broken: one key in 50 is never listed (those whose name's first number ends in 49 or 99)

    def listed(key):
        number = re.search(r"\\d+", key.rpartition("/")[2])
        return number is None or int(number.group()) % 50 != 49

    return [k for k in map(unquote, names) if k.startswith(prefix) and listed(k)]""",
)
DROPS_EVERY_50TH = (
    "plugin.py",
    """        fd, path = tempfile.mkstemp(dir=session.invocations, suffix=".json")""",
    """        global _invocations  # broken: accepts every 50th payload and drops it
        _invocations = globals().get("_invocations", 0) + 1
        if _invocations % 50 == 0:
            return
        fd, path = tempfile.mkstemp(dir=session.invocations, suffix=".json")""",
)
LINGERS_AND_NEVER_CLOSED = [
    (
        "handler.py",
        """    harness.serve(payload, platform_deadline=platform_deadline)
""",
        """    harness.serve(payload, platform_deadline=platform_deadline)
    time.sleep(300)  # broken: waits for more work, as a warm container would...
""",
    ),
    ("plugin.py", "@hookimpl\ndef pywren_close(", "def _never_called_close("),  # ...and nothing stops it
]
RANGE_TO_THE_END = (
    "plugin.py",
    """        return f.read(max(0, end - start))""",
    """        return f.read()  # broken: ignores the end of the range""",
)
NAME_MISMATCH = ("plugin.py", 'name="broken",', 'name="broke",')
CREDENTIAL_IN_THE_CLEAR = (
    "plugin.py",
    """            ConfigField("processes",""",
    """            ConfigField("api_key", str, "", help="broken: a credential not marked secret"),
            ConfigField("processes",""",
)
MISSING_IS_A_GENERIC_ERROR = (
    "plugin.py",
    """        raise NotFoundError(f"no object at key {key!r}") from None""",
    """        raise StorageError(f"no object at key {key!r}") from None  # broken: not NotFoundError""",
)

# name: (breakages, kit tests to run (-k), tests that must fail, bound in seconds)
CASES = {
    "non-atomic put": ([NON_ATOMIC_PUT], "atomic", ["test_put_is_atomic_for_readers"], 60),
    "bytes stored as text": (
        [BYTES_AS_TEXT],
        "round_trip or map_returns",
        ["test_round_trip", "test_map_returns_results_in_order"],
        90,
    ),
    "list gives the first 1,000 keys": (
        [FIRST_PAGE_ONLY],
        "every_page or map_returns",
        ["test_list_follows_every_page"],
        90,
    ),
    "list misses one key in 50": (
        [MISSES_ONE_IN_50],
        "every_page or map_returns",
        ["test_list_follows_every_page", "test_map_returns_results_in_order"],
        90,
    ),
    "invoke drops every 50th payload": (
        [DROPS_EVERY_50TH],
        "map_returns",
        ["test_map_returns_results_in_order"],
        90,
    ),
    "workers outlive pywren_close": (
        LINGERS_AND_NEVER_CLOSED,
        "closing_leaves",
        ["test_closing_leaves_no_threads_or_processes"],
        120,
    ),
    "byte range read to the end": ([RANGE_TO_THE_END], "byte_ranges", ["test_byte_ranges"], 60),
    "info name is not the entry point's": ([NAME_MISMATCH], "entry_point_name", ["test_info_name"], 60),
    "a credential not marked secret": ([CREDENTIAL_IN_THE_CLEAR], "credentials", ["test_credentials"], 60),
    "a missing key is not NotFoundError": ([MISSING_IS_A_GENERIC_ERROR], "missing_key", ["test_missing_key"], 60),
}

KIT_TESTS = """
import pytest
from pywren_core.testing import ExecutorConformance, StorageConformance


@pytest.fixture
def pywren_config(tmp_path):
    return {"backend": "broken", "broken": {"root": str(tmp_path / "root"), "processes": 16}}


class TestStorage(StorageConformance):
    pass


class TestExecutor(ExecutorConformance):
    call_timeout = 5.0  # the folder starts a call in well under a second: lost calls fail fast
    lost_grace = 3.0
    lifecycle_grace = 5.0
"""


def build(into: Path, breakages: list[tuple[str, str, str]]) -> Path:
    """A copy of the example backend named ``broken``, with ``breakages`` applied; returns the
    folder to put on ``PYTHONPATH`` (it holds the package and its entry point's metadata)."""
    package = into / "pywren_broken"
    shutil.copytree(EXAMPLE, package, ignore=shutil.ignore_patterns("__pycache__"))
    for path in package.glob("*.py"):
        text = path.read_text().replace("pywren_folder", "pywren_broken").replace('name="folder"', 'name="broken"')
        path.write_text(text)
    for file, old, new in breakages:
        path = package / file
        text = path.read_text()
        assert text.count(old) == 1, f"the breakage no longer applies to the example's {file}: {old!r}"
        path.write_text(text.replace(old, new))
    meta = into / "pywren_broken-0.1.0.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: pywren-broken\nVersion: 0.1.0\n")
    (meta / "entry_points.txt").write_text("[pywren]\nbroken = pywren_broken.plugin\n")
    (into / "test_kit.py").write_text(textwrap.dedent(KIT_TESTS))
    return into


def run_kit(folder: Path, select: str, bound: float) -> tuple[dict[str, str], float, str]:
    """Run the kit's tests matching ``select``; returns each test's outcome, the seconds it took,
    and the output's end."""
    report = folder / "report.xml"
    env = {**_clean_env(), "PYTHONPATH": str(folder)}
    started = time.monotonic()
    kit = subprocess.Popen(
        [sys.executable, "-m", "pytest", str(folder / "test_kit.py"), "-q", "-p", "no:cacheprovider",
         "-k", select, f"--junitxml={report}", "--rootdir", str(folder)],
        cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = kit.communicate(timeout=bound + 60)
    except subprocess.TimeoutExpired:
        kit.kill()
        pytest.fail(f"the kit was still running after {bound + 60} s: {kit.communicate()[0][-2000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(kit.pid, signal.SIGKILL)  # what a broken backend left running
    elapsed = time.monotonic() - started
    outcomes = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        outcomes[case.get("name")] = "failed" if failed else "skipped" if case.find("skipped") is not None else "passed"
    return outcomes, elapsed, output[-3000:]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PYWREN_") and k != "PYTHONPATH"}


def test_the_unbroken_copy_passes(tmp_path):
    select = " or ".join(sorted({case[1] for case in CASES.values()}))
    outcomes, elapsed, output = run_kit(build(tmp_path, []), select, bound=120)
    failed = sorted(name for name, outcome in outcomes.items() if outcome == "failed")
    assert not failed and len(outcomes) >= len(CASES), output


@pytest.mark.parametrize("case", list(CASES))
def test_the_kit_fails_a_broken_backend_fast(tmp_path, case):
    breakages, select, must_fail, bound = CASES[case]
    outcomes, elapsed, output = run_kit(build(tmp_path, breakages), select, bound)
    for name in must_fail:
        matching = {test: outcome for test, outcome in outcomes.items() if test.startswith(name)}
        assert matching and "failed" in matching.values(), f"{case}: {name} should fail, got {outcomes}\n{output}"
    assert elapsed < bound, f"{case}: the kit took {elapsed:.0f} s to fail (bound {bound} s)\n{output}"
