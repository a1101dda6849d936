"""The report's pytest hooks: thin wiring from pytest and pytest-xdist to
:mod:`pytest_supervisor.report.document`.

:func:`configure` registers one :class:`ReportingPlugin` per run and keeps it in
``config.stash``; it is an object rather than module hooks because
``pytest_runtest_logreport`` and ``pytest_collectreport`` receive no config.

Under pytest-xdist each worker judges its own tests (the data is there, and
``--supervisor-enforce-metrics`` must fail the test where it runs) and sends, through
xdist's public channels, its tests' measurements in their reports' ``user_properties``
and its machine facts in ``workeroutput``. Only the controller writes the report.

The report is written only when the run used the plugin (its fixtures, markers or scenario
files: :attr:`ReportingPlugin.used`) or named a report folder: a project that has the plugin
installed but does not use it gets nothing written and pays for no import of what reports
need (they are imported when the report is made).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generator

import pytest

if TYPE_CHECKING:
    from pytest_supervisor.report import metric_targets

REPORTING_KEY = pytest.StashKey["ReportingPlugin"]()
_FAILED_KEY = pytest.StashKey[bool]()  # a phase of this test failed
MARKER = "supervisor_metric_targets"
WORKER_OUTPUT_KEY = "pytest_supervisor_report"  # this plugin's entry in xdist's workeroutput


def add_options(parser: pytest.Parser, group: Any) -> None:
    group.addoption(
        "--supervisor-enforce-metrics",
        action="store_true",
        dest="supervisor_enforce_metrics",
        help="fail a test (at teardown) that missed one of its metric targets; without it"
        " missed targets are only reported.",
    )
    parser.addini(
        "supervisor_enforce_metrics",
        type="bool",
        default=False,
        help="ini form of --supervisor-enforce-metrics",
    )
    parser.addini(
        "supervisor_metric_targets",
        type="linelist",
        help="metric targets of this run, one 'name = limit' a line ('off' turns one off);"
        " see docs/reports.md for the names and defaults",
    )


def configure(config: pytest.Config, directory: Path, *, asked: bool) -> None:
    """Register the reporting hooks for this run, writing into ``directory`` (``asked``: a
    report folder was named, so the report is written even if the plugin goes unused)."""
    config.addinivalue_line(
        "markers",
        f"{MARKER}(**limits): this test's metric targets over the run's, e.g."
        " respawn_overhead_p95=1.0; None turns one off (see docs/reports.md)",
    )
    ini_lines = config.getini("supervisor_metric_targets")
    run_targets = None
    if ini_lines:  # checked now: a mistake there is a usage error of the whole run
        from pytest_supervisor.report import metric_targets

        origin = f"supervisor_metric_targets ({config.inipath.name if config.inipath else 'ini'})"
        try:
            ini_targets = metric_targets.parse_lines(ini_lines, origin)
        except metric_targets.TargetError as error:
            raise pytest.UsageError(f"pytest-supervisor: {error}") from None
        run_targets = metric_targets.resolve(metric_targets.DEFAULT_TARGETS, ini_targets)
    plugin = ReportingPlugin(
        directory,
        run_targets,
        asked=asked,
        enforce=bool(
            config.getoption("supervisor_enforce_metrics")
            or config.getini("supervisor_enforce_metrics")
        ),
        # Set by xdist on its workers only, before any plugin is configured.
        worker_output=getattr(config, "workeroutput", None),
    )
    config.stash[REPORTING_KEY] = plugin
    config.pluginmanager.register(plugin, "pytest_supervisor.report")


class ReportingPlugin:
    def __init__(
        self,
        directory: Path,
        run_targets: metric_targets.Targets | None,
        *,
        asked: bool,
        enforce: bool,
        worker_output: dict[str, Any] | None,
    ) -> None:
        self.directory = directory
        self._run_targets = run_targets  # None: the defaults, looked up when first needed
        self.asked = asked
        self.enforce = enforce
        self.used = False  # a test used the plugin (set at collection and by its fixtures)
        self._worker_output = worker_output
        # What the controller hears, kept as it came until it is known whether to report.
        self._phases: list[pytest.TestReport] = []
        self._collection_errors: list[pytest.CollectReport] = []
        self._workers: list[dict[str, Any]] = []
        self._started = time.time()
        self.written: tuple[Path, Path] | None = None
        self.write_error: str | None = None

    @property
    def run_targets(self) -> metric_targets.Targets:
        if self._run_targets is None:
            from pytest_supervisor.report import metric_targets

            self._run_targets = metric_targets.DEFAULT_TARGETS
        return self._run_targets

    @property
    def reporting(self) -> bool:
        return self.used or self.asked

    # -- where tests run -------------------------------------------------------------

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """The test's own targets, checked before it runs; they travel with its reports."""
        marker = item.get_closest_marker(MARKER)
        if marker is None:
            return
        from pytest_supervisor.report import metric_targets

        origin = f"@pytest.mark.{MARKER} of {item.nodeid}"
        if marker.args:
            pytest.fail(f"{origin}: takes targets as keywords, e.g. shutdown=5", pytrace=False)
        try:
            item.user_properties.append(metric_targets.metric_targets_entry(marker.kwargs, origin))
        except metric_targets.TargetError as error:
            pytest.fail(str(error), pytrace=False)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, Any, None]:
        """Judge the test once its teardown (where the harness records the last data) is done."""
        outcome = yield
        phase_report: pytest.TestReport = outcome.get_result()
        failed = item.stash.get(_FAILED_KEY, False) or phase_report.failed
        item.stash[_FAILED_KEY] = failed
        if phase_report.when != "teardown" or not self.reporting:
            return
        from pytest_supervisor.report import document as reporting

        conclusion = reporting.conclude_test(
            phase_report.user_properties, self.run_targets, failed=failed
        )
        phase_report.user_properties.extend(conclusion.properties)
        if conclusion.violations and self.enforce and not failed:
            phase_report.outcome = "failed"
            phase_report.longrepr = conclusion.violation_message()

    # -- where the run is reported ----------------------------------------------------

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self._worker_output is None:
            self._phases.append(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if self._worker_output is None and report.failed:
            self._collection_errors.append(report)

    @pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: absent without xdist
    def pytest_testnodedown(self, node: Any, error: object) -> None:
        # A worker that crashed sent no workeroutput; its id is still in its workerinput.
        sent = dict(getattr(node, "workeroutput", {}).get(WORKER_OUTPUT_KEY) or {
            "id": getattr(node, "workerinput", {}).get("workerid")
        })
        self.used = self.used or bool(sent.pop("used", False))
        self._workers.append({**sent, "error": None if error is None else str(error)})

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self._worker_output is not None:
            from pytest_supervisor.report import document as reporting

            self._worker_output[WORKER_OUTPUT_KEY] = {
                "id": os.environ.get("PYTEST_XDIST_WORKER"),
                "used": self.used,
                "machine_info": reporting.machine_info() if self.reporting else {},
            }
            return
        config = session.config
        if not self.reporting or config.getoption("collectonly"):
            return
        from pytest_supervisor.report import document as reporting
        from pytest_supervisor.report import writer

        collector = reporting.ReportCollector(self.run_targets)
        for phase in self._phases:
            collector.add_phase(reporting.PhaseReport.of(phase))
        for failed in self._collection_errors:
            collector.add_collection_error(failed.nodeid, failed.longreprtext)
        for worker in self._workers:
            collector.add_worker(worker)
        document = collector.document(
            started=self._started,
            finished=time.time(),
            exit_status=int(exitstatus),
            args=config.invocation_params.args,
            rootdir=config.rootpath,
            machine=reporting.machine_info(),
            commit=reporting.commit_info(config.rootpath),
        )
        try:
            self.written = writer.write_report(document, self.directory)
        except OSError as error:
            self.write_error = f"cannot write the supervisor report into {self.directory}: {error}"

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.write_error:
            terminalreporter.write_sep("-", self.write_error, red=True)
        elif self.written:
            json_path, html_path = self.written
            terminalreporter.write_sep("-", f"supervisor report: {html_path} and {json_path.name}")
