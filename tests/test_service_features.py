"""Readiness probes, dependency order, output capture and the service environment, with real
processes and a real network service as a readiness target."""

import os
import socket
import sys

import pytest
from process_helpers import free_port, wait_until

pytestmark = pytest.mark.integration

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX-only behaviour")


def events_of(handle, *kinds):
    return [e for e in handle.events if e["event"] in kinds]




# -- readiness


def test_log_probe_waits_for_the_matching_line(supervisor_factory, dummy_service):
    handle = supervisor_factory.spawn(
        {
            "services": {
                "db": {
                    "command": dummy_service(ready_line="accepting connections"),
                    "ready": {"log": "accepting conn"},
                }
            }
        }
    )
    spawned = handle.wait_for("spawned", "db")
    ready = handle.wait_for("ready", "db")
    assert ready["pid"] == spawned["pid"]
    assert ready["mono"] >= spawned["mono"]


def test_log_probe_matching_a_line_followed_by_more_in_the_same_read(supervisor_factory):
    # One write, so one read: the probe succeeds on the first line and the rest still flows.
    script = "import sys, time; sys.stdout.write('up\\nmore\\n'); sys.stdout.flush(); time.sleep(9)"
    handle = supervisor_factory.spawn(
        {"services": {"w": {"command": [sys.executable, "-c", script], "ready": {"log": "up"}}}}
    )
    handle.wait_for("ready", "w")
    wait_until(lambda: "w | more" in handle.log_lines(), "the line after the ready line")
    assert not events_of(handle, "self_respawn")


def test_log_probe_anchored_at_the_end_matches_a_line_ended_by_crlf(supervisor_factory):
    # What print() writes on Windows: "\r\n" ends the line.
    script = (
        "import sys, time; sys.stdout.buffer.write(b'w up\\r\\n'); sys.stdout.flush();"
        " time.sleep(9)"
    )
    handle = supervisor_factory.spawn(
        {"services": {"w": {"command": [sys.executable, "-c", script], "ready": {"log": "up$"}}}}
    )
    handle.wait_for("ready", "w", timeout=3)


def test_tcp_probe_on_a_real_http_server(supervisor_factory):
    port = free_port()
    handle = supervisor_factory.spawn(
        {
            "services": {
                "web": {
                    "command": [
                        sys.executable,
                        "-m",
                        "http.server",
                        "--bind",
                        "127.0.0.1",
                        str(port),
                    ],
                    "ready": {"tcp": "127.0.0.1:%d" % port, "timeout": 20},
                }
            }
        }
    )
    handle.wait_for("ready", "web", timeout=25)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"HEAD / HTTP/1.0\r\n\r\n")
        assert sock.recv(12).startswith(b"HTTP/1.0 200")


def test_file_probe(supervisor_factory, dummy_service, tmp_path):
    flag = tmp_path / "up"
    handle = supervisor_factory.spawn(
        {
            "services": {
                "w": {"command": dummy_service(ready_file=flag), "ready": {"file": str(flag)}}
            }
        }
    )
    handle.wait_for("ready", "w")
    assert flag.exists()


def test_after_probe_is_ready_once_it_has_run_that_long(supervisor_factory, dummy_service):
    handle = supervisor_factory.spawn(
        {"services": {"w": {"command": dummy_service(), "ready": {"after": 0.5}}}}
    )
    spawned = handle.wait_for("spawned", "w")
    assert handle.wait_for("ready", "w")["mono"] - spawned["mono"] >= 0.5


def test_probe_timeout_fails_the_start_and_says_why(supervisor_factory, dummy_service):
    handle = supervisor_factory.spawn(
        {
            "services": {
                "mute": {
                    "command": dummy_service(heartbeat=0.05, name="mute"),
                    "ready": {"log": "never printed", "timeout": 1},
                    "max_retries": 0,
                }
            }
        }
    )
    exited = handle.wait_for("exited", "mute", timeout=10)
    assert exited["error"] == "ready.log probe 'never printed' did not succeed within 1s"
    assert exited["expected"] is False
    if sys.platform == "win32":  # TerminateJobObject with exit code 1, no signal
        assert exited["signal"] is None and exited["returncode"] == 1
    else:
        assert exited["signal"] == "SIGKILL"
    handle.wait_for("gave_up", "mute")
    log = "\n".join(handle.log_lines())
    assert "not ready: ready.log probe 'never printed' did not succeed within 1s" in log
    assert "its last output:" in log and "heartbeat" in log


def test_dying_before_ready_is_a_failed_start(supervisor_factory, dummy_service):
    handle = supervisor_factory.spawn(
        {
            "services": {
                "quick": {
                    "command": dummy_service(exit_after=0.1, exit_code=0),
                    "ready": {"after": 5},
                    "max_retries": 0,
                }
            }
        }
    )
    exited = handle.wait_for("exited", "quick")
    assert exited["error"] == "exited before it was ready (ready.after (5s of running))"
    assert exited["expected"] is False and exited["returncode"] == 0


