"""The real supervisor on real child processes, observed through its event stream.

Every handle from ``supervisor_factory`` is torn down by the plugin, which fails the test
if anything the supervisor started is still alive afterwards.
"""

import os
import signal
import sys
import time

import psutil
import pytest
from process_helpers import still_alive, wait_for_role, wait_until

from pytest_supervisor import wine

pytestmark = pytest.mark.integration

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and sessions")
linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="child subreaper is Linux-only"
)


def names(handle, service=None):
    return [e["event"] for e in handle.events if service is None or e["service"] == service]




def nth(count):
    """A wait_for predicate true from the ``count``-th matching event on (each is seen once)."""
    seen = [0]

    def predicate(event):
        seen[0] += 1
        return seen[0] >= count

    return predicate




def test_always_service_is_respawned_after_sigkill(supervisor_factory, dummy_service):
    handle = supervisor_factory.spawn(
        {"services": {"web": {"command": dummy_service(), "restart": "always"}}}
    )
    old = handle.kill("web")
    new = handle.assert_respawned("web", within=5.0)
    assert new != old
    spawned = handle.wait_for("spawned", "web", predicate=lambda e: e["pid"] == new)
    assert spawned["attempt"] == 2


def test_on_failure_retries_with_the_delay_then_gives_up(supervisor_factory, dummy_service):
    handle = supervisor_factory.spawn(
        {
            "services": {
                "flaky": {
                    "command": dummy_service(exit_after=0.1, exit_code=3),
                    "restart": "on-failure",
                    "max_retries": 3,
                    "restart_delay": 0.5,
                }
            }
        }
    )
    gave_up = handle.wait_for("gave_up", "flaky", timeout=20)
    assert gave_up["retries"] == 3
    flaky = [e for e in handle.events if e["service"] == "flaky"]
    spawns = [e for e in flaky if e["event"] == "spawned"]
    exits = [e for e in flaky if e["event"] == "exited"]
    assert [e["attempt"] for e in spawns] == [1, 2, 3, 4]
    assert all(e["returncode"] == 3 and e["expected"] is False for e in exits)
    for exited, respawned in zip(exits, spawns[1:]):
        assert respawned["mono"] - exited["mono"] >= 0.5  # restart_delay counts from the exit
    scheduled = [e for e in flaky if e["event"] == "restart_scheduled"]
    assert [e["delay"] for e in scheduled] == [0.5, 0.5, 0.5]


def test_given_up_service_costs_nothing_afterwards(supervisor_factory, dummy_service):
    handle = supervisor_factory.spawn(
        {"services": {"broken": {"command": dummy_service(crash_at_start=True), "max_retries": 2}}}
    )
    handle.wait_for("gave_up", "broken", timeout=20)
    count = len(handle.events)
    supervisor_process = psutil.Process(handle.pid)
    # Not cpu_times(): under wine that answers with this process's own times.
    before = wine.cpu_seconds(supervisor_process)
    handle.assert_not_respawned("broken", for_=1.0)
    assert wine.cpu_seconds(supervisor_process) - before < 0.05
    assert len(handle.events) == count
    assert supervisor_process.children() == []


def test_on_failure_does_not_restart_a_success_exit(supervisor_factory, dummy_service):
    handle = supervisor_factory.spawn(
        {
            "services": {
                "job": {
                    "command": dummy_service(exit_after=0.1, exit_code=4),
                    "success_exit_codes": [0, 4],
                }
            }
        }
    )
    exited = handle.wait_for("exited", "job")
    assert exited["expected"] is True and exited["returncode"] == 4
    handle.assert_not_respawned("job", for_=0.5)


def test_missing_command_is_a_failed_start_and_the_rest_keeps_running(
    supervisor_factory, dummy_service
):
    handle = supervisor_factory.spawn(
        {
            "services": {
                "missing": {"command": ["/nonexistent/bin/service"], "max_retries": 1},
                "healthy": {"command": dummy_service()},
            }
        }
    )
    failed = handle.wait_for("spawn_failed", "missing")
    assert failed["error"].startswith("FileNotFoundError: ")  # the OS's words follow
    if sys.platform != "win32":
        assert "No such file or directory" in failed["error"]
    assert handle.wait_for("gave_up", "missing")["retries"] == 1
    handle.kill("healthy")
    handle.assert_respawned("healthy", within=5.0)


@posix_only
def test_command_without_permission_is_a_failed_start(supervisor_factory, tmp_path):
    script = tmp_path / "not-executable.sh"
    script.write_text("#!/bin/sh\nsleep 10\n")
    script.chmod(0o644)
    handle = supervisor_factory.spawn(
        {"services": {"locked": {"command": [str(script)], "max_retries": 0}}}
    )
    assert "Permission denied" in handle.wait_for("spawn_failed", "locked")["error"]


