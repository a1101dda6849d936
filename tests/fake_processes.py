"""A fake process seam for state-machine tests: no real processes; the test decides what lives.

Typed so that ``mypy`` checks it against ``supervisor.Processes`` (tox -e type).
"""
from __future__ import annotations

import socket
from typing import Any, Dict, List, Optional, Set, Tuple

import supervisor


class FakeTree:
    backend = "fake"

    def __init__(self, name: str):
        self.name = name
        self.alive: Set[int] = set()  # pids of the tree that live
        self.killed = False

    def begin(self, pid: int) -> None:
        self.alive.add(pid)

    def populated(self) -> bool:
        return bool(self.alive)

    def settle(self, members: Set[int]) -> None:
        pass

    def kill(self, members: Set[int]) -> None:
        self.killed = True

    def remove(self) -> None:
        pass


class FakeProcesses:
    """Records what the manager asks for; the test decides when processes exit."""

    backend = "fake"
    exec_keeps_children = True
    orphans_come_home = True
    services_open_files: Optional[int] = None

    def __init__(self) -> None:
        self.next_pid = 100
        self.spawn_error: Optional[Exception] = None
        self.spawned: List[Tuple[supervisor.Launch, int]] = []
        self.signals: List[Tuple[str, str]] = []  # (service, signame) sent to its whole tree
        self.exits: List[Tuple[int, supervisor.ExitInfo]] = []  # handed out by the next reap()
        self.trees: Dict[str, FakeTree] = {}
        self.children: Set[int] = set()
        self.stray: Set[int] = set()

    def take_charge(self) -> Optional[str]:
        return None

    def raise_open_files_limit(self, services_soft: Optional[int] = None) -> None:
        pass

    def release_free_memory(self) -> None:
        pass

    def wakeup_source(self) -> Optional[Any]:
        return None

    def drain_wakeup(self) -> None:
        pass

    def readable(self, fd: int) -> Any:
        return fd  # the output pipes are real; no fake process ever writes into them

    def shutdown_requests(self) -> Optional[socket.socket]:
        return None

    def tree(self, name: str, tag: str) -> FakeTree:
        return self.trees.setdefault(name, FakeTree(name))

    def members(self, trees: List[Any], everywhere: bool = False) -> List[Set[int]]:
        return [set(tree.alive) for tree in trees]

    def cgroup_left_by(self, supervisor_pid: int, name: str) -> Optional[Any]:
        return None

    def signal(self, tree: Any, members: Set[int], signame: str) -> bool:
        self.signals.append((tree.name, signame))
        return True

    def kill(self, tree: Any, members: Set[int]) -> None:
        self.signals.append((tree.name, "SIGKILL"))
        tree.kill(members)

    def release(self, trees: List[Any]) -> None:
        pass

    def spawn(self, launch: supervisor.Launch, tree: Any) -> int:
        if self.spawn_error is not None:
            raise self.spawn_error
        self.next_pid += 1
        self.spawned.append((launch, self.next_pid))
        self.children.add(self.next_pid)
        tree.begin(self.next_pid)
        return self.next_pid

    def add_process(self, service: str, pid: int) -> None:
        """Another process of ``service``'s tree (a child, an escaped daemon)."""
        self.trees[service].alive.add(pid)

    def exit(self, pid: int, returncode: Optional[int] = None, signame: Optional[str] = None,
             tree_empties: bool = True) -> None:
        """``pid`` exits; with ``tree_empties`` everything else of its tree is gone too."""
        self.exits.append((pid, supervisor.ExitInfo(returncode, signame)))
        self.children.discard(pid)
        for tree in self.trees.values():
            if pid in tree.alive:
                tree.alive.discard(pid)
                if tree_empties:
                    tree.alive.clear()

    def empty(self, service: str) -> None:
        self.trees[service].alive.clear()

    def watch(self, pid: int) -> Optional[int]:
        return None

    def reap(self) -> List[Tuple[int, supervisor.ExitInfo]]:
        exits, self.exits = self.exits, []
        return exits

    def wait(self, pid: int) -> None:
        pass

    def is_child(self, pid: int) -> bool:
        return pid in self.children

    def orphans(self) -> Set[int]:
        return set(self.stray)

    def send(self, pid: int, signame: str) -> bool:
        self.signals.append((str(pid), signame))
        return True

    def alive(self, pid: int) -> bool:
        return any(pid in tree.alive for tree in self.trees.values())

    def start_time(self, pid: Optional[int]) -> Optional[float]:
        return None

    def terminate_strays(self, pids: Set[int], timeout: float) -> None:
        pass

    def watch_parent(self, parent_pid: int) -> Optional[Any]:
        return None


def checked(processes: FakeProcesses) -> supervisor.Processes:
    """For mypy: the fake implements the whole process seam; at run time, it has every name
    the seam declares (a protocol is a plain class at run time)."""
    seam = supervisor.Processes
    declared = set(seam.__annotations__) | {name for name in vars(seam) if name[0] != "_"}
    missing = sorted(name for name in declared if not hasattr(processes, name))
    assert not missing, "the fake lacks %s" % missing
    return processes
