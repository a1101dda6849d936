"""The POSIX backend's branches for systems other than Linux (macOS, the BSDs), run here.

macOS has no /proc, no pidfd, no child subreaper and no os.waitid; it has kqueue. What can be
taken away on Linux is taken away and the real supervisor is run without it (a launcher
script removes the capabilities before ``supervisor.main()``), so that the fallbacks --
SIGCHLD wake-ups, psutil instead of /proc, waitpid instead of waitid, re-checks for
orphans that are not re-parented to us -- run for real. kqueue cannot be added to Linux,
so the parent watch built on it is checked against a fake kqueue.
"""

import os
import select
import signal
import socket
import subprocess
import sys
import textwrap

import psutil
import pytest
from process_helpers import DUMMY, ROOT, is_running, still_alive, wait_for_role, wait_until

import supervisor
from pytest_supervisor.factory import SupervisorFactory

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform == "win32", reason="the POSIX process backend"),
]


# Runs supervisor.py as it would run on macOS: everything Linux has and macOS lacks is gone.
# sys.argv[0] names this script, so a self-respawn (execv of sys.argv) comes back through it.
LIKE_MACOS = textwrap.dedent(
    """\
    import builtins, os, select, sys
    sys.path.insert(0, {root!r})
    import supervisor

    supervisor._pidfd_works = lambda: False        # no pidfd: exits wake us by SIGCHLD
    supervisor._become_subreaper = lambda: False   # orphans go to launchd, not to us
    if hasattr(select, "kqueue"):
        del select.kqueue                          # (Linux has none anyway)
    if hasattr(os, "waitid"):
        del os.waitid
    real_isdir, real_open = os.path.isdir, builtins.open
    os.path.isdir = lambda path: False if str(path).startswith("/proc") else real_isdir(path)

    def no_proc_open(path, *args, **kwargs):
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    supervisor.open = no_proc_open
    sys.exit(supervisor.main())
    """
)


@pytest.fixture
def like_macos(tmp_path):
    """A supervisor factory whose supervisors run without Linux's extras."""
    launcher = tmp_path / "like_macos.py"
    launcher.write_text(LIKE_MACOS.format(root=str(ROOT)))
    with SupervisorFactory(tmp_path / "runs", command=[sys.executable, str(launcher)]) as factory:
        yield factory


def dummy(*flags):
    return [sys.executable, DUMMY, *flags]






def start_child(*flags, env=None):
    """A real child of this process, in a session of its own."""
    return subprocess.Popen(dummy(*flags), env=env, start_new_session=True,
                            stdin=subprocess.DEVNULL)


# -- the real supervisor without pidfd, subreaper, /proc and waitid


def test_sigchld_alone_wakes_the_loop_for_a_respawn(like_macos):
    handle = like_macos.spawn({"services": {"web": {"command": dummy(), "restart": "always"}}})
    handle.kill("web")
    handle.assert_respawned("web", within=1.0)  # no pidfd, no polling: SIGCHLD woke it


def test_escaped_daemon_is_found_without_proc_and_killed(like_macos, tmp_path):
    pids_file = tmp_path / "pids"
    handle = like_macos.spawn({"services": {"svc": {
        "command": dummy("--daemon", "--ignore-sigterm", "--pids-file", str(pids_file)),
        "stop_timeout": 1}}})
    daemon = wait_for_role(pids_file)["daemon"][0]
    assert psutil.Process(daemon).ppid() != handle.pid  # not re-parented to the supervisor
    handle.signal("graceful_stop")
    assert handle.wait_exit(timeout=20) == 0
    stopped = handle.wait_for("stopped", "svc")
    assert stopped["forced"] is True  # it ignored SIGTERM: found by its tag through psutil
    assert not is_running(daemon)


def test_services_are_adopted_across_a_self_respawn_without_waitid(like_macos):
    handle = like_macos.spawn({"services": {"web": {"command": dummy()}}}, fault_injection=True)
    pid = handle.pid_of("web")
    handle.signal("inject_fault")
    adopted = handle.wait_for("adopted", "web", timeout=20)
    assert adopted["pid"] == pid  # is_child() answered through waitpid(WNOHANG)
    assert handle.pid_of("web") == pid


def test_parent_death_signal_ends_the_supervisor_without_pidfd_or_kqueue(tmp_path):
    launcher = tmp_path / "like_macos.py"
    launcher.write_text(LIKE_MACOS.format(root=str(ROOT)))
    config = tmp_path / "services.yaml"
    config.write_text('{"services": {"web": {"command": %s}}}' % str(dummy()).replace("'", '"'))
    events = tmp_path / "events.jsonl"
    # The parent: a shell that starts the supervisor and then waits to be killed.
    parent = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; subprocess.Popen(sys.argv[1:]);"
         " time.sleep(60)", sys.executable, str(launcher), "run", "-c", str(config),
         "--events", str(events), "--exit-with-parent"],
        stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: events.exists() and '"spawned"' in events.read_text(), "spawned")
        supervisor_pid = psutil.Process(parent.pid).children()[0].pid
        service = psutil.Process(supervisor_pid).children()[0].pid
        parent.kill()
        parent.wait()
        wait_until(lambda: '"supervisor_exiting"' in events.read_text(),
                   "the supervisor to notice its parent died", timeout=20)
        assert still_alive([supervisor_pid, service]) == []
    finally:
        try:
            os.killpg(parent.pid, signal.SIGKILL)  # whatever is left of it, if the test failed
        except ProcessLookupError:
            pass
        parent.wait()


