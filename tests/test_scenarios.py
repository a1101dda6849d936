"""YAML scenarios: every validation error in its exact words, the runner against the real
supervisor without pytest, and scenario files collected and run by pytest (pytester)."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import textwrap
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import List, Tuple

import pytest
import yaml
from process_helpers import HARD_KILL, ROOT

from pytest_supervisor import DummyService, SupervisorFactory, process_limits
from pytest_supervisor.scenarios.document import ScenarioFileError
from pytest_supervisor.scenarios.loader import fill_yaml_placeholders, load_scenarios
from pytest_supervisor.scenarios.runner import ScenarioFailure, ScenarioRunner

pytest_plugins = ["pytester"]


# A config with two services, for the cases that need steps about services.
HEAD = """\
name: n
phase: integration
config:
  services:
    web: {command: x}
    api: {command: x}
"""
STEP_KINDS = (
    "start, wait, expect_event, kill, signal, expect_respawn, expect_no_respawn, expect_state,"
    " expect_exit, expect_no_leaks, measure, sleep, check, repeat"
)
SIGNALS = "graceful_stop, hard_kill, reload, interrupt, reexec, inject_fault"
EVENTS = (
    "supervisor_started, spawned, spawn_failed, ready, exited, leftovers_stopped,"
    " restart_scheduled, gave_up, stopping, stopped, adopted, self_respawn, reloaded,"
    " supervisor_exiting"
)

# (file content, every line of the error) -- one case per kind of error.
INVALID = {
    "yaml syntax": (
        "name: n\nphase: [unit\nsteps: []\n",
        "s.yaml:3:6: not valid YAML: while parsing a flow sequence: expected ',' or ']',"
        " but got ':'",
    ),
    "second document": (
        "name: n\n---\nname: m\n",
        "s.yaml:3:1: a scenario file holds one YAML document; this is a second one",
    ),
    "empty file": (
        "",
        "s.yaml: expected a mapping with the keys name, phase, steps (and config),"
        " got an empty file",
    ),
    "not a mapping": (
        "- start: {}\n",
        "s.yaml:1:1: expected a mapping with the keys name, phase, steps (and config),"
        " got [{'start': {}}]",
    ),
    "duplicate key": (
        "name: n\nphase: unit\nname: m\nsteps: [{sleep: 1}]\n",
        "s.yaml:3:1: name: duplicate key (first given at line 1)",
    ),
    "key not text": (
        "name: n\nphase: unit\n1: x\nsteps: [{sleep: 1}]\n",
        "s.yaml:3:1: 1: keys must be text, got 1",
    ),
    "unknown top-level key": (
        "name: n\nphase: unit\nstep: [{sleep: 1}]\n",
        "s.yaml:3:1: step: unknown key (did you mean 'steps'?); known: name, phase, platforms,"
        " skip_under_wine, target, timeout, config, config_file, matrix, metric_targets, steps\n"
        "s.yaml:1:1: steps: missing: this key is required",
    ),
    "bad phase": (
        "name: n\nphase: integraton\nsteps: [{sleep: 1}]\n",
        "s.yaml:2:8: phase: expected one of unit, integration, stress; got 'integraton'"
        " (did you mean 'integration'?)",
    ),
    "bad platform": (
        "name: n\nphase: unit\nplatforms: [linx]\nsteps: [{sleep: 1}]\n",
        "s.yaml:3:13: platforms[0]: expected one of linux, darwin, win32; got 'linx'"
        " (did you mean 'linux'?)",
    ),
    "no steps": (
        "name: n\nphase: unit\nsteps: []\n",
        "s.yaml:3:8: steps: expected at least one step",
    ),
    "step with two kinds": (
        HEAD + "steps:\n  - start: {}\n    wait: {event: spawned}\n",
        "s.yaml:8:5: step 0: steps[0]: expected a step: a mapping with one key, the step kind;"
        " got start, wait",
    ),
    "unknown step kind": (
        HEAD + "steps:\n  - start: {}\n  - kil: {service: web}\n",
        f"s.yaml:9:5: step 1 (kil): steps[1].kil: unknown step kind (did you mean 'kill'?);"
        f" known: {STEP_KINDS}",
    ),
    "unknown step key": (
        HEAD + "steps:\n  - start: {}\n  - kill: {service: web, sginal: SIGTERM}\n",
        "s.yaml:9:26: step 1 (kill): steps[1].kill.sginal: unknown key (did you mean"
        " 'signal'?); known: service, signal",
    ),
    "missing step key": (
        HEAD + "steps:\n  - start: {}\n  - expect_respawn: {service: web}\n",
        "s.yaml:9:21: step 1 (expect_respawn): steps[1].expect_respawn.within: missing: this"
        " key is required",
    ),
    "bad signal": (
        HEAD + "steps:\n  - start: {}\n  - kill: {service: web, signal: SIGKIL}\n",
        "s.yaml:9:34: step 1 (kill): steps[1].kill.signal: expected a signal: a POSIX name"
        f" such as SIGTERM, or one of {SIGNALS}; got 'SIGKIL' (did you mean 'SIGKILL'?)",
    ),
    "unknown service": (
        HEAD + "steps:\n  - start: {}\n  - kill: {service: wbe}\n",
        "s.yaml:9:21: step 1 (kill): steps[1].kill.service: expected a service of the config"
        " (web, api); got 'wbe' (did you mean 'web'?)",
    ),
    "pattern matching nothing": (
        HEAD + "steps:\n  - start: {}\n  - kill: {service: 'db-*'}\n",
        "s.yaml:9:21: step 1 (kill): steps[1].kill.service: the pattern 'db-*' matches no"
        " service of the config (web, api)",
    ),
    "unknown event": (
        HEAD + "steps:\n  - start: {}\n  - wait: {event: spawn}\n",
        "s.yaml:9:19: step 1 (wait): steps[1].wait.event: expected an event of the stream"
        f" (SPEC section 4): {EVENTS}; got 'spawn' (did you mean 'spawned'?)",
    ),
    "unknown state": (
        HEAD + "steps:\n  - start: {}\n  - expect_state: {service: web, state: runing}\n",
        "s.yaml:9:41: step 1 (expect_state): steps[1].expect_state.state: expected one of"
        " stopped, starting, running, backoff, stopping, exited, fatal; got 'runing'"
        " (did you mean 'running'?)",
    ),
    "bad number": (
        HEAD + "steps:\n  - start: {}\n  - expect_exit: {within: soon}\n",
        "s.yaml:9:27: step 1 (expect_exit): steps[1].expect_exit.within: expected a number > 0"
        " or 'N * stress_scale [+ M]', got 'soon'",
    ),
    "bad whole number": (
        "name: n\nphase: unit\nconfig:\n  services:\n    web: {count: 0, command: x}\n"
        "steps:\n  - start: {}\n",
        "s.yaml:5:18: config.services.web.count: expected a whole number >= 1, got 0",
    ),
    "not_before after within": (
        HEAD + "steps:\n  - start: {}\n  - expect_respawn: {service: web, within: 1,"
        " not_before: 2}\n",
        "s.yaml:9:59: step 1 (expect_respawn): steps[1].expect_respawn.not_before: expected"
        " at most within (1), got 2",
    ),
    "success rate of one service": (
        HEAD + "steps:\n  - start: {}\n  - expect_respawn: {service: web, within: 1,"
        " min_success_rate: 0.5}\n",
        "s.yaml:9:65: step 1 (expect_respawn): steps[1].expect_respawn.min_success_rate:"
        " applies to a pattern of services (such as 'web-*'), not to one service",
    ),
    "bad regular expression": (
        HEAD + "steps:\n  - start: {}\n  - expect_event: {event: exited, matching: {error: '['}}\n",
        "s.yaml:9:53: step 1 (expect_event): steps[1].expect_event.matching.error: expected a"
        " regular expression: unterminated character set at position 0",
    ),
    "growth from too few samples": (
        HEAD + "steps:\n  - start: {}\n  - measure: {duration: 1, max_rss_growth_mb: 1}\n",
        "s.yaml:9:47: step 1 (measure): steps[1].measure.max_rss_growth_mb: a growth trend"
        " needs at least 3 samples: make duration / interval >= 3",
    ),
    "step before start": (
        HEAD + "steps:\n  - kill: {service: web}\n",
        "s.yaml:8:11: step 0 (kill): steps[0].kill: needs a running supervisor: put a `start`"
        " step before it",
    ),
    "second start": (
        HEAD + "steps:\n  - start: {}\n  - start: {}\n",
        "s.yaml:9:12: step 1 (start): steps[1].start: a scenario starts one supervisor;"
        " it already did",
    ),
    "nested step": (
        HEAD + "steps:\n  - start: {}\n  - repeat:\n      times: 2\n      steps:\n"
        "        - kill: {service: web, signal: TERM}\n",
        "s.yaml:12:40: step 1 (repeat) > step 0 (kill): steps[1].repeat.steps[0].kill.signal:"
        f" expected a signal: a POSIX name such as SIGTERM, or one of {SIGNALS}; got 'TERM'"
        " (did you mean 'SIGTERM'?)",
    ),
    "start in a repeat": (
        HEAD + "steps:\n  - repeat: {times: 2, steps: [{start: {}}]}\n",
        "s.yaml:8:40: step 0 (repeat) > step 0 (start): steps[0].repeat.steps[0].start:"
        " a scenario starts one supervisor: not in a repeat",
    ),
    "config and config_file": (
        HEAD + "config_file: services.yaml\nsteps:\n  - start: {}\n",
        "s.yaml:7:14: config_file: give either config or config_file, not both",
    ),
    "config_file missing": (
        "name: n\nphase: unit\nconfig_file: nowhere.yaml\nsteps:\n  - start: {}\n",
        "s.yaml:3:14: config_file: cannot read {folder}/nowhere.yaml: No such file or directory",
    ),
    "expect_state without a control socket": (
        "name: n\nphase: unit\nconfig_file: nosocket.yaml\nsteps:\n  - start: {}\n"
        "  - expect_state: {service: web, state: running}\n",
        "s.yaml:3:14: config_file: expect_state asks the supervisor through its control socket,"
        " which nosocket.yaml turns off (supervisor.control_socket: false)",
    ),
    "check without a config": (
        "name: n\nphase: unit\nsteps:\n  - check: {expect_exit: 0}\n",
        "s.yaml:4:12: step 0 (check): steps[0].check: expected either config (YAML text) or"
        " config_file",
    ),
    "unknown placeholder": (
        "name: n\nphase: unit\nconfig:\n  services:\n    web: {command: ['{pyhton}', x]}\n"
        "steps:\n  - start: {}\n",
        "s.yaml:5:21: config.services.web.command[0]: unknown placeholder {pyhton} (did you mean"
        " {python}?); known here: {python}, {dummy}, {tmp} and the matrix names (write"
        " {{pyhton}} for a literal)",
    ),
    "empty matrix": (
        "name: n\nphase: unit\nmatrix: {signal: []}\nsteps: [{sleep: 1}]\n",
        "s.yaml:3:18: matrix.signal: expected a non-empty list of values",
    ),
    "matrix value not a scalar": (
        "name: n\nphase: unit\nmatrix: {signal: [{a: 1}]}\nsteps: [{sleep: 1}]\n",
        "s.yaml:3:19: matrix.signal[0]: expected text, a number or a boolean, got {'a': 1}",
    ),
    "matrix name taken": (
        "name: n\nphase: unit\nmatrix: {python: [a]}\nsteps: [{sleep: 1}]\n",
        "s.yaml:3:10: matrix.python: expected a name made of letters, digits and '_' that is not"
        " one of the placeholders {python}, {dummy}, {tmp}, {file}, {index}",
    ),
    "unknown metric target": (
        "name: n\nphase: unit\nmetric_targets: {respawn_overhead_p59: 1}\nsteps: [{sleep: 1}]\n",
        "s.yaml:3:40: metric_targets.respawn_overhead_p59: unknown metric target"
        " 'respawn_overhead_p59' (did you mean 'respawn_overhead_p95'?); known:"
        " respawn_overhead_p95, respawn_success_rate, leaked_processes, shutdown, rss_growth_mb",
    ),
}


def write_scenario(folder: Path, text: str, name: str = "s.yaml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text), "utf-8")
    return path


# -- validation: each kind of error, word for word -----------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("text, expected", INVALID.values(), ids=INVALID.keys())
def test_each_kind_of_error_names_where_and_what(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "plain.yaml").write_text("services:\n  web: {command: x}\n", "utf-8")
    (tmp_path / "nosocket.yaml").write_text(
        "supervisor: {control_socket: false}\nservices:\n  web: {command: x}\n", "utf-8")
    path = write_scenario(tmp_path, text)
    with pytest.raises(ScenarioFileError) as raised:
        load_scenarios(path, "s.yaml")
    assert str(raised.value) == expected.replace("{folder}/", f"{tmp_path}{os.sep}")


@pytest.mark.unit
def test_every_problem_of_a_file_is_listed_not_just_the_first(tmp_path: Path) -> None:
    path = write_scenario(
        tmp_path,
        HEAD + "steps:\n  - start: {fault_injection: yes please}\n  - kill: {service: nope}\n"
        "  - sleep: -1\n",
    )
    with pytest.raises(ScenarioFileError) as raised:
        load_scenarios(path, "s.yaml")
    assert [str(problem).split(": ")[1] for problem in raised.value.problems] == [
        "step 0 (start)",
        "step 1 (kill)",
        "step 2 (sleep)",
    ]


@pytest.mark.unit
def test_matrix_gives_one_scenario_per_combination_with_values_filled_in(tmp_path: Path) -> None:
    path = write_scenario(
        tmp_path,
        """\
        name: "{signal} after {times} kills"
        phase: integration
        matrix: {signal: [SIGINT, SIGTERM], times: [1, 2]}
        config: {services: {web: {command: x}}}
        steps:
          - start: {}
          - repeat: {times: "{times}", steps: [{kill: {service: web}}]}
          - signal: "{signal}"
        """,
        "shutdown.yaml",
    )
    scenarios = load_scenarios(path, "shutdown.yaml")
    assert [scenario.test_name for scenario in scenarios] == [
        "shutdown[SIGINT-1]",
        "shutdown[SIGINT-2]",
        "shutdown[SIGTERM-1]",
        "shutdown[SIGTERM-2]",
    ]
    last = scenarios[-1]
    assert last.name == "SIGTERM after 2 kills"
    assert last.steps[1].times == 2  # a whole-string placeholder keeps the value's type
    assert last.steps[2].signal == "SIGTERM"


@pytest.mark.unit
def test_count_and_stress_scale_make_many_services_and_longer_steps(tmp_path: Path) -> None:
    path = write_scenario(
        tmp_path,
        """\
        name: n
        phase: stress
        timeout: 10 * stress_scale + 5
        config:
          services:
            worker:
              count: 3 * stress_scale
              command: [run, "worker-{index}", "{python}", "${HOME}", "{{index}}"]
        steps:
          - start: {}
          - measure: {duration: 1.5 * stress_scale}
        """,
    )
    (scenario,) = load_scenarios(path, "s.yaml", stress_scale=1.5)
    assert scenario.timeout == 20.0
    assert scenario.services == tuple(f"worker-{index}" for index in range(5))  # ceil(4.5)
    # {index} is filled now; {python} by the runner; ${HOME} is the supervisor's own.
    assert scenario.config["services"]["worker-4"]["command"] == [
        "run",
        "worker-4",
        "{python}",
        "${HOME}",
        "{{index}}",
    ]
    assert scenario.steps[1].duration == 2.25


# -- the runner, without pytest --------------------------------------------------------


def run_without_pytest(workdir: Path, text: str) -> Tuple[List[Tuple[str, object]], str | None]:
    """Run a scenario with plain classes; the records it made and its failure, if any."""
    (scenario,) = load_scenarios(write_scenario(workdir, text), "s.yaml")
    records: List[Tuple[str, object]] = []

    def skip(reason: str) -> None:
        raise AssertionError(f"unexpected skip: {reason}")

    dummy = DummyService.locate()
    record = records.append
    with SupervisorFactory(workdir / "supervisors", record=lambda *pair: record(pair)) as factory:
        runner = ScenarioRunner(
            scenario,
            factory,
            placeholders={
                "python": sys.executable,
                "dummy": str(dummy.folder),
                "tmp": str(workdir),
            },
            workdir=workdir,
            record=lambda *pair: record(pair),
            skip=skip,  # type: ignore[arg-type]
        )
        try:
            runner.run()
        except ScenarioFailure as failure:
            return records, str(failure)
    return records, None


SLEEPER = '["{python}", "{dummy}/dummy.py", "--name", "web"]'


@pytest.mark.integration
def test_runner_without_pytest_records_respawn_latency(tmp_path: Path) -> None:
    records, failure = run_without_pytest(
        tmp_path,
        f"""\
        name: web comes back
        phase: integration
        config: {{services: {{web: {{command: {SLEEPER}, restart: always}}}}}}
        steps:
          - start: {{}}
          - kill: {{service: web}}
          - expect_respawn: {{service: web, within: 1.0}}
        """,
    )
    assert failure is None
    latencies = [value for name, value in records if name == "respawn_latency"]
    assert [latency["service"] for latency in latencies] == ["web"]  # type: ignore[index]
    assert 0 < latencies[0]["seconds"] < 1.0  # type: ignore[index]


@pytest.mark.integration
def test_a_failing_step_reports_index_line_expected_seen_and_events(tmp_path: Path) -> None:
    _, failure = run_without_pytest(
        tmp_path,
        f"""\
        name: web is not restarted
        phase: integration
        config: {{services: {{web: {{command: {SLEEPER}, restart: never}}}}}}
        steps:
          - start: {{}}
          - repeat:
              times: 1
              steps:
                - kill: {{service: web}}
                - expect_respawn: {{service: web, within: 0.5}}
        """,
    )
    assert failure is not None
    lines = failure.splitlines()
    assert lines[0] == (
        "scenario 'web is not restarted' (s.yaml) failed at steps[1].repeat.steps[1]"
        " (expect_respawn, line 10), iteration 1 of 1"
    )
    assert lines[1] == "expected: 'web' respawned within 0.5s"
    assert lines[2].startswith(f"seen: service 'web' was not respawned within 0.5s of {HARD_KILL}")
    assert "recent events (time since launch):" in lines
    assert any(" exited web " in line for line in lines)


@pytest.mark.integration
def test_waits_see_each_matching_event_once_and_before_checks_order(tmp_path: Path) -> None:
    # The respawn's `spawned` comes after the kill's `exited`: so `exited` is "before
    # spawned", and `spawned` is not "before exited".
    _, failure = run_without_pytest(
        tmp_path,
        f"""\
        name: order
        phase: integration
        config: {{services: {{web: {{command: {SLEEPER}, restart: always}}}}}}
        steps:
          - start: {{}}
          - kill: {{service: web}}
          - wait: {{event: exited, service: web, before: spawned}}
          - wait: {{event: spawned, service: web, before: exited}}
        """,
    )
    assert failure is not None
    assert "failed at steps[3] (wait, line 8)" in failure
    assert "seen: 'exited' came " in failure
    assert "s before the last of the 1 'spawned' event(s) (web)" in failure


@pytest.mark.integration
def test_a_wrong_check_output_is_shown_as_a_diff(tmp_path: Path) -> None:
    _, failure = run_without_pytest(
        tmp_path,
        """\
        name: check
        phase: unit
        steps:
          - check:
              config: "services: []\\n"
              expect_exit: 2
              expect_stderr: "{file}:1: services: expected a list"
        """,
    )
    assert failure is not None
    checked = tmp_path / "steps-0.yaml"
    assert f"-{checked}:1: services: expected a list" in failure
    assert f"+{checked}:1: services: expected a mapping, got []" in failure


@pytest.mark.unit
def test_placeholders_in_a_check_config_read_back_as_their_values_in_any_quoting() -> None:
    # Windows paths: in a double-quoted YAML scalar, \w and \p would be (invalid) escapes.
    values = {"python": "C:\\work\\py\\python.exe", "dummy": "D:\\it's \"x\"", "tmp": "/t"}
    text = textwrap.dedent(
        """\
        services:
          a: {command: "{python} -m http.server 8000", cwd: '{dummy}'}
          b:
            command: ["{python}", '{python}', {python}]
            env: {X: "{dummy}", Y: "{{python}}"}
            cwd: {tmp}
        """
    )
    config = yaml.safe_load(fill_yaml_placeholders(text, values))["services"]
    python, dummy = values["python"], values["dummy"]
    assert config["a"] == {"command": f"{python} -m http.server 8000", "cwd": dummy}
    assert config["b"] == {
        "command": [python, python, python],
        "env": {"X": dummy, "Y": "{python}"},
        "cwd": "/t",
    }
    # Text that is not valid YAML (a check of the error message) is still filled in.
    broken = "services:\n  web:\n    command: [\"{python}\"\n    restart: always\n"
    assert fill_yaml_placeholders(broken, values).splitlines()[2] == (
        '    command: ["C:\\\\work\\\\py\\\\python.exe"'
    )


# -- the fork limit ----------------------------------------------------------------------


@pytest.mark.unit
def test_nproc_limit_names_the_tool_it_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process_limits.sys, "platform", "linux")
    monkeypatch.setattr(process_limits.shutil, "which", lambda name: None)
    with pytest.raises(process_limits.LimitUnavailable) as raised:
        process_limits.nproc_limited_prefix(1)
    assert str(raised.value) == (
        "needs the prlimit tool (util-linux) to set RLIMIT_NPROC; it is not on PATH"
    )
    monkeypatch.setattr(process_limits.sys, "platform", "darwin")
    with pytest.raises(process_limits.LimitUnavailable) as raised:
        process_limits.nproc_limited_prefix(1)
    assert str(raised.value) == "a fork limit is arranged on Linux only, not on darwin"


@pytest.mark.unit
@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="uids are POSIX")
def test_as_root_the_limit_also_moves_to_an_unused_uid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process_limits.sys, "platform", "linux")
    monkeypatch.setattr(process_limits.shutil, "which", lambda name: f"/bin/{name}")
    monkeypatch.setattr(process_limits.os, "geteuid", lambda: 1000)
    assert process_limits.nproc_limited_prefix(3) == ("/bin/prlimit", "--nproc=3", "--")
    monkeypatch.setattr(process_limits.os, "geteuid", lambda: 0)
    prefix = process_limits.nproc_limited_prefix(3)
    uid = process_limits.spare_uid()
    assert prefix[:2] == ("/bin/setpriv", f"--reuid={uid}")
    assert prefix[-3:] == ("/bin/prlimit", "--nproc=3", "--")
    assert uid >= process_limits.FIRST_SPARE_UID


# -- collected by pytest ---------------------------------------------------------------


GOOD = """\
name: web comes back after a kill
phase: integration
timeout: 30
config:
  services:
    web: {command: ["{python}", "{dummy}/dummy.py"], restart: always}
