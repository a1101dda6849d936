"""Resource use of a supervisor and its process tree, sampled at intervals."""

from __future__ import annotations

import time
from dataclasses import dataclass

import psutil

from pytest_supervisor import processes, wine
from pytest_supervisor.processes import ProcessIdentity

MB = 1024 * 1024


@dataclass(frozen=True)
class ResourceSample:
    """One look at the tree. CPU is percent of one core since the previous sample."""

    elapsed: float  # seconds since sampling began
    rss_mb: float  # the supervisor process alone
    cpu_percent: float
    tree_rss_mb: float  # the supervisor and every descendant
    tree_cpu_percent: float
    processes: int


@dataclass(frozen=True)
class ResourceSamples:
    """Samples taken every ``interval`` seconds, with the summaries tests assert on."""

    interval: float
    samples: tuple[ResourceSample, ...]

    @property
    def peak_rss_mb(self) -> float:
        return max((sample.rss_mb for sample in self.samples), default=0.0)

    @property
    def peak_cpu_percent(self) -> float:
        return max((sample.cpu_percent for sample in self.samples), default=0.0)

    @property
    def mean_cpu_percent(self) -> float:
        if not self.samples:
            return 0.0
        return sum(sample.cpu_percent for sample in self.samples) / len(self.samples)

    @property
    def peak_tree_rss_mb(self) -> float:
        return max((sample.tree_rss_mb for sample in self.samples), default=0.0)

    def as_record(self) -> dict[str, object]:
        """Plain data for ``user_properties``, which must cross xdist's channel."""
        return {
            "interval": self.interval,
            "samples": [sample.__dict__.copy() for sample in self.samples],
        }


class ResourceSampler:
    """Measures one root process and its descendants.

    CPU percent is the CPU time a process used between two samples over the time between
    them, so each process's last reading is kept, keyed by identity. A process first seen
    at a sample counts 0 % there: short-lived children are under-counted, the long-lived
    supervisor is not. (CPU times come from :func:`wine.cpu_seconds`, right under wine too.)
    """

    def __init__(self, root_pid: int) -> None:
        self._root_pid = root_pid
        self._last_cpu: dict[ProcessIdentity, tuple[float, float]] = {}  # (CPU s, monotonic)

    def sample(self, elapsed: float) -> ResourceSample | None:
        """Measure now; None once the root process is gone."""
        live = processes.tree(self._root_pid)
        if not live:
            return None
        rss_mb = cpu_percent = 0.0
        tree_rss = tree_cpu = 0.0
        counted = 0
        for process in live:
            try:
                with process.oneshot():
                    key = processes.identity(process)
                    rss, cpu = process.memory_info().rss / MB, self._cpu_percent(key, process)
            except psutil.Error:
                continue  # exited between listing and measuring
            counted += 1
            tree_rss += rss
            tree_cpu += cpu
            if process.pid == self._root_pid:
                rss_mb, cpu_percent = rss, cpu
        return ResourceSample(elapsed, rss_mb, cpu_percent, tree_rss, tree_cpu, counted)

    def _cpu_percent(self, key: ProcessIdentity, process: psutil.Process) -> float:
        """Percent of one core since this process's previous reading (0 at the first)."""
        now = (wine.cpu_seconds(process), time.monotonic())
        before = self._last_cpu.get(key)
        self._last_cpu[key] = now
        if before is None or now[1] <= before[1]:
            return 0.0
        return round(max(0.0, now[0] - before[0]) / (now[1] - before[1]) * 100, 1)
