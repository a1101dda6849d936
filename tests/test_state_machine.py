"""The service state machine against a fake clock and a fake process backend: no real processes."""

import signal

import pytest
from fake_processes import FakeProcesses, checked

import supervisor
from supervisor import TRANSITIONS, IllegalTransition, ServiceManager, State

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def make_manager(services, supervisor_settings=None, rng=None):
    config = supervisor.parse_config(
        supervisor.json.dumps({"supervisor": supervisor_settings or {}, "services": services}),
        "test.yaml",
    )
    events = supervisor.EventStream(None)
    seen = []
    events.listeners.append(seen.append)
    clock = FakeClock()
    events.clock = clock
    manager = ServiceManager(
        config, events, checked(FakeProcesses()), clock, rng=rng or (lambda low, high: 0.0)
    )
    return manager, seen, clock


def names(events):
    return [e["event"] for e in events]


def step(manager, clock, seconds=0.0):
    clock.advance(seconds)
    manager.monitor_services()


def test_first_start_is_attempt_one_and_running():
    manager, seen, _ = make_manager({"a": {"command": "x"}})
    manager.start_service("a")
    assert manager.services["a"].state is State.RUNNING
    assert seen[-1]["event"] == "spawned" and seen[-1]["attempt"] == 1
    assert seen[-1]["pid"] == manager.services["a"].pid


def test_service_environment_carries_its_tag_and_env():
    manager, _, _ = make_manager({"a": {"command": "x", "env": {"K": "v"}}})
    manager.start_service("a")
    env = manager.processes.spawned[0][0].env
    assert env["K"] == "v"
    assert env[supervisor.SERVICE_TAG_ENV] == manager.tag_prefix + "a"


def test_on_failure_restarts_after_the_delay_counted_from_the_exit():
    manager, seen, clock = make_manager({"a": {"command": "x", "restart_delay": 3}})
    manager.start_service("a")
    pid = manager.services["a"].pid
    manager.processes.exit(pid, returncode=2)
    step(manager, clock, 1.0)
    assert names(seen)[-2:] == ["exited", "restart_scheduled"]
    exited, scheduled = seen[-2:]
    assert exited["returncode"] == 2 and exited["expected"] is False and exited["uptime"] == 1.0
    assert scheduled["delay"] == 3 and scheduled["attempt"] == 2
    assert manager.services["a"].state is State.BACKOFF
    step(manager, clock, 2.9)
    assert manager.services["a"].state is State.BACKOFF
    step(manager, clock, 0.2)
    assert seen[-1]["event"] == "spawned" and seen[-1]["attempt"] == 2


def test_on_failure_does_not_restart_a_success_exit():
    manager, seen, clock = make_manager({"a": {"command": "x", "success_exit_codes": [0, 3]}})
    manager.start_service("a")
    manager.processes.exit(manager.services["a"].pid, returncode=3)
    step(manager, clock)
    assert seen[-1]["event"] == "exited" and seen[-1]["expected"] is True
    assert manager.services["a"].state is State.EXITED
    assert manager.timers.next_timeout() is None


def test_death_by_signal_is_a_failure():
    manager, seen, clock = make_manager({"a": {"command": "x"}})
    manager.start_service("a")
    manager.processes.exit(manager.services["a"].pid, signame="SIGKILL")
    step(manager, clock)
    exited = [e for e in seen if e["event"] == "exited"][0]
    assert exited["returncode"] is None and exited["signal"] == "SIGKILL"
    assert exited["expected"] is False
    assert names(seen)[-2:] == ["restart_scheduled", "spawned"]


def test_always_restarts_a_clean_exit_and_never_does_not():
    manager, _, clock = make_manager(
        {"a": {"command": "x", "restart": "always"}, "n": {"command": "x", "restart": "never"}}
    )
    for name in ("a", "n"):
        manager.start_service(name)
        manager.processes.exit(manager.services[name].pid, returncode=0)
    step(manager, clock)
    step(manager, clock)
    assert manager.services["a"].state is State.RUNNING
    assert manager.services["n"].state is State.EXITED


def test_gives_up_after_max_retries_and_then_costs_nothing():
    manager, seen, clock = make_manager({"a": {"command": "x", "max_retries": 3}})
    manager.start_service("a")
    for _ in range(4):
        manager.processes.exit(manager.services["a"].pid, returncode=1)
        step(manager, clock)
        step(manager, clock)
    assert [e["attempt"] for e in seen if e["event"] == "spawned"] == [1, 2, 3, 4]
    assert seen[-1]["event"] == "gave_up" and seen[-1]["retries"] == 3
    assert manager.services["a"].state is State.FATAL
    assert manager.timers.next_timeout() is None


