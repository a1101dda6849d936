"""Helpers the real-process tests share: reading a dummy's pids file, waiting on what
other processes write (which sends no event a test could wait on) or for processes to end,
and the words this OS gives to the harness's kill and to a command line."""
import shlex
import subprocess
import sys
import time
from pathlib import Path

import psutil

WINDOWS = sys.platform == "win32"

# What the harness's kill (the portable "hard_kill") sends, as its messages name it: Windows
# has no SIGKILL; os.kill calls TerminateProcess, with the number it is given (SIGTERM, 15)
# as the exit code.
HARD_KILL = "TerminateProcess" if WINDOWS else "SIGKILL"
# How the supervisor reports the exit of a service ended that way.
HARD_KILLED_EXIT = "returncode=15 signal=null" if WINDOWS else "returncode=null signal=SIGKILL"


def command_line(*words):
    """``words`` quoted as a user of this OS writes a command line (--supervisor-cmd)."""
    return subprocess.list2cmdline(words) if WINDOWS else shlex.join(words)


def read_pids(path):
    """{role: [pid, ...]} from a dummy's --pids-file."""
    pids = {}
    for line in Path(path).read_text().splitlines():
        role, pid = line.split()
        pids.setdefault(role, []).append(int(pid))
    return pids


def wait_until(condition, what, timeout=10.0):
    """``condition()``'s first true value; fails naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out waiting for " + what
        time.sleep(0.02)


def still_alive(pids, timeout=10.0):
    """The pids among ``pids`` still running after up to ``timeout`` (psutil waits on them).
    A zombie has exited: only its parent has yet to collect its status."""
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    running = []
    for proc in alive:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                running.append(proc.pid)
        except psutil.NoSuchProcess:
            pass  # it ended between the wait and the look
    return running
