"""The pytest plugin seen from a user's test run: loading, options, markers, fixtures and
the words of its failure messages. Each test runs pytest in a subprocess on test files
it writes (pytester), against the real supervisor.py and dummy service."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from process_helpers import HARD_KILL, HARD_KILLED_EXIT, command_line

from pytest_supervisor import DummyService
from pytest_supervisor.resources import ResourceSampler

pytestmark = pytest.mark.integration

pytest_plugins = ["pytester"]


def _has_entry_point() -> bool:
    if sys.version_info >= (3, 10):
        plugins = entry_points(group="pytest11")
    else:
        plugins = entry_points().get("pytest11", ())
    return any(entry.name == "pytest_supervisor" for entry in plugins)


def _dummy_script() -> Path:
    return DummyService.locate().script


needs_entry_point = pytest.mark.skipif(
    not _has_entry_point(),
    reason="pytest-supervisor is not installed, so there is no pytest11 entry point",
)

REGISTERED_ONCE = """
    def test_registered_once(pytestconfig, supervisor_factory, dummy_service):
        names = sorted(
            name for name, _ in pytestconfig.pluginmanager.list_name_plugin()
            if name and "pytest_supervisor" in name
        )
        assert names == [
            "pytest_supervisor", "pytest_supervisor.plugin", "pytest_supervisor.report"
        ]
"""

RESTARTING_WEB = """
    import pytest

    def config(dummy_service, **web):
        web.setdefault("restart", "always")
        return {"services": {"web": {"command": dummy_service(), **web}}}
"""


def with_restarting_web(pytester: pytest.Pytester, tests: str) -> None:
    """A test module: the ``config()`` helper of RESTARTING_WEB, then ``tests``."""
    pytester.makepyfile(textwrap.dedent(RESTARTING_WEB) + textwrap.dedent(tests))


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """pytest in a subprocess, with the plugin named explicitly (works installed or not)."""
    return pytester.runpytest_subprocess("-p", "pytest_supervisor", "-p", "no:cacheprovider", *args)


# -- loading -----------------------------------------------------------------------


@needs_entry_point
def test_entry_point_loads_the_plugin(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(REGISTERED_ONCE)
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(passed=1)


def test_dash_p_loads_the_plugin_without_autoload(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(REGISTERED_ONCE)
    result = pytester.runpytest_subprocess("-p", "pytest_supervisor")
    result.assert_outcomes(passed=1)


@needs_entry_point
def test_entry_point_and_dash_p_together_register_once(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(REGISTERED_ONCE)
    result = pytester.runpytest_subprocess("-p", "pytest_supervisor")
    result.assert_outcomes(passed=1)


# -- options, ini keys and markers -------------------------------------------------


def test_help_lists_every_option_and_ini_key(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--help")
    result.stdout.fnmatch_lines(
        [
            "pytest-supervisor:",
            "*--supervisor-cmd=SUPERVISOR_CMD*",
            "*--supervisor-target=SUPERVISOR_TARGET*",
            "*--supervisor-peer=SUPERVISOR_PEERS*",
            "*--supervisor-report=SUPERVISOR_REPORT*",
            "*--scenarios=SUPERVISOR_SCENARIOS*",
            "*--phase=SUPERVISOR_PHASE*",
            "*--stress-scale=SUPERVISOR_STRESS_SCALE*",
        ]
    )
    for ini in ("cmd", "target", "peers", "report", "scenarios", "phase", "stress_scale"):
        result.stdout.fnmatch_lines([f"*supervisor_{ini} (string)*"])


def test_markers_are_registered_for_strict_markers(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.unit
        @pytest.mark.integration
        @pytest.mark.stress
        @pytest.mark.supervisor_config({})
        def test_marked():
            pass
        """
    )
    run(pytester, "--strict-markers").assert_outcomes(passed=1)
    run(pytester, "--markers").stdout.fnmatch_lines(
        [
            "@pytest.mark.supervisor_config(config, **options):*",
            "@pytest.mark.unit:*--phase unit*",
            "@pytest.mark.integration:*",
            "@pytest.mark.stress:*",
        ]
    )