@posix_only
def test_stop_kills_grandchildren_and_an_escaped_daemon(
    supervisor_factory, dummy_service, tmp_path
):
    pids_file = tmp_path / "pids"
    handle = supervisor_factory.spawn(
        {
            "services": {
                "tree": {
                    "command": dummy_service(
                        grandchildren=2, daemon=True, pids_file=pids_file, ready_line="up"
                    )
                }
            }
        }
    )
    handle.pid_of("tree")
    pids = wait_for_role(pids_file)
    daemon = psutil.Process(pids["daemon"][0])
    assert os.getsid(daemon.pid) != os.getsid(pids["main"][0])  # it really escaped
    handle.signal("SIGTERM")
    assert handle.wait_exit(timeout=15) == 0
    stopped = handle.wait_for("stopped", "tree")
    assert stopped["forced"] is False
    everything = pids["main"] + pids["grandchild"] + pids["daemon"]
    assert still_alive(everything, timeout=1.0) == []


@posix_only
def test_sigterm_ignoring_service_is_sigkilled_after_stop_timeout(
    supervisor_factory, dummy_service, tmp_path
):
    ready = tmp_path / "ready"
    handle = supervisor_factory.spawn(
        {
            "services": {
                "stubborn": {
                    "command": dummy_service(
                        ignore_sigterm=True, grandchildren=1, ready_file=ready
                    ),
                    "stop_timeout": 1.0,
                }
            }
        }
    )
    wait_until(ready.exists, "the dummy to ignore SIGTERM")
    handle.signal("SIGTERM")
    stopping = handle.wait_for("stopping", "stubborn")
    stopped = handle.wait_for("stopped", "stubborn", timeout=15)
    assert stopped["forced"] is True and stopped["signal"] == "SIGKILL"
    assert 0.9 <= stopped["mono"] - stopping["mono"] < 10
    assert handle.wait_exit(timeout=15) == 0


@pytest.mark.parametrize("signame", ["graceful_stop", pytest.param("SIGINT", marks=posix_only)])
def test_graceful_shutdown_stops_every_service_first(supervisor_factory, dummy_service, signame):
    services = {"s%d" % i: {"command": dummy_service(), "restart": "always"} for i in range(3)}
    handle = supervisor_factory.spawn({"services": services})
    for name in services:
        handle.pid_of(name)
    handle.signal(signame)
    assert handle.wait_exit(timeout=15) == 0
    stopped = [e for e in handle.events if e["event"] == "stopped"]
    assert sorted(e["service"] for e in stopped) == sorted(services)
    exiting = handle.events[-1]
    assert exiting["event"] == "supervisor_exiting" and exiting["code"] == 0
    assert all(e["mono"] <= exiting["mono"] for e in stopped)
    assert "restart_scheduled" not in names(handle)


@posix_only
def test_second_sigint_kills_immediately(supervisor_factory, dummy_service, tmp_path):
    ready = tmp_path / "ready"
    handle = supervisor_factory.spawn(
        {
            "services": {
                "slow": {
                    "command": dummy_service(shutdown_delay=30, ready_file=ready),
                    "stop_timeout": 60,
                }
            }
        }
    )
    wait_until(ready.exists, "the dummy to handle SIGINT")
    handle.signal("SIGINT")
    handle.wait_for("stopping", "slow")
    sent = time.monotonic()
    handle.signal("SIGINT")
    stopped = handle.wait_for("stopped", "slow", timeout=10)
    assert stopped["forced"] is True
    assert stopped["mono"] - sent < 5
    assert handle.wait_exit(timeout=10) == 0


@posix_only
def test_self_respawn_keeps_services_and_still_respawns_them(supervisor_factory, dummy_service):
    handle = supervisor_factory.spawn(
        {
            "services": {
                "a": {"command": dummy_service(), "restart": "always"},
                "b": {"command": dummy_service(), "restart": "always"},
            }
        },
        fault_injection=True,
    )
    before = {name: handle.pid_of(name) for name in ("a", "b")}
    supervisor_pid = handle.pid
    handle.signal("SIGUSR1")
    respawn = handle.wait_for("self_respawn")
    assert respawn["count"] == 1 and "InjectedFault" in respawn["reason"]
    restarted = handle.wait_for("supervisor_started", since=respawn["mono"])
    assert restarted["respawn_count"] == 1 and restarted["pid"] == supervisor_pid
    adopted = {handle.wait_for("adopted", name)["pid"] for name in ("a", "b")}
    assert adopted == set(before.values())
    assert not [e for e in handle.events if e["event"] == "spawned" and e["mono"] > respawn["mono"]]
    handle.kill("a")
    new = handle.assert_respawned("a", within=5.0)
    assert new != before["a"]
    assert psutil.Process(before["b"]).is_running()


@posix_only
def test_self_respawn_limit_stops_everything_and_exits_1(supervisor_factory, dummy_service):
    handle = supervisor_factory.spawn(
        {
            "supervisor": {"self_respawn": {"max": 2, "window": 60}},
            "services": {"a": {"command": dummy_service()}},
        },
        fault_injection=True,
    )
    service_pid = handle.pid_of("a")
    for count in (1, 2):
        since = time.monotonic()
        handle.signal("SIGUSR1")
        handle.wait_for(
            "supervisor_started", since=since, predicate=lambda e, c=count: e["respawn_count"] == c
        )
        handle.wait_for("adopted", "a", since=since)
    handle.signal("SIGUSR1")
    assert handle.wait_exit(timeout=15) == 1
    assert handle.events[-1]["event"] == "supervisor_exiting" and handle.events[-1]["code"] == 1
    assert handle.wait_for("stopped", "a")["pid"] == service_pid
    assert names(handle).count("self_respawn") == 2


