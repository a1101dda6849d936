"""The CI reports seen from a user's test run: report.json, report.html (opened in a real
headless Chromium), JUnit properties, metric targets and their enforcement, and one merged
report under pytest-xdist. Each test runs pytest in a subprocess on files it writes
(pytester); most record synthetic measurements with ``record_property``, the same channel
the harness uses, and two run real supervisors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
from process_helpers import HARD_KILL

pytestmark = pytest.mark.integration
pytest_plugins = ["pytester"]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no headless Chromium here (Debian: apt-get install chromium; .ci/run installs it)",
)

REAL_SUPERVISORS = """
    import pytest

    def config(dummy_service, **web):
        return {"services": {
            "web": {"command": dummy_service(), "restart": "always", "max_retries": None, **web},
            "once": {"command": dummy_service(), "restart": "never", "stop_timeout": 2},
        }}

    @pytest.mark.stress
    def test_respawns(supervisor_factory, dummy_service):
        handle = supervisor_factory.spawn(config(dummy_service, restart_delay=0.2))
        for _ in range(3):
            handle.kill("web")
            handle.assert_respawned("web", within=5)
        handle.sample_resources(duration=0.6, interval=0.15)

    @pytest.mark.integration
    def test_not_respawned(supervisor_factory, dummy_service):
        handle = supervisor_factory.spawn(config(dummy_service))
        handle.kill("once")
        handle.assert_respawned("once", within=0.3)
"""

# Measurements as the harness records them, without spawning anything.
SYNTHETIC = """
    import pytest

    def respawn(record_property, seconds, delay=0.0):
        record_property("respawn_latency", {"supervisor": "s", "service": "web",
                        "seconds": seconds, "cause": "test", "scheduled_delay": delay})

    def test_slow(record_property):
        respawn(record_property, 0.8)

    @pytest.mark.supervisor_metric_targets(respawn_overhead_p95=1.0)
    def test_slow_but_allowed(record_property):
        respawn(record_property, 0.8)

    def test_fast(record_property):
        respawn(record_property, 0.01)

    def test_slow_and_failing(record_property):
        respawn(record_property, 0.8)
        raise AssertionError("failed on its own")
"""

PLOTTED = """
    import pytest

    @pytest.mark.stress
    def test_storm(record_property):
        for index in range(40):
            record_property("respawn_latency", {"supervisor": "s", "service": "web",
                            "seconds": 1.0 + index / 1000, "cause": "test",
                            "scheduled_delay": 1.0})
        record_property("resource_samples", {"supervisor": "s", "interval": 0.5, "samples": [
            {"elapsed": 0.5 * n, "rss_mb": 20 + n / 10, "cpu_percent": n % 7,
             "tree_rss_mb": 50 + n / 5, "tree_cpu_percent": n % 11, "processes": 4}
            for n in range(1, 60)]})
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """pytest in a subprocess, with the plugin named explicitly (works installed or not)."""
    return pytester.runpytest_subprocess("-p", "pytest_supervisor", "-p", "no:cacheprovider", *args)


def write_tests(pytester: pytest.Pytester, source: str) -> None:
    pytester.makepyfile(test_subject=textwrap.dedent(source))


def load_report(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "report.json").read_text("utf-8"))


