"""The report's logic without pytest runs or processes: metrics from recorded measurements,
targets and their verdicts, the report document, and the HTML page made from it."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

from pytest_supervisor.report import document as report
from pytest_supervisor.report import html as report_html
from pytest_supervisor.report import metric_targets as targets
from pytest_supervisor.report import metrics, writer
from pytest_supervisor.report.metrics import Measurements, percentile

pytestmark = pytest.mark.unit


def event(kind: str, mono: float, service: str | None = None, **fields: object) -> dict:
    return {"ts": 0.0, "mono": mono, "event": kind, "service": service, **fields}


def latency(seconds: float, delay: float = 0.0, service: str = "web") -> tuple[str, dict]:
    return (
        metrics.RESPAWN_LATENCY,
        {"supervisor": "supervisor", "service": service, "seconds": seconds,
         "cause": "SIGKILL to pid 1", "scheduled_delay": delay},
    )


def samples(rss: list[float], supervisor: str = "supervisor") -> tuple[str, dict]:
    rows = [
        {"elapsed": 0.5 * (index + 1), "rss_mb": value, "cpu_percent": 1.0,
         "tree_rss_mb": value + 20, "tree_cpu_percent": 2.0, "processes": 3}
        for index, value in enumerate(rss)
    ]
    return metrics.RESOURCE_SAMPLES, {"supervisor": supervisor, "interval": 0.5, "samples": rows}


def run_record(name: str = "supervisor", **fields: object) -> tuple[str, dict]:
    record = {"supervisor": name, "log": "/nonexistent/supervisor.log", "events": 4,
              "launch_to_all_running": 0.2, "shutdown": 0.1, "shutdown_limit": 10.0,
              "restarts": {"web": 2}, "self_respawns": 0}
    record.update(fields)
    return metrics.SUPERVISOR_RUN, record


# -- metrics -------------------------------------------------------------------------


def test_percentile_is_nearest_rank() -> None:
    values = [float(value) for value in range(20, 0, -1)]
    assert percentile(values, 50) == 10.0
    assert percentile(values, 95) == 19.0
    assert percentile(values, 100) == 20.0
    assert percentile([0.3], 95) == 0.3


def test_restarts_count_only_spawns_after_the_first_attempt() -> None:
    events = [
        event("spawned", 1.0, "web", attempt=1),
        event("spawned", 2.0, "web", attempt=2),
        event("spawned", 3.0, "web", attempt=3),
        event("spawned", 4.0, "db", attempt=1),
        event("spawned", 5.0, "web", attempt=1),  # started again by a person
    ]
    assert metrics.restarts_per_service(events) == {"web": 2, "db": 0}


def test_supervisor_run_times_start_up_and_shutdown_from_the_events(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "supervisor: {shutdown_timeout: 8}\n"
        "defaults: {stop_timeout: 3}\n"
        "services:\n"
        "  web: {command: [x], ready: {after: 0.1}, stop_timeout: 12}\n"
        "  db: {command: [x]}\n"
        "  manual: {command: [x], autostart: false}\n"
    )
    events = [
        event("supervisor_started", 100.1),
        event("spawned", 100.2, "db", pid=2, attempt=1),
        event("spawned", 100.3, "web", pid=3, attempt=1),
        event("ready", 100.6, "web", pid=3),
        event("spawned", 101.0, "manual", pid=4, attempt=1),
        event("stopping", 102.1, "web", pid=3, signal="SIGTERM"),
        event("supervisor_exiting", 102.5, code=0),
    ]
    record = metrics.supervisor_run(
        "main", events, launched=100.0, stop_requested=102.0,
        config_path=config, log_path=tmp_path / "supervisor.log",
    )
    assert record["launch_to_all_running"] == pytest.approx(0.6)  # web's `ready`, not `spawned`
    assert record["shutdown"] == pytest.approx(0.5)
    assert record["shutdown_limit"] == 8.0  # largest stop_timeout 12, capped by shutdown_timeout
    assert record["events"] == 7
    assert record["log"] == str(tmp_path / "supervisor.log")


def test_supervisor_run_without_every_service_running_or_a_stop(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("services: {web: {command: [x]}, db: {command: [x]}}\n")
    events = [event("spawned", 1.2, "web", pid=2, attempt=1), event("spawn_failed", 1.3, "db")]
    record = metrics.supervisor_run(
        "main", events, launched=1.0, stop_requested=None, config_path=config,
        log_path=tmp_path / "log",
    )
    assert record["launch_to_all_running"] is None
    assert record["shutdown"] is None
    assert record["shutdown_limit"] == metrics.DEFAULT_STOP_TIMEOUT


def test_a_config_the_supervisor_rejects_has_no_facts(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("services: [not, a, mapping]\n")
    assert metrics.read_config_facts(config) is None
    config.write_text("services: {web: {command: [x]\n")
    assert metrics.read_config_facts(config) is None


def test_measurements_summarize_what_was_recorded() -> None:
    measured = Measurements.from_properties(
        [
            (metrics.KILL, {"supervisor": "supervisor", "service": "web", "pid": 1, "signal": "x"}),
            latency(0.010),
            latency(3.020, delay=3.0),
            (metrics.RESPAWN_MISSED, {"supervisor": "supervisor", "service": "web",
                                      "cause": "c", "outcome": "given up"}),
            samples([20.0, 20.0, 30.0, 20.0, 21.0, 22.0, 22.0, 22.0]),
            run_record(),
            ["my_own_property", 5],  # a pair as xdist delivers it, and not a metric
        ]
    )
    summary = measured.summary()
    assert summary["respawn_latency_max"] == pytest.approx(3.020)
    assert summary["respawn_overhead_p95"] == pytest.approx(0.020)  # the 3 s delay is not counted
    assert summary["respawn_success_rate"] == pytest.approx(100 * 2 / 3)
    assert summary["kills_sent"] == 1
    assert summary["restarts"] == 2
    assert summary["rss_growth_mb"] == pytest.approx(2.0)  # quarters [20, 20] -> [22, 22]
    assert summary["peak_rss_mb"] == 30.0
    assert summary["leaked_processes"] == 0


def test_leaks_and_their_absence() -> None:
    leaked = Measurements.from_properties(
        [run_record(), (metrics.LEAKED_PROCESSES, {"supervisor": "supervisor",
                                                   "processes": ["pid 7: sleep 60", "pid 8: x"]})]
    )
    assert leaked.summary()["leaked_processes"] == 2
    assert "leaked_processes" not in Measurements.from_properties([latency(0.1)]).summary()


def test_a_malformed_record_is_named() -> None:
    with pytest.raises(metrics.MetricsDataError, match="respawn_latency record .*'seconds'"):
        Measurements.from_properties([(metrics.RESPAWN_LATENCY, {"service": "web"})])
    with pytest.raises(metrics.MetricsDataError, match="resource_samples record: .*'rss_mb'"):
        Measurements.from_properties(
            [(metrics.RESOURCE_SAMPLES, {"interval": 1, "samples": [{"elapsed": 1}]})]
        )


# -- targets ---------------------------------------------------------------------------


def verdicts_of(properties: list, **limits: object) -> dict[str, targets.Verdict]:
    resolved = targets.resolve(targets.DEFAULT_TARGETS, targets.validate(limits, "test"))
    judged = targets.evaluate(Measurements.from_properties(properties), resolved)
    return {verdict.target: verdict for verdict in judged}


def test_defaults_judge_only_what_was_measured() -> None:
    assert verdicts_of([latency(0.01)]).keys() == {"respawn_overhead_p95", "respawn_success_rate"}
    assert verdicts_of([]) == {}


def test_verdicts_say_value_comparison_and_limit() -> None:
    judged = verdicts_of([latency(0.9), latency(0.1)], respawn_overhead_p95=0.5)
    assert not judged["respawn_overhead_p95"].passed
    assert judged["respawn_overhead_p95"].detail == "0.9 s > 0.5 s"
    assert judged["respawn_success_rate"].detail == "100 % >= 100 %"


def test_shutdown_is_judged_against_each_supervisors_own_stop_timeout() -> None:
    properties = [
        run_record("quick", shutdown=2.0, shutdown_limit=1.0),
        run_record("slow", shutdown=9.0, shutdown_limit=10.0),
    ]
    worst = verdicts_of(properties)["shutdown"]
    assert (worst.passed, worst.detail) == (False, "quick: 2 s > 1 s")
    fixed = verdicts_of(properties, shutdown=5)["shutdown"]
    assert (fixed.passed, fixed.detail) == (False, "slow: 9 s > 5 s")


def test_later_targets_win_and_off_turns_one_off() -> None:
    properties = [
        latency(0.9),
        targets.metric_targets_entry({"respawn_overhead_p95": 2.0}, "first"),
        targets.metric_targets_entry({"respawn_overhead_p95": None}, "second"),
    ]
    resolved = targets.resolve(targets.DEFAULT_TARGETS, *targets.targets_in(properties))
    assert resolved["respawn_overhead_p95"] is None
    judged = targets.evaluate(Measurements.from_properties(properties), resolved)
    assert [verdict.target for verdict in judged] == ["respawn_success_rate"]


def test_ini_lines_are_parsed_and_every_bad_one_is_named() -> None:
    parsed = targets.parse_lines(["respawn_overhead_p95 = 0.2", "shutdown = off"], "tox.ini")
    assert parsed == {"respawn_overhead_p95": 0.2, "shutdown": None}
    with pytest.raises(targets.TargetError) as raised:
        targets.parse_lines(["respawn_p95 = 1", "rss_growth_mb = lots", "shutdown 5"], "tox.ini")
    assert str(raised.value).splitlines() == [
        "tox.ini: 'shutdown 5': expected 'name = limit'",
        "tox.ini: unknown metric target 'respawn_p95' (did you mean 'respawn_overhead_p95'?);"
        " known: " + ", ".join(targets.DEFINITIONS),
        "tox.ini: rss_growth_mb: expected a number >= 0 or off, got 'lots'",
    ]


def test_limits_from_yaml_and_python() -> None:
    # YAML reads a bare `off` as false; shutdown alone takes "stop_timeout".
    assert targets.validate({"shutdown": False, "rss_growth_mb": 3}, "s.yaml") == {
        "shutdown": None, "rss_growth_mb": 3.0
    }
    assert targets.validate({"shutdown": "stop_timeout"}, "s.yaml") == {"shutdown": "stop_timeout"}
    with pytest.raises(targets.TargetError, match=r"leaked_processes: expected a number >= 0"
                       r" or off, got 'stop_timeout'"):
        targets.validate({"leaked_processes": "stop_timeout"}, "s.yaml")
    with pytest.raises(targets.TargetError, match="got -1"):
        targets.metric_targets_entry({"shutdown": -1}, "s.yaml:3")
    with pytest.raises(targets.TargetError, match="got nan"):
        targets.validate({"shutdown": math.nan}, "s.yaml")


# -- where a test runs -------------------------------------------------------------------


def test_conclusion_adds_flat_properties_and_names_missed_targets() -> None:
    conclusion = report.conclude_test(
        [latency(0.9), run_record()], targets.DEFAULT_TARGETS, failed=False
    )
    added = dict(conclusion.properties)
    assert added["supervisor.respawn_latency_p95"] == 0.9
    assert added["supervisor.target.respawn_overhead_p95"] == "FAIL: 0.9 s > 0.5 s"
    assert added["supervisor.target.shutdown"] == "pass: supervisor: 0.1 s <= 10 s"
    assert conclusion.violation_message() == (
        "supervisor metric targets not met (--supervisor-enforce-metrics):\n"
        "    respawn_overhead_p95: 0.9 s > 0.5 s"
    )
    # A missed target attaches the log, like a failure: here it cannot be read.
    unreadable = Path("/nonexistent/supervisor.log")  # as this OS writes that path
    assert added[report.LOG_EXCERPT]["lines"][0].startswith(f"(cannot read {unreadable}: ")


def test_log_excerpts_only_for_failed_tests(tmp_path: Path) -> None:
    log = tmp_path / "supervisor.log"
    log.write_text("".join(f"line {number}\n" for number in range(100)))
    properties = [run_record(log=str(log))]
    passed = report.conclude_test(properties, targets.DEFAULT_TARGETS, failed=False)
    assert report.LOG_EXCERPT not in dict(passed.properties)
    failed = report.conclude_test(properties, targets.DEFAULT_TARGETS, failed=True)
    excerpt = dict(failed.properties)[report.LOG_EXCERPT]
    assert excerpt["supervisor"] == "supervisor"
    assert excerpt["lines"][-1] == "line 99" and len(excerpt["lines"]) == 20


# -- the document ----------------------------------------------------------------------


def phase(nodeid: str, when: str, outcome: str, *, xfail: bool = False,
          properties: tuple = (), keywords: tuple = ()) -> report.PhaseReport:
    return report.PhaseReport(nodeid, when, outcome, 0.25, "boom" if outcome == "failed" else None,
                              xfail, frozenset(keywords), properties)


def document_of(*phases: report.PhaseReport) -> dict:
    collector = report.ReportCollector(targets.DEFAULT_TARGETS)
    for reported in phases:
        collector.add_phase(reported)
    return collector.document(
        started=1_700_000_000.0, finished=1_700_000_002.5, exit_status=1, args=["-q"],
        rootdir=Path("/project"), machine={"node": "ci"}, commit={"id": None},
    )


def test_outcomes_count_like_pytest() -> None:
    runs = {
        "passed": ("passed", "passed", "passed"),
        "failed": ("passed", "failed", "passed"),
        "setup error": ("failed", None, "passed"),
        "teardown error": ("passed", "passed", "failed"),
        "skipped": ("skipped", None, "passed"),
    }
    reported = []
    for name, outcomes in runs.items():
        for when, outcome in zip(("setup", "call", "teardown"), outcomes):
            if outcome:
                reported.append(phase(name, when, outcome))
    reported += [phase("xfailed", "setup", "passed"), phase("xfailed", "call", "skipped",
                                                              xfail=True)]
    document = document_of(*reported)
    outcomes = {test["nodeid"]: test["outcome"] for test in document["tests"]}
    assert outcomes == {"passed": "passed", "failed": "failed", "setup error": "error",
                        "teardown error": "error", "skipped": "skipped", "xfailed": "xfailed"}
    assert document["summary"]["outcomes"] == {"passed": 1, "failed": 1, "error": 2,
                                               "skipped": 1, "xfailed": 1}


def test_a_test_entry_carries_its_phase_metrics_verdicts_and_own_properties() -> None:
    properties = (latency(0.9), ("build", "abc"), ("supervisor.respawn_latency_p95", 0.9))
    document = document_of(
        phase("t", "setup", "passed"),
        phase("t", "call", "failed", keywords=("t", "stress")),
        phase("t", "teardown", "passed", keywords=("t", "stress"), properties=properties),
    )
    (test,) = document["tests"]
    assert test["phase"] == "stress"
    assert test["duration"] == 0.75
    assert test["failure"] == "boom"
    assert test["metrics"]["respawns"]["latencies"][0]["seconds"] == 0.9
    assert [(v["target"], v["passed"]) for v in test["targets"]] == [
        ("respawn_overhead_p95", False), ("respawn_success_rate", True)
    ]
    assert test["properties"] == [["build", "abc"]]
    assert document["summary"]["phases"]["stress"]["targets_failed"] == 1
    assert document["schema_version"] == report.SCHEMA_VERSION
    assert document["created"] == "2023-11-14T22:13:22+00:00"


def test_files_are_plain_json_and_a_page(tmp_path: Path) -> None:
    properties = (("odd", {"ratio": math.inf, "path": Path("/x")}),)
    document = document_of(phase("t", "call", "passed", properties=properties))
    json_path, html_path = writer.write_report(document, tmp_path / "out")
    written = json.loads(json_path.read_text())  # strict JSON: no NaN or Infinity
    assert written["tests"][0]["properties"] == [
        ["odd", {"ratio": "inf", "path": str(Path("/x"))}]
    ]
    assert html_path.read_text().startswith("<!DOCTYPE html>")
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [
        "report.html", "report.json"
    ]


def test_commit_info_of_a_git_checkout_and_of_no_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without git (none on PATH; and the Windows Python under wine has none at all).
    with monkeypatch.context() as no_git:
        no_git.setenv("PATH", str(tmp_path))
        without = report.commit_info(tmp_path)
    assert (without["id"], without["project"]) == (None, tmp_path.name)
    assert without["error"] == "git is not installed"
    git_runs = shutil.which("git") is not None
    outside = report.commit_info(tmp_path)
    assert outside["id"] is None
    assert outside["error"] == ("not a git checkout" if git_runs else "git is not installed")
    if not git_runs:
        return  # a checkout cannot be made, nor read: what follows needs git

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True,
                              text=True).stdout.strip()

    git("init", "-q", "-b", "trunk")
    (tmp_path / "tracked").write_text("one")
    git("add", "tracked")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    clean = report.commit_info(tmp_path)
    assert clean["id"] == git("rev-parse", "HEAD")
    assert (clean["branch"], clean["dirty"], clean["project"]) == ("trunk", False, tmp_path.name)
    (tmp_path / "tracked").write_text("two")
    assert report.commit_info(tmp_path)["dirty"] is True


# -- the page --------------------------------------------------------------------------


def test_page_without_matplotlib_says_how_to_get_plots() -> None:
    document = document_of(phase("t", "call", "passed", properties=(latency(0.1),)))
    page = report_html.render(document, None)
    assert "The plots need matplotlib, which is not installed here" in page
    assert "<svg" not in page


def test_page_escapes_what_tests_wrote() -> None:
    document = document_of(phase("t[<script>alert(1)</script>]", "call", "failed"))
    page = report_html.render(document, None)
    assert "<script>" not in page
    assert "t[&lt;script&gt;alert(1)&lt;/script&gt;]" in page