# -- dependencies


def test_depends_on_starts_after_readiness_and_stops_in_reverse(supervisor_factory, dummy_service):
    handle = supervisor_factory.spawn(
        {
            "services": {
                "app": {"command": dummy_service(), "depends_on": ["db", "cache"]},
                "db": {"command": dummy_service(ready_line="db up"), "ready": {"log": "db up"}},
                "cache": {"command": dummy_service(), "ready": {"after": 0.3}},
            }
        }
    )
    handle.pid_of("app")
    starts = {e["service"]: e["mono"] for e in events_of(handle, "spawned")}
    ready = {e["service"]: e["mono"] for e in events_of(handle, "ready")}
    assert starts["app"] >= max(ready["db"], ready["cache"])
    handle.signal("SIGTERM")
    assert handle.wait_exit(timeout=15) == 0
    stopped = {e["service"]: e["mono"] for e in events_of(handle, "stopped")}
    stopping = {e["service"]: e["mono"] for e in events_of(handle, "stopping")}
    assert stopped["app"] <= min(stopping["db"], stopping["cache"])


def test_dependency_cycle_is_a_config_error(supervisor_factory, tmp_path):
    import subprocess

    config = tmp_path / "cycle.yaml"
    config.write_text(
        "services:\n  a: {command: x, depends_on: [b]}\n  b: {command: x, depends_on: [a]}\n"
    )
    supervisor_py = supervisor_factory.command[-1]
    result = subprocess.run(
        [sys.executable, supervisor_py, "check", "-c", str(config)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "services.a.depends_on: dependency cycle a -> b -> a" in result.stderr


# -- output


def test_inherited_output_is_prefixed_with_the_service_name(supervisor_factory, dummy_service):
    handle = supervisor_factory.spawn(
        {"services": {"talker": {"command": dummy_service(ready_line="hello from talker")}}}
    )
    handle.pid_of("talker")
    wait_until(
        lambda: "talker | hello from talker" in handle.log_lines(),
        "the prefixed line in the supervisor's output",
    )


def test_null_output_is_discarded(supervisor_factory, dummy_service):
    handle = supervisor_factory.spawn(
        {
            "services": {
                "quiet": {
                    "command": dummy_service(ready_line="you should not see this"),
                    "stdout": "null",
                    "ready": {"after": 0.2},
                }
            }
        }
    )
    handle.wait_for("ready", "quiet")
    handle.signal("SIGTERM")
    handle.wait_exit(timeout=15)
    assert "you should not see this" not in "\n".join(handle.log_lines())


def test_file_output_is_rotated_by_size(supervisor_factory, tmp_path):
    log = tmp_path / "out.log"
    writer = (
        "import sys\n"
        "for i in range(400): print('line %04d ' % i + 'x' * 40)\n"
        "sys.stdout.flush()\n"
        "import time; time.sleep(600)\n"
    )
    handle = supervisor_factory.spawn(
        {
            "services": {
                "writer": {
                    "command": [sys.executable, "-c", writer],
                    "stdout": {"file": str(log), "max_bytes": 4000, "backups": 2},
                }
            }
        }
    )
    handle.pid_of("writer")

    def current():  # the file may be between a rotation's rename and its re-creation
        try:
            return log.read_text()
        except FileNotFoundError:
            return ""

    wait_until(
        lambda: (tmp_path / "out.log.2").exists() and "line 0399" in current(),
        "the output to be written and rotated",
    )
    assert not (tmp_path / "out.log.3").exists()
    for path in (log, tmp_path / "out.log.1", tmp_path / "out.log.2"):
        assert path.stat().st_size <= 4000
    assert "line 0399" in log.read_text()
    older = (tmp_path / "out.log.1").read_text().splitlines()
    assert older[-1].startswith("line ") and older[-1] < log.read_text().splitlines()[0]


@posix_only
@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_log_file_is_a_warning_and_the_service_runs(
    supervisor_factory, dummy_service, tmp_path
):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    handle = supervisor_factory.spawn(
        {
            "services": {
                "w": {
                    "command": dummy_service(heartbeat=0.05),
                    "stdout": {"file": str(locked / "out.log")},
                    "ready": {"after": 0.5},
                }
            }
        }
    )
    handle.wait_for("ready", "w")
    assert any("cannot write" in line for line in handle.log_lines())


def test_unwritable_log_file_warning_as_root_too(supervisor_factory, dummy_service, tmp_path):
    """A path under a regular file cannot be created by anyone, root included."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    handle = supervisor_factory.spawn(
        {
            "services": {
                "w": {
                    "command": dummy_service(heartbeat=0.05),
                    "stdout": {"file": str(blocker / "out.log")},
                    "ready": {"after": 0.5},
                }
            }
        }
    )
    handle.wait_for("ready", "w")
    warnings = [line for line in handle.log_lines() if "cannot write" in line]
    assert warnings and "dropping output" in warnings[0]
    assert len(warnings) == 1  # said once, not for every line
    handle.kill("w")
    handle.assert_respawned("w", within=5.0)


def test_a_flooding_service_does_not_delay_another_respawn(supervisor_factory, dummy_service):
    flood = "import sys\nline = b'x' * 200 + b'\\n'\nwhile True: sys.stdout.buffer.write(line)\n"
    handle = supervisor_factory.spawn(
        {
            "services": {
                "flood": {"command": [sys.executable, "-c", flood]},
                "victim": {"command": dummy_service(), "restart": "always", "max_retries": None},
            }
        }
    )
    handle.pid_of("flood")
    for _ in range(5):
        handle.kill("victim")
        handle.assert_respawned("victim", within=1.0)


# -- environment


@posix_only
def test_env_cwd_and_variable_expansion(supervisor_factory, tmp_path):
    out = tmp_path / "seen"
    script = (
        "import os, sys\n"
        "open(sys.argv[1], 'w').write('\\n'.join([os.getcwd(), os.environ['GREETING'],"
        " os.environ['FALLBACK'], sys.argv[2]]))\n"
        "import time; time.sleep(600)\n"
    )
    handle = supervisor_factory.spawn(
        {
            "defaults": {"env": {"GREETING": "hello ${WHO}"}},
            "services": {
                "probe": {
                    "command": [sys.executable, "-c", script, str(out), "${GREETING}-$${LITERAL}"],
                    "env": {"FALLBACK": "${UNSET_VARIABLE_XYZ:-fallback}"},
                    "cwd": str(tmp_path),
                }
            },
        },
        env={"WHO": "world"},
    )
    handle.pid_of("probe")
    wait_until(lambda: out.exists() and out.read_text().count("\n") == 3, "the service's report")
    cwd, greeting, fallback, argument = out.read_text().split("\n")
    assert os.path.samefile(cwd, tmp_path)
    assert greeting == "hello world"
    assert fallback == "fallback"
    assert argument == "hello world-${LITERAL}"


@posix_only
def test_umask(supervisor_factory, tmp_path):
    created = tmp_path / "created"
    script = "import os, sys\nopen(sys.argv[1], 'w').close()\nimport time; time.sleep(600)\n"
    handle = supervisor_factory.spawn(
        {
            "services": {
                "m": {"command": [sys.executable, "-c", script, str(created)], "umask": "077"}
            }
        }
    )
    handle.pid_of("m")
    wait_until(created.exists, "the file")
    assert created.stat().st_mode & 0o777 == 0o600


@posix_only
def test_user_without_root_is_a_clear_failed_start(supervisor_factory, dummy_service):
    if os.geteuid() == 0:
        pytest.skip("running as root: privileges can be dropped")
    handle = supervisor_factory.spawn(
        {"services": {"u": {"command": dummy_service(), "user": "root", "max_retries": 0}}}
    )
    error = handle.wait_for("spawn_failed", "u")["error"]
    assert error == "PermissionError: [Errno 1] user: switching to 'root' needs root"


@posix_only
def test_user_drops_privileges_as_root(supervisor_factory):
    if os.geteuid() != 0:
        pytest.skip("dropping privileges needs root")
    import pwd

    import psutil

    nobody = pwd.getpwnam("nobody")
    handle = supervisor_factory.spawn(
        {"services": {"u": {"command": ["sleep", "600"], "user": "nobody", "umask": "027"}}}
    )
    process = psutil.Process(handle.pid_of("u"))
    assert process.uids().real == nobody.pw_uid and process.gids().real == nobody.pw_gid


@posix_only
def test_unknown_user_is_a_failed_start(supervisor_factory, dummy_service):
    handle = supervisor_factory.spawn(
        {
            "services": {
                "u": {"command": dummy_service(), "user": "no-such-user-xyz", "max_retries": 0}
            }
        }
    )
    error = handle.wait_for("spawn_failed", "u")["error"]
    assert error == "LookupError: user: no such user 'no-such-user-xyz'"


@posix_only
def test_output_keeps_flowing_across_a_reexec(supervisor_factory, dummy_service):
    handle = supervisor_factory.spawn({"services": {"beat": {
        "command": dummy_service(heartbeat=0.05, name="beat")}}})
    pid = handle.pid_of("beat")
    handle.signal("SIGUSR2")
    assert handle.wait_for("adopted", "beat")["pid"] == pid

    def beats():
        return sum(line.startswith("beat | ") for line in handle.log_lines())

    after_exec = beats()
    wait_until(lambda: beats() >= after_exec + 5, "heartbeats after the re-exec")
    assert not events_of(handle, "exited")
