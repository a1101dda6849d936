"""The plugin is loaded into every pytest run of an environment that has it installed. A run
that uses none of its fixtures, markers or scenario files gets nothing written, nothing
printed, and less than 30 ms added; a run that uses it, or names a report folder, gets its
report."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

pytest_plugins = ["pytester"]

PLAIN_TEST = """
    def test_arithmetic():
        assert 1 + 1 == 2
"""

# What only a run that uses the plugin needs (and what each of those costs to import).
HEAVY_MODULES = (
    "psutil", "yaml", "pytest_supervisor.factory", "pytest_supervisor.handle",
    "pytest_supervisor.scenarios.loader", "pytest_supervisor.report.document",
    "pytest_supervisor.report.metric_targets",
)
MODULES_AT_THE_END = """
    import json, os, sys

    def pytest_unconfigure(config):
        with open(os.environ["MODULES_FILE"], "w") as out:
            json.dump(sorted(sys.modules), out)
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "pytest_supervisor", "-p", "no:cacheprovider",
                                         *args)


def test_an_unused_plugin_writes_nothing_prints_nothing_and_imports_little(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    pytester.makepyfile(PLAIN_TEST)
    pytester.makeconftest(MODULES_AT_THE_END)
    modules_file = pytester.path.parent / "modules.json"
    monkeypatch.setenv("MODULES_FILE", str(modules_file))
    before = set(pytester.path.iterdir())
    result = run(pytester)
    result.assert_outcomes(passed=1)
    written = {path.name for path in set(pytester.path.iterdir()) - before}
    # pytester's capture of the run, and nothing else (but Python's own bytecode cache)
    assert {name for name in written if not name.startswith("runpytest")} - {"__pycache__"} == {
        "stdout", "stderr"}
    said = [line for line in result.outlines if not line.startswith("plugins: ")]  # pytest's
    assert not [line for line in said if "supervisor" in line.lower()], said
    loaded = set(json.loads(modules_file.read_text()))
    assert "pytest_supervisor.plugin" in loaded  # it was loaded, and:
    assert loaded.isdisjoint(HEAVY_MODULES), sorted(loaded.intersection(HEAVY_MODULES))


def test_a_report_folder_named_gets_the_report_even_if_unused(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(PLAIN_TEST)
    result = run(pytester, "--supervisor-report=out")
    result.assert_outcomes(passed=1)
    assert (pytester.path / "out" / "report.json").exists()
    result.stdout.fnmatch_lines(["*supervisor report: *report.html and report.json*"])


USES = {
    "fixture": "def test_a(dummy_service):\n    assert dummy_service()\n",
    "marker": "import pytest\n\n@pytest.mark.supervisor_metric_targets(shutdown=5)\n"
              "def test_a():\n    pass\n",
    "fixture asked for at run time": "def test_a(request):\n"
                                     "    request.getfixturevalue('supervisor_factory')\n",
}


@pytest.mark.parametrize("use", USES)
def test_a_run_that_uses_the_plugin_gets_its_report(pytester: pytest.Pytester, use: str) -> None:
    pytester.makepyfile(test_used=USES[use])
    result = run(pytester)
    result.assert_outcomes(passed=1)
    assert (pytester.path / "reports" / "report.json").exists()


def test_a_run_under_xdist_that_uses_the_plugin_gets_one_report(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_used="def test_a(dummy_service):\n    assert dummy_service()\n")
    result = run(pytester, "-p", "xdist", "-n", "2")
    result.assert_outcomes(passed=1)
    assert (pytester.path / "reports" / "report.json").exists()
    unused = pytester.mkdir("unused")
    (unused / "test_plain.py").write_text("def test_a():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "pytest_supervisor", "-p", "no:cacheprovider",
                                           "-p", "xdist", "-n", "2", "--rootdir", str(unused),
                                           str(unused))
    result.assert_outcomes(passed=1)
    assert not (unused / "reports").exists()


@pytest.mark.skipif(not hasattr(os, "wait4"), reason="the CPU time of a child: os.wait4")
def test_the_plugin_adds_less_than_30_ms_to_a_run_that_does_not_use_it(tmp_path: Path) -> None:
    """Interleaved runs with and without the plugin, the fastest of each compared. What is
    timed is the CPU time of each run (user + system): a run that waits for nothing takes
    that long on an idle machine, and on a busy one (this test shares two cores with others)
    its wall time says more about the neighbours than about the plugin."""
    (tmp_path / "test_plain.py").write_text("def test_arithmetic():\n    assert 1 + 1 == 2\n")

    def seconds(*args: str) -> float:
        proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                 *args], cwd=tmp_path, stdout=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
        assert proc.returncode == 0
        return usage.ru_utime + usage.ru_stime

    with_plugin, without = [], []
    for _ in range(10):
        with_plugin.append(seconds("-p", "pytest_supervisor"))
        without.append(seconds("-p", "no:pytest_supervisor"))
    added = min(with_plugin) - min(without)
    assert added < 0.030, "the plugin added %.0f ms (medians: %.0f vs %.0f ms)" % (
        added * 1000, statistics.median(with_plugin) * 1000, statistics.median(without) * 1000)
    assert not (tmp_path / "reports").exists()
