"""Watching a supervisor from outside: which children it starts and when they die.

Every supervisor measured is watched the same way, by this process and never by the
supervisor itself. Two observers give the same view (``Watch``):

* ``ProcConnectorObserver`` (Linux, needs CAP_NET_ADMIN, i.e. root): the kernel's process
  events connector multicasts a message for every fork, exec and exit, stamped by the kernel
  with ``ktime_get_ns()`` -- the CLOCK_MONOTONIC that ``time.monotonic_ns()`` reads here. A
  figure is then the difference of two clock readings taken at the moment things happened
  (our ``kill()`` call, the kernel's exec), not when anyone noticed them: nanosecond
  resolution, no polling, and nothing taken from the two cores the supervisor runs on.
* ``PollingObserver`` (anywhere psutil works): lists the supervisor's descendants in a loop.
  Its resolution is one polling cycle, which it measures and reports; it also costs CPU.

A service process is a process at the subject's service depth below it: the supervisor's
own child for most, a grandchild under s6's s6-supervise, a great-grandchild under runit's
sh, runsvdir and runsv. It counts as *running* once it has exec'd its command (before, it is
a copy of its parent; an exec of a ``run`` script, whose shell then execs the command, does
not count), and as *gone* once it has exited (zombie or reaped). Its command line is read
when it is seen, so it may already be that of a later exec (a service's shell that exec'd
``sleep``), or None when it has ended meanwhile.
"""
from __future__ import annotations

import errno
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import AbstractSet, Callable, Dict, Iterable, List, Optional, Tuple

import psutil

from pytest_supervisor.targets import proc_connector


@dataclass
class Spawn:
    """A service process of the watched supervisor that has exec'd its command."""

    pid: int
    ts: int  # CLOCK_MONOTONIC nanoseconds of the exec
    argv: Optional[Tuple[str, ...]]  # None when it was gone before its command line was read


@dataclass
class Watch:
    """Everything seen of one supervisor process and its service processes."""

    pid: int
    depth: int = 1  # a service process's generation below the supervisor
    launchers: AbstractSet[Tuple[str, ...]] = frozenset()  # run scripts, which exec a service
    spawns: List[Spawn] = field(default_factory=list)
    exits: List[Tuple[int, int]] = field(default_factory=list)  # (pid, ts)
    alive: Dict[int, Spawn] = field(default_factory=dict)
    by_pid: Dict[int, Spawn] = field(default_factory=dict)
    supervisor_exit: Optional[int] = None

    def child_spawned(self, spawn: Spawn) -> None:
        self.spawns.append(spawn)
        self.alive[spawn.pid] = spawn
        self.by_pid[spawn.pid] = spawn

    def child_exited(self, pid: int, ts: int) -> None:
        if self.alive.pop(pid, None) is not None:
            self.exits.append((pid, ts))

    def spawns_after(self, ts: int) -> List[Spawn]:
        return [s for s in self.spawns if s.ts > ts]


