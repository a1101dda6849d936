"""Faults while stopping, the open-files limit, and the start-up mistakes a user makes: each
with the real supervisor on real processes."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from pytest_supervisor.factory import SupervisorFactory

pytestmark = pytest.mark.integration

SUPERVISOR = str(Path(__file__).resolve().parent.parent / "supervisor.py")
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and rlimits")


def supervisor(*args, timeout=60):
    return subprocess.run([sys.executable, SUPERVISOR, *args], capture_output=True, text=True,
                          timeout=timeout)


# --------------------------------------------------------------------------- faults

@posix_only
def test_a_fault_while_stopping_does_not_abandon_the_stop(supervisor_factory, dummy_service):
    """No self-respawn: the first fault starts a graceful stop; a second one during that stop
    must not cut it short (every service still gets `stopped`, unforced; exit 1)."""
    handle = supervisor_factory.spawn({
        "supervisor": {"self_respawn": {"enabled": False}},
        "services": {name: {"command": dummy_service(shutdown_delay=3, ready_line="up"),
                            "ready": {"log": "^up$"}, "stop_timeout": 20}
                     for name in ("a", "b")}}, fault_injection=True)
    pids = {name: handle.wait_for("ready", name)["pid"] for name in ("a", "b")}
    handle.signal("SIGUSR1")
    handle.wait_for("stopping", "a")
    handle.wait_for("stopping", "b")
    time.sleep(0.5)  # within the 3 s the services take to stop
    handle.signal("SIGUSR1")
    assert handle.wait_exit(timeout=30) == 1
    for name, pid in pids.items():
        stopped = handle.wait_for("stopped", name, timeout=1)
        assert (stopped["pid"], stopped["forced"], stopped["returncode"]) == (pid, False, 0)
    log = "\n".join(handle.log_lines())
    assert log.count("ERROR   unexpected error in the main loop:") == 1
    assert log.count("ERROR   unexpected error while stopping:") == 1
    assert "killing them" not in log


# --------------------------------------------------------------------------- open files

def _with_open_files_limit(soft, hard):
    """A supervisor command that starts under these open-files limits (as a shell or a
    service manager would start it), running this checkout's supervisor.py."""
    code = ("import os, resource, sys; "
            "resource.setrlimit(resource.RLIMIT_NOFILE, (%d, %d)); "
            "os.execv(sys.executable, [sys.executable] + sys.argv[1:])" % (soft, hard))
    return (sys.executable, "-c", code, SUPERVISOR)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prlimit is Linux's")
def test_500_services_run_under_a_soft_limit_of_1024(tmp_path):
    """Each service costs the supervisor descriptors (its output pipes): it
    raises its own soft limit to the hard one, and gives its services the soft limit back."""
    hard = 20000
    if resource_hard_limit() < hard and os.geteuid() != 0:
        pytest.skip("needs a hard open-files limit of %d (or root to raise it)" % hard)
    with SupervisorFactory(tmp_path / "run", command=_with_open_files_limit(1024, hard)) as factory:
        handle = factory.spawn({
            "defaults": {"restart": "never", "stop_timeout": 5},
            "services": {"s%03d" % i: {"command": ["sleep", str(1000 + i)]}
                         for i in range(500)}}, start_timeout=60)
        pids = [handle.pid_of("s%03d" % i, timeout=120) for i in range(500)]
        assert not [e for e in handle.events if e["event"] in ("spawn_failed", "exited")]
        assert {psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE) for pid in pids} == {
            (1024, hard)}
        assert psutil.Process(handle.pid).rlimit(psutil.RLIMIT_NOFILE) == (hard, hard)
        assert handle.stop(timeout=60) == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts /proc/PID/fd")
def test_a_service_costs_the_supervisor_no_descriptor_beyond_its_output(supervisor_factory):
    """Exits wake the loop through SIGCHLD, not a descriptor per child: 60 services whose
    output is discarded add nothing to the supervisor's open descriptors."""
    def descriptors(count):
        handle = supervisor_factory.spawn({
            "defaults": {"stdout": "null", "stderr": "null", "restart": "never"},
            "services": {"s%02d" % i: {"command": ["sleep", "1000"]} for i in range(count)}})
        for i in range(count):
            handle.pid_of("s%02d" % i)
        open_now = len(os.listdir("/proc/%d/fd" % handle.pid))
        assert handle.stop(timeout=30) == 0
        return open_now

    assert descriptors(60) - descriptors(1) < 6  # the odd socket or file, never 60