def test_bad_option_values_are_usage_errors_naming_each(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--stress-scale=-1", "--phase=uint", "--supervisor-cmd=python 'x")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            (
                'ERROR: pytest-supervisor: --supervisor-cmd="python \'x" (command line):'
                " expected a command line (No closing quotation)"
            ),
            (
                "--phase='uint' (command line): expected one or more of unit, integration, stress,"
                " comma-separated (did you mean 'unit'?)"
            ),
            "--stress-scale='-1' (command line): expected a number greater than 0",
        ]
    )


def test_bad_ini_values_name_the_ini_file(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nsupervisor_stress_scale = lots\n")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*supervisor_stress_scale='lots' (tox.ini): expected a number greater than 0"]
    )


def test_phase_deselects_tests_of_other_phases(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.unit
        def test_unit(): pass

        @pytest.mark.integration
        def test_integration(): pass

        @pytest.mark.stress
        def test_stress(): pass

        def test_unmarked(): pass
        """
    )
    result = run(pytester, "--phase", "integration", "-v")
    result.assert_outcomes(passed=2, deselected=2)
    result.stdout.fnmatch_lines(["*test_integration PASSED*", "*test_unmarked PASSED*"])

    pytester.makeini("[pytest]\nsupervisor_phase = unit, stress\n")
    run(pytester).assert_outcomes(passed=3, deselected=1)


SHOW_SETTINGS = """
    from pytest_supervisor.plugin import get_settings

    def test_settings(pytestconfig, stress_scale):
        settings = get_settings(pytestconfig)
        root = pytestconfig.rootpath
        seen = (stress_scale, settings.report_dir, settings.scenarios_dir)
        print("SETTINGS", seen[0], *(path.relative_to(root).as_posix() for path in seen[1:]))
"""


def test_stress_scale_and_folders_have_defaults(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SHOW_SETTINGS)
    run(pytester, "-s").stdout.fnmatch_lines(["*SETTINGS 1.0 reports scenarios*"])


def test_command_line_options_override_ini_keys(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\nsupervisor_stress_scale = 0.5\n"
        "supervisor_report = ini-reports\nsupervisor_scenarios = ini-scenarios\n"
    )
    pytester.makepyfile(SHOW_SETTINGS)
    run(pytester, "-s").stdout.fnmatch_lines(["*SETTINGS 0.5 ini-reports ini-scenarios*"])
    result = run(
        pytester, "-s", "--stress-scale=2.5", "--supervisor-report=out", "--scenarios=mine"
    )
    result.stdout.fnmatch_lines(["*SETTINGS 2.5 out mine*"])


# Announces itself and exits 0: enough for a spawn() that waits for supervisor_started.
FAKE_SUPERVISOR = """
    import json, sys, time
    events = sys.argv[sys.argv.index("--events") + 1]
    with open(events, "a") as stream:
        stream.write(json.dumps({"ts": time.time(), "mono": time.monotonic(),
            "event": "supervisor_started", "service": None, "pid": 0}) + "\\n")
"""


@pytest.mark.parametrize("where", ["command line", "ini file"])
def test_supervisor_cmd_chooses_the_supervisor_under_test(
    pytester: pytest.Pytester, where: str
) -> None:
    fake = pytester.makepyfile(**{"fake supervisor": FAKE_SUPERVISOR})
    pytester.makepyfile(
        """
        def test_uses_it(supervisor_factory):
            handle = supervisor_factory.spawn({"services": {}})
            assert handle.wait_exit() == 0
            assert "--exit-with-parent" in handle.spec.argv
        """
    )
    command = command_line(sys.executable, str(fake))  # the space in its name needs quotes
    if where == "ini file":
        pytester.makeini(f"[pytest]\nsupervisor_cmd = {command}\n")
        result = run(pytester)
    else:
        result = run(pytester, f"--supervisor-cmd={command}")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"supervisor under test: {command}"])


def test_supervisor_cmd_that_cannot_start_says_so(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_spawn(supervisor_factory):
            supervisor_factory.spawn({"services": {}})
        """
    )
    result = run(pytester, "--supervisor-cmd=/nonexistent/supervisor --flag")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*cannot start the supervisor ['/nonexistent/supervisor', '--flag', 'run', *"]
    )


# -- fixtures ----------------------------------------------------------------------