class Observer:
    """The shared part: a thread fills ``Watch`` objects; callers wait on one condition."""

    method = ""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self._watches: Dict[int, Watch] = {}
        # Any process's end, for those a measurement asked about (a service's own children):
        # pid -> CLOCK_MONOTONIC ns of its exit, None while it runs.
        self.exit_times: Dict[int, Optional[int]] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)

    def start(self) -> "Observer":
        self._thread.start()
        return self

    def watch(self, pid: int, depth: int = 1,
              launchers: AbstractSet[Tuple[str, ...]] = frozenset()) -> Watch:
        with self.changed:
            watch = self._watches[pid] = Watch(pid, depth, frozenset(launchers))
        return watch

    def forget(self, pid: int) -> None:
        with self.changed:
            self._watches.pop(pid, None)

    def track_exits(self, pids: Iterable[int]) -> None:
        """Note in ``exit_times`` when each of ``pids`` exits. One already gone counts as
        having exited now (it ended before the watch began)."""
        pids = list(pids)
        with self.changed:
            for pid in pids:
                self.exit_times[pid] = None
        now = time.monotonic_ns()
        with self.changed:
            for pid in pids:
                if self.exit_times.get(pid) is None and not _running(pid):
                    self.exit_times[pid] = now

    def untrack_exits(self, pids: Iterable[int]) -> None:
        with self.changed:
            for pid in pids:
                self.exit_times.pop(pid, None)

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until ``predicate()`` holds (checked whenever something is seen) or timeout."""
        with self.changed:
            return self.changed.wait_for(predicate, timeout)

    def close(self) -> None:
        self._closed = True
        self._thread.join(timeout=2)

    def describe(self) -> Dict[str, object]:
        raise NotImplementedError

    def _run(self) -> None:
        raise NotImplementedError


def read_argv(pid: int) -> Optional[Tuple[str, ...]]:
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as cmdline:
            raw = cmdline.read()
    except OSError:
        return None
    return tuple(part.decode(errors="replace") for part in raw.split(b"\0")[:-1]) or None


class ProcConnectorObserver(Observer):
    method = "proc-connector"

    def __init__(self) -> None:
        super().__init__()
        self.overflows = 0
        # Parent of every process forked since we started listening, so that an exec can be
        # attributed to a watched supervisor even when the watch began after the fork, and
        # through parents that have exited since. Kept after an exit for that reason; a
        # reused PID gets its new parent at its fork, before it can exec.
        self._parent_of: Dict[int, int] = {}
        self._socket = proc_connector.open_socket()
        self._socket.settimeout(0.2)  # so that close() is noticed

    def describe(self) -> Dict[str, object]:
        return {"observer": self.method, "resolution_ns": 1, "lost_event_bursts": self.overflows,
                "how": "kernel fork/exec/exit events (NETLINK_CONNECTOR), timestamped by the "
                       "kernel on CLOCK_MONOTONIC"}

    def _run(self) -> None:
        try:
            while not self._closed:
                try:
                    data = self._socket.recv(65536)
                except socket.timeout:
                    continue
                except OSError as exc:
                    if exc.errno != errno.ENOBUFS:
                        raise
                    self.overflows += 1
                    continue
                self._dispatch(data)
        finally:
            self._socket.close()

    def _dispatch(self, data: bytes) -> None:
        for event in proc_connector.parse(data):
            if event.what == proc_connector.FORK and event.third == event.fourth:  # not a thread
                self._parent_of[event.third] = event.second
            elif event.what == proc_connector.EXEC and event.first == event.second:
                self._on_exec(event.first, event.ts_ns)
            elif event.what == proc_connector.EXIT and event.first == event.second:
                self._on_exit(event.first, event.ts_ns)

    # sh -> runsvdir -> runsv -> service: the deepest tree of a subject measured
    MAX_DEPTH = 6

    def _watch_above(self, pid: int) -> Tuple[Optional[Watch], int]:
        """The watch of the supervisor ``pid`` descends from, if any, and how many
        generations below it ``pid`` is."""
        parent = self._parent_of.get(pid, 0)
        for depth in range(1, self.MAX_DEPTH + 1):
            watch = self._watches.get(parent)
            if watch is not None or parent not in self._parent_of:
                return watch, depth
            parent = self._parent_of[parent]
        return None, 0

    def _on_exec(self, pid: int, ts: int) -> None:
        watch, depth = self._watch_above(pid)
        if watch is None or depth != watch.depth or pid in watch.by_pid:
            return  # not a service process, or a second exec of one
        argv = read_argv(pid)
        if argv in watch.launchers:
            return  # a run script: the service is the command it execs next
        with self.changed:
            watch.child_spawned(Spawn(pid, ts, argv))
            self.changed.notify_all()

    def _on_exit(self, pid: int, ts: int) -> None:
        with self.changed:
            watch, _ = self._watch_above(pid)
            if watch is not None:
                watch.child_exited(pid, ts)
            own = self._watches.get(pid)
            if own is not None:
                own.supervisor_exit = ts
            tracked = pid in self.exit_times and self.exit_times[pid] is None
            if tracked:
                self.exit_times[pid] = ts
            if watch is not None or own is not None or tracked:
                self.changed.notify_all()


class PollingObserver(Observer):
    method = "psutil-polling"
    INTERVAL = 0.0005

    def __init__(self) -> None:
        super().__init__()
        self._cycles = 0
        self._busy_ns = 0

    def describe(self) -> Dict[str, object]:
        cycle = self._busy_ns / max(self._cycles, 1) + self.INTERVAL * 1e9
        return {"observer": self.method, "resolution_ns": int(cycle),
                "how": "the supervisor's children listed with psutil every %.1f ms plus the "
                       "time a listing takes (mean cycle %.2f ms)"
                       % (self.INTERVAL * 1e3, cycle / 1e6)}

    def _run(self) -> None:
        while not self._closed:
            began = time.monotonic_ns()
            with self.changed:
                watches = list(self._watches.values())
            for watch in watches:
                self._poll(watch)
            self._poll_exits()
            self._busy_ns += time.monotonic_ns() - began
            self._cycles += 1
            time.sleep(self.INTERVAL)

    def _poll_exits(self) -> None:
        with self.changed:
            running = [pid for pid, ts in self.exit_times.items() if ts is None]
        ended = [pid for pid in running if not _running(pid)]
        if ended:
            now = time.monotonic_ns()
            with self.changed:
                for pid in ended:
                    if pid in self.exit_times:
                        self.exit_times[pid] = now
                self.changed.notify_all()

    def _poll(self, watch: Watch) -> None:
        try:
            supervisor = psutil.Process(watch.pid)
            exited = supervisor.status() == psutil.STATUS_ZOMBIE  # we reap it later
            parents = [] if exited else [supervisor]
            for _ in range(watch.depth - 1):
                parents = [child for parent in parents for child in _children(parent)]
        except psutil.Error:
            exited, parents = True, []
        children: Dict[int, Tuple[str, ...]] = {}  # pid -> its parent's command line
        for parent in parents:
            parent_argv = read_argv(parent.pid)
            for child in _children(parent):
                try:
                    if child.status() != psutil.STATUS_ZOMBIE:
                        children[child.pid] = parent_argv or ()
                except psutil.Error:
                    continue  # gone since it was listed
        now = time.monotonic_ns()  # everything seen above happened before this
        seen = []
        for pid in set(children) - set(watch.alive):
            argv = read_argv(pid)
            # still a copy of its parent, or a run script: it has not exec'd its command yet
            if argv is not None and argv != children[pid] and argv not in watch.launchers:
                seen.append(Spawn(pid, now, argv))
        gone = [pid for pid in watch.alive if pid not in children]
        if seen or gone or (exited and watch.supervisor_exit is None):
            with self.changed:
                for spawn in seen:
                    watch.child_spawned(spawn)
                for pid in gone:
                    watch.child_exited(pid, now)
                if exited and watch.supervisor_exit is None:
                    watch.supervisor_exit = now
                self.changed.notify_all()


def open_observer(preferred: str) -> Observer:
    """The most precise observer this machine allows (or the one asked for)."""
    if preferred in ("auto", ProcConnectorObserver.method):
        try:
            return ProcConnectorObserver().start()
        except OSError as exc:
            if preferred != "auto":
                raise SystemExit("cannot listen to the proc connector (%s); it needs root or "
                                 "CAP_NET_ADMIN: use --observer psutil-polling" % exc) from exc
    return PollingObserver().start()


def _children(process: psutil.Process) -> List[psutil.Process]:
    try:
        return process.children()
    except psutil.Error:
        return []  # gone since it was listed


def _running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (a zombie has)."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by every thread of ``pid`` (schedstat: nanoseconds, not ticks)."""
    total = 0
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/schedstat" % (pid, tid)) as schedstat:
                total += int(schedstat.read().split()[0])
    except FileNotFoundError:
        times = psutil.Process(pid).cpu_times()  # no schedstat: 10 ms clock ticks
        return float(times.user + times.system)
    return total / 1e9
