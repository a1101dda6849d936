"""Unit tests of the original plan (§4.1): ServiceManager with posix_spawn (or Popen), killpg
and waitpid mocked, respawn_self() with execv mocked, and log() formatting."""

import contextlib
import json
import marshal
import os
import signal
import subprocess
import sys
from unittest import mock

import process_helpers
import pytest

import supervisor

pytestmark = [pytest.mark.unit,
              pytest.mark.skipif(sys.platform == "win32", reason="POSIX process backend")]


def make_manager(services):
    processes = supervisor.PosixProcesses()
    processes.use_pidfd = False  # no real pids to open a pidfd on
    return process_helpers.make_manager(services, processes)


def fake_popen(pid):
    proc = mock.Mock(spec=subprocess.Popen)
    proc.pid = pid
    proc.returncode = None
    return proc


@contextlib.contextmanager
def fake_spawn(pid=None, error=None):
    """os.posix_spawn mocked (and the program not looked up on PATH)."""
    with mock.patch("supervisor._find_program", side_effect=lambda program, env: program), \
            mock.patch("supervisor.os.posix_spawn", return_value=pid, side_effect=error) as spawn:
        yield spawn


def test_start_service_runs_the_command_in_a_new_session():
    manager, seen = make_manager(
        {"web": {"command": ["server", "--port", "80"], "env": {"MODE": "test"}}})
    with fake_spawn(4242) as spawn:
        manager.start_service("web")
    (program, argv, env), kwargs = spawn.call_args
    assert program == "server" and argv == ["server", "--port", "80"]
    assert kwargs["setsid"] is True and kwargs["setsigmask"] == ()
    assert signal.SIGPIPE in kwargs["setsigdef"]  # ignored by Python, not by the service
    assert env["MODE"] == "test"
    assert env[supervisor.SERVICE_TAG_ENV] == "%d/web" % os.getpid()
    assert seen[-1] == dict(seen[-1], event="spawned", service="web", pid=4242, attempt=1)


def test_a_service_with_a_working_folder_is_started_by_popen():
    """posix_spawn cannot change folders: Popen does it, in a new session too."""
    manager, seen = make_manager({"web": {"command": ["server"], "cwd": "/tmp"}})
    with mock.patch("subprocess.Popen", return_value=fake_popen(4242)) as popen, \
            fake_spawn(1) as spawn:
        manager.start_service("web")
    args, kwargs = popen.call_args
    assert args == (["server"],) and spawn.call_count == 0
    assert kwargs["start_new_session"] is True and kwargs["cwd"] == "/tmp"
    assert kwargs["close_fds"] is True
    assert popen.return_value.returncode is not None  # so that Popen never reaps it itself
    assert seen[-1] == dict(seen[-1], event="spawned", service="web", pid=4242, attempt=1)


def test_where_posix_spawn_cannot_start_a_session_popen_does():
    """macOS before 10.15 has no POSIX_SPAWN_SETSID: Python's posix_spawn raises
    NotImplementedError there."""
    manager, seen = make_manager({"web": {"command": ["server"]}})
    with mock.patch("subprocess.Popen", return_value=fake_popen(4242)) as popen, \
            fake_spawn(error=NotImplementedError("setsid")) as spawn:
        manager.start_service("web")
    assert spawn.call_count == 1 and popen.call_args[1]["start_new_session"] is True
    assert seen[-1] == dict(seen[-1], event="spawned", service="web", pid=4242, attempt=1)


def test_shell_command_is_passed_as_one_string():
    manager, _ = make_manager({"sh": {"command": "echo $HOME && sleep 1", "shell": True}})
    with fake_spawn(7) as spawn:
        manager.start_service("sh")
    assert spawn.call_args[0][:2] == ("/bin/sh", ["/bin/sh", "-c", "echo $HOME && sleep 1"])


def test_start_service_that_cannot_start_emits_spawn_failed_and_survives():
    manager, seen = make_manager({"bad": {"command": "nothing-here", "max_retries": 0}})
    with mock.patch("supervisor.os.posix_spawn") as spawn:
        manager.start_service("bad")  # not found on PATH: never spawned
    assert spawn.call_count == 0
    assert [e["event"] for e in seen] == ["spawn_failed", "gave_up"]
    assert seen[0]["error"] == (
        "FileNotFoundError: [Errno 2] No such file or directory: 'nothing-here'"
    )


def test_fork_failure_eagain_is_a_failed_start():
    manager, seen = make_manager({"busy": {"command": "x", "max_retries": 0}})
    with fake_spawn(error=BlockingIOError(11, "Resource temporarily unavailable")):
        manager.start_service("busy")
    assert seen[0]["event"] == "spawn_failed"
    assert "Resource temporarily unavailable" in seen[0]["error"]