def test_kill_and_assert_respawned_records_the_latency(pytester: pytest.Pytester) -> None:
    with_restarting_web(
        pytester,
        f"""
        def test_respawn(request, supervisor_factory, dummy_service):
            handle = supervisor_factory.spawn(config(dummy_service))
            old = handle.kill("web")
            new = handle.assert_respawned("web", within=5.0)
            assert new != old
            assert handle.pid_of("web") == new
            name, value = request.node.user_properties[-1]
            assert name == "respawn_latency"
            assert value["service"] == "web" and 0 < value["seconds"] < 5.0
            assert value["cause"] == f"{HARD_KILL} to pid {{old}}"
        """,
    )
    run(pytester).assert_outcomes(passed=1)


def test_supervisor_fixture_takes_the_marker_config(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        f"""
        import sys, pytest

        DUMMY = {str(_dummy_script())!r}

        @pytest.mark.supervisor_config(
            {{"services": {{"web": {{"command": [sys.executable, DUMMY, "--heartbeat", "5"]}}}}}},
            name="marked",
        )
        def test_marked(supervisor):
            assert supervisor.name == "marked"
            assert supervisor.pid_of("web") in [p.pid for p in supervisor.processes()]
        """
    )
    run(pytester).assert_outcomes(passed=1)


def test_supervisor_config_fixture_can_be_overridden(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest

        @pytest.fixture
        def supervisor_config(dummy_service):
            return {"services": {"web": {"command": dummy_service(name="web")}}}
        """
    )
    pytester.makepyfile(
        """
        def test_from_fixture(supervisor):
            supervisor.wait_for("spawned", "web")
        """
    )
    run(pytester).assert_outcomes(passed=1)


def test_supervisor_fixture_misuse_is_explained(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        def test_no_config(supervisor):
            pass

        @pytest.mark.supervisor_config({}, {})
        def test_two_configs(supervisor):
            pass

        @pytest.mark.supervisor_config({}, bogus=1)
        def test_unknown_option(supervisor):
            pass
        """
    )
    result = run(pytester)
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines_random(
        [
            (
                "*the `supervisor` fixture needs a config: mark the test with"
                " @pytest.mark.supervisor_config({...}) or define a `supervisor_config` fixture"
            ),
            (
                "*@pytest.mark.supervisor_config takes one config (a dict or a path) and spawn"
                " options as keywords; got 2 positional arguments"
            ),
            "*@pytest.mark.supervisor_config: *unexpected keyword argument 'bogus'",
        ]
    )


def test_dummy_service_builds_commands_and_rejects_unknown_options(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import sys

        def test_command(dummy_service, tmp_path):
            command = dummy_service(exit_after=1.5, daemon=True, burn_cpu=False,
                                    pids_file=tmp_path / "pids", name=None)
            assert command == [sys.executable, str(dummy_service.script), "--exit-after", "1.5",
                               "--daemon", "--pids-file", str(tmp_path / "pids")]
            assert dummy_service.script.name == "dummy.py"

        def test_typo(dummy_service):
            dummy_service(exit_afer=1)

        def test_switch_with_value(dummy_service):
            dummy_service(daemon="yes")
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "*unknown dummy service option 'exit_afer' (did you mean 'exit_after'?). Known: *",
            "*dummy service option 'daemon' is a switch: pass True or False, not 'yes'",
        ]
    )


def test_signals_wait_for_and_wait_exit(pytester: pytest.Pytester) -> None:
    with_restarting_web(
        pytester,
        """
        def test_graceful_stop(supervisor_factory, dummy_service):
            handle = supervisor_factory.spawn(config(dummy_service))
            spawned = handle.wait_for("spawned", "web", predicate=lambda e: e["attempt"] == 1)
            assert handle.returncode is None
            handle.signal("graceful_stop")
            assert handle.wait_exit(timeout=20) == 0 == handle.returncode
            handle.wait_for("stopped", "web", since=spawned["mono"])
            assert handle.events[-1]["event"] == "supervisor_exiting"
        """,
    )
    run(pytester).assert_outcomes(passed=1)


