"""Finding, describing and killing the processes a supervisor started (through psutil).

Leak detection rests on inheritance: the harness gives each supervisor a unique value
of ``MARKER_VARIABLE`` in its environment, and every process the supervisor or its
services start inherits it (service ``env`` is merged over the supervisor's). After
teardown, any live process carrying that value was leaked, however far it strayed
from the tree: daemonized, re-parented to init, in its own session.

Where a process's environment cannot be read (another user's, or a platform that
refuses), the descendants the harness saw while the supervisor ran are the fallback.
A pid alone is never trusted: it is paired with the process's creation time, so a
reused pid is not mistaken for -- and never killed as -- one of ours.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Iterable

import psutil

MARKER_VARIABLE = "PYTEST_SUPERVISOR_RUN"

# Process creation times are rounded to the clock tick of the OS; a process started
# just after the launch can show a time slightly before it.
CREATE_TIME_SLACK = 1.0


@dataclass(frozen=True)
class ProcessIdentity:
    pid: int
    create_time: float


def identity(process: psutil.Process) -> ProcessIdentity:
    return ProcessIdentity(process.pid, process.create_time())


def tree(root_pid: int) -> list[psutil.Process]:
    """The root and all its live descendants; empty once the root is gone."""
    try:
        root = psutil.Process(root_pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def remember(processes: Iterable[psutil.Process], seen: dict[int, float]) -> None:
    """Record each process's identity in ``seen`` (pid -> creation time)."""
    for process in processes:
        try:
            seen[process.pid] = process.create_time()
        except psutil.Error:
            continue  # gone already: nothing left to track


def carrying_marker(marker: str, created_after: float) -> list[psutil.Process]:
    """Live processes whose environment has ``MARKER_VARIABLE=marker``."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.create_time() < created_after - CREATE_TIME_SLACK:
                continue  # older than the supervisor: cannot have inherited the marker
            if process.environ().get(MARKER_VARIABLE) == marker and _alive(process):
                found.append(process)
        except psutil.Error:
            continue  # exited meanwhile, or unreadable: the remembered tree covers it
    return found


def still_running(seen: dict[int, float]) -> list[psutil.Process]:
    """The remembered processes that still run (same pid *and* creation time)."""
    found = []
    for pid, create_time in seen.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == create_time and _alive(process):
                found.append(process)
        except psutil.Error:
            continue  # exited: not a leak
    return found


def kill(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """SIGKILL (TerminateProcess) each process; return those still alive after ``timeout``."""
    for process in processes:
        try:
            process.kill()  # psutil checks the creation time, so this is still ours
        except psutil.Error:
            continue  # exited meanwhile
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return [process for process in alive if _alive(process)]


def wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Give processes that are already on their way out ``timeout`` to finish."""
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return [process for process in alive if _alive(process)]


def describe(process: psutil.Process) -> str:
    """``pid 123 (ppid 1): python dummy.py --daemon`` -- as much as can still be read."""
    try:
        with process.oneshot():
            command = process.cmdline() or [process.name()]
            parent = process.ppid()
        return f"pid {process.pid} (ppid {parent}): {_join(command)}"
    except psutil.Error as error:
        return f"pid {process.pid}: <{type(error).__name__}>"


def unique(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    by_pid: dict[int, psutil.Process] = {}
    for process in processes:
        by_pid.setdefault(process.pid, process)
    return sorted(by_pid.values(), key=lambda process: process.pid)


def is_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        return _alive(psutil.Process(pid))
    except psutil.Error:
        return False


def _alive(process: psutil.Process) -> bool:
    # A zombie has exited and holds nothing but its pid until its parent reaps it.
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _join(command: list[str]) -> str:
    return " ".join(shlex.quote(part) for part in command)