def test_stop_service_signals_the_process_group():
    manager, seen = make_manager({"web": {"command": "x", "stop_signal": "SIGINT"}})
    with fake_spawn(4242):
        manager.start_service("web")
    with mock.patch("supervisor.os.killpg") as killpg, mock.patch.object(
        manager.processes, "members", return_value=[set()]
    ):
        manager.stop_service("web")
    killpg.assert_called_once_with(4242, signal.SIGINT)
    assert seen[-1]["event"] == "stopping" and seen[-1]["signal"] == "SIGINT"


def test_monitor_services_reaps_an_exit_and_applies_the_policy():
    manager, seen = make_manager({"web": {"command": "x", "restart_delay": 5}})
    with fake_spawn(4242):
        manager.start_service("web")
    statuses = iter([(4242, 3 << 8), (0, 0)])  # exit code 3, then nothing more to reap
    with mock.patch("supervisor.os.waitpid", side_effect=lambda pid, flags: next(statuses)):
        manager.monitor_services()
    assert [e["event"] for e in seen[-2:]] == ["exited", "restart_scheduled"]
    assert seen[-2]["returncode"] == 3 and seen[-2]["signal"] is None
    assert seen[-1]["delay"] == 5.0


def test_monitor_services_reports_the_killing_signal():
    manager, seen = make_manager({"web": {"command": "x", "restart": "never"}})
    with fake_spawn(4242):
        manager.start_service("web")
    statuses = iter([(4242, signal.SIGKILL), (0, 0)])
    with mock.patch("supervisor.os.waitpid", side_effect=lambda pid, flags: next(statuses)):
        manager.monitor_services()
    assert seen[-1]["event"] == "exited"
    assert seen[-1]["signal"] == "SIGKILL" and seen[-1]["returncode"] is None


def test_a_service_restarted_at_once_is_started_before_its_exit_is_told():
    """The replacement's start comes first; the events still come in their order."""
    manager, seen = make_manager({"web": {"command": "x", "restart": "always"}})
    with fake_spawn(4242):
        manager.start_service("web")
    told_at_spawn = []
    statuses = iter([(4242, signal.SIGKILL), (0, 0)])
    with mock.patch("supervisor.os.waitpid", side_effect=lambda pid, flags: next(statuses)), \
            fake_spawn() as spawn:
        spawn.side_effect = lambda *args, **kwargs: told_at_spawn.append(len(seen)) or 4243
        with mock.patch("supervisor.os.killpg", side_effect=ProcessLookupError):
            manager.monitor_services()
    assert told_at_spawn == [1]  # only the first `spawned` had been told
    assert [(e["event"], e.get("pid")) for e in seen] == [
        ("spawned", 4242), ("exited", 4242), ("restart_scheduled", None), ("spawned", 4243)]


def test_an_immediate_restart_that_cannot_start_goes_through_the_timer():
    """A start that fails is retried by a timer, even at no delay: a service that cannot
    start at all never keeps the loop from its signals (nor recurses), one try a pass."""
    manager, seen = make_manager({"web": {"command": "x", "restart": "always",
                                          "max_retries": None}})
    with fake_spawn(4242):
        manager.start_service("web")
    statuses = iter([(4242, signal.SIGKILL), (0, 0), (0, 0), (0, 0)])
    with mock.patch("supervisor.os.waitpid", side_effect=lambda pid, flags: next(statuses)), \
            fake_spawn(error=OSError(12, "Cannot allocate memory")) as spawn, \
            mock.patch("supervisor.os.killpg", side_effect=ProcessLookupError):
        manager.monitor_services()
        tries = spawn.call_count  # at the exit, then by the timer that was due in that pass
        manager.monitor_services()
    assert tries == 2 and spawn.call_count == 3
    assert [e["event"] for e in seen] == ["spawned", "exited"] + [
        "restart_scheduled", "spawn_failed"] * 3 + ["restart_scheduled"]


def test_respawn_self_execs_the_same_interpreter_and_arguments():
    with mock.patch("supervisor.os.execv") as execv, mock.patch(
        "supervisor.signal.pthread_sigmask"
    ) as sigmask, mock.patch.object(sys, "argv", ["/usr/bin/supervisor", "run", "-c", "x.yaml"]):
        supervisor.respawn_self()
    execv.assert_called_once_with(
        sys.executable, [sys.executable, "/usr/bin/supervisor", "run", "-c", "x.yaml"]
    )
    sigmask.assert_called_once_with(signal.SIG_BLOCK, supervisor.EXEC_BLOCKED_SIGNALS)
    assert signal.SIGTERM in supervisor.EXEC_BLOCKED_SIGNALS
    assert signal.SIGCHLD in supervisor.EXEC_BLOCKED_SIGNALS