def test_processes_and_resource_samples(pytester: pytest.Pytester) -> None:
    with_restarting_web(
        pytester,
        """
        def test_sample(request, supervisor_factory, dummy_service):
            handle = supervisor_factory.spawn(config(dummy_service))
            web = handle.pid_of("web")
            assert [p.pid for p in handle.processes()][:1] == [handle.pid]
            assert web in [p.pid for p in handle.processes()]
            samples = handle.sample_resources(duration=1.0, interval=0.25)
            assert len(samples.samples) == 4
            assert samples.peak_rss_mb > 1 and samples.peak_tree_rss_mb > samples.peak_rss_mb
            assert all(sample.processes >= 2 for sample in samples.samples)
            assert 0 <= samples.mean_cpu_percent <= samples.peak_cpu_percent
            name, value = request.node.user_properties[-1]
            assert name == "resource_samples" and len(value["samples"]) == 4
        """,
    )
    run(pytester).assert_outcomes(passed=1)


def test_cpu_is_each_process_own_not_the_measuring_one() -> None:
    # Under wine, GetProcessTimes of another process answers with the caller's own times: a
    # busy harness made an idle supervisor look busy. Here the harness spins while it samples.
    def started(code: str) -> subprocess.Popen:
        child = subprocess.Popen(
            [sys.executable, "-c", f"import time\nprint('up', flush=True)\n{code}"],
            stdout=subprocess.PIPE,
        )
        assert child.stdout is not None and child.stdout.readline().strip() == b"up"
        return child

    idle = started("time.sleep(60)")
    busy = started("while True: pass")
    try:
        samplers = {"idle": ResourceSampler(idle.pid), "busy": ResourceSampler(busy.pid)}
        for sampler in samplers.values():
            sampler.sample(0.0)  # primes the CPU readings
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            pass
        cpu = {name: sampler.sample(1.0).cpu_percent for name, sampler in samplers.items()}
    finally:
        for child in (idle, busy):
            child.kill()
            child.wait()
    assert cpu["idle"] < 20 and cpu["busy"] > 30, cpu


def test_unavailable_signal_skips_and_misspelt_signal_fails(pytester: pytest.Pytester) -> None:
    with_restarting_web(
        pytester,
        """
        from pytest_supervisor import signals

        def test_no_reload_here(supervisor_factory, dummy_service, monkeypatch):
            handle = supervisor_factory.spawn(config(dummy_service))
            # As on Windows, where os.kill sends console control events.
            monkeypatch.setattr(signals, "_CTRL_BREAK_EVENT", 1)
            handle.signal("reload")

        def test_typo(supervisor_factory, dummy_service):
            handle = supervisor_factory.spawn(config(dummy_service))
            handle.kill("web", "SIGKIL")
        """,
    )
    result = run(pytester, "-rs")
    result.assert_outcomes(skipped=1, failed=1)
    result.stdout.fnmatch_lines_random(
        [
            "SKIPPED * reload: * has no reload signal; use the `reload` control command",
            "*unknown signal 'SIGKIL' (did you mean 'SIGKILL'?). Use a portable name*",
        ]
    )


def test_ctrl_break_that_cannot_be_delivered_skips_under_wine_and_fails_clearly_elsewhere(
    pytester: pytest.Pytester,
) -> None:
    with_restarting_web(
        pytester,
        """
        import os
        import pytest
        from pytest_supervisor import signals, wine

        @pytest.fixture
        def console_without_break(monkeypatch):
            # As on Windows (os.kill sends console control events), from a process whose
            # console cannot deliver CTRL_BREAK_EVENT to a service.
            real_kill = os.kill

            def kill(pid, number):
                if number == 1:
                    raise OSError(22, "Invalid access")
                real_kill(pid, number)

            monkeypatch.setattr(signals, "_CTRL_BREAK_EVENT", 1)
            monkeypatch.setattr(os, "kill", kill)
            monkeypatch.setattr(signals, "_set_shutdown_event", lambda pid: False)
            return monkeypatch

        def test_under_wine(supervisor_factory, dummy_service, console_without_break):
            handle = supervisor_factory.spawn(config(dummy_service))
            console_without_break.setattr(wine, "under_wine", lambda: True)
            handle.kill("web", "graceful_stop")

        def test_elsewhere(supervisor_factory, dummy_service, console_without_break):
            handle = supervisor_factory.spawn(config(dummy_service))
            console_without_break.setattr(wine, "under_wine", lambda: False)
            handle.kill("web", "graceful_stop")
        """,
    )
    result = run(pytester, "-rs")
    result.assert_outcomes(skipped=1, failed=1)
    result.stdout.fnmatch_lines_random(
        [
            "SKIPPED * wine cannot deliver CTRL_BREAK_EVENT"
            " (its console server implements only CTRL_C_EVENT)",
            "*CTRL_BREAK_EVENT could not be sent to service 'web' (pid *): [[]Errno 22[]] Invalid"
            " access (CTRL_BREAK_EVENT reaches a process group only through a console it shares"
            " with the sender)",
        ]
    )
    assert "OSError" not in result.stdout.str()