@posix_only
def test_sigterm_during_a_self_respawn_is_not_lost(supervisor_factory, dummy_service):
    handle = supervisor_factory.spawn(
        {"services": {"a": {"command": dummy_service()}}}, fault_injection=True
    )
    handle.pid_of("a")
    handle.signal("SIGUSR1")
    handle.signal("SIGTERM")  # lands before, during or after the exec
    assert handle.wait_exit(timeout=15) == 0
    assert handle.wait_for("stopped", "a")["forced"] is False


@posix_only
def test_reexec_on_sigusr2_keeps_services(supervisor_factory, dummy_service):
    handle = supervisor_factory.spawn({"services": {"a": {"command": dummy_service()}}})
    pid = handle.pid_of("a")
    since = time.monotonic()
    handle.signal("SIGUSR2")
    assert handle.wait_for("adopted", "a", since=since)["pid"] == pid
    assert "self_respawn" not in names(handle)


def test_sigterm_during_backoff_exits_cleanly(supervisor_factory, dummy_service):
    handle = supervisor_factory.spawn(
        {
            "services": {
                "later": {
                    "command": dummy_service(exit_after=0.05, exit_code=1),
                    "restart_delay": 30,
                }
            }
        }
    )
    handle.wait_for("restart_scheduled", "later")
    handle.signal("graceful_stop")  # SIGTERM; Windows: CTRL_BREAK_EVENT
    assert handle.wait_exit(timeout=15) == 0
    assert handle.wait_for("stopped", "later")["pid"] is None


@pytest.mark.parametrize("moment", range(12))
def test_sigterm_at_any_moment_of_a_crash_storm(supervisor_factory, dummy_service, moment):
    """Ten services dying every few milliseconds; SIGTERM lands after a varying number of
    spawns, so across the parameters it hits spawning, reaping and backoff alike."""
    services = {
        "c%d" % i: {
            "command": dummy_service(exit_after=0.005 * (i % 3)),
            "restart": "always",
            "max_retries": None,
        }
        for i in range(10)
    }
    handle = supervisor_factory.spawn({"services": services})
    handle.wait_for("spawned", timeout=30, predicate=nth(10 + moment * 7))
    handle.signal("graceful_stop")  # SIGTERM; Windows: CTRL_BREAK_EVENT
    assert handle.wait_exit(timeout=20) == 0
    spawned = {e["pid"] for e in handle.events if e["event"] == "spawned"}
    assert still_alive(spawned, timeout=1.0) == []


@posix_only
def test_hundred_services_start_and_stop_cleanly(supervisor_factory):
    services = {"sleep%03d" % i: {"command": ["sleep", "600"]} for i in range(100)}
    handle = supervisor_factory.spawn({"services": services})
    handle.wait_for("spawned", timeout=30, predicate=lambda e: e["service"] == "sleep099")
    running = {e["service"]: e["pid"] for e in handle.events if e["event"] == "spawned"}
    assert len(running) == 100
    sent = time.monotonic()
    handle.signal("SIGTERM")
    assert handle.wait_exit(timeout=30) == 0
    assert time.monotonic() - sent < 10
    assert sum(e["event"] == "stopped" for e in handle.events) == 100
    assert still_alive(running.values(), timeout=1.0) == []


@linux_only
def test_supervisor_reaps_orphans_as_a_subreaper(supervisor_factory, dummy_service, tmp_path):
    pids_file = tmp_path / "pids"
    handle = supervisor_factory.spawn(
        {
            "services": {
                "forker": {
                    "command": dummy_service(daemon=True, pids_file=pids_file, ready_line="up")
                }
            }
        }
    )
    handle.pid_of("forker")
    daemon = wait_for_role(pids_file)["daemon"][0]
    assert psutil.Process(daemon).ppid() == handle.pid
    os.kill(daemon, signal.SIGKILL)
    assert still_alive([daemon], timeout=5) == []
    assert psutil.Process(handle.pid).status() != psutil.STATUS_ZOMBIE
    assert daemon not in [p.pid for p in psutil.Process(handle.pid).children()]


def test_event_stream_survives_a_reexec_in_the_same_file(supervisor_factory, dummy_service):
    handle = supervisor_factory.spawn({"services": {"a": {"command": dummy_service()}}})
    handle.pid_of("a")
    if sys.platform == "win32":
        pytest.skip("re-exec on request is a POSIX signal")
    handle.signal("SIGUSR2")
    handle.wait_for("adopted", "a")
    started = [e for e in handle.events if e["event"] == "supervisor_started"]
    assert [e["respawn_count"] for e in started] == [0, 1]
    lines = handle.events_path.read_text().splitlines()
    assert len(lines) == len(handle.events)