def test_respawn_self_of_a_script_run_as_an_import_execs_the_import_again():
    argv = [supervisor.__file__, "run"]  # what the import form leaves in sys.argv
    with mock.patch("supervisor.os.execv") as execv, mock.patch(
        "supervisor.signal.pthread_sigmask"
    ), mock.patch.object(sys, "argv", argv):
        supervisor.respawn_self()
    execv.assert_called_once_with(
        sys.executable, [sys.executable, "-c", supervisor._RUN_AS_IMPORT, "-", *argv])


def test_respawn_self_unblocks_signals_when_exec_fails():
    with mock.patch("supervisor.os.execv", side_effect=OSError(8, "Exec format error")), mock.patch(
        "supervisor.signal.pthread_sigmask"
    ) as sigmask:
        with pytest.raises(OSError):
            supervisor.respawn_self()
    assert sigmask.call_args_list[-1] == mock.call(
        signal.SIG_UNBLOCK, supervisor.EXEC_BLOCKED_SIGNALS
    )


def test_a_service_restarted_while_adopting_does_not_inherit_the_exec_signal_mask():
    """A re-executed image starts with signals blocked (they were blocked across the exec); a
    service it must start again, instead of adopting it, gets an empty mask."""
    manager, seen = make_manager({"web": {"command": ["server"]}})
    handoff = {"pending_signals": [], "pipes": [], "awaiting": [], "control": None,
               "services": {"web": {"state": "running", "pid": 4241, "retries": 0, "restarts": 0,
                                    "started_at": 0.0, "timer_due": None, "last_exit": None,
                                    "sessions": [4241], "drain": None}}}
    masks = []

    def spawn(launch, tree):
        masks.append(signal.pthread_sigmask(signal.SIG_BLOCK, []))
        return 4242

    supervisor.block_signals()  # as after the exec
    try:
        with mock.patch.object(manager, "_install_wakeups"), mock.patch.object(
            manager.processes, "take_charge", return_value=None
        ), mock.patch.object(manager.processes, "is_child", return_value=False), mock.patch.object(
            manager.processes, "spawn", side_effect=spawn
        ):
            manager.start(handoff)
    finally:
        supervisor.unblock_signals()
    assert [e["pid"] for e in seen if e["event"] == "spawned"] == [4242]
    assert len(masks) == 1 and not masks[0] & supervisor.EXEC_BLOCKED_SIGNALS


def run_as_import(argv, execv_effect=None):
    """The start of `python supervisor.py ARGV`, with execv mocked."""
    with mock.patch("supervisor.os.execv", side_effect=execv_effect) as execv, mock.patch.object(
        sys, "argv", ["supervisor.py", *argv]
    ):
        supervisor.run_as_import()  # returns only because execv is mocked
    return execv


def test_run_as_a_script_reexecutes_itself_as_an_import_with_the_same_argv():
    with mock.patch("supervisor._hand_over", return_value="9"):
        execv = run_as_import(["run", "-c", "x.yaml"])
    execv.assert_called_once_with(sys.executable, [
        sys.executable, "-c", supervisor._RUN_AS_IMPORT, "9", "supervisor.py", "run", "-c",
        "x.yaml"])


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="no memfd to hand it over in")
def test_run_as_a_script_hands_over_the_module_it_compiled():
    """So that the import does not compile it again where no bytecode is cached."""
    code = compile("answer = 42", "supervisor.py", "exec")
    fd = int(supervisor._hand_over(code))
    try:
        assert os.get_inheritable(fd)  # it crosses the exec
        namespace = {}
        exec(marshal.load(os.fdopen(os.dup(fd), "rb")), namespace)
        assert namespace["answer"] == 42
    finally:
        os.close(fd)


def test_run_as_a_script_goes_on_as_it_is_when_the_reexec_fails():
    assert run_as_import(["run"], execv_effect=OSError(7, "too long")).call_count == 1


def test_run_as_a_script_stays_as_it_is_without_an_interpreter_to_name():
    with mock.patch.object(sys, "executable", None):
        assert run_as_import(["run"]).call_count == 0


def test_only_a_script_run_of_run_reexecutes():
    assert run_as_import(["status"]).call_count == 0  # a short-lived command
    with mock.patch("supervisor.os.execv") as execv, mock.patch("supervisor.Runner") as runner:
        runner.return_value.run.return_value = 0
        supervisor.main(["run"])  # imported: python -m supervisor, the console script
    assert execv.call_count == 0


def test_the_program_exits_with_mains_code_without_tearing_the_interpreter_down():
    with mock.patch("supervisor.main", return_value=3), mock.patch(
        "supervisor.os._exit"
    ) as exit_now, mock.patch.object(sys, "stdout") as stdout:
        supervisor.command_line()
    exit_now.assert_called_once_with(3)
    assert stdout.flush.call_count == 1  # what print() left in the buffer goes out first