steps:
  - start: {}
  - kill: {service: web}
  - expect_respawn: {service: web, within: 1.0}
"""


def run_pytest(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "pytest_supervisor", "-p", "no:cacheprovider", *args)


@pytest.mark.integration
def test_one_item_per_file_and_matrix_entry_selected_by_k_and_phase(
    pytester: pytest.Pytester,
) -> None:
    scenarios = pytester.mkdir("scenarios")
    write_scenario(scenarios, GOOD, "respawn.yaml")
    write_scenario(
        scenarios,
        "name: sleepy\nphase: unit\nmatrix: {seconds: [0.1, 0.2]}\nsteps: [{sleep: '{seconds}'}]\n",
        "sleepy.yaml",
    )
    write_scenario(pytester.path, "not: a scenario\n", "other.yaml")  # outside scenarios/
    result = run_pytest(pytester, "--collect-only", "-q")
    result.stdout.fnmatch_lines(
        [
            "scenarios/respawn.yaml::respawn",
            "scenarios/sleepy.yaml::sleepy[[]0.1[]]",
            "scenarios/sleepy.yaml::sleepy[[]0.2[]]",
            "3 tests collected*",
        ]
    )
    run_pytest(pytester, "--phase", "unit").assert_outcomes(passed=2, deselected=1)
    run_pytest(pytester, "-k", "respawn", "-m", "integration").assert_outcomes(
        passed=1, deselected=2
    )


@pytest.mark.integration
def test_a_bad_file_is_one_failing_item_and_the_others_still_run(
    pytester: pytest.Pytester,
) -> None:
    scenarios = pytester.mkdir("scenarios")
    write_scenario(scenarios, GOOD, "good.yaml")
    write_scenario(scenarios, GOOD.replace("kill:", "kil:"), "bad.yaml")
    result = run_pytest(pytester)
    result.assert_outcomes(passed=1, failed=1)
    lines = result.stdout.lines
    assert any(line.strip("_") == " invalid scenario file " for line in lines)
    assert (
        f"{Path('scenarios', 'bad.yaml')}:9:5: step 1 (kil): steps[1].kil: unknown step kind"
        f" (did you mean 'kill'?); known: {STEP_KINDS}"
    ) in lines
    assert "Traceback" not in result.stdout.str()
    assert "scenarios.py" not in result.stdout.str()


@pytest.mark.integration
def test_platforms_skip_with_a_reason_and_scaled_timeout_reaches_pytest_timeout(
    pytester: pytest.Pytester,
) -> None:
    scenarios = pytester.mkdir("scenarios")
    elsewhere = "win32" if sys.platform != "win32" else "linux"
    write_scenario(
        scenarios,
        f"name: elsewhere\nphase: unit\nplatforms: [{elsewhere}]\nsteps: [{{sleep: 0.1}}]\n",
        "elsewhere.yaml",
    )
    write_scenario(
        scenarios,
        "name: slow\nphase: unit\ntimeout: 1 * stress_scale\nsteps: [{sleep: 1.5}]\n",
        "slow.yaml",
    )
    skipped = f"SKIPPED * scenario for {elsewhere}; this is {sys.platform}"
    result = run_pytest(pytester, "-rs")
    if hasattr(signal, "SIGALRM"):  # pytest-timeout's signal method: the test fails, alone
        result.assert_outcomes(skipped=1, failed=1)
        result.stdout.fnmatch_lines(["*Timeout (>1.0s) from pytest-timeout*", skipped])
    else:
        # Its thread method (Windows) dumps every stack and ends the whole run: os._exit(1).
        assert result.ret == 1
        result.stdout.fnmatch_lines(["*slow.yaml *+ Timeout +*", "*, in _sleep"])
        run_pytest(pytester, "-rs", "-k", "elsewhere").stdout.fnmatch_lines([skipped])
    # --stress-scale reaches the file as it is collected: now the timeout is long enough.
    run_pytest(pytester, "--stress-scale", "2", "-k", "slow").assert_outcomes(passed=1)


@pytest.mark.integration
@pytest.mark.parametrize("wine", [True, False], ids=["under wine", "elsewhere"])
def test_skip_under_wine_skips_with_its_reason_only_under_wine(
    pytester: pytest.Pytester, wine: bool
) -> None:
    scenarios = pytester.mkdir("scenarios")
    write_scenario(
        scenarios,
        "name: scaled\nphase: stress\nskip_under_wine: a second measures wine here\n"
        "steps: [{sleep: 0.1}]\n",
    )
    # The plugin asks pytest_supervisor.wine at collection: pretend, either way.
    (scenarios / "conftest.py").write_text(
        f"from pytest_supervisor import wine\nwine.under_wine = lambda: {wine}\n", "utf-8"
    )
    result = run_pytest(pytester, "-rs")
    if wine:
        result.assert_outcomes(skipped=1)
        result.stdout.fnmatch_lines(["SKIPPED * under wine: a second measures wine here"])
    else:
        result.assert_outcomes(passed=1)


@pytest.mark.integration
def test_fixtures_run_and_measurements_reach_the_junit_report(
    pytester: pytest.Pytester,
) -> None:
    scenarios = pytester.mkdir("scenarios")
    write_scenario(scenarios, GOOD + "metric_targets: {respawn_overhead_p95: 1.0}\n", "r.yaml")
    (scenarios / "conftest.py").write_text(
        textwrap.dedent(
            """\
            import pytest

            @pytest.fixture(autouse=True)
            def announce(record_property):
                record_property("conftest_fixture", "ran")
            """
        ),
        "utf-8",
    )
    result = run_pytest(pytester, "--junitxml=junit.xml", "-n", "2")
    result.assert_outcomes(passed=1)
    properties = {
        prop.get("name"): prop.get("value")
        for prop in ElementTree.parse(pytester.path / "junit.xml").iter("property")
    }
    assert properties["conftest_fixture"] == "ran"
    assert "'service': 'web'" in properties["respawn_latency"]
    assert properties["metric_targets"] == "{'respawn_overhead_p95': 1.0}"


@pytest.mark.integration
def test_the_scenarios_option_names_the_folder_whose_yaml_files_are_scenarios(
    pytester: pytest.Pytester,
) -> None:
    write_scenario(pytester.mkdir("scenarios"), "not: a scenario\n", "config.yaml")
    write_scenario(pytester.mkdir("checks"), GOOD, "respawn.yaml")
    result = run_pytest(pytester, "--scenarios", "checks", "checks", "scenarios")
    result.assert_outcomes(passed=1)


@pytest.mark.integration
def test_the_scenarios_folder_is_collected_without_naming_it_as_a_path(
    pytester: pytest.Pytester,
) -> None:
    write_scenario(pytester.mkdir("checks"), GOOD, "respawn.yaml")
    pytester.makepyfile(test_other="def test_other():\n    pass\n")
    result = run_pytest(pytester, "--scenarios", "checks", "test_other.py")
    result.assert_outcomes(passed=2)


@pytest.mark.unit
def test_the_guide_shows_real_scenario_files_word_for_word() -> None:
    guide = (ROOT / "docs" / "scenarios.md").read_text("utf-8")
    examples = re.findall(
        r"## Example: .*?\n\n`(scenarios/[^`]+)`:\n\n```yaml\n(.*?)```", guide, re.S
    )
    assert len(examples) == 2
    for relative, shown in examples:
        assert (ROOT / relative).read_text("utf-8") == shown, relative


@pytest.mark.integration
def test_expect_state_with_a_config_file_uses_its_default_control_socket(tmp_path: Path) -> None:
    dummy = DummyService.locate()
    (tmp_path / "web.yaml").write_text(
        "services:\n  web:\n    command: %s\n" % json.dumps(
            [sys.executable, str(dummy.folder / "dummy.py"), "--name", "web"]), "utf-8")
    _, failure = run_without_pytest(tmp_path, (
        "name: n\nphase: integration\nconfig_file: web.yaml\nsteps:\n  - start: {}\n"
        "  - wait: {event: spawned, service: web}\n"
        "  - expect_state: {service: web, state: running}\n"))
    assert failure is None