def test_uptime_of_reset_after_resets_the_retry_count():
    manager, seen, clock = make_manager(
        {"a": {"command": "x", "max_retries": 1, "reset_after": 10}}
    )
    manager.start_service("a")
    for _ in range(3):
        clock.advance(11)
        manager.processes.exit(manager.services["a"].pid, returncode=1)
        step(manager, clock)
        step(manager, clock)
    assert "gave_up" not in names(seen)
    assert [e["attempt"] for e in seen if e["event"] == "spawned"] == [1, 2, 2, 2]


def test_unlimited_retries_with_null():
    manager, seen, clock = make_manager({"a": {"command": "x", "max_retries": None}})
    manager.start_service("a")
    for _ in range(50):
        manager.processes.exit(manager.services["a"].pid, returncode=1)
        step(manager, clock)
        step(manager, clock)
    assert "gave_up" not in names(seen)
    assert seen[-1]["attempt"] == 51


@pytest.mark.parametrize(
    "restart_number, expected", [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)]
)
def test_backoff_grows_by_factor_up_to_max_delay(restart_number, expected):
    manager, _, _ = make_manager(
        {"a": {"command": "x", "restart_delay": 1, "backoff": {"factor": 2, "max_delay": 5}}}
    )
    config = manager.services["a"].config
    assert supervisor.restart_delay(config, restart_number) == expected


def test_jitter_is_applied_after_the_cap():
    manager, _, _ = make_manager(
        {
            "a": {
                "command": "x",
                "restart_delay": 10,
                "backoff": {"factor": 2, "max_delay": 15, "jitter": 0.5},
            }
        }
    )
    config = manager.services["a"].config
    assert supervisor.restart_delay(config, 3, lambda low, high: high) == 22.5
    assert supervisor.restart_delay(config, 3, lambda low, high: low) == 7.5


def test_spawn_failure_follows_the_policy_and_counts_as_a_retry():
    manager, seen, clock = make_manager({"a": {"command": "x", "max_retries": 2}})
    manager.processes.spawn_error = FileNotFoundError(2, "No such file or directory")
    manager.start_service("a")
    for _ in range(3):
        step(manager, clock)
    assert names(seen) == [
        "spawn_failed",
        "restart_scheduled",
        "spawn_failed",
        "restart_scheduled",
        "spawn_failed",
        "gave_up",
    ]
    assert "No such file or directory" in seen[0]["error"]
    assert manager.services["a"].state is State.FATAL


def test_a_failing_start_with_no_delay_yields_to_the_loop_between_attempts():
    manager, seen, clock = make_manager({"a": {"command": "x", "max_retries": None}})
    manager.processes.spawn_error = PermissionError(13, "Permission denied")
    manager.start_service("a")
    step(manager, clock)
    step(manager, clock)
    assert names(seen).count("spawn_failed") == 3


def test_stop_signals_the_tree_and_stops_when_the_tree_is_gone():
    manager, seen, clock = make_manager({"a": {"command": "x", "stop_signal": "INT"}})
    manager.start_service("a")
    pid = manager.services["a"].pid
    manager.stop_service("a")
    assert seen[-1]["event"] == "stopping" and seen[-1]["signal"] == "SIGINT"
    assert ("a", "SIGINT") in manager.processes.signals
    manager.processes.exit(pid, signame="SIGINT")
    step(manager, clock, 0.1)
    assert seen[-1]["event"] == "stopped" and seen[-1]["forced"] is False
    assert manager.services["a"].state is State.STOPPED
    assert "restart_scheduled" not in names(seen)


def test_stop_waits_for_the_tree_then_sigkills_it_after_stop_timeout():
    manager, seen, clock = make_manager({"a": {"command": "x", "stop_timeout": 2}})
    manager.start_service("a")
    pid = manager.services["a"].pid
    manager.processes.add_process("a", 555)
    manager.stop_service("a")
    manager.processes.exit(pid, returncode=0, tree_empties=False)
    step(manager, clock, 1.0)
    assert manager.services["a"].state is State.STOPPING
    assert ("a", "SIGKILL") not in manager.processes.signals
    step(manager, clock, 1.5)
    assert ("a", "SIGKILL") in manager.processes.signals
    manager.processes.empty("a")
    step(manager, clock)
    assert seen[-1]["event"] == "stopped" and seen[-1]["forced"] is True
    assert seen[-1]["returncode"] == 0


