"""The CI reports of a test run: ``report.json`` and ``report.html`` (see docs/reports.md).

Two halves, so that one merged report comes out of a pytest-xdist run:

- Where a test runs (a worker, or the only process), :func:`conclude_test` judges the
  test's measurements against its targets once its teardown has recorded the last of
  them, and gives what to add to the teardown report: flat ``supervisor.*`` properties
  for JUnit XML and, for a failed test, the tail of each supervisor's log.
- Where the run is reported (the xdist controller, or the only process), a
  :class:`ReportCollector` receives every test report -- a worker's arrive with their
  ``user_properties`` -- and each worker's facts from its ``workeroutput``, and
  :func:`pytest_supervisor.report.writer.write_report` writes the files.

Metrics and verdicts are computed from the recorded measurements by the same code in
both places; only measurements and targets travel. Nothing here needs pytest: the
hooks hand in report objects and plain values.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import psutil

from pytest_supervisor import diagnostics
from pytest_supervisor.report import conformance, metric_targets, metrics
from pytest_supervisor.resources import MB
from pytest_supervisor.settings import PHASES

SCHEMA = "pytest-supervisor-report"
SCHEMA_VERSION = 1

NO_PHASE = "no phase"  # the summary's group of tests without a phase marker
LOG_EXCERPT = "supervisor_log_excerpt"  # {supervisor, log, lines}: added for failed tests
JUNIT_PREFIX = "supervisor."  # flat copies of metrics and verdicts, for JUnit XML readers
# Recorded by the harness but shown through the metrics, not as plain properties.
_MEASUREMENTS = frozenset(
    {
        metrics.KILL,
        metrics.RESPAWN_LATENCY,
        metrics.RESPAWN_MISSED,
        metrics.RESOURCE_SAMPLES,
        metrics.SUPERVISOR_RUN,
        metrics.LEAKED_PROCESSES,
        "supervisor_events",  # its count is in supervisor_run too
        metric_targets.METRIC_TARGETS,
        LOG_EXCERPT,
    }
)
# A failure's text beyond this is cut (the start says what failed, the end says where).
FAILURE_TEXT_LIMIT = 20_000


# -- where a test runs ----------------------------------------------------------------


@dataclass(frozen=True)
class Conclusion:
    """What a test's teardown report gets, and the targets it missed."""

    properties: list[tuple[str, object]]
    violations: list[metric_targets.Verdict]

    def violation_message(self) -> str:
        lines = ["supervisor metric targets not met (--supervisor-enforce-metrics):"]
        lines += [f"    {verdict.target}: {verdict.detail}" for verdict in self.violations]
        return "\n".join(lines)


def conclude_test(
    properties: Sequence[Sequence[Any]], run_targets: metric_targets.Targets, *, failed: bool
) -> Conclusion:
    """Judge one finished test from its ``user_properties``.

    ``run_targets`` are the run's targets (defaults with the ini's changes); the test's
    own ``metric_targets`` entries apply over them. ``failed``: a phase of the test failed,
    so each supervisor's log tail is attached.
    """
    try:
        measured = metrics.Measurements.from_properties(properties)
    except metrics.MetricsDataError as error:
        return Conclusion([(JUNIT_PREFIX + "metrics_error", str(error))], [])
    resolved = metric_targets.resolve(run_targets, *metric_targets.targets_in(properties))
    verdicts = metric_targets.evaluate(measured, resolved)
    added: list[tuple[str, object]] = [
        (JUNIT_PREFIX + name, round(value, 6)) for name, value in measured.summary().items()
    ]
    added += [
        (f"{JUNIT_PREFIX}target.{verdict.target}", f"{verdict.outcome}: {verdict.detail}")
        for verdict in verdicts
    ]
    violations = [verdict for verdict in verdicts if not verdict.passed]
    if failed or violations:
        added += [(LOG_EXCERPT, _log_excerpt(run)) for run in measured.runs if run.get("log")]
    return Conclusion(added, violations)


def _log_excerpt(run: Mapping[str, Any]) -> dict[str, object]:
    path = Path(str(run["log"]))
    lines = diagnostics.log_tail(path)
    return {"supervisor": run.get("supervisor"), "log": str(path), "lines": lines}


# -- where the run is reported ---------------------------------------------------------


