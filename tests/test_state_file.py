"""The state file (recovery after a SIGKILLed supervisor) cannot be turned against its owner.

Planted, linked, foreign or malformed files are refused with a warning and an event, the start
goes on, and no process is signalled unless two things prove it is the dead supervisor's.
"""
import io
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import psutil
import pytest
from process_helpers import DUMMY, wait_for_role

import supervisor

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX owners, modes and links"),
]


def config(control_dir, services, **settings):
    return {"supervisor": {"control_socket": str(control_dir / "sock"), **settings},
            "services": services}


def state_path(control_dir):
    return control_dir / "sock.state"


@pytest.fixture
def victim():
    """A process that belongs to nobody's services: it must survive every attack."""
    proc = subprocess.Popen([sys.executable, str(DUMMY)], stdin=subprocess.DEVNULL,
                            start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


def start_time(pid):
    return supervisor.PosixProcesses().start_time(pid)


def planted_state(victim_pid, prefix=None):
    """A state file naming ``victim_pid`` as a service of a dead supervisor, with its real
    start time: all an attacker can learn about another process."""
    return {"version": supervisor.STATE_VERSION,
            "supervisor": {"pid": 4194000, "start_time": 1.0},
            "tag_prefix": "4194000/" if prefix is None else prefix,
            "services": {"a": {"pid": victim_pid, "start_time": start_time(victim_pid)}}}


def plant(control_dir, content, mode=0o600):
    control_dir.mkdir(mode=0o700, exist_ok=True)
    path = state_path(control_dir)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    path.chmod(mode)
    return path


def rejection(handle):
    event = handle.wait_for("state_file_rejected", timeout=10)
    return event["error"]


def test_default_state_file_is_in_a_private_folder_never_the_shared_temp(tmp_path, monkeypatch):
    home = tempfile.mkdtemp(prefix="svh-")  # short: a socket's path beside it must fit
    try:
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
        monkeypatch.setenv("HOME", home)

        def state_of(settings):
            parsed = supervisor.parse_config(json.dumps(
                {"supervisor": settings, "services": {"a": {"command": "x"}}}),
                str(tmp_path / "services.yaml"))
            return supervisor.ServiceManager(parsed).state_path()

        beside_socket = state_of({})  # the default control socket's folder
        no_socket = state_of({"control_socket": False})
        for path in (beside_socket, no_socket):
            assert path.startswith(os.path.join(home, ".supervisor") + os.sep)
            folder = os.stat(os.path.dirname(path))
            assert stat.S_IMODE(folder.st_mode) == 0o700 and folder.st_uid == os.getuid()
        assert beside_socket.endswith(".sock.state") and no_socket.endswith(".state")
        runtime = tmp_path / "run"
        runtime.mkdir(mode=0o700)
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
        assert state_of({"control_socket": False}).startswith(str(runtime / "supervisor") + os.sep)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_a_state_file_in_a_folder_others_can_write_is_not_used(tmp_path, monkeypatch):
    logged = io.StringIO()
    monkeypatch.setattr(supervisor._LogSettings, "stream", logged)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    parsed = supervisor.parse_config(json.dumps(
        {"supervisor": {"state_file": str(shared / "s.state")},
         "services": {"a": {"command": "x"}}}), "services.yaml")
    assert supervisor.ServiceManager(parsed).state_path() is None
    assert ("no state file, so no recovery after a SIGKILL: state file folder %s must belong to "
            "you and be closed to others (chmod 700)" % shared) in logged.getvalue()


@pytest.mark.parametrize("attack, words", [
    ("mode", "others may write it (mode 666)"),
    ("link", "cannot open it (it is a link)"),
    ("empty prefix", "tag_prefix: expected '4194000/', got ''"),
    ("foreign prefix", "tag_prefix: expected '4194000/', got '1/'"),
])
def test_a_planted_state_file_is_refused_and_nothing_is_signalled(
        supervisor_factory, dummy_service, control_dir, victim, tmp_path, attack, words):
    content = planted_state(victim.pid, {"empty prefix": "", "foreign prefix": "1/"}.get(attack))
    if attack == "link":
        real = tmp_path / "elsewhere.state"
        real.write_text(json.dumps(content))
        real.chmod(0o600)
        control_dir.mkdir(mode=0o700)
        state_path(control_dir).symlink_to(real)
    else:
        plant(control_dir, content, mode=0o666 if attack == "mode" else 0o600)
    handle = supervisor_factory.spawn(config(control_dir, {"a": {"command": dummy_service()}}))
    assert rejection(handle) == words
    handle.pid_of("a")  # the start went on
    assert victim.poll() is None
    assert any("ignoring the state file %s: %s" % (state_path(control_dir), words) in line
               for line in handle.log_lines())


@pytest.mark.skipif(getattr(os, "geteuid", lambda: -1)() != 0,
                    reason="planting a file as another user needs root")
def test_a_state_file_of_another_user_is_refused(supervisor_factory, dummy_service, control_dir,
                                                 victim):
    import pwd  # POSIX only

    path = plant(control_dir, planted_state(victim.pid))
    nobody = pwd.getpwnam("nobody")
    os.chown(path, nobody.pw_uid, nobody.pw_gid)
    handle = supervisor_factory.spawn(config(control_dir, {"a": {"command": dummy_service()}}))
    assert rejection(handle) == "it belongs to uid %d, not to us (uid 0)" % nobody.pw_uid
    handle.pid_of("a")
    assert victim.poll() is None


@pytest.mark.parametrize("content, words", [
    ('{"version": 2, "supervisor": {"pid": "abc", "start_time": 1}, "tag_prefix": "abc/", '
     '"services": {}}', "supervisor.pid: expected a process id, got 'abc'"),
    ('{"version": 2, "supervisor": {"pid": 4194000, "start_time": 1}, '
     '"tag_prefix": "4194000/", "services": []}', "services: expected a mapping"),
    ('{"version": 2, "supervisor": {"pid": 4194000, "start_time": 1}, "tag_prefix": null, '
     '"services": {}}', "tag_prefix: expected '4194000/', got None"),
    ('{"version": 2, "supervisor": {"pid": 4194', "not JSON: Expecting ',' delimiter"),
    ("\x00garbage", "not JSON"),
    ('{"version": 1}', "not a state file of version 2"),
])
def test_a_malformed_state_file_is_a_loud_warning_and_the_start_goes_on(
        supervisor_factory, dummy_service, control_dir, content, words):
    plant(control_dir, content)
    handle = supervisor_factory.spawn(config(control_dir, {"a": {"command": dummy_service()}}))
    assert rejection(handle).startswith(words)
    handle.pid_of("a")
    # ...and the next supervisor finds a good file again: nothing stays broken
    handle.signal("graceful_stop")
    assert handle.wait_exit(timeout=15) == 0


def test_a_link_planted_where_the_temporary_file_goes_is_not_followed(
        supervisor_factory, dummy_service, control_dir, tmp_path):
    precious = tmp_path / "precious"
    precious.write_text("keep me")
    control_dir.mkdir(mode=0o700)
    (control_dir / "sock.state.tmp").symlink_to(precious)  # where the old code wrote
    handle = supervisor_factory.spawn(config(control_dir, {"a": {"command": dummy_service()}}))
    pid = handle.pid_of("a")
    deadline = time.monotonic() + 10
    while not state_path(control_dir).exists():
        assert time.monotonic() < deadline, "the state file was never written"
        time.sleep(0.02)  # written within STATE_WRITE_DELAY; no event says when
    saved = json.loads(state_path(control_dir).read_text())
    assert saved["services"]["a"]["pid"] == pid
    assert precious.read_text() == "keep me"
    assert stat.S_IMODE(state_path(control_dir).stat().st_mode) == 0o600


def test_state_file_fuzz_never_raises_and_never_names_a_foreign_process(tmp_path, monkeypatch):
    """1,000 mutations of a real state file: each is refused or trusted, without a traceback,
    and a process that is no service of ours (not a session leader, no tag) is never taken."""
    folder = tmp_path / "private"
    folder.mkdir(mode=0o700)
    foreign = subprocess.Popen([sys.executable, str(DUMMY)], stdin=subprocess.DEVNULL)
    try:
        parsed = supervisor.parse_config(json.dumps(
            {"supervisor": {"state_file": str(folder / "s.state")},
             "services": {"a": {"command": "x"}, "b": {"command": "y"}}}), "services.yaml")
        manager = supervisor.ServiceManager(parsed)
        manager.state_file = manager.state_path()
        good = json.dumps({"version": 2, "supervisor": {"pid": 4194000, "start_time": 1.0},
                           "tag_prefix": "4194000/", "services": {
                               "a": {"pid": foreign.pid, "start_time": start_time(foreign.pid)},
                               "b": {"pid": os.getpid(), "start_time": start_time(os.getpid())}}})
        rng = random.Random(14)
        seen = {"refused": 0, "trusted": 0}
        for _ in range(1000):
            text = bytearray(good.encode())
            for _ in range(rng.randint(1, 4)):
                if not text:
                    break
                where = rng.randrange(len(text))
                choice = rng.random()
                if choice < 0.4:
                    text[where] = rng.randrange(256)
                elif choice < 0.6:
                    del text[where:where + rng.randint(1, 20)]
                elif choice < 0.8:
                    text[where:where] = rng.choice([b"[", b"{", b'"', b"null", b"-1", b"1e999",
                                                    b"0", b'""', b"[]", b"{}", b"9" * 30])
                else:
                    text = text[:where]
            supervisor.write_private_file(manager.state_file, bytes(text))
            try:
                left = manager.clean_up_after_a_crash()
            except supervisor.ControlError:
                left = {}  # names a live process as the owner: a refusal to start, no signal
            seen["trusted" if left else "refused"] += 1
            assert all(foreign.pid not in pids for pids in left.values())
            assert foreign.poll() is None
        assert seen["refused"] > 500
    finally:
        foreign.kill()
        foreign.wait()


def test_recovery_waits_each_services_own_stop_timeout_and_starts_it_when_its_leftovers_are_gone(
        supervisor_factory, dummy_service, control_dir, tmp_path):
    """A SIGKILLed supervisor left a service that ignores SIGTERM and one that stops at once:
    the next supervisor starts the second at once, and the first after its own stop_timeout
    (1 s), not a fixed 10 s."""
    pids_file = tmp_path / "pids"
    path = tmp_path / "services.yaml"
    path.write_text(json.dumps(config(control_dir, {
        "stubborn": {"command": dummy_service(ignore_sigterm=True, pids_file=pids_file),
                     "stop_timeout": 1},
        "quick": {"command": dummy_service()}})))
    first = supervisor_factory.spawn(str(path))
    old = {name: first.pid_of(name) for name in ("stubborn", "quick")}
    wait_for_role(pids_file, "main")  # its SIGTERM handler is in place
    deadline = time.monotonic() + 10
    while not state_path(control_dir).exists() or "quick" not in state_path(
            control_dir).read_text():
        assert time.monotonic() < deadline, "the state file was never written"
        time.sleep(0.02)  # written within STATE_WRITE_DELAY; no event says when
    os.kill(first.pid, signal.SIGKILL)
    first.wait_exit(timeout=10)
    second = supervisor_factory.spawn(str(path))
    quick = second.wait_for("spawned", "quick", timeout=10)
    stopped = second.wait_for("stopped", "stubborn", timeout=10)
    spawned = second.wait_for("spawned", "stubborn", timeout=10)
    assert stopped["forced"] is True and stopped["pid"] is None
    assert quick["mono"] < stopped["mono"] <= spawned["mono"]
    started = second.wait_for("supervisor_started", timeout=1)["mono"]
    assert 0.9 < stopped["mono"] - started < 5.0  # its own stop_timeout, not 10 s
    assert not psutil.pid_exists(old["stubborn"]) or psutil.Process(
        old["stubborn"]).status() == psutil.STATUS_ZOMBIE
