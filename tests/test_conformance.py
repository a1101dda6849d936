"""Several supervisors in one run (--supervisor-target ours,...): the options and their
errors as a user meets them, the conformance table in report.json and report.html, the
skip a key or a scenario step another target cannot express turns into, and the command
target's write_config. Each pytest run is a subprocess on files the test writes
(pytester); peers that are not needed are named by a path that does not exist."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from process_helpers import still_alive

from pytest_supervisor import SupervisorFactory
from pytest_supervisor.report.conformance import evidence_line
from pytest_supervisor.targets import conformance_case
from pytest_supervisor.targets.builtin import Command

# supervisord, circus, s6 and runit are POSIX supervisors: these tests model a run on them
POSIX_PEERS = pytest.mark.skipif(sys.platform == "win32", reason="the peers are POSIX programs")

pytestmark = pytest.mark.integration
pytest_plugins = ["pytester"]


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """pytest in a subprocess, with the plugin named explicitly (works installed or not)."""
    return pytester.runpytest_subprocess("-p", "pytest_supervisor", "-p", "no:cacheprovider", *args)


# -- the options -------------------------------------------------------------------------


def test_help_says_what_each_target_option_takes(pytester: pytest.Pytester) -> None:
    help_text = " ".join(run(pytester, "--help").stdout.str().split())
    assert "the supervisor under test: ours (default), supervisord, circus, s6, runit or" in (
        help_text
    )
    assert "several, comma-separated, run each test once per target" in help_text
    assert "where another target's program is, e.g." in help_text
    assert "supervisor_target (string): the supervisor under test" in help_text
    assert "supervisor_peers (string): where another target's program is" in help_text


def test_an_unknown_target_is_refused_with_the_name_meant(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--supervisor-target", "ours,supervisd")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest-supervisor: --supervisor-target='ours,supervisd' (command line):"
            " expected one or more of ours, supervisord, circus, s6, runit, command,"
            " comma-separated (did you mean 'supervisord'?)"
        ]
    )
    assert "Traceback" not in result.stderr.str()


def test_a_bad_peer_entry_in_the_ini_file_is_refused_naming_the_file(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini("[pytest]\nsupervisor_peers = circs=/opt/circus/bin/circusd\n")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest-supervisor: supervisor_peers='circs=/opt/circus/bin/circusd'"
            " (tox.ini): expected TARGET=PROGRAM entries, comma-separated, TARGET one of"
            " supervisord, circus, s6, runit (did you mean 'circus'?)"
        ]
    )


@POSIX_PEERS
def test_ini_keys_choose_the_targets_and_their_programs(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\nsupervisor_target = ours, circus\n"
        "supervisor_peers = circus=bin/circusd, s6=s6-svscan\n"
    )
    pytester.makepyfile(
        """
        from pytest_supervisor.plugin import get_settings

        def test_settings(pytestconfig, supervisor_target):
            settings = get_settings(pytestconfig)
            print("SETTINGS", settings.targets, sorted(settings.peers.items()), supervisor_target)
        """
    )
    result = run(pytester, "-s", "-v")
    result.assert_outcomes(passed=2)  # once per target
    circusd = pytester.path / "bin" / "circusd"  # relative to the ini file's folder
    expected = f"('ours', 'circus') [('circus', '{circusd}'), ('s6', 's6-svscan')]"
    output = result.stdout.str()
    assert f"test_settings[ours] SETTINGS {expected} ours" in output
    assert f"test_settings[circus] SETTINGS {expected} circus" in output


def test_a_key_the_target_cannot_express_skips_the_test_with_the_reason(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.supervisor_config(
            {"services": {"web": {"command": ["sleep", "30"], "restart_delay": 1}}},
            target="supervisord",
        )
        def test_delayed(supervisor):
            raise AssertionError("never started")
        """
    )
    # The program is never started: the translation refuses the config first.
    result = run(pytester, "-rs", f"--supervisor-peer=supervisord={sys.executable}")
    result.assert_outcomes(skipped=1)
    assert (
        "SKIPPED [1] test_a_key_the_target_cannot_express_skips_the_test_with_the_reason.py:3:"
        " supervisord has no restart delay (service 'web' sets restart_delay)"
    ) in result.stdout.str()


# -- the conformance table ------------------------------------------------------------------