@dataclass(frozen=True)
class PhaseReport:
    """The parts of one pytest ``TestReport`` (setup, call or teardown) the report uses."""

    nodeid: str
    when: str
    outcome: str  # passed | failed | skipped
    duration: float
    failure: str | None
    xfail: bool  # the test is marked xfail and its outcome was judged against that
    keywords: frozenset[str]
    properties: tuple[tuple[str, Any], ...]
    skip_reason: str | None = None

    @classmethod
    def of(cls, report: Any) -> PhaseReport:
        """From a ``pytest.TestReport`` (or one rebuilt by xdist from a worker's)."""
        return cls(
            nodeid=report.nodeid,
            when=report.when,
            outcome=report.outcome,
            duration=float(report.duration),
            failure=report.longreprtext if report.failed else None,
            xfail=hasattr(report, "wasxfail"),
            keywords=frozenset(report.keywords),
            properties=tuple((str(name), value) for name, value in report.user_properties),
            skip_reason=_skip_reason(report),
        )


@dataclass
class _TestRecord:
    nodeid: str
    phases: dict[str, PhaseReport] = field(default_factory=dict)

    def outcome(self) -> str:
        """One word, as pytest's summary counts it: passed, failed, error, skipped, x..."""
        setup, call, teardown = (self.phases.get(when) for when in ("setup", "call", "teardown"))
        if setup is not None and setup.outcome != "passed":
            return "error" if setup.outcome == "failed" else "skipped"
        if call is not None and call.xfail:
            return "xfailed" if call.outcome == "skipped" else "xpassed"
        if call is not None and call.outcome != "passed":
            return call.outcome
        if teardown is not None and teardown.outcome == "failed":
            return "error"
        return "passed"

    def as_json(self, run_targets: metric_targets.Targets) -> dict[str, Any]:
        last = list(self.phases.values())[-1]  # the teardown's holds every property
        failures = [phase.failure for phase in self.phases.values() if phase.failure]
        entry: dict[str, Any] = {
            "nodeid": self.nodeid,
            "phase": next((name for name in PHASES if name in last.keywords), None),
            "outcome": self.outcome(),
            "duration": sum(phase.duration for phase in self.phases.values()),
            "phases": {
                when: {"outcome": phase.outcome, "duration": phase.duration}
                for when, phase in self.phases.items()
            },
            "failure": _clip("\n\n".join(failures)) if failures else None,
            "skip_reason": next(
                (phase.skip_reason for phase in self.phases.values() if phase.skip_reason), None
            ),
            "log_excerpts": [value for name, value in last.properties if name == LOG_EXCERPT],
            "metrics": None,
            "targets": [],
            "properties": [
                [name, value]
                for name, value in last.properties
                if name not in _MEASUREMENTS and not name.startswith(JUNIT_PREFIX)
            ],
        }
        try:
            measured = metrics.Measurements.from_properties(last.properties)
        except metrics.MetricsDataError as error:
            entry["metrics_error"] = str(error)
            return entry
        if measured.measured_anything:
            entry["metrics"] = measured.as_json()
        resolved = metric_targets.resolve(run_targets, *metric_targets.targets_in(last.properties))
        verdicts = metric_targets.evaluate(measured, resolved)
        entry["targets"] = [verdict.as_json() for verdict in verdicts]
        return entry


class ReportCollector:
    """Everything reported about a run, turned into the ``report.json`` document."""

    def __init__(self, run_targets: metric_targets.Targets) -> None:
        self.run_targets = run_targets
        self._tests: dict[str, _TestRecord] = {}
        self._collection_errors: list[dict[str, str]] = []
        self._workers: list[dict[str, Any]] = []

    def add_phase(self, phase: PhaseReport) -> None:
        self._tests.setdefault(phase.nodeid, _TestRecord(phase.nodeid)).phases[phase.when] = phase

    def add_collection_error(self, nodeid: str, text: str) -> None:
        self._collection_errors.append({"nodeid": nodeid, "failure": _clip(text)})

    def add_worker(self, worker: Mapping[str, Any]) -> None:
        self._workers.append(dict(worker))

    def document(
        self,
        *,
        started: float,
        finished: float,
        exit_status: int,
        args: Sequence[str],
        rootdir: Path,
        machine: Mapping[str, Any],
        commit: Mapping[str, Any],
    ) -> dict[str, Any]:
        tests = [record.as_json(self.run_targets) for record in self._tests.values()]
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "created": _iso(finished),
            "started": _iso(started),
            "duration": finished - started,
            "exit_status": exit_status,
            "invocation": {"args": list(args), "rootdir": str(rootdir)},
            "machine_info": dict(machine),
            "commit_info": dict(commit),
            "workers": sorted(self._workers, key=lambda worker: str(worker.get("id"))),
            "targets": {
                name: {
                    "description": definition.description,
                    "unit": definition.unit,
                    "comparison": "<=" if definition.at_most else ">=",
                    "default": definition.default,
                    "run": self.run_targets.get(name),
                }
                for name, definition in metric_targets.DEFINITIONS.items()
            },
            "summary": _summary(tests),
            "conformance": conformance.table(tests),
            "tests": tests,
            "collection_errors": list(self._collection_errors),
        }


