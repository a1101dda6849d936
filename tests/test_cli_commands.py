"""The command line's control commands as a user meets them: the default control socket,
`all`, `signal`, `logs` (inherited output, files, the supervisor's own log, -f), and each
subcommand's --help. Real supervisor, real services, real sockets."""

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from process_helpers import SUPERVISOR, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="unix sockets"),
]

# Prints its lines, says "ready", and prints "got SIGHUP" at each SIGHUP.
TALKER = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGHUP, lambda *_: print('got SIGHUP', flush=True))\n"
    "for n in range(1, int(sys.argv[1]) + 1): print('line', n)\n"
    "print('ready', flush=True)\n"
    "while True: time.sleep(60)\n"
)


@pytest.fixture
def home():
    """A home of its own with a short name (unix socket paths are limited to about 100
    bytes); with environment() below, no XDG_RUNTIME_DIR: the default socket is in it."""
    folder = tempfile.mkdtemp(prefix="svhome-")
    yield Path(folder)
    shutil.rmtree(folder, ignore_errors=True)


def environment(home, **more):
    return dict(os.environ, **{"HOME": str(home), "XDG_RUNTIME_DIR": "", **more})


def cli(*args, env, timeout=60):
    return subprocess.run([sys.executable, SUPERVISOR, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def talker(lines=0, **settings):
    return {"command": [sys.executable, "-c", TALKER, str(lines)],
            "ready": {"log": "^ready$"}, **settings}


def spawn(factory, env, services, **supervisor):
    handle = factory.spawn({"supervisor": supervisor, "services": services}, env=env)
    for name, settings in services.items():
        if settings.get("autostart", True):
            handle.wait_for("ready" if "ready" in settings else "spawned", name)
    return handle, str(handle.spec.config_path)


# -- the default control socket


def test_status_works_without_a_socket_in_the_config(supervisor_factory, home):
    env = environment(home)
    handle, config = spawn(supervisor_factory, env, {"web": talker()})
    folder = home / ".supervisor"
    assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700
    sockets = list(folder.glob("config.yaml-*.sock"))
    assert len(sockets) == 1 and stat.S_ISSOCK(os.lstat(sockets[0]).st_mode)
    result = cli("status", "--json", "-c", config, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)[0]["pid"] == handle.pid_of("web")
    handle.signal("SIGTERM")
    assert handle.wait_exit(timeout=15) == 0
    assert not sockets[0].exists()


def test_the_default_socket_is_in_xdg_runtime_dir_when_set(supervisor_factory, home):
    runtime = home / "run"
    runtime.mkdir(mode=0o700)
    env = environment(home, XDG_RUNTIME_DIR=str(runtime))
    _, config = spawn(supervisor_factory, env, {"web": talker()})
    assert stat.S_IMODE(os.lstat(runtime / "supervisor").st_mode) == 0o700
    assert len(list((runtime / "supervisor").glob("config.yaml-*.sock"))) == 1
    assert not (home / ".supervisor").exists()
    assert cli("status", "-c", config, env=env).returncode == 0


def test_a_home_too_long_for_a_socket_path_falls_back_to_the_temp_folder(supervisor_factory,
                                                                         home):
    long_home = home / ("h" * 100)
    long_home.mkdir()
    env = environment(long_home)
    _, config = spawn(supervisor_factory, env, {"web": talker()})
    folder = Path(tempfile.gettempdir(), "supervisor-%d" % os.getuid())
    assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700
    assert cli("status", "-c", config, env=env).returncode == 0
    assert not (long_home / ".supervisor").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="giving a folder to another user takes root")
def test_a_home_of_another_user_falls_back_to_the_temp_folder(supervisor_factory, home):
    """HOME kept across a change of user (sudo -u, a service manager): not ours to use."""
    os.chown(home, 65534, 65534)
    env = environment(home)
    _, config = spawn(supervisor_factory, env, {"web": talker()})
    assert len(list(Path(tempfile.gettempdir(), "supervisor-0").glob("config.yaml-*.sock"))) >= 1
    assert cli("status", "-c", config, env=env).returncode == 0
    assert not (home / ".supervisor").exists()


def test_each_config_has_a_socket_of_its_own(supervisor_factory, home):
    env = environment(home)
    first, first_config = spawn(supervisor_factory, env, {"web": talker()})
    second, second_config = spawn(supervisor_factory, env, {"db": talker()})
    assert len(list((home / ".supervisor").glob("*.sock"))) == 2
    rows = json.loads(cli("status", "--json", "-c", second_config, env=env).stdout)
    assert [row["name"] for row in rows] == ["db"]


@pytest.mark.parametrize("planted", ["link", "open folder"])
def test_a_runtime_folder_others_could_use_is_refused(tmp_path, home, planted):
    elsewhere = home / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    folder = home / ".supervisor"
    if planted == "link":
        folder.symlink_to(elsewhere)
        why = "is a link or a file, not a folder"
    else:
        folder.mkdir()
        folder.chmod(0o755)
        why = "must belong to you and be closed to others (chmod 700)"
    config = tmp_path / "services.yaml"
    config.write_text("services:\n  web:\n    command: sleep 600\n")
    result = cli("run", "-c", str(config), "--no-color", env=environment(home))
    assert result.returncode == 1
    assert "cannot start: control socket folder %s %s" % (folder, why) in result.stderr
    assert "spawned" not in result.stderr
    assert list(elsewhere.iterdir()) == []


def test_control_socket_false_means_none(supervisor_factory, home):
    env = environment(home)
    _, config = spawn(supervisor_factory, env, {"web": talker()}, control_socket=False)
    assert not list(home.glob(".supervisor/*.sock"))  # (its state file may be there)
    result = cli("status", "-c", config, env=env)
    assert result.returncode == 3
    assert "supervisor.control_socket is false (no control socket)" in result.stderr


def test_control_socket_true_is_a_config_error(tmp_path, home):
    config = tmp_path / "services.yaml"
    config.write_text("supervisor:\n  control_socket: true\nservices:\n  web: {command: x}\n")
    result = cli("check", "-c", str(config), env=environment(home))
    assert result.returncode == 2
    assert result.stderr == ("%s:2: supervisor.control_socket: expected a path, default or"
                             " false, got true\n" % config)


# -- all, signal


def test_start_stop_restart_all(supervisor_factory, home):
    env = environment(home)
    handle, config = spawn(supervisor_factory, env, {"a": talker(), "b": talker()})
    old = {name: handle.pid_of(name) for name in "ab"}
    stopped = cli("stop", "all", "-c", config, env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.splitlines() == ["a: stopped", "b: stopped"]
    started = cli("start", "all", "-c", config, env=env)
    assert started.stdout.splitlines() == ["a: starting", "b: starting"]
    restarted = cli("restart", "all", "-c", config, env=env)
    assert restarted.returncode == 0, restarted.stderr
    for name in "ab":
        assert handle.pid_of(name) != old[name]
    assert sorted(e["service"] for e in handle.events if e["event"] == "stopped") == \
        ["a", "a", "b", "b"]


def test_signal_reaches_the_service_s_main_process(supervisor_factory, home, tmp_path):
    env = environment(home)
    output = tmp_path / "web.log"
    handle, config = spawn(supervisor_factory, env, {
        "web": talker(stdout={"file": str(output)}),
        "job": {"command": "true", "restart": "never"}})
    handle.wait_for("exited", "job")
    result = cli("signal", "web", "HUP", "-c", config, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "web: SIGHUP sent to pid %d\n" % handle.pid_of("web")
    wait_until(lambda: "got SIGHUP" in output.read_text(), "the service's handler")
    assert "sent SIGHUP to pid %d, as asked" % handle.pid_of("web") in handle.log_path.read_text()

    misspelt = cli("signal", "web", "SIGHPU", "-c", config, env=env)
    assert misspelt.returncode == 1
    assert misspelt.stderr == "error: not a signal of this system: 'SIGHPU' (did you mean" \
                              " 'SIGHUP'?)\n"
    idle = cli("signal", "job", "SIGHUP", "-c", config, env=env)
    assert (idle.returncode, idle.stderr) == (1, "error: not running: job (exited)\n")
    unknown = cli("signal", "wbe", "SIGHUP", "-c", config, env=env)
    assert (unknown.returncode, unknown.stderr) == (
        2, "error: unknown service 'wbe'; known: web, job\n")


# -- logs


def test_logs_of_inherited_output_come_from_a_ring(supervisor_factory, home):
    env = environment(home)
    handle, config = spawn(supervisor_factory, env, {"web": talker(lines=30)})
    result = cli("logs", "web", "-n", "3", "-c", config, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "line 29\nline 30\nready\n"
    default = cli("logs", "web", "-c", config, env=env).stdout.splitlines()
    assert default == ["line %d" % n for n in range(12, 31)] + ["ready"]  # 20 by default


def test_logs_of_a_file_are_read_from_the_file(supervisor_factory, home, tmp_path):
    env = environment(home)
    output = tmp_path / "web.log"
    output.write_text("from an earlier run\n")
    handle, config = spawn(supervisor_factory, env, {
        "web": talker(lines=2, stdout={"file": str(output)})})
    result = cli("logs", "web", "-n", "10", "-c", config, env=env)
    assert result.stdout == "from an earlier run\nline 1\nline 2\nready\n"


def test_logs_without_a_name_is_the_supervisor_s_own_log(supervisor_factory, home):
    env = environment(home)
    handle, config = spawn(supervisor_factory, env, {"web": talker()})
    result = cli("logs", "-n", "100", "-c", config, env=env)
    assert result.returncode == 0, result.stderr
    assert "[web] spawned pid %d" % handle.pid_of("web") in result.stdout
    assert result.stdout.splitlines()[-1].endswith("ready (ready.log probe '^ready$')")


def test_logs_of_the_supervisor_s_log_file_are_read_from_the_file(supervisor_factory, home,
                                                                  tmp_path):
    env = environment(home)
    log_file = tmp_path / "supervisor.log"
    log_file.write_text("an earlier line\n")
    handle, config = spawn(supervisor_factory, env, {"web": talker()}, log_file=str(log_file))
    lines = cli("logs", "-n", "100", "-c", config, env=env).stdout.splitlines()
    assert lines[0] == "an earlier line" and "ready" in lines[-1]


@pytest.mark.parametrize("name", ["web", None])
def test_logs_follow_prints_new_lines_as_they_come(supervisor_factory, home, name):
    env = environment(home)
    handle, config = spawn(supervisor_factory, env, {"web": talker(lines=1)})
    follower = subprocess.Popen(
        [sys.executable, SUPERVISOR, "logs", *([name] if name else []), "-n", "1", "-f",
         "-c", config], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first = follower.stdout.readline()
        assert "ready" in first
        cli("signal", "web", "SIGHUP", "-c", config, env=env)
        expected = "got SIGHUP" if name else "sent SIGHUP to pid"
        assert expected in follower.stdout.readline()
        handle.signal("SIGTERM")
        handle.wait_exit(timeout=15)
        rest = follower.communicate(timeout=15)  # the supervisor left: so does the follower
        assert follower.returncode == 0, rest
    finally:
        follower.kill()
        follower.wait()


def test_logs_errors(supervisor_factory, home):
    env = environment(home)
    handle, config = spawn(supervisor_factory, env, {"web": talker()})
    unknown = cli("logs", "wbe", "-c", config, env=env)
    assert (unknown.returncode, unknown.stderr) == (2, "error: unknown service 'wbe'; known: web\n")
    nobody = cli("logs", "-c", config + ".other", "--socket", str(home / "none.sock"), env=env)
    assert nobody.returncode == 3
    assert nobody.stderr.startswith("cannot reach a running supervisor: no supervisor answers at")


# -- help


@pytest.mark.parametrize("command, own, others", [
    ("status", ["--json", "--socket", "-c FILE"], ["--exit-with-parent", "--allow-fault-injection",
                                                   "--events", "--follow"]),
    ("run", ["--events", "--exit-with-parent", "--no-color"], ["--json", "--socket"]),
    ("logs", ["--lines N", "-f, --follow"], ["--json", "--events"]),  # (3.13: "-n, --lines N")
    ("signal", ["NAME", "SIG"], ["--json", "--events"]),
    ("stop", ["NAME"], ["--json", "--events"]),
])
def test_each_subcommand_s_help_lists_its_own_options_and_an_example(command, own, others,
                                                                     home):
    result = cli(command, "--help", env=environment(home))
    assert result.returncode == 0
    for option in own:
        assert option in result.stdout
    for option in others:
        assert option not in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("example: supervisor %s" % command)


def test_the_help_ends_with_exit_codes_and_signals(home):
    text = cli("--help", env=environment(home)).stdout
    tail = text[text.index("exit codes:"):]
    assert "3  no running supervisor answers on the control socket" in tail
    assert "SIGHUP           reload the config" in tail
    assert tail.rstrip().endswith("Windows: Ctrl+C and Ctrl+Break shut down gracefully")
    for command in ("logs", "signal"):
        assert "\n    %s " % command in text
