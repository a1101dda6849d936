"""The Windows process backend, run for real: job objects, CTRL_BREAK_EVENT and its fallback,
exit waiters, pipe relays, loopback-TCP control with a token, and self-respawn without exec.

These tests drive ``python supervisor.py run`` directly and talk to it through its control
endpoint, so that they need no console: under wine (tools/wine-python.sh, ``tox -e windows``)
they run as they would on Windows, except where wine cannot do what Windows does --
delivering CTRL_BREAK_EVENT -- which is skipped with that reason.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from process_helpers import DUMMY, SUPERVISOR, read_pids, still_alive, wait_until

import supervisor
from pytest_supervisor.wine import CANNOT_BREAK, under_wine

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform != "win32", reason="the Windows process backend"),
]



needs_ctrl_break = pytest.mark.skipif(under_wine(), reason=CANNOT_BREAK)


def dummy(*flags):
    return [sys.executable, DUMMY, *flags]


class Supervisor:
    """One ``supervisor.py run`` with an events file and a loopback control endpoint."""

    def __init__(self, folder, services, *options, **settings):
        self.folder = folder
        self.control = str(folder / "control.json")
        self.events_path = folder / "events.jsonl"
        self.log_path = folder / "supervisor.log"
        config = {"supervisor": dict(control_socket=self.control, **settings),
                  "services": services}
        config_path = folder / "services.yaml"
        config_path.write_text(json.dumps(config))
        self.argv = [sys.executable, SUPERVISOR, "run", "-c", str(config_path),
                     "--events", str(self.events_path), "--log-level", "debug", *options]
        self.proc = None

    def start(self, launcher=None):
        # The log is a file this (Windows) process opened: a Windows Python cannot start with
        # a wine-side Linux file as its stdout.
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv if launcher is None else launcher(self.argv),
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        self.wait_for("supervisor_started")
        return self

    @property
    def events(self):
        if not self.events_path.exists():
            return []
        lines = self.events_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def wait_for(self, event, service=None, count=1, timeout=20.0, **fields):
        def found():
            matching = [e for e in self.events if e["event"] == event
                        and (service is None or e["service"] == service)
                        and all(e.get(key) == value for key, value in fields.items())]
            return matching[count - 1] if len(matching) >= count else None

        try:
            return wait_until(found, "%s #%d of %s" % (event, count, service), timeout)
        except AssertionError:
            raise AssertionError("no %s event for %s; events: %s\nlog:\n%s" % (
                event, service, [e["event"] for e in self.events], self.log())) from None

    def log(self):
        return self.log_path.read_text(errors="replace")

    def request(self, command, *names, timeout=30.0):
        return supervisor.control_request(
            self.control, {"cmd": command, "args": {"names": list(names)}}, timeout=timeout)

    def cli(self, *args):
        return subprocess.run([sys.executable, SUPERVISOR, *args, "--socket", self.control],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=60)

    def wait_exit(self, timeout=30.0):
        return self.proc.wait(timeout)

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # TerminateProcess: the services' jobs close with it
            self.proc.wait(30)


@pytest.fixture
def start(tmp_path):
    started = []

    def start_supervisor(services, *options, launcher=None, **settings):
        folder = tmp_path / ("supervisor%d" % len(started))
        folder.mkdir()
        handle = Supervisor(folder, services, *options, **settings)
        started.append(handle)
        return handle.start(launcher)

    yield start_supervisor
    for handle in started:
        handle.kill()


def test_a_killed_service_is_seen_at_once_and_respawned(start):
    handle = start({"web": {"command": dummy(), "restart": "always"}})
    old = handle.wait_for("spawned", "web")["pid"]
    os.kill(old, 15)  # TerminateProcess with exit code 15
    exited = handle.wait_for("exited", "web")
    assert exited["pid"] == old and exited["returncode"] == 15 and exited["signal"] is None
    respawned = handle.wait_for("spawned", "web", count=2)
    assert respawned["pid"] != old
    assert respawned["mono"] - exited["mono"] < 2.0  # a waiter thread woke the loop


def test_a_service_that_ignores_the_stop_loses_its_whole_tree_to_the_job(start, tmp_path):
    pids_file = tmp_path / "pids"
    handle = start({"stubborn": {
        "command": dummy("--ignore-sigterm", "--grandchildren", "2", "--pids-file",
                         str(pids_file), "--ready-line", "up"),
        "ready": {"log": "up", "timeout": 30}, "stop_timeout": 2}})
    handle.wait_for("ready", "stubborn")
    tree = [pid for pids in read_pids(pids_file).values() for pid in pids]
    assert len(tree) == 3
    asked = time.monotonic()
    reply = handle.request("stop", "stubborn")
    assert reply["ok"], reply
    stopped = handle.wait_for("stopped", "stubborn")
    assert stopped["forced"] is True
    assert time.monotonic() - asked < 2 + 5  # stop_timeout, then TerminateJobObject
    assert still_alive(tree) == []


def test_killing_the_supervisor_kills_every_service_tree(start, tmp_path):
    pids_file = tmp_path / "pids"
    handle = start({
        "a": {"command": dummy("--grandchildren", "1", "--pids-file", str(pids_file))},
        "b": {"command": dummy("--pids-file", str(pids_file))}})
    tree = wait_until(lambda: pids_file.exists() and len(read_pids(pids_file).get("main", ())) == 2
                      and read_pids(pids_file), "both services to write their pids", timeout=20)
    pids = [pid for role in tree.values() for pid in role]
    handle.proc.kill()  # TerminateProcess: no chance to stop anything itself
    handle.proc.wait(10)
    assert still_alive(pids) == [], "kill-on-close job objects should have ended them"


@needs_ctrl_break
def test_stop_is_ctrl_break_to_the_group_and_a_clean_exit_is_not_forced(start):
    handle = start({"web": {"command": dummy("--shutdown-delay", "0.2", "--name", "web"),
                            "stop_timeout": 20}})
    handle.wait_for("spawned", "web")
    assert handle.request("stop", "web")["ok"]
    stopped = handle.wait_for("stopped", "web")
    assert stopped["forced"] is False and stopped["returncode"] == 0
    assert "web shutting down" in handle.log()


@pytest.mark.skipif(sys.platform == "win32" and not under_wine(),
                    reason="CTRL_BREAK_EVENT is deliverable on Windows with a console")
def test_an_undeliverable_stop_request_terminates_at_once(start):
    handle = start({"web": {"command": dummy("--shutdown-delay", "0.2"), "stop_timeout": 60}})
    handle.wait_for("spawned", "web")
    asked = time.monotonic()
    assert handle.request("stop", "web")["ok"]
    stopped = handle.wait_for("stopped", "web")
    assert stopped["forced"] is True
    assert time.monotonic() - asked < 10, "it waited out stop_timeout for nothing"
    assert "cannot send CTRL_BREAK_EVENT" in handle.log()


def test_control_endpoint_is_loopback_tcp_guarded_by_a_token(start):
    handle = start({"web": {"command": dummy()}})
    pid = handle.wait_for("spawned", "web")["pid"]
    endpoint = json.loads(Path(handle.control).read_text())
    with socket.create_connection(("127.0.0.1", endpoint["port"]), timeout=10) as sock:
        sock.sendall(b'{"v": 1, "id": 1, "cmd": "status", "token": "wrong"}\n')
        reply = json.loads(sock.makefile().readline())
        assert reply["ok"] is False and reply["error"] == "bad token"
        assert sock.recv(1) == b""  # and it hung up
    status = handle.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    assert [(row["name"], row["pid"]) for row in json.loads(status.stdout)] == [("web", pid)]
    shutdown = handle.cli("shutdown")
    assert shutdown.returncode == 0, shutdown.stderr
    assert handle.wait_exit() == 0
    assert not Path(handle.control).exists()
    assert still_alive([pid]) == []


def set_shutdown_event(pid):
    import ctypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenEventW.restype = ctypes.c_void_p
    kernel32.OpenEventW.argtypes = [ctypes.c_ulong, ctypes.c_int, ctypes.c_wchar_p]
    kernel32.SetEvent.argtypes = kernel32.CloseHandle.argtypes = [ctypes.c_void_p]
    event = kernel32.OpenEventW(0x0002, False, supervisor.SHUTDOWN_EVENT % pid)
    assert event, "no shutdown event for pid %d: %s" % (pid, ctypes.WinError())
    try:
        assert kernel32.SetEvent(event)
    finally:
        kernel32.CloseHandle(event)


def test_the_shutdown_event_stops_everything_without_a_console(start):
    handle = start({"a": {"command": dummy()}, "b": {"command": dummy(), "depends_on": ["a"]}})
    pids = [handle.wait_for("spawned", name)["pid"] for name in ("a", "b")]
    set_shutdown_event(handle.proc.pid)
    assert handle.wait_exit() == 0
    assert [e["service"] for e in handle.events if e["event"] == "stopped"] == ["b", "a"]
    assert handle.events[-1]["event"] == "supervisor_exiting"
    assert "shutdown requested through the shutdown event" in handle.log()
    assert still_alive(pids) == []


def test_output_goes_through_pipe_relays_prefixed_to_files_and_probes(start, tmp_path):
    out = tmp_path / "app.out"
    handle = start({
        "app": {"command": dummy("--name", "app", "--ready-line", "app listening",
                                 "--heartbeat", "0.1"),
                "stdout": {"file": str(out)}, "ready": {"log": "listening", "timeout": 30}},
        "chatty": {"command": dummy("--name", "chatty", "--ready-line", "hello there")}})
    handle.wait_for("ready", "app")
    wait_until(lambda: out.exists() and "app heartbeat 2" in out.read_text(),
               "heartbeats in the output file", timeout=20)
    wait_until(lambda: "chatty | hello there" in handle.log(), "the prefixed line", timeout=20)
    assert not [e for e in handle.events if e["event"] == "self_respawn"], handle.log()


def test_self_respawn_restarts_the_services_in_the_same_process(start):
    handle = start({"web": {"command": dummy(), "restart": "always"}},
                   "--allow-fault-injection")
    first = handle.wait_for("spawned", "web")["pid"]
    assert handle.request("fault")["ok"]
    respawn = handle.wait_for("self_respawn")
    assert "fault injected" in respawn["reason"] and respawn["count"] == 1
    started = handle.wait_for("supervisor_started", count=2)
    assert started["pid"] == handle.proc.pid and started["respawn_count"] == 1
    second = handle.wait_for("spawned", "web", count=2)["pid"]
    assert second != first and still_alive([first]) == []
    assert handle.proc.poll() is None
    assert handle.request("status", "web")["result"][0]["pid"] == second  # same endpoint
    set_shutdown_event(handle.proc.pid)  # heard by the new image, not the old one's waiter
    assert handle.wait_exit() == 0


def test_exit_with_parent_ends_the_supervisor_and_its_services(start, tmp_path):
    # A launcher process starts the supervisor and waits; killing it must end everything.
    def launcher(argv):
        script = ("import subprocess, sys, time\n"
                  "subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL)\n"
                  "time.sleep(600)\n")
        return [sys.executable, "-c", script, *argv, "--exit-with-parent"]

    handle = start({"web": {"command": dummy()}}, launcher=launcher)
    service = handle.wait_for("spawned", "web")["pid"]
    own = handle.wait_for("supervisor_started")["pid"]
    handle.proc.kill()  # the launcher, i.e. the supervisor's parent
    handle.wait_for("supervisor_exiting", timeout=30)
    assert still_alive([own, service]) == []