def by_name(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {test["nodeid"].split("::")[-1]: test for test in document["tests"]}


def verdicts(test: dict[str, Any]) -> dict[str, str]:
    return {
        verdict["target"]: ("pass: " if verdict["passed"] else "FAIL: ") + verdict["detail"]
        for verdict in test["targets"]
    }


# -- what one run reports ------------------------------------------------------------------


def test_report_of_real_supervisors(pytester: pytest.Pytester) -> None:
    write_tests(pytester, REAL_SUPERVISORS)
    result = run(pytester, "--supervisor-report=out", "--junitxml=junit.xml")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*supervisor report: */out/report.html and report.json*"])
    document = load_report(pytester.path / "out")
    assert (document["schema"], document["schema_version"]) == ("pytest-supervisor-report", 1)
    assert document["machine_info"]["python_version"]
    assert document["commit_info"]["id"] is None  # pytester's folder is no git checkout
    why = "not a git checkout" if shutil.which("git") else "git is not installed"
    assert document["commit_info"]["error"] == why
    html = (pytester.path / "out" / "report.html").read_text("utf-8")
    assert "no commit (%s)" % why in html and "fatal" not in html
    tests = by_name(document)

    respawns = tests["test_respawns"]
    assert (respawns["phase"], respawns["outcome"]) == ("stress", "passed")
    latencies = respawns["metrics"]["respawns"]["latencies"]
    assert [respawn["scheduled_delay"] for respawn in latencies] == [0.2, 0.2, 0.2]
    assert all(respawn["seconds"] >= 0.2 for respawn in latencies)
    summary = respawns["metrics"]["summary"]
    assert (summary["kills_sent"], summary["restarts"], summary["leaked_processes"]) == (3, 3, 0)
    assert 0 < summary["launch_to_all_running"] < 5 and 0 < summary["shutdown"] < 10
    (supervisor,) = respawns["metrics"]["supervisors"]
    assert supervisor["restarts"] == {"web": 3, "once": 0}
    assert supervisor["shutdown_limit"] == 10.0  # web's default stop_timeout; once has 2
    (series,) = respawns["metrics"]["resources"]
    assert len(series["samples"]) == 4 and series["samples"][0]["rss_mb"] > 0
    assert set(verdicts(respawns)) == set(document["targets"])  # every target was judged
    assert respawns["log_excerpts"] == [] and respawns["failure"] is None

    missed = tests["test_not_respawned"]
    assert (missed["phase"], missed["outcome"]) == ("integration", "failed")
    assert f"service 'once' was not respawned within 0.3s of {HARD_KILL}" in missed["failure"]
    assert missed["metrics"]["respawns"] == {
        "kills_sent": 1, "expected": 1, "seen": 0, "latencies": []
    }
    assert verdicts(missed)["respawn_success_rate"] == "FAIL: 0 % < 100 %"
    (excerpt,) = missed["log_excerpts"]
    assert excerpt["supervisor"] == "supervisor"
    assert any("[once]" in line for line in excerpt["lines"])

    junit = (pytester.path / "junit.xml").read_text("utf-8")
    assert '<property name="supervisor.respawn_success_rate" value="0.0"' in junit
    assert (
        '<property name="supervisor.target.respawn_success_rate" value="FAIL: 0 % &lt; 100 %"'
        in junit
    )
    assert junit.count('<property name="supervisor.restarts"') == 2


def test_one_merged_report_under_xdist(pytester: pytest.Pytester) -> None:
    write_tests(
        pytester,
        """
        import pytest

        @pytest.mark.parametrize("n", range(4))
        def test_respawn(supervisor_factory, dummy_service, n):
            handle = supervisor_factory.spawn(
                {"services": {"web": {"command": dummy_service(), "restart": "always"}}}
            )
            handle.kill("web")
            handle.assert_respawned("web", within=5)
        """,
    )
    result = run(pytester, "-n", "2", "--junitxml=junit.xml")
    result.assert_outcomes(passed=4)
    assert len(re.findall("supervisor report: ", result.stdout.str())) == 1
    assert [path.name for path in pytester.path.rglob("report.json")] == ["report.json"]
    document = load_report(pytester.path / "reports")
    assert sorted(by_name(document)) == [f"test_respawn[{n}]" for n in range(4)]
    for test in document["tests"]:
        assert test["metrics"]["respawns"]["seen"] == 1
        assert verdicts(test)["respawn_success_rate"] == "pass: 100 % >= 100 %"
    workers = document["workers"]
    assert [worker["id"] for worker in workers] == ["gw0", "gw1"]
    assert all(worker["machine_info"]["python_version"] for worker in workers)
    junit = (pytester.path / "junit.xml").read_text("utf-8")
    assert junit.count('<property name="supervisor.respawn_latency_p95"') == 4


# -- targets ---------------------------------------------------------------------------------


def test_missed_targets_are_reported_without_failing_tests(pytester: pytest.Pytester) -> None:
    write_tests(pytester, SYNTHETIC)
    run(pytester).assert_outcomes(passed=3, failed=1)
    document = load_report(pytester.path / "reports")
    tests = by_name(document)
    assert verdicts(tests["test_slow"])["respawn_overhead_p95"] == "FAIL: 0.8 s > 0.5 s"
    assert verdicts(tests["test_slow_but_allowed"])["respawn_overhead_p95"] == "pass: 0.8 s <= 1 s"
    assert verdicts(tests["test_fast"])["respawn_overhead_p95"] == "pass: 0.01 s <= 0.5 s"
    assert document["summary"]["targets_failed"] == 2
    html = (pytester.path / "reports" / "report.html").read_text("utf-8")
    assert "respawn_overhead_p95</code>: 0.8 s &gt; 0.5 s" in html


def test_enforce_metrics_fails_the_test_that_missed_a_target(pytester: pytest.Pytester) -> None:
    write_tests(pytester, SYNTHETIC)
    result = run(pytester, "--supervisor-enforce-metrics")
    # test_slow_and_failing has failed already: no second error for the same test.
    result.assert_outcomes(passed=3, failed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_slow*",
            "supervisor metric targets not met (--supervisor-enforce-metrics):",
            "    respawn_overhead_p95: 0.8 s > 0.5 s",
        ]
    )
    assert by_name(load_report(pytester.path / "reports"))["test_slow"]["outcome"] == "error"


