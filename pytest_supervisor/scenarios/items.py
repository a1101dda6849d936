"""Scenario files as pytest items, built through public pytest API.

Each scenario (a file, or one combination of its ``matrix``) becomes a
``pytest.Function`` whose callable asks for the plugin's fixtures, so everything that
works on a test function works here: fixtures and autouse fixtures, ``-k``, ``-m``,
``--phase`` (the ``phase`` is a marker), pytest-xdist, and pytest-timeout (the
``timeout`` becomes its marker). A file that fails validation is one item that fails
with the problems listed, so that the other files still run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Tuple

import pytest

from pytest_supervisor import wine
from pytest_supervisor.dummy_command import DummyService
from pytest_supervisor.factory import SupervisorFactory
from pytest_supervisor.report.metric_targets import METRIC_TARGETS
from pytest_supervisor.scenarios.document import ScenarioFileError
from pytest_supervisor.scenarios.loader import Scenario, load_scenarios
from pytest_supervisor.scenarios.runner import ScenarioFailure, ScenarioRunner
from pytest_supervisor.targets import CONFORMANCE, conformance_case


class ScenarioFile(pytest.File):
    """One scenario file: its scenarios, or one failing item naming its problems."""

    def __init__(self, *, stress_scale: float, targets: Tuple[str, ...], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stress_scale = stress_scale
        self.targets = targets

    def collect(self) -> Iterator[pytest.Item]:
        shown_as = _shown(self.path, self.config.rootpath)
        try:
            scenarios = load_scenarios(self.path, shown_as, self.stress_scale)
        except ScenarioFileError as error:
            line = error.problems[0].position.line if error.problems[0].position else 1
            yield ScenarioItem.from_parent(
                self,
                name=self.path.stem,
                callobj=_invalid_file(str(error)),
                place=(line, "invalid scenario file"),
            )
            return
        for scenario in scenarios:
            # A scenario naming its target runs on it; else on each target of the run.
            targets = (scenario.target,) if scenario.target else self.targets
            for target in targets:
                name = scenario.test_name
                if len(targets) > 1:  # one item per target: the conformance table's rows
                    name = f"{name[:-1]}-{target}]" if name.endswith("]") else f"{name}[{target}]"
                item = ScenarioItem.from_parent(
                    self,
                    name=name,
                    callobj=_scenario_test(scenario),
                    place=(1, f"scenario: {scenario.name}"),
                    target=target,
                )
                _add_markers(item, scenario)
                if len(targets) > 1:
                    case = conformance_case(item.nodeid, target)
                    item.user_properties.append((CONFORMANCE, {"case": case, "target": target}))
                if scenario.metric_targets is not None:
                    item.user_properties.append((METRIC_TARGETS, scenario.metric_targets))
                yield item


class ScenarioItem(pytest.Function):
    """A scenario; reported at its YAML file rather than at the Python that runs it."""

    def __init__(
        self, *, place: Tuple[int, str], target: Optional[str] = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.place = place
        self.supervisor_target = target  # read by the supervisor_target fixture

    def reportinfo(self) -> Tuple[Path, int, str]:
        line, description = self.place
        return self.path, line - 1, description  # pytest counts lines from 0


def _add_markers(item: pytest.Item, scenario: Scenario) -> None:
    item.add_marker(getattr(pytest.mark, scenario.phase))
    if scenario.platforms is not None and not any(
        sys.platform.startswith(platform) for platform in scenario.platforms
    ):
        item.add_marker(
            pytest.mark.skip(
                reason=f"scenario for {', '.join(scenario.platforms)}; this is {sys.platform}"
            )
        )
    if scenario.skip_under_wine is not None and wine.under_wine():
        item.add_marker(pytest.mark.skip(reason=f"under wine: {scenario.skip_under_wine}"))
    # Without pytest-timeout the marker would be unknown (an error under --strict-markers);
    # every step has its own timeout anyway.
    if scenario.timeout is not None and item.config.pluginmanager.hasplugin("timeout"):
        item.add_marker(pytest.mark.timeout(scenario.timeout))


def _scenario_test(scenario: Scenario) -> Callable[..., None]:
    # The parameter names are the fixtures pytest passes in.
    def run_scenario(
        supervisor_factory: SupervisorFactory,
        dummy_service: DummyService,
        tmp_path: Path,
        record_property: Callable[[str, object], None],
    ) -> None:
        runner = ScenarioRunner(
            scenario,
            supervisor_factory,
            placeholders={
                "python": sys.executable,
                "dummy": str(dummy_service.folder),
                "tmp": str(tmp_path),
            },
            workdir=tmp_path,
            record=record_property,
            skip=pytest.skip,
        )
        try:
            runner.run()
        except ScenarioFailure as failure:
            report = str(failure)
        else:
            return
        # Outside the except block, so that the report is not shown twice, chained.
        pytest.fail(report, pytrace=False)

    return run_scenario


def _invalid_file(problems: str) -> Callable[[], None]:
    def invalid_scenario_file() -> None:
        pytest.fail(problems, pytrace=False)

    return invalid_scenario_file


def _shown(path: Path, rootpath: Path) -> str:
    """The file as messages name it: relative to the rootdir when it is inside."""
    try:
        return str(path.relative_to(rootpath))
    except ValueError:
        return os.fspath(path)