# -- failure messages --------------------------------------------------------------


def test_a_slow_respawn_shows_the_timing_exit_status_events_and_log(
    pytester: pytest.Pytester,
) -> None:
    with_restarting_web(
        pytester,
        """
        def test_slow(supervisor_factory, dummy_service):
            handle = supervisor_factory.spawn(config(dummy_service, restart_delay=1.0))
            handle.kill("web")
            handle.assert_respawned("web", within=0.2)
        """,
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            (
                f"E * service 'web' was respawned *s after {HARD_KILL} to pid *, later than the"
                " 0.2s allowed"
            ),
            "E * supervisor 'supervisor' (pid *): running",
            f"E * last exit of 'web': +* exited web pid=* {HARD_KILLED_EXIT} *",
            "E * recent events (time since launch):",
            "E *supervisor_started*",
            "E * supervisor log */supervisor.log (last lines):",
        ]
    )


def test_respawn_failures_say_what_happened_instead(pytester: pytest.Pytester) -> None:
    with_restarting_web(
        pytester,
        """
        def test_too_soon(supervisor_factory, dummy_service):
            handle = supervisor_factory.spawn(config(dummy_service))
            handle.kill("web")
            handle.assert_respawned("web", within=10, not_before=5)

        def test_never(supervisor_factory, dummy_service):
            handle = supervisor_factory.spawn(config(dummy_service, restart="never"))
            handle.kill("web")
            handle.assert_respawned("web", within=0.5)

        def test_gave_up(supervisor_factory, dummy_service):
            handle = supervisor_factory.spawn(config(dummy_service, max_retries=0))
            handle.kill("web")
            handle.assert_respawned("web", within=5)

        def test_came_back(supervisor_factory, dummy_service):
            handle = supervisor_factory.spawn(config(dummy_service))
            handle.kill("web")
            handle.assert_not_respawned("web", for_=1)

        def test_nothing_to_time_from(supervisor_factory, dummy_service):
            handle = supervisor_factory.spawn(config(dummy_service))
            handle.assert_respawned("web", within=1)
        """,
    )
    result = run(pytester)
    result.assert_outcomes(failed=5)
    result.stdout.fnmatch_lines_random(
        [
            (
                f"E * service 'web' was respawned *s after {HARD_KILL} to pid *, sooner than the"
                " 5s minimum"
            ),
            f"E * service 'web' was not respawned within 0.5s of {HARD_KILL} to pid *",
            (
                "E * service 'web' was given up (retries=0) instead of respawned after"
                f" {HARD_KILL} to pid *"
            ),
            (
                f"E * service 'web' was respawned (pid *) *s after {HARD_KILL} to pid *; expected"
                " no respawn for 1s"
            ),
            (
                "E * assert_respawned('web') has nothing to time from: kill it with"
                " handle.kill('web') or wait_for('exited', 'web') first"
            ),
        ]
    )