# -- the branches themselves, in this process


def test_is_child_without_waitid_keeps_an_early_reaped_exit_for_reap(monkeypatch):
    monkeypatch.delattr(os, "waitid")
    processes = supervisor.PosixProcesses()
    running, exiting = start_child(), start_child("--exit-after", "0", "--exit-code", "3")
    try:
        wait_until(lambda: psutil.Process(exiting.pid).status() == psutil.STATUS_ZOMBIE,
                   "the child to exit")
        assert processes.is_child(running.pid)
        assert processes.is_child(exiting.pid)  # a zombie is still our child...
        assert not processes.is_child(exiting.pid)  # ...until that first look reaped it
        reaped = dict(processes.reap())
        assert reaped[exiting.pid] == supervisor.ExitInfo(3, None)  # ...keeping its status
        assert running.pid not in reaped and processes.is_child(running.pid)
        assert not processes.is_child(os.getppid())
    finally:
        running.kill()
        running.wait()
        exiting.returncode = 3  # reaped above: Popen must not wait for the pid again


def test_tagged_processes_come_from_psutil_where_there_is_no_proc(monkeypatch):
    real_isdir = os.path.isdir
    monkeypatch.setattr(os.path, "isdir", lambda path: path != "/proc/self" and real_isdir(path))

    def no_proc_scan(prefix):
        raise AssertionError("/proc was read")

    monkeypatch.setattr(supervisor, "_scan_proc_tags", no_proc_scan)
    tag = "platform-test-%d/" % os.getpid()
    child = start_child(env=dict(os.environ, **{supervisor.SERVICE_TAG_ENV: tag + "svc"}))
    try:
        found = wait_until(lambda: supervisor.PosixProcesses().tagged_processes(tag),
                           "the tagged child")
        assert found == {tag + "svc": {child.pid}}
    finally:
        child.kill()
        child.wait()


def test_start_time_comes_from_psutil_where_there_is_no_proc(monkeypatch):
    real_open = open

    def no_proc_open(path, *args, **kwargs):
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(supervisor, "open", no_proc_open, raising=False)
    processes = supervisor.PosixProcesses()
    assert processes.start_time(os.getpid()) == psutil.Process().create_time()
    assert processes.start_time(None) is None


class FakeKqueue:
    """select.kqueue as on macOS, readable through a socket pair when "the process exits"."""

    def __init__(self):
        self._readable, self.exit_happens = socket.socketpair()
        self.registered = []
        self.closed = False

    def control(self, changes, max_events):
        self.registered.extend(changes)
        return []

    def fileno(self):
        return self._readable.fileno()

    def close(self):
        self.closed = True
        self._readable.close()
        self.exit_happens.close()


class FakeKevent:
    def __init__(self, ident, filter, flags, fflags):  # noqa: A002 - select.kevent's names
        self.ident, self.filter, self.flags, self.fflags = ident, filter, flags, fflags


@pytest.fixture
def fake_kqueue(monkeypatch):
    made = []

    def kqueue():
        made.append(FakeKqueue())
        return made[-1]

    monkeypatch.setattr(select, "kqueue", kqueue, raising=False)
    monkeypatch.setattr(select, "kevent", FakeKevent, raising=False)
    for number, name in enumerate(("KQ_FILTER_PROC", "KQ_EV_ADD", "KQ_EV_ONESHOT",
                                   "KQ_NOTE_EXIT")):
        monkeypatch.setattr(select, name, 1 << (number + 4), raising=False)
    return made


def test_parent_watch_is_a_kqueue_note_exit_where_there_is_no_pidfd(fake_kqueue):
    processes = supervisor.PosixProcesses()
    processes.use_pidfd = False
    watch = processes.watch_parent(4242)
    assert watch is fake_kqueue[0]
    (event,) = watch.registered
    assert (event.ident, event.filter, event.fflags) == (4242, select.KQ_FILTER_PROC,
                                                         select.KQ_NOTE_EXIT)
    assert event.flags == select.KQ_EV_ADD | select.KQ_EV_ONESHOT
    watch.close()


def test_parent_exit_seen_by_kqueue_shuts_down_and_drops_the_watch(fake_kqueue):
    idle = '{"services": {"idle": {"command": ["x"], "autostart": false}}}'
    config = supervisor.parse_config(idle, "test.yaml")
    processes = supervisor.PosixProcesses()
    processes.use_pidfd = False
    manager = supervisor.ServiceManager(config, processes=processes)
    manager.watch_parent(os.getppid())
    assert not manager.shutting_down
    fake_kqueue[0].exit_happens.send(b"!")  # what the kernel's NOTE_EXIT does to the kqueue
    manager.run_monitoring()  # returns once the shutdown it caused is done
    assert manager.shutting_down and manager.finished
    assert fake_kqueue[0].closed  # or the loop would wake on it for ever
