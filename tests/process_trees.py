"""What the process-tree tests share: the two tree backends, a supervisor spawned under one
of them, and a record of every pid a service wrote down, killed after the test whatever
happened in it.

The plugin's leak check finds processes by an environment marker; a process that wipes its
environment (nginx, or the dummy's --workers) is invisible to it, so these tests name their
processes themselves: each service writes its pids to a file, the test checks them, and the
fixture's teardown SIGKILLs any of them still alive and fails the test naming them.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from process_helpers import read_pids, still_alive, wait_until

SUPERVISOR = str(Path(__file__).resolve().parent.parent / "supervisor.py")
BACKEND_VARIABLE = "SUPERVISOR_TREE_BACKEND"
BACKENDS = ("cgroup", "session")
# Process creation times are rounded to the clock tick.
CREATE_TIME_SLACK = 1.0
# The events that act on a service after an exit: none may come before its leftovers are gone.
POLICY_EVENTS = ("restart_scheduled", "gave_up", "spawned")


def cgroup2_unavailable():
    """Why this process cannot make cgroup v2 groups under its own, or None if it can."""
    if not sys.platform.startswith("linux"):
        return "cgroups are Linux-only"
    mount = None
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields, _, filesystem = line.partition(" - ")
            if filesystem.split()[0] == "cgroup2":
                mount = fields.split()[4]
                break
    if mount is None:
        return "no cgroup2 file system is mounted"
    with open("/proc/self/cgroup") as own:
        paths = [line[3:].strip() for line in own if line.startswith("0::")]
    if not paths:
        return "this process is in no cgroup v2 group"
    group = mount + paths[0].rstrip("/")
    if not os.access(group, os.W_OK):
        return "the cgroup v2 group %s is not writable" % group
    return None


def backend_params():
    reason = cgroup2_unavailable()
    marks = [pytest.mark.skip(reason=reason)] if reason else []
    return [pytest.param("cgroup", marks=marks), "session"]


def free_port():
    """A loopback port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answer_of(port):
    """The line a dummy worker answers a connection to the port with."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        return connection.makefile().readline().rstrip("\n")


def cli(*args, timeout=60):
    """The supervisor's command line, as a user runs it."""
    return subprocess.run(
        [sys.executable, SUPERVISOR, *args], capture_output=True, text=True, timeout=timeout
    )


def service_events(handle, service):
    return [e for e in handle.events if e["service"] == service]


def following(handle, event):
    """The names of the events of ``event``'s service that came after it, in order."""
    later = service_events(handle, event["service"])
    return [e["event"] for e in later[later.index(event) + 1 :]]


def assert_leftovers_stopped_first(handle, exited, count):
    """``exited`` reported ``count`` leftovers, and they were stopped before anything else
    happened to the service. Returns the ``leftovers_stopped`` event."""
    assert exited.get("leftovers") == count, exited
    stopped = handle.wait_for(
        "leftovers_stopped", exited["service"], since=exited["mono"], timeout=20
    )
    assert stopped["count"] == count
    after = following(handle, exited)
    acted = [name for name in after if name in POLICY_EVENTS + ("leftovers_stopped",)]
    assert acted[0] == "leftovers_stopped", after
    return stopped


class Trees:
    """Spawns supervisors under one tree backend and keeps every pid the services record."""

    def __init__(self, factory, tmp_path, backend):
        self.factory = factory
        self.tmp_path = tmp_path
        self.backend = backend
        self.began = time.time()
        self.files = []
        self.noted = set()
        self.folders = []
        self.identities = {}  # pid -> creation time when the test first saw it, or None

    def spawn(self, config, env=None, **options):
        """A supervisor under this backend; a dict config gets a control socket."""
        if isinstance(config, dict) and "control_socket" not in config.get("supervisor", {}):
            supervisor = dict(config.get("supervisor", {}), control_socket=self.control_socket())
            config = dict(config, supervisor=supervisor)
        env = dict(env or {}, **{BACKEND_VARIABLE: self.backend})
        handle = self.factory.spawn(config, env=env, **options)
        started = handle.wait_for("supervisor_started")
        assert started.get("tree_backend") == self.backend, started
        return handle

    def control_socket(self):
        """A control socket path, for the command line (`supervisor stop`), in a short
        folder of its own: a unix socket's path is limited to about 100 bytes."""
        folder = tempfile.mkdtemp(prefix="svtree-")
        self.folders.append(folder)
        return folder + "/sock"

    def pids_file(self, name):
        """A pids file for a service (``ROLE PID`` lines), checked after the test."""
        path = self.tmp_path / ("%s.pids" % name)
        self.files.append(path)
        return path

    def note(self, pids):
        """Pids found some other way (psutil), to be checked after the test too."""
        self._identify(pids)
        self.noted.update(pids)

    def recorded(self, *files):
        """Every pid in the given pids files (default: all of them)."""
        pids = set()
        for path in files or self.files:
            if path.exists():
                for role_pids in read_pids(path).values():
                    pids.update(role_pids)
        self._identify(pids)
        return pids

    def read_pids(self, path):
        """{role: [pid, ...]} of a pids file; the pids are identified at once (see ours)."""
        pids = read_pids(path)
        self._identify([pid for role_pids in pids.values() for pid in role_pids])
        return pids

    def wait_for_pids(self, path, role, count, what):
        """The pids of ``role`` in a pids file, once there are ``count`` of them."""
        return wait_until(
            lambda: (
                path.exists()
                and len(read_pids(path).get(role, ())) >= count
                and self.read_pids(path)[role]
            ),
            what,
        )

    def alive(self, pids, timeout=0.0):
        """Those of ``pids`` still running (zombies count as ended) after ``timeout``."""
        return still_alive(self.ours(pids), timeout=timeout)

    def ours(self, pids):
        """The pids that are still the processes the test first saw under them.

        pid_max can be as low as 32768, and crash storms on a shared machine go through
        pids fast: a pid is tied to the creation time it had when the test first read it
        (None: it had already ended, so whatever runs under it later is not ours)."""
        self._identify(pids)
        found = []
        for pid in pids:
            created = self.identities[pid]
            try:
                if created is not None and psutil.Process(pid).create_time() == created:
                    found.append(pid)
            except psutil.NoSuchProcess:
                continue
        return found

    def _identify(self, pids):
        for pid in pids:
            if pid in self.identities:
                continue
            try:
                created = psutil.Process(pid).create_time()
            except psutil.NoSuchProcess:
                created = None
            # Older than the test: the pid was reused by something else since.
            fresh = created is not None and created >= self.began - CREATE_TIME_SLACK
            self.identities[pid] = created if fresh else None

    def finish(self):
        """Close the supervisors, then kill and report whatever recorded pid survived."""
        try:
            self.factory.close()
        finally:
            for folder in self.folders:
                shutil.rmtree(folder, ignore_errors=True)
            survivors = self.alive(self.recorded() | self.noted, timeout=1.0)
            described = []
            for pid in survivors:
                try:
                    process = psutil.Process(pid)
                    described.append("pid %d: %s" % (pid, " ".join(process.cmdline())))
                    process.kill()
                except psutil.NoSuchProcess:
                    continue
        if described:
            pytest.fail(
                "processes of the test's services outlived their supervisor (killed now):\n  "
                + "\n  ".join(described),
                pytrace=False,
            )


def wiped(pid):
    """Whether the process has exec'd with an empty environment (a dummy --workers worker)."""
    try:
        with open("/proc/%d/environ" % pid, "rb") as environ:
            return environ.read() == b""
    except OSError:
        return False
