"""The supervisor's log as a person reads it: levels and service names in colour on a
terminal only (never with NO_COLOR or --no-color, nor into a pipe or file), service names
aligned on the longest one, and one line when it starts and one when it exits."""

import json
import os
import re
import select
import signal
import subprocess
import sys
import time

import pytest
from process_helpers import SUPERVISOR

import supervisor

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="a pseudo-terminal; POSIX sh")

CONFIG = """\
supervisor:
  control_socket: false
services:
  web:
    command: [sh, -c, "echo hello; exec sleep 600"]
  worker_long:
    command: [sh, -c, "echo hi; exec sleep 600"]
"""


@pytest.fixture
def names():
    yield supervisor.name_services
    supervisor.name_services([])


def test_service_names_align_on_the_longest(names):
    names(["web", "worker_long"])
    assert supervisor.format_log_line(0.0, "info", "spawned", "web", "text").endswith(
        ".000 INFO    [web]         spawned")
    assert supervisor.format_log_line(0.0, "info", "spawned", "worker_long", "text").endswith(
        ".000 INFO    [worker_long] spawned")
    assert supervisor.format_log_line(0.0, "info", "shutting down", None, "text").endswith(
        ".000 INFO    shutting down")
    assert supervisor.output_prefix("web", False) == b"web         | "
    assert supervisor.output_prefix("worker_long", False) == b"worker_long | "


def test_levels_and_service_names_in_colour(names):
    names(["web", "db"])
    line = supervisor.format_log_line(0.0, "error", "boom", "db", "text", colour=True)
    assert line.endswith(".000 \x1b[1;31mERROR  \x1b[0m [\x1b[35mdb\x1b[0m]  boom")
    assert supervisor.output_prefix("web", True) == b"\x1b[36mweb\x1b[0m | "
    as_json = supervisor.format_log_line(0.0, "error", "boom", "db", "json", colour=True)
    assert json.loads(as_json)["level"] == "error" and "\x1b" not in as_json


def run_until_greeted(tmp_path, *options, env=None, terminal=True):
    """Run the supervisor on CONFIG, its stdout and stderr on a pseudo-terminal (or a pipe),
    until both services said hello; then SIGTERM it. Everything it wrote."""
    config = tmp_path / "services.yaml"
    config.write_text(CONFIG)
    if terminal:
        import pty

        reader, writer = pty.openpty()
    else:
        reader, writer = os.pipe()
    proc = subprocess.Popen([sys.executable, SUPERVISOR, "run", "-c", str(config), *options],
                            stdin=subprocess.DEVNULL, stdout=writer, stderr=writer,
                            env=dict(os.environ, **(env or {})))
    os.close(writer)
    output = b""
    try:
        deadline = time.monotonic() + 30
        while not (b"| hello" in output and b"| hi" in output):
            assert select.select([reader], [], [], max(deadline - time.monotonic(), 0))[0], \
                output
            output += os.read(reader, 65536)
        proc.terminate()
        while True:
            try:
                chunk = os.read(reader, 65536)
            except OSError:  # EIO: every writer of the terminal is gone
                break
            if not chunk:
                break
            output += chunk
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
        os.close(reader)
    return output.decode().replace("\r\n", "\n")


@posix_only
def test_on_a_terminal_levels_and_names_are_in_colour(tmp_path):
    output = run_until_greeted(tmp_path, env={"NO_COLOR": ""})
    assert "\x1b[32mINFO   \x1b[0m [\x1b[36mweb\x1b[0m]         spawned pid" in output
    assert "\x1b[36mweb\x1b[0m         | hello\n" in output
    assert "\x1b[35mworker_long\x1b[0m | hi\n" in output


@posix_only
@pytest.mark.parametrize("how", ["NO_COLOR", "--no-color", "a pipe"])
def test_no_colour_when_asked_or_not_on_a_terminal(tmp_path, how):
    output = run_until_greeted(
        tmp_path, *(["--no-color"] if how == "--no-color" else []),
        env={"NO_COLOR": "1"} if how == "NO_COLOR" else {"NO_COLOR": ""},
        terminal=how != "a pipe")
    assert "\x1b" not in output
    assert "INFO    [web]         spawned pid" in output
    assert "web         | hello\n" in output


@posix_only
def test_one_line_at_start_and_one_at_exit(tmp_path):
    lines = run_until_greeted(tmp_path, terminal=False).splitlines()
    config = re.escape(str(tmp_path / "services.yaml"))
    assert re.fullmatch(r".* INFO    supervisor %s \(pid \d+\) started on %s: 2 services"
                        % (re.escape(supervisor.__version__), config), lines[0]), lines[0]
    assert lines[-1].endswith(" INFO    exiting with code 0 (received SIGTERM)")


@posix_only
def test_the_exit_line_of_a_failure_says_why(tmp_path):
    config = tmp_path / "services.yaml"
    config.write_text("supervisor:\n  control_socket: false\n  self_respawn: {enabled: false}\n"
                      "services:\n  web:\n    command: [sleep, '600']\n")
    proc = subprocess.Popen(
        [sys.executable, SUPERVISOR, "run", "-c", str(config), "--allow-fault-injection"],
        stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if "spawned pid" in line:
                proc.send_signal(signal.SIGUSR1)
                break
        rest = proc.stderr.read()
        assert proc.wait(timeout=30) == 1
    finally:
        proc.kill()
        proc.wait()
    assert rest.splitlines()[-1].endswith(
        " ERROR   exiting with code 1 (main loop failures: 1 within 60s)")


def test_a_scheduled_retry_is_a_log_line(supervisor_factory):
    handle = supervisor_factory.spawn(
        {"services": {"job": {"command": [sys.executable, "-c", "raise SystemExit(3)"],
                              "restart_delay": 0.2, "max_retries": 3}}})
    handle.wait_for("gave_up", "job", timeout=30)
    retries = [line.split(" [job] ", 1)[1] for line in handle.log_lines()
               if " [job] retrying in " in line]
    assert retries == ["retrying in 0.2 s (attempt 2 of 4)",
                       "retrying in 0.2 s (attempt 3 of 4)",
                       "retrying in 0.2 s (attempt 4 of 4)"]