def test_ini_sets_targets_and_enforcement(pytester: pytest.Pytester) -> None:
    write_tests(pytester, SYNTHETIC)
    pytester.makeini(
        """
        [pytest]
        supervisor_enforce_metrics = true
        supervisor_metric_targets =
            respawn_overhead_p95 = 0.005
            shutdown = off
        """
    )
    result = run(pytester)
    # test_fast misses the stricter ini target; the marker still allows test_slow_but_allowed 1 s.
    result.assert_outcomes(passed=3, failed=1, errors=2)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_fast*", "*0.01 s > 0.005 s"])
    targets = load_report(pytester.path / "reports")["targets"]
    assert (targets["respawn_overhead_p95"]["run"], targets["shutdown"]["run"]) == (0.005, None)


def test_bad_targets_are_named_where_they_were_written(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nsupervisor_metric_targets = respawn_p95 = 1\n")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*pytest-supervisor: supervisor_metric_targets (tox.ini): unknown metric target"
            " 'respawn_p95' (did you mean 'respawn_overhead_p95'?)*"
        ]
    )

    (pytester.path / "tox.ini").unlink()
    write_tests(
        pytester,
        """
        import pytest

        @pytest.mark.supervisor_metric_targets(shutdown="soon")
        def test_bad():
            raise AssertionError("must not run")
        """,
    )
    result = run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.supervisor_metric_targets of test_subject.py::test_bad: shutdown:"
            " expected a number >= 0, 'stop_timeout' or off, got 'soon'"
        ]
    )


# -- the page ------------------------------------------------------------------------------


def test_page_without_matplotlib(pytester: pytest.Pytester) -> None:
    write_tests(pytester, SYNTHETIC)
    pytester.makeconftest("import sys\nsys.modules['matplotlib'] = None  # import fails\n")
    run(pytester).assert_outcomes(passed=3, failed=1)
    html = (pytester.path / "reports" / "report.html").read_text("utf-8")
    assert "The plots need matplotlib, which is not installed here" in html
    assert "<svg" not in html


def open_in_chromium(page: Path, profile: Path) -> tuple[str, list[str]]:
    """The DOM Chromium built from ``page``, and every console message the page caused."""
    assert CHROMIUM is not None
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
         "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # Chromium logs each console message (any level, uncaught errors too) as INFO:CONSOLE.
    return done.stdout, [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


def outside_references(page: str) -> list[str]:
    """Every src, href or url() of the page that points anywhere but into the page itself."""
    found = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)|url\(\s*["']?([^)"']*)""", page)
    return [target for pair in found for target in pair if target and not target.startswith("#")]


@needs_chromium
def test_page_opens_in_chromium_with_its_plots_and_no_console_errors(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    write_tests(pytester, PLOTTED)
    run(pytester, "--supervisor-report=reports").assert_outcomes(passed=1)  # (uses no fixture)
    page = pytester.path / "reports" / "report.html"
    assert outside_references(page.read_text("utf-8")) == []  # opens with no network
    dom, console = open_in_chromium(page, tmp_path / "profile")
    assert console == []
    figures = re.findall(r'<figure id="([^"]+)">.*?</figure>', dom, re.DOTALL)
    assert figures == ["respawn-latency", "resources-1"]
    for svg in re.findall(r"<figure.*?</figure>", dom, re.DOTALL):
        assert "<svg" in svg and svg.count("<path") > 10  # drawn, not an empty frame
    assert "Phase: stress" in dom and "test_subject.py::test_storm" in dom


@needs_chromium
def test_the_page_checks_catch_a_broken_page(tmp_path: Path) -> None:
    assert outside_references(
        '<img src="https://example.com/x.png"><svg><use href="#m1"/></svg>'
        '<style>p { background: url(bg.png) }</style>'
    ) == ["https://example.com/x.png", "bg.png"]
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><body>"
        '<script>console.error("plot failed"); missing();</script></body></html>'
    )
    _, console = open_in_chromium(page, tmp_path / "profile")
    assert len(console) == 2
    assert '"plot failed"' in console[0] and "missing is not defined" in console[1]


def test_commit_info_of_a_checkout_without_a_commit_says_so(tmp_path: Path) -> None:
    from pytest_supervisor.report.document import commit_info

    if shutil.which("git") is None:
        pytest.skip("no git to make a checkout with")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    assert commit_info(tmp_path) == {
        "id": None, "project": tmp_path.name, "error": "a git checkout without any commit yet"}