def test_stop_during_backoff_cancels_the_restart():
    manager, seen, clock = make_manager({"a": {"command": "x", "restart_delay": 5}})
    manager.start_service("a")
    manager.processes.exit(manager.services["a"].pid, returncode=1)
    step(manager, clock)
    manager.stop_service("a")
    assert seen[-1]["event"] == "stopped" and seen[-1]["pid"] is None
    step(manager, clock, 10)
    assert names(seen).count("spawned") == 1
    assert manager.timers.next_timeout() is None


def test_shutdown_stops_everything_in_parallel_and_restarts_nothing():
    manager, seen, clock = make_manager(
        {"a": {"command": "x", "restart": "always"}, "b": {"command": "x", "restart": "always"}}
    )
    manager.start_service("a")
    manager.start_service("b")
    pids = [manager.services[n].pid for n in ("a", "b")]
    manager.shutdown()
    assert [e["event"] for e in seen[-2:]] == ["stopping", "stopping"]
    for pid in pids:
        manager.processes.exit(pid, signame="SIGTERM")
    step(manager, clock)
    assert manager.finished
    assert names(seen).count("stopped") == 2
    assert "restart_scheduled" not in names(seen)


def test_second_sigint_kills_at_once():
    manager, _, clock = make_manager({"a": {"command": "x", "stop_timeout": 60}})
    manager.start_service("a")
    manager._record_signal(signal.SIGINT, None)
    step(manager, clock)
    assert manager.shutting_down
    assert ("a", "SIGKILL") not in manager.processes.signals
    manager._record_signal(signal.SIGINT, None)
    step(manager, clock)
    assert ("a", "SIGKILL") in manager.processes.signals


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"),
                    reason="no SIGUSR1 here: faults are injected by the control command")
def test_sigusr1_raises_only_with_fault_injection():
    manager, _, clock = make_manager({"a": {"command": "x"}})
    manager._record_signal(signal.SIGUSR1, None)
    step(manager, clock)
    manager.allow_fault_injection = True
    manager._record_signal(signal.SIGUSR1, None)
    with pytest.raises(supervisor.InjectedFault):
        step(manager, clock)


@pytest.mark.parametrize("event", sorted(TRANSITIONS))
def test_illegal_transitions_are_refused(event):
    manager, seen, _ = make_manager({"a": {"command": "x"}})
    service = manager.services["a"]
    sources, targets = TRANSITIONS[event]
    for state in State:
        service.state = state
        for target in State:
            if state in sources and target in targets:
                continue
            count = len(seen)
            with pytest.raises(IllegalTransition):
                service.transition(event, target)
            assert service.state is state and len(seen) == count


@pytest.mark.parametrize("event", sorted(TRANSITIONS))
def test_every_legal_transition_emits_exactly_its_event(event):
    manager, seen, _ = make_manager({"a": {"command": "x"}})
    service = manager.services["a"]
    sources, targets = TRANSITIONS[event]
    for state in sources:
        for target in targets:
            service.state = state
            before = len(seen)
            service.transition(event, target)
            assert service.state is target
            assert len(seen) == before + 1 and seen[-1]["event"] == event


def test_handoff_state_round_trips_into_adoption():
    manager, _, clock = make_manager(
        {"a": {"command": "x"}, "b": {"command": "x", "restart_delay": 30}}
    )
    manager.start_service("a")
    manager.start_service("b")
    manager.processes.exit(manager.services["b"].pid, returncode=1)
    step(manager, clock)
    state = supervisor.json.loads(supervisor.json.dumps(manager.handoff_state([1.0], 42)))
    adopter, seen, adopter_clock = make_manager(
        {"a": {"command": "x"}, "b": {"command": "x", "restart_delay": 30}}
    )
    adopter_clock.now = clock.now
    adopter.processes.is_child = lambda pid: True
    adopter._adopt(state)
    assert names(seen) == ["adopted"]
    assert adopter.services["a"].pid == manager.services["a"].pid
    assert adopter.services["b"].state is State.BACKOFF
    assert adopter.services["b"].retries == 1
    step(adopter, adopter_clock, 30)
    assert seen[-1]["event"] == "spawned" and seen[-1]["attempt"] == 2


