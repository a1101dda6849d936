"""What the tests share (the one home for helpers; fixtures are in conftest.py): running
supervisor.py's CLI, a ServiceManager without a process behind it, reading a dummy's pids
file, waiting on what other processes write (which sends no event a test could wait on) or
for processes to end, a process's open descriptors, a free port, and the words this OS gives
to the harness's kill and to a command line."""
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

WINDOWS = sys.platform == "win32"
ROOT = Path(__file__).resolve().parent.parent
SUPERVISOR = str(ROOT / "supervisor.py")
DUMMY = str(ROOT / "dummy_services" / "dummy.py")

# What the harness's kill (the portable "hard_kill") sends, as its messages name it: Windows
# has no SIGKILL; os.kill calls TerminateProcess, with the number it is given (SIGTERM, 15)
# as the exit code.
HARD_KILL = "TerminateProcess" if WINDOWS else "SIGKILL"
# How the supervisor reports the exit of a service ended that way.
HARD_KILLED_EXIT = "returncode=15 signal=null" if WINDOWS else "returncode=null signal=SIGKILL"


def command_line(*words):
    """``words`` quoted as a user of this OS writes a command line (--supervisor-cmd)."""
    return subprocess.list2cmdline(words) if WINDOWS else shlex.join(words)


def cli(*args, cwd=None, timeout=60):
    """``python supervisor.py ARGS``, run to its end, output captured as text."""
    return subprocess.run([sys.executable, SUPERVISOR, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def make_manager(services, processes, supervisor_settings=None, clock=None, **options):
    """A ServiceManager of ``services`` on ``processes``, and the list its events go to.

    With a ``clock``, the events are stamped by it and the manager runs on it."""
    import supervisor  # here: the tests of other processes run where it may not import

    config = supervisor.parse_config(
        json.dumps({"supervisor": supervisor_settings or {}, "services": services}), "test.yaml"
    )
    events = supervisor.EventStream(None)
    seen = []
    events.listeners.append(seen.append)
    if clock is None:
        return supervisor.ServiceManager(config, events, processes, **options), seen
    events.clock = clock
    return supervisor.ServiceManager(config, events, processes, clock, **options), seen


def read_pids(path):
    """{role: [pid, ...]} from a dummy's --pids-file."""
    pids = {}
    for line in Path(path).read_text().splitlines():
        role, pid = line.split()
        pids.setdefault(role, []).append(int(pid))
    return pids


def wait_for_role(pids_file, role="daemon"):
    """The pids a dummy wrote, once ``role`` (a daemon starts asynchronously) is among them."""
    wait_until(lambda: Path(pids_file).exists() and role in read_pids(pids_file),
               f"the dummy's {role} to write its pid")
    return read_pids(pids_file)


def wait_until(condition, what, timeout=10.0):
    """``condition()``'s first true value; fails naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.02)


def open_descriptors(pid):
    """What ``pid``'s open descriptors point at (Linux /proc). One closed between the listing
    and the reading of its link is left out: a process opens and closes files as it runs."""
    targets = {}
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            targets[int(fd)] = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except FileNotFoundError:
            pass
    return targets


def is_running(pid):
    """Whether ``pid`` runs. A zombie has exited: only its parent has yet to collect it."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def still_alive(pids, timeout=10.0):
    """The pids among ``pids`` still running after up to ``timeout`` (psutil waits on them)."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return [proc.pid for proc in alive if is_running(proc.pid)]


def free_port():
    """A loopback TCP port nobody listens on (at the time of asking)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
