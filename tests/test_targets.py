"""Other supervisors under test (--supervisor-target): each translated from our config, run
for real, watched from outside, and judged by the same assertions as ours."""
import statistics
import sys
import textwrap

import pytest
from process_helpers import still_alive, wait_for_role, wait_until

from pytest_supervisor import SupervisorFactory, TeardownFailed
from pytest_supervisor.targets.builtin import Command
from pytest_supervisor.targets.observe import Observer
from pytest_supervisor.targets.translate import SERVICE_VARIABLE

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the peers run on Linux here"),
]

PEERS = ("supervisord", "circus", "s6", "runit")


class Skipped(Exception):
    pass


def skip(reason):
    raise Skipped(reason)


def factory_of(tmp_path, target, peers, **options):
    return SupervisorFactory(tmp_path / "runs", target=target, peers=peers, unsupported=skip,
                             **options)


def web(dummy_service, **keys):
    return {"services": {"web": {"command": dummy_service(name="web"), "restart": "always",
                                 **keys}}}


# circusd itself now and then does not exit on SIGTERM on a loaded machine (seen in about 1 of
# 10 parallel runs of the suite, never alone): a finding about circus, not a harness failure.
CIRCUS_STOP = pytest.mark.xfail(strict=False, reason="circusd may hang on SIGTERM under load")


@pytest.mark.parametrize("target", [pytest.param(p, marks=CIRCUS_STOP) if p == "circus" else p
                                    for p in PEERS])
def test_a_kill_is_seen_and_its_respawn_timed_then_a_clean_stop(tmp_path, peers, dummy_service,
                                                                 target):
    program = peers[target]
    recorded = []
    with factory_of(tmp_path, target, {target: program},
                    record=lambda name, value: recorded.append((name, value))) as factory:
        handle = factory.spawn(web(dummy_service))
        assert handle.events[0]["event"] == "supervisor_started"
        assert handle.events[0]["version"].startswith(target)
        first = handle.pid_of("web")
        assert handle.kill("web") == first
        # s6, runit and supervisord wait about a second before restarting a service that
        # died young; circus checks every 0.1 s here.
        second = handle.assert_respawned("web", within=5.0)
        assert second != first
        exited = handle.wait_for("exited", "web")
        assert exited["pid"] == first
        latency = [value for name, value in recorded if name == "respawn_latency"]
        assert len(latency) == 1 and 0 < latency[0]["seconds"] <= 5.0
        assert handle.stop() in handle.spec.clean_exit_codes
        assert still_alive([second]) == []
        assert handle.wait_for("supervisor_exiting")["code"] == handle.returncode
    assert ("supervisor_target", {"supervisor": "supervisor", "target": target}) in recorded


def test_supervisord_leaves_an_escaped_daemon_which_the_harness_reports_by_pid(
        tmp_path, peers, dummy_service):
    pids_file = tmp_path / "pids"
    config = web(dummy_service, command=dummy_service(name="web", daemon=True,
                                                      pids_file=pids_file))
    factory = factory_of(tmp_path, "supervisord", {"supervisord": peers["supervisord"]})
    factory.spawn(config)
    daemon = wait_for_role(pids_file)["daemon"][0]
    with pytest.raises(TeardownFailed) as failed:
        factory.close()
    assert f"pid {daemon} (ppid " in str(failed.value)
    assert "leaked 1 process(es)" in str(failed.value)
    assert still_alive([daemon]) == []


@pytest.mark.parametrize("target, keys, reason", [
    ("supervisord", {"restart_delay": 1}, "supervisord has no restart delay (service 'web' sets"
                                          " restart_delay)"),
    ("supervisord", {"max_retries": 2}, "supervisord cannot limit the restarts of a program"
                                        " that started"),
    ("circus", {"restart": "on-failure"}, "circus respawns whatever the exit code: it has no"
                                          " on-failure policy"),
    ("s6", {"max_retries": 1}, "s6 has no retry limit"),
    ("runit", {"stop_signal": "SIGINT"}, "runit stops a service with SIGTERM only"),
    ("circus", {"depends_on": ["db"]}, "circus has no dependencies between services"),
])
def test_a_key_the_target_cannot_express_skips_with_the_reason(tmp_path, dummy_service, target,
                                                               keys, reason):
    factory = factory_of(tmp_path, target, {target: sys.executable})  # never started
    with pytest.raises(Skipped) as skipped:
        factory.spawn(web(dummy_service, **keys))
    assert str(skipped.value).startswith(reason)
    assert factory.handles == []


