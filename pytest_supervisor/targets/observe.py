"""Watching a supervisor that writes no events of ours, and writing the events it would.

The observer follows the target's process tree from outside and appends to the handle's
events file the events the harness reads from our supervisor (SPEC section 4):
``supervisor_started`` at launch, ``spawned`` when a process of a service appears,
``exited`` when it ends, ``supervisor_exiting`` when the target exits. A process belongs to
the service named by its ``PYTEST_SUPERVISOR_SERVICE`` variable (every translation sets
it; a process without it matches by its command line), and is the service's main process
when its parent is not of the same service; only a process that ran its command (exec)
counts, so a fork of the supervisor, or a daemon the service forked, is never a respawn.

How it sees, best first (``method``):

- ``proc-connector`` (Linux as root): the kernel's exec and exit events, stamped by the
  kernel on the clock ``mono`` uses; an exit comes with its status. Nothing polls.
- ``pidfd`` (Linux): an exit is the moment a pidfd of the process becomes readable (no
  status: a non-child's cannot be read); new processes are found by listing the tree
  every ``SCAN_INTERVAL``, which bounds the precision of a ``spawned`` stamp.
- ``psutil`` (elsewhere): exits and new processes both from the listing.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import psutil

from pytest_supervisor import processes
from pytest_supervisor.targets import proc_connector
from pytest_supervisor.targets.translate import SERVICE_VARIABLE

SCAN_INTERVAL = 0.002
# A process created this long before the previous main process of its service ended was
# forked while that one ran (a daemon it left), not started as its replacement. Creation
# times are counted in clock ticks (10 ms on Linux), and compared on psutil's clock only.
CREATE_TIME_SLACK = 0.05
METHODS = ("auto", "proc-connector", "pidfd", "psutil")


class _Main:
    """The running main process of one service."""

    def __init__(
        self, service: str, pid: int, mono: float, created: float, pidfd: int | None
    ) -> None:
        self.service = service
        self.pid = pid
        self.mono = mono  # when it started (exec), on the monotonic clock
        self.created = created  # psutil's creation time
        self.pidfd = pidfd


class Observer:
    """Writes the events of ``process`` (the target) and its services into ``events_path``."""

    def __init__(
        self,
        process: subprocess.Popen,
        *,
        marker: str,
        commands: Mapping[str, Sequence[str]],
        events_path: Path,
        label: str,
        config: Path,
        method: str = "auto",
    ) -> None:
        self._process = process
        self._marker = marker
        self._commands = {name: list(argv) for name, argv in commands.items()}
        self._events = open(events_path, "a", encoding="utf-8")
        self._label = label
        self._config = config
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = os.pipe()
        self._selector.register(self._wake_read, selectors.EVENT_READ, "wake")
        self._closing = False
        self._mains: dict[int, _Main] = {}
        self._attempts: dict[str, int] = {}
        # When the last main process of each service ended, on psutil's creation-time clock
        self._last_exit: dict[str, float] = {}
        self._judged: set[int] = set()  # pids already classified
        self._connector: socket.socket | None = None
        self.method = self._choose(method)
        self._thread = threading.Thread(target=self._run, name=f"observer {label}", daemon=True)

    def start(self) -> None:
        self._emit("supervisor_started", None, time.monotonic(), pid=self._process.pid,
                   version=self._label, config=str(self._config), respawn_count=0,
                   observed_by=self.method)
        self._thread.start()

    def alive(self) -> bool:
        """Whether events may still come (the reader's ``writer_alive``)."""
        return self._thread.is_alive()

    def close(self) -> None:
        """Stop watching (the thread ends by itself once the target has exited)."""
        if self._wake_write < 0:
            return
        self._closing = True
        os.write(self._wake_write, b"x")
        if self._thread.is_alive():
            self._thread.join()
        os.close(self._wake_read)
        os.close(self._wake_write)
        self._wake_write = -1

    # -- choosing how to see ---------------------------------------------------

    def _choose(self, method: str) -> str:
        if method not in METHODS:
            raise ValueError(f"observer method {method!r}: expected one of {', '.join(METHODS)}")
        if method in ("auto", "proc-connector"):
            try:
                connector = proc_connector.open_socket()
            except OSError:
                if method == "proc-connector":
                    raise
            else:
                self._connector = connector
                self._selector.register(connector, selectors.EVENT_READ, "connector")
                return "proc-connector"
        if method in ("auto", "pidfd") and hasattr(os, "pidfd_open"):
            return "pidfd"
        return "psutil"

    # -- the thread --------------------------------------------------------------

    def _run(self) -> None:
        root = self._pidfd(self._process.pid)
        if root is not None:
            self._selector.register(root, selectors.EVENT_READ, "root")
        try:
            self._scan()
            while not self._closing:
                timeout = None if self.method == "proc-connector" else SCAN_INTERVAL
                if root is None and timeout is None:
                    timeout = 0.05  # no pidfd for the target itself: look at it now and then
                for key, _ in self._selector.select(timeout):
                    if key.data == "connector":
                        self._read_connector()
                    elif isinstance(key.data, _Main):
                        self._main_exited(key.data, time.monotonic(), None)
                if self.method != "proc-connector":
                    self._scan()
                if self._process.poll() is not None:
                    break
        finally:
            code = self._process.wait()
            now = time.monotonic()
            for main in list(self._mains.values()):  # gone with it, or left behind
                if not processes.is_alive(main.pid):
                    self._main_exited(main, now, None)
            self._emit("supervisor_exiting", None, now, code=code)
            self._events.close()
            if root is not None:
                os.close(root)
            for main in self._mains.values():
                if main.pidfd is not None:
                    os.close(main.pidfd)
            if self._connector is not None:
                self._connector.close()
            self._selector.close()

    def _read_connector(self) -> None:
        assert self._connector is not None
        try:
            data = self._connector.recv(65536)
        except OSError:  # ENOBUFS: events were lost; the listing catches up
            self._scan()
            return
        for event in proc_connector.parse(data):
            if event.first != event.second:
                continue  # a thread, not a process
            mono = event.ts_ns / 1e9
            if event.what == proc_connector.EXEC:
                self._consider(event.first, mono)
            elif event.what == proc_connector.EXIT and event.first in self._mains:
                self._main_exited(self._mains[event.first], mono, event.third)

    def _scan(self) -> None:
        """Classify the tree's processes not seen yet; without pidfds, notice exits too."""
        try:
            tree = psutil.Process(self._process.pid).children(recursive=True)
        except psutil.Error:
            tree = []
        now = time.monotonic()
        live = set()
        for child in tree:
            live.add(child.pid)
            if child.pid not in self._judged:
                self._consider(child.pid, now)
        if self.method == "psutil":
            for main in list(self._mains.values()):
                if main.pid not in live or not processes.is_alive(main.pid):
                    self._main_exited(main, now, None)

    # -- classifying ---------------------------------------------------------------

    def _consider(self, pid: int, mono: float) -> None:
        try:
            process = psutil.Process(pid)
            parent = process.ppid()
            created = process.create_time()
            service = self._service_of(pid)
            argv = process.cmdline()
            if service is None and (not argv or argv == psutil.Process(parent).cmdline()):
                return  # a fork that has not run its command yet (or is in exec): later
        except psutil.Error:
            return  # gone already: its exit event follows, for a pid we never tracked
        self._judged.add(pid)
        if service is None:
            return
        for main in list(self._mains.values()):
            if main.service == service and not processes.is_alive(main.pid):
                # Ended, and already replaced before its pidfd was read: the exit first.
                self._main_exited(main, mono, None)
        if any(main.service == service for main in self._mains.values()):
            return  # a process of the tree of the service's running main
        if self._service_of(parent) == service:
            return
        if created < self._last_exit.get(service, 0.0) - CREATE_TIME_SLACK:
            return  # forked before the last main ended: something it left behind
        self._attempts[service] = self._attempts.get(service, 0) + 1
        pidfd = self._pidfd(pid) if self.method == "pidfd" else None
        main = _Main(service, pid, mono, created, pidfd)
        self._mains[pid] = main
        if main.pidfd is not None:
            self._selector.register(main.pidfd, selectors.EVENT_READ, main)
        self._emit("spawned", service, mono, pid=pid, attempt=self._attempts[service])

    def _service_of(self, pid: int) -> str | None:
        """The service a live process of this run belongs to, if any."""
        try:
            process = psutil.Process(pid)
            environ = process.environ()
            if environ.get(processes.MARKER_VARIABLE) != self._marker:
                return None
            if SERVICE_VARIABLE in environ:
                return environ[SERVICE_VARIABLE]
            argv = process.cmdline()
        except psutil.Error:
            return None
        for name, command in self._commands.items():
            if argv == command:
                return name
        return None

    def _main_exited(self, main: _Main, mono: float, status: int | None) -> None:
        if self._mains.pop(main.pid, None) is None:
            return
        if main.pidfd is not None:
            self._selector.unregister(main.pidfd)
            os.close(main.pidfd)
        self._last_exit[main.service] = main.created + (mono - main.mono)
        code, killed_by = _decode(status)
        self._emit("exited", main.service, mono, pid=main.pid, returncode=code, signal=killed_by,
                   uptime=round(mono - main.mono, 6), expected=None)

    # -- writing -------------------------------------------------------------------

    def _emit(self, kind: str, service: str | None, mono: float, **fields: Any) -> None:
        wall = time.time() - (time.monotonic() - mono)
        event = {"ts": wall, "mono": mono, "event": kind, "service": service, **fields}
        self._events.write(json.dumps(event) + "\n")
        self._events.flush()

    def _pidfd(self, pid: int) -> int | None:
        try:
            return os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
        except OSError:
            return None


def _decode(status: int | None) -> tuple[int | None, str | None]:
    """(exit code, signal name) of a wait status; (None, None) when it is not known."""
    if status is None:
        return None, None
    if status & 0x7F == 0:
        return (status >> 8) & 0xFF, None
    try:
        return None, signal.Signals(status & 0x7F).name
    except ValueError:
        return None, f"signal {status & 0x7F}"