def _summary(tests: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    def tally(group: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        outcomes: dict[str, int] = {}
        for test in group:
            outcomes[test["outcome"]] = outcomes.get(test["outcome"], 0) + 1
        verdicts = [verdict for test in group for verdict in test["targets"]]
        return {
            "tests": len(group),
            "outcomes": outcomes,
            "duration": sum(test["duration"] for test in group),
            "targets_judged": len(verdicts),
            "targets_failed": sum(1 for verdict in verdicts if not verdict["passed"]),
        }

    groups = [*PHASES, NO_PHASE]
    by_phase = {
        group: tally([test for test in tests if phase_group(test) == group]) for group in groups
    }
    return {
        **tally(tests),
        "phases": {group: counts for group, counts in by_phase.items() if counts["tests"]},
    }


def phase_group(test: Mapping[str, Any]) -> str:
    """The phase a test entry is counted under: its phase, or NO_PHASE."""
    return test["phase"] or NO_PHASE


# -- facts about the run -----------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """Where the tests ran, with the fields pytest-benchmark uses where they overlap."""
    return {
        "node": platform.node(),
        "system": platform.system(),
        "release": platform.release(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "memory_total_mb": round(psutil.virtual_memory().total / MB),
        "python_implementation": platform.python_implementation(),
        "python_version": platform.python_version(),
        "python_compiler": platform.python_compiler(),
        "python_executable": sys.executable,
    }


def commit_info(directory: Path) -> dict[str, Any]:
    """The git commit the tests ran on: id, times, branch, and whether tracked files changed.

    Outside a git checkout (or without git) ``id`` is None and ``error`` says why.
    """
    described = _git(directory, "show", "-s", "--format=%H%n%cI%n%aI", "HEAD")
    if isinstance(described, Exception):
        return {"id": None, "project": directory.name, "error": str(described)}
    commit_id, commit_time, author_time = (described.splitlines() + ["", "", ""])[:3]
    branch = _git(directory, "rev-parse", "--abbrev-ref", "HEAD")
    changes = _git(directory, "status", "--porcelain", "--untracked-files=no")
    return {
        "id": commit_id,
        "time": commit_time,
        "author_time": author_time,
        "branch": None if isinstance(branch, Exception) or branch == "HEAD" else branch,
        "dirty": None if isinstance(changes, Exception) else bool(changes),
        "project": directory.name,
    }


# What git's errors (in English: LC_ALL=C) mean for the report, in its words.
_GIT_ERRORS = (
    ("not a git repository", "not a git checkout"),
    ("does not have any commits", "a git checkout without any commit yet"),
    ("unknown revision or path", "a git checkout without any commit yet"),
    ("dubious ownership", "a git checkout of another user, which git refuses to read"),
)


def _git(directory: Path, *args: str) -> str | Exception:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=str(directory),
            capture_output=True,
            text=True,
            timeout=10,
            env={**os.environ, "LC_ALL": "C"},
        )
    except FileNotFoundError:
        return RuntimeError("git is not installed")
    except (OSError, subprocess.SubprocessError) as error:
        return RuntimeError(f"cannot run git: {error}")
    if done.returncode != 0:
        said = done.stderr.strip()
        for words, meaning in _GIT_ERRORS:
            if words in said:
                return RuntimeError(meaning)
        first = said.splitlines()[0] if said else f"exit status {done.returncode}"
        return RuntimeError(f"git {args[0]} failed: {first}")
    return done.stdout.strip()


def _skip_reason(report: Any) -> str | None:
    """Why a skipped phase was skipped (pytest keeps it as ``(path, line, "Skipped: why")``)."""
    longrepr = getattr(report, "longrepr", None)
    if report.outcome != "skipped" or not isinstance(longrepr, tuple) or len(longrepr) != 3:
        return None
    reason = str(longrepr[2])
    return reason[len("Skipped: ") :] if reason.startswith("Skipped: ") else reason


def _clip(text: str) -> str:
    if len(text) <= FAILURE_TEXT_LIMIT:
        return text
    half = FAILURE_TEXT_LIMIT // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters cut ...]\n{text[-half:]}"


def _iso(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
    return moment.isoformat(timespec="seconds")
