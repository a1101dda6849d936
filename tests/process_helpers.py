"""Helpers the real-process tests share: reading a dummy's pids file, and waiting on what
other processes write, which sends no event a test could wait on."""
import time
from pathlib import Path


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