def test_a_missing_peer_skips_naming_what_to_install(tmp_path, dummy_service):
    factory = factory_of(tmp_path, "circus", {"circus": str(tmp_path / "no-circusd")})
    with pytest.raises(Skipped, match="circus: .*no-circusd is not an executable file"):
        factory.spawn(web(dummy_service))


# A user's own supervisor, as small as one can be: reads our config (JSON), restarts every
# service whenever it exits, stops them on SIGTERM.
OWN_SUPERVISOR = textwrap.dedent("""\
    import json, os, signal, subprocess, sys, time
    config = json.load(open(sys.argv[1]))
    running = {}
    stopping = False
    def stop(signum, frame):
        global stopping
        stopping = True
    signal.signal(signal.SIGTERM, stop)
    def start(name, service):
        env = dict(os.environ, **service.get("env", {}))
        running[name] = subprocess.Popen(service["command"], env=env)
    for name, service in config["services"].items():
        start(name, service)
    while not stopping:
        for name, process in list(running.items()):
            if process.poll() is not None:
                start(name, config["services"][name])
        time.sleep(0.01)
    for process in running.values():
        process.terminate()
        process.wait()
""")


def test_command_target_runs_a_users_own_supervisor(tmp_path, dummy_service):
    script = tmp_path / "own_supervisor.py"
    script.write_text(OWN_SUPERVISOR)
    target = Command([sys.executable, str(script), "{config}"])
    with factory_of(tmp_path, target, {}) as factory:
        handle = factory.spawn(web(dummy_service))
        assert handle.events[0]["version"].startswith("command (")
        first = handle.pid_of("web")
        handle.kill("web")
        assert handle.assert_respawned("web", within=2.0) != first
        assert handle.stop() == 0


@pytest.mark.parametrize("method", ["proc-connector"])
def test_black_box_observation_of_our_supervisor_agrees_with_its_event_stream(
        tmp_path, supervisor_factory, dummy_service, method):
    config = web(dummy_service, env={SERVICE_VARIABLE: "web"}, max_retries=None)
    handle = supervisor_factory.spawn(config)
    outside = tmp_path / "observed.jsonl"
    try:
        observer = Observer(handle._process, marker=handle.spec.marker, commands={},
                            events_path=outside, label="ours", config=handle.spec.config_path,
                            method=method)
    except OSError as error:
        pytest.skip(f"{method} is not available here: {error}")
    observer.start()
    try:
        handle.pid_of("web")
        for _ in range(15):
            handle.kill("web")
            new = handle.assert_respawned("web", within=2.0)
            # Each process is looked at (its environment read) once the observer gets to
            # it: the next kill waits for that, so that one never outruns the other.
            wait_until(lambda pid=new: f'"pid": {pid}, "attempt"' in outside.read_text(),
                       f"the observer to see pid {new}")
    finally:
        handle.stop()
        observer.close()
    import json
    seen = [json.loads(line) for line in outside.read_text().splitlines()]
    # The first start may come before the observer listens: the respawns are what counts.
    ours = {e["pid"]: e["mono"] for e in handle.events
            if e["event"] == "spawned" and e["attempt"] > 1}
    theirs = {e["pid"]: e["mono"] for e in seen if e["event"] == "spawned"}
    assert set(ours) <= set(theirs), (sorted(theirs), sorted(ours))
    assert len(theirs) <= len(ours) + 1  # nothing seen that ours did not start
    differences = [abs(theirs[pid] - ours[pid]) for pid in ours]
    exits = {e["pid"] for e in seen if e["event"] == "exited"}
    # A service ended by the stop is "stopped" in our stream, "exited" seen from outside; the
    # first instance may have started before the observer listened (as above), and then its
    # exit is no process the observer knew.
    assert exits >= {e["pid"] for e in handle.events if e["event"] == "exited"
                     and e["pid"] in ours}
    # The precision README states: within 2 ms of the supervisor's own stamp at p50 (the
    # listing of the pidfd method is every 2 ms; the kernel's stamps are exact).
    assert statistics.median(differences) < 0.01, differences