def test_reload_removes_a_stopped_service_during_a_monitoring_pass(tmp_path):
    path = tmp_path / "services.yaml"
    path.write_text('{"services": {"keep": {"command": "x"}, "drop": {"command": "x"}}}')
    config = supervisor.load_config(str(path))
    events = supervisor.EventStream(None)
    seen = []
    events.listeners.append(seen.append)
    clock = FakeClock()
    manager = ServiceManager(config, events, FakeProcesses(), clock)
    manager.start_service("keep")
    manager.start_service("drop")
    path.write_text('{"services": {"keep": {"command": "x"}}}')
    assert manager.reload() == {"added": [], "removed": ["drop"], "changed": []}
    manager.processes.exit(manager.services["drop"].pid, signame="SIGTERM")
    step(manager, clock)
    assert list(manager.services) == ["keep"]
    assert names(seen)[-2:] == ["reloaded", "stopped"]


# -- the restart policy as a pure function


def policy(**keys):
    return supervisor.parse_config(
        supervisor.json.dumps({"services": {"a": {"command": "x", **keys}}}), "t.yaml"
    ).services["a"]


@pytest.mark.parametrize(
    "keys, retries, expected, uptime, decision",
    [
        ({"restart": "never"}, 0, False, 1.0, ("nothing", 0, 0.0)),
        ({"restart": "on-failure"}, 1, True, 1.0, ("nothing", 1, 0.0)),
        ({"restart": "on-failure"}, 1, False, 1.0, ("restart", 2, 0.0)),
        ({"restart": "always", "restart_delay": 2}, 0, True, 1.0, ("restart", 1, 2.0)),
        ({"restart": "always", "max_retries": 2}, 2, False, 1.0, ("give_up", 2, 0.0)),
        ({"restart": "always", "max_retries": 2}, 2, False, 10.0, ("restart", 1, 0.0)),
        ({"restart": "always", "max_retries": None}, 99, False, 1.0, ("restart", 100, 0.0)),
        (
            {"restart": "always", "restart_delay": 1, "backoff": {"factor": 2, "max_delay": 3}},
            2, False, 1.0, ("restart", 3, 3.0),
        ),
    ],
)
def test_decide_after_exit(keys, retries, expected, uptime, decision):
    assert tuple(supervisor.decide_after_exit(policy(**keys), retries, expected, uptime)) == (
        decision
    )


# -- a service is its whole tree


def test_leftovers_are_stopped_before_the_restart():
    manager, seen, clock = make_manager({"a": {"command": "x", "restart": "always",
                                               "stop_timeout": 3}})
    manager.start_service("a")
    pid = manager.services["a"].pid
    manager.processes.add_process("a", 555)
    manager.processes.exit(pid, signame="SIGKILL", tree_empties=False)
    step(manager, clock)
    assert names(seen)[-1] == "exited" and seen[-1]["leftovers"] == 1
    assert ("a", "SIGTERM") in manager.processes.signals
    assert manager.services["a"].state is State.EXITED
    step(manager, clock, 1.0)
    assert names(seen).count("spawned") == 1  # never two instances at once
    manager.processes.empty("a")
    step(manager, clock)
    assert names(seen)[-2:] == ["leftovers_stopped", "restart_scheduled"]
    assert seen[-2]["count"] == 1 and seen[-2]["forced"] is False
    step(manager, clock)
    assert names(seen)[-1] == "spawned"


def test_leftovers_that_ignore_the_stop_signal_are_killed_after_stop_timeout():
    manager, seen, clock = make_manager({"a": {"command": "x", "restart": "never",
                                               "stop_timeout": 2}})
    manager.start_service("a")
    manager.processes.add_process("a", 555)
    manager.processes.exit(manager.services["a"].pid, returncode=0, tree_empties=False)
    step(manager, clock)
    step(manager, clock, 2.5)
    assert ("a", "SIGKILL") in manager.processes.signals
    manager.processes.empty("a")
    step(manager, clock)
    assert seen[-1]["event"] == "leftovers_stopped" and seen[-1]["forced"] is True


def test_an_empty_tree_restarts_at_once_without_a_leftovers_event():
    manager, seen, clock = make_manager({"a": {"command": "x", "restart": "always"}})
    manager.start_service("a")
    manager.processes.exit(manager.services["a"].pid, signame="SIGKILL")
    step(manager, clock)
    assert names(seen)[-3:] == ["exited", "restart_scheduled", "spawned"]
    assert seen[-3]["leftovers"] == 0
    assert manager.processes.signals == []