def resource_hard_limit():
    import resource
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


@posix_only
def test_running_out_of_descriptors_is_said_in_words(tmp_path):
    """Hard limit 64: a service that cannot get its pipes is a failed start whose reason
    names the limit, not just 'Too many open files'."""
    with SupervisorFactory(tmp_path / "run", command=_with_open_files_limit(64, 64)) as factory:
        handle = factory.spawn({
            "defaults": {"restart": "never"},
            "services": {"s%02d" % i: {"command": ["sleep", "1000"]} for i in range(40)}})
        failed = handle.wait_for("spawn_failed", timeout=30)
        assert failed["error"] == (
            "out of file descriptors: the supervisor's open-files limit (64) is reached; "
            "raise it (ulimit -n, systemd's LimitNOFILE=) or run fewer services")
        assert any("cannot start sleep 1000: out of file descriptors" in line
                   for line in handle.log_lines())
        handle.stop(timeout=60)


# --------------------------------------------------------------------------- start-up

@pytest.mark.parametrize("case", ["log_file", "events_file", "--events", "not a folder"])
def test_an_unwritable_log_or_event_stream_is_one_clear_line(tmp_path, case):
    missing = tmp_path / "missing"
    target = str(missing / "out.log")
    settings = {"log_file": target} if case == "log_file" else (
        {"events_file": target} if case == "events_file" else {})
    if case == "not a folder":
        (tmp_path / "file").write_text("")
        target = str(tmp_path / "file" / "out.log")
        settings = {"log_file": target}
    path = tmp_path / "services.yaml"
    path.write_text(json.dumps({"supervisor": settings,
                                "services": {"a": {"command": ["sleep", "1000"]}}}))
    extra = ["--events", target] if case == "--events" else []
    key = {"--events": "--events", "events_file": "%s: supervisor.events_file" % path}.get(
        case, "%s: supervisor.log_file" % path)
    reason = "%s is not a folder" % (tmp_path / "file") if case == "not a folder" else (
        "the folder %s does not exist" % missing)
    expected = "%s: cannot write %s: %s\n" % (key, target, reason)
    for command in ("check", "run") if case != "--events" else ("run",):  # check has none
        result = supervisor(command, "-c", str(path), *extra, timeout=30)
        assert (result.returncode, result.stderr, result.stdout) == (2, expected, ""), command
    assert not missing.exists()


@posix_only
def test_a_killed_supervisor_not_yet_reaped_does_not_hold_its_config(supervisor_factory,
                                                                     dummy_service, tmp_path):
    """SIGKILLed, its parent has not reaped it yet (a zombie): a new supervisor of the same
    config starts, and stops what the dead one left running."""
    folder = tempfile.mkdtemp(prefix="svz-")  # short: unix socket paths are limited
    try:
        path = tmp_path / "services.yaml"
        path.write_text(json.dumps({"supervisor": {"control_socket": folder + "/ctl/sock"},
                                    "services": {"a": {"command": dummy_service()}}}))
        events = tmp_path / "first.jsonl"
        first = subprocess.Popen([sys.executable, SUPERVISOR, "run", "-c", str(path),
                                  "--events", str(events)], stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while '"spawned"' not in (events.read_text() if events.exists() else ""):
                assert time.monotonic() < deadline
                time.sleep(0.02)  # another process's file: no event to wait on
            left = json.loads([line for line in events.read_text().splitlines()
                               if '"spawned"' in line][0])["pid"]
            time.sleep(0.3)  # the state file is written at most STATE_WRITE_DELAY later
            os.kill(first.pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while psutil.Process(first.pid).status() != psutil.STATUS_ZOMBIE:
                assert time.monotonic() < deadline
                time.sleep(0.01)  # no event to wait on for a process becoming a zombie
            second = supervisor_factory.spawn(str(path))
            assert second.pid_of("a") != left
            assert "already running" not in "\n".join(second.log_lines())
            assert psutil.Process(first.pid).status() == psutil.STATUS_ZOMBIE  # still
            gone, alive = psutil.wait_procs([psutil.Process(left)], timeout=15)
            assert not alive
        finally:
            first.wait()
            if psutil.pid_exists(left):
                os.kill(left, signal.SIGKILL)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
