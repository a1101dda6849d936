"""The service state machine against a fake clock and a fake process backend: no real processes."""

import signal

import process_helpers
import pytest

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


class FakeProcesses:
    """Records what the manager asks for; the test decides when processes exit."""

    orphans_come_home = True

    def __init__(self):
        self.next_pid = 100
        self.spawn_error = None
        self.spawned = []
        self.signals = []  # (target, signame, "group" | "pid")
        self.exits = []  # (pid, ExitInfo) handed out by the next reap()
        self.live_groups = set()
        self.tagged = {}

    def spawn(self, launch):
        if self.spawn_error is not None:
            raise self.spawn_error
        self.next_pid += 1
        self.spawned.append((launch, self.next_pid))
        self.live_groups.add(self.next_pid)
        return self.next_pid

    def watch(self, pid):
        return None

    def readable(self, fd):
        return fd  # the output pipes are real; no fake process ever writes into them

    def reap(self):
        exits, self.exits = self.exits, []
        return exits

    def exit(self, pid, returncode=None, signame=None, group_gone=True):
        self.exits.append((pid, supervisor.ExitInfo(returncode, signame)))
        if group_gone:
            self.live_groups.discard(pid)

    def send(self, pid, signame):
        self.signals.append((pid, signame, "pid"))
        return True

    def send_group(self, pgid, signame):
        self.signals.append((pgid, signame, "group"))
        return True

    def group_alive(self, pgid):
        return pgid in self.live_groups

    def alive(self, pid):
        return False

    def in_group(self, pid, pgid):
        return False

    def tagged_processes(self, prefix):
        return self.tagged

    def is_child(self, pid):
        return pid in self.live_groups


def make_manager(services, supervisor_settings=None, rng=None):
    clock = FakeClock()
    manager, seen = process_helpers.make_manager(
        services, FakeProcesses(), supervisor_settings, clock, rng=rng or (lambda low, high: 0.0)
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


def test_stop_signals_the_group_and_stops_when_the_tree_is_gone():
    manager, seen, clock = make_manager({"a": {"command": "x", "stop_signal": "INT"}})
    manager.start_service("a")
    pid = manager.services["a"].pid
    manager.stop_service("a")
    assert seen[-1]["event"] == "stopping" and seen[-1]["signal"] == "SIGINT"
    assert (pid, "SIGINT", "group") in manager.processes.signals
    manager.processes.exit(pid, signame="SIGINT")
    step(manager, clock, 0.1)
    assert seen[-1]["event"] == "stopped" and seen[-1]["forced"] is False
    assert manager.services["a"].state is State.STOPPED
    assert "restart_scheduled" not in names(seen)


def test_stop_waits_for_the_group_then_sigkills_it_after_stop_timeout():
    manager, seen, clock = make_manager({"a": {"command": "x", "stop_timeout": 2}})
    manager.start_service("a")
    pid = manager.services["a"].pid
    manager.stop_service("a")
    manager.processes.exit(pid, returncode=0, group_gone=False)
    step(manager, clock, 1.0)
    assert manager.services["a"].state is State.STOPPING
    step(manager, clock, 1.5)
    assert (pid, "SIGKILL", "group") in manager.processes.signals
    manager.processes.live_groups.discard(pid)
    step(manager, clock)
    assert seen[-1]["event"] == "stopped" and seen[-1]["forced"] is True


def test_escaped_processes_get_the_stop_signal_and_sigkill():
    manager, _, clock = make_manager({"a": {"command": "x", "stop_timeout": 1}})
    manager.start_service("a")
    pid = manager.services["a"].pid
    manager.processes.tagged = {manager.tag_prefix + "a": {pid, 555}}
    manager.stop_service("a")
    assert (555, "SIGTERM", "pid") in manager.processes.signals
    step(manager, clock, 1.5)
    assert (555, "SIGKILL", "pid") in manager.processes.signals


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
    pid = manager.services["a"].pid
    manager._record_signal(signal.SIGINT, None)
    step(manager, clock)
    assert manager.shutting_down
    assert (pid, "SIGKILL", "group") not in manager.processes.signals
    manager._record_signal(signal.SIGINT, None)
    step(manager, clock)
    assert (pid, "SIGKILL", "group") in manager.processes.signals


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
