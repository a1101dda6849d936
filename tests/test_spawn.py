"""How a service process is started, seen from the process itself (/proc): what it gets from
the supervisor and what it must not, with the real supervisor on real processes."""

import json
import os
import signal
import subprocess
import sys

import pytest
from process_helpers import open_descriptors, wait_until

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]

SUPERVISOR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "supervisor.py")


def status_field(pid, name):
    with open("/proc/%d/status" % pid) as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1], 16)
    raise AssertionError("no %s in /proc/%d/status" % (name, pid))


def settled_descriptors(pid):
    """The descriptors of a service running `sleep`, once it sleeps: until then the dynamic
    loader and setlocale open and close files of their own."""
    def asleep():
        with open("/proc/%d/wchan" % pid) as wchan:
            where = wchan.read()
        if where in ("", "0"):  # a kernel that hides it: sleeping is the next best sign
            with open("/proc/%d/stat" % pid) as stat:
                return stat.read().rpartition(")")[2].split()[0] == "S"
        return "nanosleep" in where
    wait_until(asleep, "process %d to sleep" % pid)
    return open_descriptors(pid)


def spawned_pid(events_path, service):
    def find():
        if not os.path.exists(events_path):
            return None
        with open(events_path) as events:
            for line in events:
                event = json.loads(line)
                if event["event"] == "spawned" and event["service"] == service:
                    return event["pid"]
        return None
    return wait_until(find, "the spawned event of %s" % service)


def test_a_service_gets_neither_the_descriptors_nor_the_ignored_signals_of_its_supervisor(
        tmp_path):
    """Started under `nohup`-like conditions (SIGQUIT ignored) and given a pipe (a shell's
    `3>file`, a parent's descriptor), the supervisor passes on neither: a service starts with
    stdin, stdout and stderr only, every signal at its default action, none blocked."""
    config = tmp_path / "services.yaml"
    config.write_text("supervisor: {control_socket: false}\n"
                      "services:\n  quiet:\n    command: [sleep, '600']\n    stdout: null\n")
    events = tmp_path / "events.jsonl"
    reader, writer = os.pipe()
    os.dup2(writer, 50)  # a number no service would open by itself

    def as_nohup():
        signal.signal(signal.SIGQUIT, signal.SIG_IGN)

    proc = subprocess.Popen(
        [sys.executable, SUPERVISOR, "run", "-c", str(config), "--events", str(events)],
        pass_fds=(50,), preexec_fn=as_nohup, stderr=subprocess.DEVNULL)
    try:
        os.close(50)
        pid = spawned_pid(str(events), "quiet")
        assert status_field(proc.pid, "SigIgn") & (1 << (signal.SIGQUIT - 1))  # as given
        descriptors = settled_descriptors(pid)
        assert sorted(descriptors) == [0, 1, 2], descriptors
        assert descriptors[0] == descriptors[1] == os.devnull
        assert not status_field(pid, "SigIgn") & (1 << (signal.SIGQUIT - 1))
        assert status_field(pid, "SigBlk") == 0
        assert os.getsid(pid) == pid
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0
        os.close(reader)
        os.close(writer)


def test_a_bare_program_name_is_looked_up_on_the_services_own_path(supervisor_factory, tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    program = folder / "served-program"
    program.write_text("#!/bin/sh\nexec sleep 600\n")
    program.chmod(0o755)
    (tmp_path / "locked").mkdir()
    locked = tmp_path / "locked" / "locked-program"
    locked.write_text("#!/bin/sh\nexit 0\n")
    locked.chmod(0o644)
    path = "%s:%s:%s" % (tmp_path / "locked", folder, os.environ.get("PATH", os.defpath))
    handle = supervisor_factory.spawn({"services": {
        "found": {"command": ["served-program"], "env": {"PATH": path}},
        "denied": {"command": ["locked-program"], "env": {"PATH": path}, "max_retries": 0},
        "missing": {"command": ["no-such-program"], "env": {"PATH": path}, "max_retries": 0},
    }})
    pid = handle.wait_for("spawned", "found")["pid"]
    wait_until(lambda: open("/proc/%d/cmdline" % pid, "rb").read().startswith(b"sleep\0"),
               "the program's exec of sleep")
    assert handle.wait_for("spawn_failed", "denied")["error"].startswith("PermissionError")
    assert handle.wait_for("spawn_failed", "missing")["error"] == (
        "FileNotFoundError: [Errno 2] No such file or directory: 'no-such-program'")


def test_captured_output_reaches_the_service_as_a_pipe(supervisor_factory, tmp_path):
    handle = supervisor_factory.spawn({"services": {"talker": {
        "command": ["sleep", "600"], "stdout": {"file": str(tmp_path / "out.log")}}}})
    pid = handle.wait_for("spawned", "talker")["pid"]
    descriptors = settled_descriptors(pid)
    assert sorted(descriptors) == [0, 1, 2], descriptors
    assert descriptors[0] == os.devnull and descriptors[1].startswith("pipe:")


def test_a_supervisor_started_with_stdout_and_stderr_closed_runs_its_services(tmp_path):
    """A careless launcher (`... >&- 2>&-`): the supervisor has nowhere to log nor to pass
    inherited output on, and still runs; a pipe of its own never takes the number 1 or 2,
    so a service's captured output still arrives."""
    out = tmp_path / "out.log"
    config = tmp_path / "services.yaml"
    config.write_text(
        "supervisor: {control_socket: false}\n"
        "services:\n"
        "  talker: {command: [sh, -c, 'echo hello; exec sleep 600'], stdout: {file: %s}}\n"
        "  loud: {command: [sh, -c, 'echo inherited; exec sleep 600']}\n" % out)
    events = tmp_path / "events.jsonl"

    def close_stdout_and_stderr():
        os.close(1)
        os.close(2)

    proc = subprocess.Popen(
        [sys.executable, SUPERVISOR, "run", "-c", str(config), "--events", str(events)],
        preexec_fn=close_stdout_and_stderr)
    try:
        spawned_pid(str(events), "loud")
        wait_until(lambda: out.exists() and out.read_text() == "hello\n", "the captured line")
        assert proc.poll() is None
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0