RESPAWNS = """\
name: a killed service comes back
phase: integration
config:
  services:
    web: {command: ["{python}", "{dummy}/dummy.py", "--name", "web"], restart: always}
steps:
  - start: {}
  - kill: {service: web}
  - expect_respawn: {service: web, within: 5}
"""
NOT_RESPAWNED = """\
name: a killed service stays down (it does not, so this fails)
phase: integration
config:
  services:
    web: {command: ["{python}", "{dummy}/dummy.py", "--name", "web"], restart: always}
steps:
  - start: {}
  - kill: {service: web}
  - expect_no_respawn: {service: web, for: 2}
"""
ASKS_STATE = """\
name: a killed service is running again, by its state
phase: integration
matrix:
  signal: [hard_kill, graceful_stop]
config:
  services:
    web: {command: ["{python}", "{dummy}/dummy.py", "--name", "web"], restart: always}
steps:
  - start: {}
  - kill: {service: web, signal: "{signal}"}
  - expect_state: {service: web, state: running}
"""


@POSIX_PEERS
def test_several_targets_make_a_conformance_table_in_both_reports(
    pytester: pytest.Pytester,
) -> None:
    scenarios = pytester.mkdir("scenarios")
    for name, text in [
        ("respawns", RESPAWNS),
        ("not_respawned", NOT_RESPAWNED),
        ("asks_state", ASKS_STATE),
    ]:
        (scenarios / f"{name}.yaml").write_text(text)
    pytester.makepyfile(
        test_python="""
        def test_spawns(supervisor_factory, dummy_service):
            handle = supervisor_factory.spawn(
                {"services": {"web": {"command": dummy_service(), "restart": "always"}}})
            handle.kill("web")
            handle.assert_respawned("web", within=5)

        def test_plain():
            pass
        """
    )
    missing = pytester.path / "no-supervisord"
    result = run(
        pytester,
        "scenarios",
        "test_python.py",
        "--supervisor-target=ours,supervisord",
        f"--supervisor-peer=supervisord={missing}",
    )
    # 4 scenario items and test_spawns on each target; test_plain once.
    result.assert_outcomes(passed=5, failed=1, skipped=5)
    document = json.loads((pytester.path / "reports" / "report.json").read_text())
    table = document["conformance"]
    assert table["targets"] == ["ours", "supervisord"]
    cases = {case["case"]: case["results"] for case in table["cases"]}
    assert sorted(cases) == [
        "scenarios/asks_state.yaml::asks_state[graceful_stop]",
        "scenarios/asks_state.yaml::asks_state[hard_kill]",
        "scenarios/not_respawned.yaml::not_respawned",
        "scenarios/respawns.yaml::respawns",
        "test_python.py::test_spawns",
    ]
    respawned = cases["scenarios/respawns.yaml::respawns"]["ours"]
    assert respawned["outcome"] == "passed" and respawned["evidence"] is None
    assert 0 < respawned["respawn_latency_p50"] < 5
    assert respawned["nodeid"] == "scenarios/respawns.yaml::respawns[ours]"
    failed = cases["scenarios/not_respawned.yaml::not_respawned"]["ours"]
    assert failed["outcome"] == "failed"
    assert failed["evidence"].startswith("(expect_no_respawn, line 9) ")
    unavailable = f"supervisord: {missing} is not an executable file"
    assert cases["scenarios/respawns.yaml::respawns"]["supervisord"] == {
        "nodeid": "scenarios/respawns.yaml::respawns[supervisord]",
        "outcome": "skipped",
        "evidence": unavailable,
        "respawn_latency_p50": None,
    }
    assert cases["test_python.py::test_spawns"]["supervisord"]["evidence"] == unavailable
    assert cases["test_python.py::test_spawns"]["ours"]["outcome"] == "passed"
    # A step only our supervisor can answer: skipped before anything is started.
    state = cases["scenarios/asks_state.yaml::asks_state[hard_kill]"]["supervisord"]
    assert state["evidence"] == (
        "supervisord is watched from outside, and a state is asked over our control socket"
        " (expect_state, line 11)"
    )
    page = (pytester.path / "reports" / "report.html").read_text()
    section = page[page.index('<section id="conformance">') :]
    section = section[: section.index("</section>")]
    assert "<th>ours</th><th>supervisord</th>" in section
    assert "<code>scenarios/respawns.yaml::respawns</code>" in section
    assert "respawn p50 " in section
    assert unavailable in section
    assert "(expect_no_respawn, line 9) " in section