def test_kill_mode_process_keeps_leftovers_until_the_stop():
    manager, seen, clock = make_manager({"a": {"command": "x", "restart": "always",
                                               "kill_mode": "process"}})
    manager.start_service("a")
    manager.processes.add_process("a", 555)
    manager.processes.exit(manager.services["a"].pid, returncode=1, tree_empties=False)
    step(manager, clock)
    assert names(seen)[-3:] == ["exited", "restart_scheduled", "spawned"]
    assert seen[-3]["leftovers"] == 1
    assert manager.processes.signals == []
    manager.shutdown()
    assert ("a", "SIGTERM") in manager.processes.signals


@pytest.mark.parametrize("state", ["fatal", "exited", "backoff"])
def test_stop_stops_the_tree_in_every_state(state):
    keys = {"fatal": {"max_retries": 0}, "exited": {"restart": "never"},
            "backoff": {"restart_delay": 30}}[state]
    manager, seen, clock = make_manager({"a": {"command": "x", "kill_mode": "process",
                                               "restart": "always", **keys}})
    manager.start_service("a")
    manager.processes.add_process("a", 555)
    manager.processes.exit(manager.services["a"].pid, returncode=1, tree_empties=False)
    step(manager, clock)
    assert manager.services["a"].state.value == state
    manager.stop_service("a")
    assert seen[-1]["event"] == "stopping" and seen[-1]["pid"] is None
    assert ("a", "SIGTERM") in manager.processes.signals
    manager.processes.empty("a")
    step(manager, clock)
    assert seen[-1]["event"] == "stopped" and manager.services["a"].state is State.STOPPED


def test_shutdown_waits_for_the_leftovers_of_a_given_up_service():
    manager, seen, clock = make_manager({"a": {"command": "x", "kill_mode": "process",
                                               "max_retries": 0}})
    manager.start_service("a")
    manager.processes.add_process("a", 555)
    manager.processes.exit(manager.services["a"].pid, returncode=1, tree_empties=False)
    step(manager, clock)
    manager.shutdown()
    step(manager, clock)
    assert not manager.finished and manager.services["a"].state is State.STOPPING
    manager.processes.empty("a")
    step(manager, clock)
    assert manager.finished and manager.exit_code == 0


def test_shutdown_kills_orphans_no_tree_claimed():
    manager, _, clock = make_manager({"a": {"command": "x"}})
    manager.processes.stray.add(777)
    manager.shutdown()
    step(manager, clock)
    assert manager.finished and ("777", "SIGKILL") in manager.processes.signals


def reexec(manager, clock):
    """A new manager adopting what ``manager`` hands over, as a re-executed image does."""
    state = supervisor.json.loads(supervisor.json.dumps(manager.handoff_state([], None)))
    events = supervisor.EventStream(None)
    seen = []
    events.listeners.append(seen.append)
    events.clock = clock
    adopted = ServiceManager(manager.config, events, manager.processes, clock,
                             rng=lambda low, high: 0.0)
    adopted._adopt(state)
    return adopted, seen


def test_a_stop_in_progress_survives_a_reexec():
    manager, _, clock = make_manager({"a": {"command": "x", "stop_timeout": 5}})
    manager.start_service("a")
    pid = manager.services["a"].pid
    manager.stop_service("a")
    clock.advance(2)
    adopted, seen = reexec(manager, clock)
    assert adopted.services["a"].state is State.STOPPING
    assert seen[-1]["event"] == "adopted" and seen[-1]["pid"] == pid
    step(adopted, clock, 2.9)
    assert ("a", "SIGKILL") not in adopted.processes.signals
    step(adopted, clock, 0.2)  # 5 s after the stop began, not after the re-exec
    assert ("a", "SIGKILL") in adopted.processes.signals
    adopted.processes.exit(pid, signame="SIGKILL")
    step(adopted, clock)
    assert seen[-1]["event"] == "stopped" and seen[-1]["forced"] is True


def test_a_readiness_wait_survives_a_reexec():
    manager, _, clock = make_manager({
        "db": {"command": "x", "ready": {"file": "/nonexistent/ready", "timeout": 4}},
        "web": {"command": "x", "depends_on": ["db"]},
    })
    manager.start_service("db")
    manager.start_service("web")
    clock.advance(1)
    adopted, seen = reexec(manager, clock)
    assert adopted.services["db"].state is State.STARTING
    assert adopted.services["web"].state is State.STOPPED  # still waiting for db
    step(adopted, clock, 3.5)
    assert ("db", "SIGKILL") in adopted.processes.signals  # 4 s after its spawn