def test_log_text_format():
    supervisor.name_services(["web"])  # (the alignment width is the longest service name)
    line = supervisor.format_log_line(0.25, "warning", "pid 7 exited", "web", "text")
    assert line.endswith(".250 WARNING [web] pid 7 exited")
    assert supervisor.format_log_line(0.0, "info", "hello", None, "text").endswith(
        ".000 INFO    hello"
    )


def test_log_json_format():
    record = json.loads(supervisor.format_log_line(12.5, "error", "boom", "db", "json"))
    assert record == {"ts": 12.5, "level": "error", "service": "db", "message": "boom"}


def test_log_respects_the_level(capsys):
    supervisor.name_services(["svc"])
    supervisor.configure_logging("warning", "text")
    try:
        supervisor.log("info", "quiet")
        supervisor.log("error", "loud", "svc")
    finally:
        supervisor.configure_logging("info", "text")
    err = capsys.readouterr().err
    assert "quiet" not in err and "ERROR   [svc] loud" in err


def test_event_stream_appends_one_json_object_per_line(tmp_path):
    path = tmp_path / "events.jsonl"
    first = supervisor.EventStream(str(path), clock=lambda: 5.0)
    first.emit("spawned", "web", pid=1, attempt=1)
    supervisor.EventStream(str(path)).emit("supervisor_exiting", None, code=0)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["event"] for line in lines] == ["spawned", "supervisor_exiting"]
    assert lines[0]["mono"] == 5.0 and lines[0]["service"] == "web" and lines[0]["pid"] == 1
    assert set(lines[1]) == {"ts", "mono", "event", "service", "code"}


def test_held_output_is_written_in_order_when_the_outer_block_ends_even_on_error(
        tmp_path, capsys):
    path = tmp_path / "events.jsonl"
    ticks = iter(range(10))
    events = supervisor.EventStream(str(path), clock=lambda: float(next(ticks)))
    supervisor.configure_logging("info", "text")  # to the stderr capsys captures
    supervisor.name_services(["web"])
    with pytest.raises(RuntimeError):
        with supervisor.HeldOutput(events):
            events.emit("exited", "web", pid=1)
            supervisor.log("warning", "pid 1 exited", "web")
            with supervisor.HeldOutput(events):
                events.emit("restart_scheduled", "web", delay=0)
            assert path.read_text() == "" and capsys.readouterr().err == ""
            events.emit("spawned", "web", pid=2)
            raise RuntimeError("a bug in the loop")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(line["event"], line["mono"]) for line in lines] == [
        ("exited", 0.0), ("restart_scheduled", 1.0), ("spawned", 2.0)]
    assert "WARNING [web] pid 1 exited" in capsys.readouterr().err
    events.emit("stopped", "web", pid=2)  # no longer held
    assert json.loads(path.read_text().splitlines()[-1])["event"] == "stopped"


def test_config_records_are_named_tuples_with_defaults_and_methods_but_no_dict():
    """The module's NamedTuple stand-in (typing is not imported at run time) keeps what the
    class syntax promises: fields in order, defaults, methods, _replace, and no __dict__."""
    backoff = supervisor.Backoff(2.0)
    assert backoff == (2.0, 60.0, 0.0) and backoff._fields == ("factor", "max_delay", "jitter")
    assert backoff._replace(jitter=0.5) == supervisor.Backoff(2.0, 60.0, 0.5)
    assert isinstance(backoff._replace(jitter=0.5), supervisor.Backoff)
    assert repr(backoff) == "Backoff(factor=2.0, max_delay=60.0, jitter=0.0)"
    problem = supervisor.Problem("f.yaml", 3, "services.web", "bad")
    assert str(problem) == "f.yaml:3: services.web: bad"  # its own __str__
    with pytest.raises(AttributeError):
        problem.extra = 1  # (no instance dict: a tuple's size)
    with pytest.raises(TypeError):
        supervisor.Problem("f.yaml")  # fields without a default are required
    with pytest.raises(TypeError, match="Bad: a field without a default after one with"):
        class Bad(supervisor.NamedTuple):  # as typing says (collections would shift defaults)
            first: int = 1
            second: int


def test_help_is_as_wide_as_columns_says(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "50")
    with pytest.raises(SystemExit):
        supervisor.main(["run", "--help"])
    options = capsys.readouterr().out.split("options:" if sys.version_info >= (3, 10)
                                            else "optional arguments:")[1].split("example:")[0]
    assert max(map(len, options.splitlines())) <= 48
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        supervisor.main(["run", "--help"])
    assert "--exit-with-parent    shut down when the process that started the supervisor dies" \
        in capsys.readouterr().out  # one line