def test_misuse_of_the_harness_is_explained(pytester: pytest.Pytester) -> None:
    with_restarting_web(
        pytester,
        """
        import pytest
        from pytest_supervisor import HarnessUsageError

        def test_misuse(supervisor_factory, dummy_service, tmp_path):
            with pytest.raises(HarnessUsageError, match="config must be a dict or the path"):
                supervisor_factory.spawn(["not", "a", "config"])
            with pytest.raises(HarnessUsageError, match="args must be a list of arguments"):
                supervisor_factory.spawn({}, args="--log-level debug")
            with pytest.raises(HarnessUsageError, match=r"must match \\[A-Za-z0-9_.-\\]\\+"):
                supervisor_factory.spawn({}, name="a b")
            handle = supervisor_factory.spawn(config(dummy_service), name="one")
            with pytest.raises(HarnessUsageError, match="'one' was already spawned in this test"):
                supervisor_factory.spawn({}, name="one")
            with pytest.raises(HarnessUsageError, match="need 0 <= not_before <= within"):
                handle.assert_respawned("web", within=1, not_before=2)
            with pytest.raises(HarnessUsageError, match="duration > 0 and interval > 0"):
                handle.sample_resources(duration=0)
        """,
    )
    run(pytester).assert_outcomes(passed=1)


def test_waits_on_a_supervisor_that_ends_or_never_does(pytester: pytest.Pytester) -> None:
    with_restarting_web(
        pytester,
        """
        def test_no_such_service(supervisor_factory, dummy_service):
            handle = supervisor_factory.spawn(config(dummy_service))
            handle.pid_of("db", timeout=0.3)

        def test_never_exits(supervisor_factory, dummy_service):
            handle = supervisor_factory.spawn(config(dummy_service))
            handle.wait_exit(timeout=0.3)

        def test_signal_after_exit(supervisor_factory, dummy_service):
            handle = supervisor_factory.spawn(config(dummy_service))
            handle.signal("graceful_stop")
            handle.wait_exit()
            handle.signal("hard_kill")
        """,
    )
    result = run(pytester)
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines_random(
        [
            "E * service 'db' had no running process within 0.3s",
            "E * the supervisor did not exit within 0.3s",
            f"E * the supervisor was gone when {HARD_KILL} was sent",
            "E * supervisor 'supervisor' (pid *): exited with code 0",
        ]
    )


@pytest.mark.skipif(
    sys.platform == "win32",
    reason="Windows has no self-respawn that keeps the services: an exec cannot keep children,"
    " so the supervisor restarts them (test_windows.py covers that), and fault injection is a"
    " control command there, not a signal",
)
def test_pid_of_follows_a_self_respawn(pytester: pytest.Pytester) -> None:
    with_restarting_web(
        pytester,
        """
        def test_adopted(supervisor_factory, dummy_service):
            handle = supervisor_factory.spawn(config(dummy_service), fault_injection=True)
            before = handle.pid_of("web")
            handle.signal("inject_fault")
            handle.wait_for("self_respawn")
            adopted = handle.wait_for("adopted", "web")
            assert adopted["pid"] == before == handle.pid_of("web")
            assert handle.wait_for("supervisor_started", predicate=lambda e: e["respawn_count"])
            assert handle.kill("web") == before
            assert handle.assert_respawned("web", within=5) != before
        """,
    )
    run(pytester).assert_outcomes(passed=1)


def test_waits_that_time_out_or_outlive_the_supervisor(pytester: pytest.Pytester) -> None:
    with_restarting_web(
        pytester,
        """
        def test_no_such_event(supervisor_factory, dummy_service):
            handle = supervisor_factory.spawn(config(dummy_service))
            handle.wait_for("ready", "web", timeout=0.3)

        def test_no_start(supervisor_factory):
            supervisor_factory.spawn({"services": {"web": {"command": ["x"]}}},
                                     args=["--frobnicate"])
        """,
    )
    result = run(pytester)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "E * no 'ready' event for service 'web' within 0.3s",
            "E * the supervisor refused to start (exit code 2, a bad command line):",
            "E * error: unrecognized arguments: --frobnicate",
            "E * supervisor 'supervisor' (pid *): exited with code 2",
        ]
    )


def test_a_config_error_is_the_headline(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.supervisor_config({"services": {"web": {"command": ["x"], "restrat": 1}}})
        def test_bad_config(supervisor):
            pass
        """
    )
    result = run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_bad_config*",
            "the supervisor refused its config, *config.yaml:",
            "    *config.yaml:*: services.web.restrat: unknown key (did you mean 'restart'?)",
            "supervisor 'supervisor' (pid *): exited with code 2",
        ]
    )
    assert "supervisor_started" not in result.stdout.str()
    assert "def supervisor(" not in result.stdout.str()  # no traceback through the plugin
    assert "During handling" not in result.stdout.str()