def test_one_target_makes_no_conformance_table(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_one(supervisor_target):\n    assert supervisor_target == 'ours'")
    run(pytester).assert_outcomes(passed=1)
    document = json.loads((pytester.path / "reports" / "report.json").read_text())
    assert document["conformance"] is None
    assert 'id="conformance"' not in (pytester.path / "reports" / "report.html").read_text()


@pytest.mark.parametrize(
    "nodeid, target, case",
    [
        ("s/a.yaml::a[ours]", "ours", "s/a.yaml::a"),
        ("s/a.yaml::a[hard_kill-circus]", "circus", "s/a.yaml::a[hard_kill]"),
        ("t.py::test[s6-x-y]", "s6", "t.py::test[x-y]"),
        ("t.py::test", "s6", "t.py::test"),
    ],
)
def test_an_items_row_is_its_node_id_without_the_target(nodeid, target, case) -> None:
    assert conformance_case(nodeid, target) == case


def test_the_evidence_of_a_failure_is_the_line_that_says_what_was_seen() -> None:
    scenario = (
        "scenario 'x' (s.yaml) failed at steps[5] (expect_no_leaks, line 18)\n"
        "expected: no process of the supervisor left outside its tree after 2s\n"
        "seen: 1 process(es) started under this supervisor still run outside its tree:\n"
        "    pid 7 (ppid 1): python dummy.py --daemon\n"
        "supervisor 'supervisor' (pid 5): exited with code 0\n"
    )
    assert evidence_line(scenario) == (
        "(expect_no_leaks, line 18) 1 process(es) started under this supervisor still run"
        " outside its tree: pid 7 (ppid 1): python dummy.py --daemon"
    )
    python = "def test():\n>       assert 1 == 2\nE       assert 1 == 2\n\nt.py:2: AssertionError"
    assert evidence_line(python) == "assert 1 == 2"
    assert evidence_line("supervisor 's' leaked 1 process(es)\n    pid 9") == (
        "supervisor 's' leaked 1 process(es)"
    )


# -- the command target's write_config ----------------------------------------------------

# A user's supervisor with a config format of its own: one "NAME COMMAND..." line a
# service; restarts whatever exits, stops everything on SIGTERM.
LINE_SUPERVISOR = textwrap.dedent("""\
    import os, shlex, signal, subprocess, sys, time
    services = {}
    path = sys.argv[-1]
    path = path[len("--config="):] if path.startswith("--config=") else path
    for line in open(path):
        name, command = line.split(" ", 1)
        services[name] = shlex.split(command)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    env = dict(os.environ)
    running = {name: subprocess.Popen(argv, env=env) for name, argv in services.items()}
    while not stopping:
        for name, process in list(running.items()):
            if process.poll() is not None:
                running[name] = subprocess.Popen(services[name], env=env)
        time.sleep(0.01)
    for process in running.values():
        process.terminate()
        process.wait()
""")


@pytest.mark.skipif(sys.platform == "win32", reason="the script stops on SIGTERM")
@pytest.mark.parametrize("placeholder", [True, False])
def test_write_config_writes_the_users_format_and_its_path_is_passed(
    tmp_path: Path, dummy_service, placeholder: bool
) -> None:
    script = tmp_path / "line_supervisor.py"
    script.write_text(LINE_SUPERVISOR)
    written = []

    def write_config(config, directory):
        path = Path(directory) / "services.txt"
        lines = [
            f"{name} {' '.join(service['command'])}" for name, service in config["services"].items()
        ]
        path.write_text("\n".join(lines) + "\n")
        written.append((dict(config), path))
        return path

    argv = [sys.executable, str(script)] + (["--config={config}"] if placeholder else [])
    target = Command(argv, write_config=write_config)
    config = {"services": {"web": {"command": dummy_service(name="web"), "restart": "always"}}}
    with SupervisorFactory(tmp_path / "runs", target=target) as factory:
        handle = factory.spawn(config)
        (seen, path) = written[0]
        assert seen == config  # our config, as it was given
        assert handle.spec.argv[-1] == (f"--config={path}" if placeholder else str(path))
        assert path.read_text().startswith("web ")
        first = handle.pid_of("web")
        handle.kill("web")
        second = handle.assert_respawned("web", within=5.0)
        assert second != first
        assert handle.stop() == 0
    assert still_alive([first, second]) == []
