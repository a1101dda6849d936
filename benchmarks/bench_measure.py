"""The measurements. Each one starts a subject, acts on it from outside and reads the kernel.

A measurement returns its figures, ``{name: Figure}``, or raises ``Skipped`` with the reason
it does not apply or could not finish. Every wait is bounded, so a peer that never does what
is asked costs a few seconds, not the run.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import psutil

from bench_observe import Observer, Spawn, Watch, cpu_seconds
from bench_subjects import (
    Backoff,
    Launcher,
    PytestSupervisor,
    Service,
    Subject,
    crashing_services,
    forking_services,
    python_services,
    sleep_services,
    tagged_processes,
)

NS = 1_000_000_000
# Longest wait for one replacement: supervisord's main loop alone may take a second.
RESPAWN_TIMEOUT = 5.0
STARTUP_TIMEOUT = 60.0
SHUTDOWN_TIMEOUT = 30.0
# How long a subject gets to stop on SIGTERM when a measurement is over, before SIGKILL.
STOP_GRACE = 10.0
# Time to let a freshly started subject finish its start-up work before it is measured.
SETTLE = 0.3
# The crash storm's policy for the backoff check: 0.1 s, doubling, at most 1 s.
STORM_BACKOFF = Backoff(delay=0.1, factor=2.0, max_delay=1.0)
# A crash counts as missed when no replacement came this long after it was due.
MISSED_AFTER = 1.0
# An exit followed by a replacement sooner than its delay minus this went against the backoff.
EARLY_TOLERANCE = 0.002


class Skipped(Exception):
    """The measurement does not apply to this subject, or it could not finish."""


@dataclass
class Figure:
    value: float
    unit: str


@dataclass
class Settings:
    respawn_trials: int
    startup_trials: int
    idle_seconds: float
    idle_settle: float
    shutdown_trials: int
    storm_services: int
    storm_seconds: float
    storm_warmup: float
    self_respawn_trials: int
    flood_trials: int

    @classmethod
    def choose(cls, quick: bool, storm_seconds: Optional[float]) -> "Settings":
        if quick:
            return cls(respawn_trials=10, startup_trials=1, idle_seconds=2.0, idle_settle=0.5,
                       shutdown_trials=1, storm_services=100,
                       storm_seconds=storm_seconds or 2.0, storm_warmup=0.5,
                       self_respawn_trials=2, flood_trials=30)
        return cls(respawn_trials=30, startup_trials=3, idle_seconds=10.0, idle_settle=2.0,
                   shutdown_trials=3, storm_services=100, storm_seconds=storm_seconds or 10.0,
                   storm_warmup=1.0, self_respawn_trials=10, flood_trials=200)


@dataclass
class Run:
    pid: int
    tag: str
    watch: Watch
    workdir: Path
    launched_ns: int


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: a value that was actually measured."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def spread(values: Sequence[float], unit: str, scale: float) -> Dict[str, Figure]:
    return {"p50": Figure(round(statistics.median(values) * scale, 3), unit),
            "p95": Figure(round(percentile(values, 0.95) * scale, 3), unit),
            "max": Figure(round(max(values) * scale, 3), unit),
            "trials": Figure(len(values), "count")}


class Bench:
    """What every measurement needs: the settings, the observer, a way to start subjects."""

    def __init__(self, settings: Settings, observer: Observer, launcher: Launcher,
                 workroot: Path):
        self.settings = settings
        self.observer = observer
        self.launcher = launcher
        self.workroot = workroot

    @contextlib.contextmanager
    def running(self, subject: Subject, services: Sequence[Service],
                backoff: Optional[Backoff] = None, fault_injection: bool = False
                ) -> Iterator[Run]:
        workdir = Path(tempfile.mkdtemp(prefix=subject.name + "-", dir=str(self.workroot)))
        argv = subject.command(services, workdir, backoff, fault_injection)
        launched_ns = time.monotonic_ns()
        proc, tag = self.launcher.launch(argv, workdir, subject.environment(workdir))
        watch = self.observer.watch(proc.pid, subject.service_depth, subject.launchers)
        try:
            yield Run(proc.pid, tag, watch, workdir, launched_ns)
        finally:
            self.launcher.finish(proc, tag, grace=STOP_GRACE)
            self.observer.forget(proc.pid)
            shutil.rmtree(workdir, ignore_errors=True)

    def wait_running(self, run: Run, count: int, timeout: float) -> None:
        """Until ``count`` children run at once; Skipped (with the subject's log) if not."""
        watch = run.watch
        self.observer.wait_until(
            lambda: len(watch.alive) >= count or watch.supervisor_exit is not None, timeout)
        if len(watch.alive) < count:
            state = "exited" if watch.supervisor_exit is not None else "still running"
            raise Skipped("%d of %d services running after %.0f s (supervisor %s)%s"
                          % (len(watch.alive), count, timeout, state, _log_tail(run.workdir)))

    def kill_and_wait(self, run: Run, victims: List[int]) -> Optional[float]:
        """SIGKILL ``victims`` at once; seconds until as many replacements run, None if not."""
        watch = run.watch
        first = len(watch.spawns)
        sent = time.monotonic_ns()
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it died on its own just now: its replacement counts all the same

        def replacements() -> List[Spawn]:
            return [s for s in watch.spawns[first:] if s.ts > sent]

        if not self.observer.wait_until(lambda: len(replacements()) >= len(victims),
                                        RESPAWN_TIMEOUT):
            return None
        return (max(s.ts for s in replacements()[:len(victims)]) - sent) / NS


def _log_tail(workdir: Path) -> str:
    text = ""
    for log in sorted(workdir.glob("*.log")):
        text += log.read_text(errors="replace")
    return ("; its log ends: " + text[-400:].strip()) if text.strip() else ""


def _pause() -> None:
    # A random gap, so that no trial lands at the same phase of a supervisor's periodic work.
    time.sleep(random.uniform(0.02, 0.06))


def _hold_off(subject: Subject, run: Run, victims: Sequence[int]) -> None:
    """Wait until each victim has run the subject's ``restart_holdoff``."""
    if subject.restart_holdoff:
        youngest = max(run.watch.by_pid[pid].ts for pid in victims)
        time.sleep(max(0.0, (youngest - time.monotonic_ns()) / NS + subject.restart_holdoff))


# --------------------------------------------------------------------------- comparing
# Other work on the machine comes and goes. Subjects compared with each other therefore take
# turns, trial by trial, instead of one running all its trials and then the next: whatever
# the load was, each of them met it about equally often.

Outcome = Union[Dict[str, Figure], Skipped]
Trial = Callable[[Bench, Subject], float]


def one_at_a_time(measure: Callable[..., Dict[str, Figure]]
                  ) -> Callable[..., Dict[str, Outcome]]:
    """For a measurement that needs the machine to itself (idle, storms): subject by subject."""
    @functools.wraps(measure)
    def each(bench: Bench, subjects: Sequence[Subject], **options: object
             ) -> Dict[str, Outcome]:
        outcomes: Dict[str, Outcome] = {}
        for subject in subjects:
            try:
                outcomes[subject.name] = measure(bench, subject, **options)
            except Skipped as exc:
                outcomes[subject.name] = exc
        return outcomes
    return each


def alternate(bench: Bench, subjects: Sequence[Subject], trials: int, trial: Trial
              ) -> Tuple[Dict[str, List[float]], Dict[str, Outcome]]:
    """Trial 1 of every subject, then trial 2 of every subject...; a subject whose trial is
    Skipped takes no more turns and is reported by that reason."""
    values: Dict[str, List[float]] = {s.name: [] for s in subjects}
    failed: Dict[str, Outcome] = {}
    for _ in range(trials):
        for subject in subjects:
            if subject.name not in failed:
                try:
                    values[subject.name].append(trial(bench, subject))
                except Skipped as exc:
                    failed[subject.name] = exc
    return values, failed


# --------------------------------------------------------------------------- respawn

def respawn(bench: Bench, subjects: Sequence[Subject],
            make_services: Callable[[], List[Service]], kill_count: int
            ) -> Dict[str, Outcome]:
    """Kill ``kill_count`` services at once, trial after trial; time until all are back.

    Every subject runs at the same time (idle but for the trial at hand), and they take turns
    in a new random order each round.
    """
    latencies: Dict[str, List[float]] = {s.name: [] for s in subjects}
    outcomes: Dict[str, Outcome] = {}
    trials = bench.settings.respawn_trials
    with contextlib.ExitStack() as stack:
        runs: Dict[str, Run] = {}
        count = len(make_services())
        for subject in subjects:
            run = stack.enter_context(bench.running(subject, make_services()))
            try:
                bench.wait_running(run, count, STARTUP_TIMEOUT)
                runs[subject.name] = run
            except Skipped as exc:
                outcomes[subject.name] = exc
        time.sleep(SETTLE)
        by_name = {subject.name: subject for subject in subjects}
        for _ in range(trials):
            turns = list(runs.items())
            random.shuffle(turns)
            for name, run in turns:
                _pause()
                victims = random.sample(sorted(run.watch.alive), kill_count)
                _hold_off(by_name[name], run, victims)
                latency = bench.kill_and_wait(run, victims)
                try:
                    if latency is None:
                        raise Skipped("a trial timed out")
                    bench.wait_running(run, count, RESPAWN_TIMEOUT)  # every service is back
                except Skipped:
                    del runs[name]  # it failed a trial: it takes no more
                    continue
                latencies[name].append(latency)
    for name, values in latencies.items():
        if name in outcomes:
            continue
        if not values:
            outcomes[name] = Skipped("no replacement within %.0f s of the first kill"
                                     % RESPAWN_TIMEOUT)
            continue
        figures = spread(values, "ms", 1e3)
        figures["missed"] = Figure(trials - len(values), "count")
        outcomes[name] = figures
    return outcomes


def respawn_sleep(bench: Bench, subjects: Sequence[Subject]) -> Dict[str, Outcome]:
    return respawn(bench, subjects, lambda: sleep_services(1), 1)


def respawn_python(bench: Bench, subjects: Sequence[Subject]) -> Dict[str, Outcome]:
    return respawn(bench, subjects, lambda: python_services(1), 1)


def respawn_10_of_20(bench: Bench, subjects: Sequence[Subject]) -> Dict[str, Outcome]:
    return respawn(bench, subjects, lambda: sleep_services(20), 10)


# --------------------------------------------------------------------------- leftovers

LEFT_CHILDREN = 10


def respawn_leaving_children(bench: Bench, subjects: Sequence[Subject]) -> Dict[str, Outcome]:
    """One service whose main process has 10 children; SIGKILL the main process, trial
    after trial: time until the replacement has exec'd, and how many of the 10 were still
    running at that moment (a supervisor that stops what is left before the restart: 0).

    Every subject runs at the same time, taking turns in a new random order each round.
    Children a subject leaves are killed by the benchmark after each trial, so that they
    do not pile up.
    """
    latencies: Dict[str, List[float]] = {s.name: [] for s in subjects}
    leftovers: Dict[str, List[int]] = {s.name: [] for s in subjects}
    outcomes: Dict[str, Outcome] = {}
    trials = bench.settings.respawn_trials
    with contextlib.ExitStack() as stack:
        runs: Dict[str, Run] = {}
        for subject in subjects:
            run = stack.enter_context(
                bench.running(subject, forking_services(1, LEFT_CHILDREN)))
            try:
                bench.wait_running(run, 1, STARTUP_TIMEOUT)
                runs[subject.name] = run
            except Skipped as exc:
                outcomes[subject.name] = exc
        time.sleep(SETTLE)
        by_name = {subject.name: subject for subject in subjects}
        for _ in range(trials):
            turns = list(runs.items())
            random.shuffle(turns)
            for name, run in turns:
                _pause()
                try:
                    latency, left = _kill_leaving_children(bench, run, by_name[name])
                except Skipped as exc:
                    outcomes[name] = exc
                    del runs[name]  # it failed a trial: it takes no more
                    continue
                latencies[name].append(latency)
                leftovers[name].append(left)
    for name, values in latencies.items():
        if name in outcomes:
            continue
        figures = spread(values, "ms", 1e3)
        figures["leftovers_max"] = Figure(max(leftovers[name]), "count")
        figures["leftovers_total"] = Figure(sum(leftovers[name]), "count")
        outcomes[name] = figures
    return outcomes


def _kill_leaving_children(bench: Bench, run: Run, subject: Subject) -> Tuple[float, int]:
    """SIGKILL the service's main process once its children run; (seconds until the
    replacement exec'd, how many of the children were still running then)."""
    main, children = _main_with_children(bench, run, LEFT_CHILDREN)
    _hold_off(subject, run, [main])
    bench.observer.track_exits(children)
    watch = run.watch
    first = len(watch.spawns)
    sent = time.monotonic_ns()
    os.kill(main, signal.SIGKILL)
    try:
        if not bench.observer.wait_until(
                lambda: any(s.ts > sent for s in watch.spawns[first:]), RESPAWN_TIMEOUT):
            raise Skipped("no replacement within %.0f s of a kill" % RESPAWN_TIMEOUT)
        replaced = min(s.ts for s in watch.spawns[first:] if s.ts > sent)
        with bench.observer.changed:
            ends = [bench.observer.exit_times.get(pid) for pid in children]
        left = sum(1 for end in ends if end is None or end > replaced)
    finally:
        for pid in children:
            _kill(pid)
        bench.observer.untrack_exits(children)
    return (replaced - sent) / NS, left


def _main_with_children(bench: Bench, run: Run, count: int, main: Optional[int] = None
                        ) -> Tuple[int, List[int]]:
    """A service's main process (``main``, or any), once it has exec'd ``sleep`` with
    ``count`` children; and their pids."""
    deadline = time.monotonic() + RESPAWN_TIMEOUT
    while time.monotonic() < deadline:
        for pid in [main] if main is not None else list(run.watch.alive):
            try:
                process = psutil.Process(pid)
                children = [child.pid for child in process.children()]
                if process.name() == "sleep" and len(children) == count:
                    return pid, children
            except psutil.Error:
                continue  # it ended meanwhile: its replacement will be looked at
        time.sleep(0.005)
    raise Skipped("no service process with %d children within %.0f s"
                  % (count, RESPAWN_TIMEOUT))


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# --------------------------------------------------------------------------- start-up

def startup(bench: Bench, subjects: Sequence[Subject], count: int, installed: bool = False,
            yaml_config: bool = False) -> Dict[str, Outcome]:
    """From launching the supervisor until ``count`` services run (exec'd) at once.
    ``installed``: pytest-supervisor as an installed program runs (see its ``installed``),
    with its config in YAML if ``yaml_config`` (else in JSON)."""
    if installed:
        subjects = [s.installed(bench.workroot / "installed", yaml_config)
                    if isinstance(s, PytestSupervisor) else s for s in subjects]
    def trial(bench: Bench, subject: Subject) -> float:
        with bench.running(subject, sleep_services(count)) as run:
            bench.wait_running(run, count, STARTUP_TIMEOUT)
            last = sorted(s.ts for s in run.watch.spawns)[count - 1]
            return (last - run.launched_ns) / NS

    trials = bench.settings.startup_trials if count <= 500 else 1
    durations, outcomes = alternate(bench, subjects, trials, trial)
    for name, values in durations.items():
        outcomes.setdefault(name, {"median": Figure(round(statistics.median(values), 4), "s"),
                                   "max": Figure(round(max(values), 4), "s"),
                                   "trials": Figure(len(values), "count")})
    return outcomes


def system_python() -> Optional[str]:
    """The interpreter ``python3`` runs outside any virtualenv: the machine's default."""
    path = os.pathsep.join(entry for entry in os.environ.get("PATH", "").split(os.pathsep)
                           if os.path.abspath(entry) != os.path.join(sys.prefix, "bin"))
    found = shutil.which("python3", path=path)
    if found is None:
        return None
    # through any wrapper (pyenv's shim is a shell script) to the interpreter itself
    out = subprocess.run([found, "-c", "import sys; print(sys.executable)"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() or None


def startup_interpreters(bench: Bench, subjects: Sequence[Subject], count: int
                         ) -> Dict[str, Outcome]:
    """Launch until ``count`` services run, four ways: by a virtualenv's interpreter (this
    one) and by the machine's default ``python3``, each with the subject's code compiled
    beforehand (warm) or at every start (cold: no ``__pycache__``, PYTHONDONTWRITEBYTECODE).
    Every round takes each way of each subject once, so that load comes and goes on all.
    """
    pythons = {"venv": sys.executable, "system": system_python()}
    outcomes: Dict[str, Outcome] = {}
    ways: List[Tuple[str, str, Subject]] = []  # (figure, subject's name, subject run so)
    for subject in subjects:
        for label, python in pythons.items():
            for cold in (False, True):
                key = "%s_%s" % (label, "cold" if cold else "warm")
                if python is None:
                    continue  # no python3 outside the virtualenv: those figures are left out
                try:
                    ways.append((key, subject.name, subject.under(
                        python, cold, bench.workroot / key / subject.name)))
                except NotImplementedError:
                    outcomes[subject.name] = Skipped(
                        "runs from its own installation, not by an interpreter of our choice")
    durations: Dict[Tuple[str, str], List[float]] = {(k, n): [] for k, n, _ in ways}
    for _ in range(bench.settings.startup_trials):
        for key, name, subject in ways:
            if name in outcomes:
                continue
            try:
                with bench.running(subject, sleep_services(count)) as run:
                    bench.wait_running(run, count, STARTUP_TIMEOUT)
                    last = sorted(s.ts for s in run.watch.spawns)[count - 1]
                    durations[key, name].append((last - run.launched_ns) / NS)
            except Skipped as exc:
                outcomes[name] = exc
    for (key, name), values in durations.items():
        if name not in outcomes or isinstance(outcomes[name], dict):
            figures = outcomes.setdefault(name, {})
            assert isinstance(figures, dict)
            figures[key] = Figure(round(statistics.median(values), 4), "s")
    return outcomes


# --------------------------------------------------------------------------- idle cost

def supervision_processes(run: Run) -> List[psutil.Process]:
    """The supervisor and the processes of its tree that are not services nor below one:
    its cost includes s6's s6-supervise, runit's runsv, any helper of its own."""
    found, todo = [], [psutil.Process(run.pid)]
    while todo:
        process = todo.pop()
        found.append(process)
        with contextlib.suppress(psutil.Error):
            todo += [child for child in process.children() if child.pid not in run.watch.alive]
    return found


def tree_cpu_seconds(processes: Sequence[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error, OSError):
            total += cpu_seconds(process.pid)
    return total


@one_at_a_time
def idle(bench: Bench, subject: Subject, count: int) -> Dict[str, Figure]:
    """CPU, wake-ups and memory of the supervisor (and of its own helper processes) while
    ``count`` services just run. PSS shares each page among the processes mapping it, so a
    supervisor of many processes is charged its shared pages once."""
    seconds = bench.settings.idle_seconds
    with bench.running(subject, sleep_services(count)) as run:
        bench.wait_running(run, count, STARTUP_TIMEOUT)
        time.sleep(bench.settings.idle_settle)
        processes = supervision_processes(run)
        spawns_before = len(run.watch.spawns)
        cpu_before = tree_cpu_seconds(processes)
        switches_before = sum(p.num_ctx_switches().voluntary for p in processes)
        time.sleep(seconds)
        cpu = tree_cpu_seconds(processes) - cpu_before
        switches = sum(p.num_ctx_switches().voluntary for p in processes) - switches_before
        memory = [p.memory_full_info() for p in processes]
        restarted = len(run.watch.spawns) - spawns_before
    return {"cpu": Figure(round(cpu, 4), "s"),
            "over": Figure(seconds, "s"),
            "pss": Figure(round(sum(m.pss for m in memory) / 2**20, 1), "MB"),
            "rss": Figure(round(sum(m.rss for m in memory) / 2**20, 1), "MB"),
            "uss": Figure(round(sum(m.uss for m in memory) / 2**20, 1), "MB"),
            "processes": Figure(len(processes), "count"),
            "wakeups": Figure(round(switches / seconds, 1), "per s"),
            "restarted": Figure(restarted, "count")}


# --------------------------------------------------------------------------- shutdown

def shutdown(bench: Bench, subjects: Sequence[Subject], count: int) -> Dict[str, Outcome]:
    """SIGTERM the supervisor; time until it and every service have exited."""
    stops: Dict[str, List[Dict[str, float]]] = {s.name: [] for s in subjects}

    def trial(bench: Bench, subject: Subject) -> float:
        with bench.running(subject, sleep_services(count)) as run:
            bench.wait_running(run, count, STARTUP_TIMEOUT)
            time.sleep(SETTLE)
            stop = _terminate(bench, run)
        stops[subject.name].append(stop)
        return stop["all_gone"]

    gone, outcomes = alternate(bench, subjects, bench.settings.shutdown_trials, trial)
    for name, values in gone.items():
        if name in outcomes:
            continue
        own_exit = [stop["supervisor_exit"] for stop in stops[name]]
        figures = {"all_gone": Figure(round(statistics.median(values) * 1e3, 2), "ms"),
                   "all_gone_max": Figure(round(max(values) * 1e3, 2), "ms"),
                   "supervisor_exit": Figure(round(statistics.median(own_exit) * 1e3, 2), "ms")}
        figures.update(_leftover_figures(*(int(sum(stop[key] for stop in stops[name]))
                                           for key in ("outlived", "left_behind", "respawned"))))
        figures["trials"] = Figure(len(values), "count")
        outcomes[name] = figures
    return outcomes


def shutdown_trees(bench: Bench, subjects: Sequence[Subject], count: int, children: int
                   ) -> Dict[str, Outcome]:
    """SIGTERM the supervisor whose ``count`` services have ``children`` children each; time
    until it and every one of those processes have exited."""
    stops: Dict[str, List[Dict[str, float]]] = {s.name: [] for s in subjects}

    def trial(bench: Bench, subject: Subject) -> float:
        with bench.running(subject, forking_services(count, children)) as run:
            bench.wait_running(run, count, STARTUP_TIMEOUT)
            tree = [pid for main in list(run.watch.alive)
                    for pid in _main_with_children(bench, run, children, main)[1]]
            tree += list(run.watch.alive)
            time.sleep(SETTLE)
            bench.observer.track_exits(tree)
            try:
                stop = _terminate(bench, run)
                bench.observer.wait_until(
                    lambda: None not in (bench.observer.exit_times.get(p) for p in tree),
                    SHUTDOWN_TIMEOUT)
                with bench.observer.changed:
                    ends = [bench.observer.exit_times.get(pid) for pid in tree]
            finally:
                bench.observer.untrack_exits(tree)
        exited = run.watch.supervisor_exit
        assert exited is not None  # _terminate waited for it
        sent = int(stop["sent_ns"])
        stop["tree"] = len(tree)
        stop["tree_outlived"] = sum(1 for end in ends if end is None or end > exited)
        if None in ends:
            stop["all_gone"] = SHUTDOWN_TIMEOUT
        else:
            stop["all_gone"] = (max([exited, *(end for end in ends if end)]) - sent) / NS
        stops[subject.name].append(stop)
        return stop["all_gone"]

    gone, outcomes = alternate(bench, subjects, bench.settings.shutdown_trials, trial)
    for name, values in gone.items():
        if name in outcomes:
            continue
        own_exit = [stop["supervisor_exit"] for stop in stops[name]]
        figures = {"all_gone": Figure(round(statistics.median(values) * 1e3, 2), "ms"),
                   "all_gone_max": Figure(round(max(values) * 1e3, 2), "ms"),
                   "supervisor_exit": Figure(round(statistics.median(own_exit) * 1e3, 2), "ms"),
                   "processes": Figure(int(stops[name][0]["tree"]), "count"),
                   # processes of the trees that ended after the supervisor, or never
                   "outlived_supervisor": Figure(
                       int(sum(stop["tree_outlived"] for stop in stops[name])), "count"),
                   "left_behind": Figure(
                       int(sum(stop["left_behind"] for stop in stops[name])), "count"),
                   "trials": Figure(len(values), "count")}
        outcomes[name] = figures
    return outcomes


def _leftover_figures(outlived: int, left: int, respawned: int) -> Dict[str, Figure]:
    return {"outlived_supervisor": Figure(outlived, "count"),
            "left_behind": Figure(left, "count"),
            "started_after_sigterm": Figure(respawned, "count")}


def _terminate(bench: Bench, run: Run) -> Dict[str, float]:
    """SIGTERM now; wait until nothing of the run is left. Times in s, counts of processes."""
    watch = run.watch
    first = len(watch.spawns)
    sent = time.monotonic_ns()
    os.kill(run.pid, signal.SIGTERM)
    finished = bench.observer.wait_until(
        lambda: watch.supervisor_exit is not None and not watch.alive, SHUTDOWN_TIMEOUT)
    if watch.supervisor_exit is None:
        raise Skipped("still running %.0f s after SIGTERM" % SHUTDOWN_TIMEOUT)
    time.sleep(0.1)  # what a service's own children need to follow it out
    left_behind = len(tagged_processes(run.tag))
    exits = [ts for _, ts in watch.exits if ts > sent]
    last = max([*exits, watch.supervisor_exit])
    return {"sent_ns": sent,
            "all_gone": (last - sent) / NS if finished else SHUTDOWN_TIMEOUT,
            "supervisor_exit": (watch.supervisor_exit - sent) / NS,
            "outlived": sum(1 for ts in exits if ts > watch.supervisor_exit) + len(watch.alive),
            "left_behind": left_behind,
            "respawned": len(watch.spawns) - first}


# --------------------------------------------------------------------------- crash storm

@one_at_a_time
def storm(bench: Bench, subject: Subject, backoff: Optional[Backoff] = None
          ) -> Dict[str, Figure]:
    """Services crash 10 ms after each start; CPU, respawns and misses, then a SIGTERM."""
    settings = bench.settings
    services = crashing_services(settings.storm_services)
    names = {s.argv: s.name for s in services}
    with bench.running(subject, services, backoff=backoff) as run:
        time.sleep(settings.storm_warmup)
        if run.watch.supervisor_exit is not None:
            raise Skipped("the supervisor exited during the storm" + _log_tail(run.workdir))
        processes = supervision_processes(run)
        start, cpu_before = time.monotonic_ns(), tree_cpu_seconds(processes)
        time.sleep(settings.storm_seconds)
        end, cpu = time.monotonic_ns(), tree_cpu_seconds(processes) - cpu_before
        try:
            stop: Optional[Dict[str, float]] = _terminate(bench, run)
        except Skipped:
            stop = None  # it ignored the SIGTERM: what it did in the storm still stands
    history = _storm_history(run.watch, names)
    figures = {"supervisor_cpu": Figure(round(cpu / settings.storm_seconds * 100, 1),
                                        "% of a core"),
               "respawns_seen": Figure(sum(1 for s in run.watch.spawns if start <= s.ts <= end),
                                       "count"),
               "over": Figure(settings.storm_seconds, "s")}
    figures.update(_answer_figures(history, start, end, backoff))
    figures["unidentified"] = Figure(sum(1 for s in run.watch.spawns if s.argv not in names),
                                     "count")
    # The last act: SIGTERM in the middle of the storm. Still running after
    # SHUTDOWN_TIMEOUT counts as ignoring it (the run's cleanup then kills everything).
    figures["sigterm_ignored"] = Figure(int(stop is None), "count")
    if stop is not None:
        figures["sigterm_all_gone"] = Figure(round(stop["all_gone"] * 1e3, 1), "ms")
        figures.update(_leftover_figures(int(stop["outlived"]), int(stop["left_behind"]),
                                         int(stop["respawned"])))
    return figures


def storm_backoff(bench: Bench, subjects: Sequence[Subject]) -> Dict[str, Outcome]:
    able = [s for s in subjects if s.supports_backoff]
    outcomes: Dict[str, Outcome] = {s.name: Skipped(s.no_backoff_reason)
                                    for s in subjects if not s.supports_backoff}
    outcomes.update(storm(bench, able, backoff=STORM_BACKOFF))
    return outcomes


def _storm_history(watch: Watch, names: Dict[tuple, str]) -> Dict[str, List[tuple]]:
    """Per service, its starts and exits in time order: (ts, "spawn"|"exit")."""
    history: Dict[str, List[tuple]] = {}
    for spawn in watch.spawns:
        if spawn.argv in names:
            history.setdefault(names[spawn.argv], []).append((spawn.ts, "spawn"))
    for pid, ts in watch.exits:
        exited = watch.by_pid.get(pid)
        if exited is not None and exited.argv in names:
            history.setdefault(names[exited.argv], []).append((ts, "exit"))
    for events in history.values():
        events.sort()
    return history


def _answer_figures(history: Dict[str, List[tuple]], start: int, end: int,
                    backoff: Optional[Backoff]) -> Dict[str, Figure]:
    """How the crashes were answered: respawns due by the policy inside the window against
    those seen there; and for each one due at least ``MISSED_AFTER`` before the end, whether
    it came too early (before its delay), late (by how much) or never."""
    expected, early, missed, lateness = 0, 0, 0, []
    judged_until = end - int(MISSED_AFTER * NS)
    for events in history.values():
        exits = 0
        for index, (ts, kind) in enumerate(events):
            if kind != "exit":
                continue
            exits += 1
            due = ts + int((backoff.due(exits) if backoff else 0.0) * NS)
            if not start <= due <= end:
                continue
            expected += 1
            if due > judged_until:
                continue  # too close to the end to call it missed
            answer = next((t for t, k in events[index + 1:] if k == "spawn"), None)
            if answer is None or answer > due + int(MISSED_AFTER * NS):
                missed += 1
                continue
            if answer < due - int(EARLY_TOLERANCE * NS):
                early += 1
            lateness.append((answer - due) / NS)
    figures = {"respawns_expected": Figure(expected, "count"),
               "missed": Figure(missed, "count")}
    if backoff is not None:
        figures["early"] = Figure(early, "count")
    if lateness:
        figures["late_p50"] = Figure(round(statistics.median(lateness) * 1e3, 2), "ms")
        figures["late_max"] = Figure(round(max(lateness) * 1e3, 2), "ms")
    return figures


# --------------------------------------------------------------------------- self-respawn

@one_at_a_time
def self_respawn(bench: Bench, subject: Subject, count: int = 20) -> Dict[str, Figure]:
    """SIGUSR1 makes the supervisor re-exec itself: how long are its services unwatched?

    Trials 1, 3, 5...: time from the signal until the new image has taken over every service
    (its ``adopted`` events). Trials 2, 4, 6...: a service is SIGKILLed halfway through that
    window; time until it runs again. Every trial checks that no other service was restarted
    (the same PIDs before and after).
    """
    if not subject.supports_self_respawn:
        raise Skipped(subject.no_self_respawn_reason)
    windows: List[float] = []
    answers: List[float] = []
    restarted = 0
    with bench.running(subject, sleep_services(count), fault_injection=True) as run:
        events_path = subject.events_file(run.workdir)
        assert events_path is not None
        bench.wait_running(run, count, STARTUP_TIMEOUT)
        time.sleep(SETTLE)
        for trial in range(bench.settings.self_respawn_trials):
            before = set(run.watch.alive)
            sent = time.monotonic_ns()
            os.kill(run.pid, signal.SIGUSR1)
            victim = None
            if trial % 2 == 1:
                time.sleep(statistics.median(windows) / 2)
                victim = random.choice(sorted(before))
                answer = bench.kill_and_wait(run, [victim])
                if answer is None:
                    raise Skipped("a service killed during the re-exec was not respawned")
                answers.append(answer)
            taken_over = _wait_taken_over(events_path, sent, count)
            if trial % 2 == 0:
                windows.append((taken_over - sent) / NS)
            time.sleep(SETTLE)
            restarted += len(before - {victim} - set(run.watch.alive))
    figures = {"unsupervised_p50": Figure(round(statistics.median(windows) * 1e3, 2), "ms"),
               "unsupervised_max": Figure(round(max(windows) * 1e3, 2), "ms")}
    if answers:
        figures["kill_answered_p50"] = Figure(round(statistics.median(answers) * 1e3, 2), "ms")
        figures["kill_answered_max"] = Figure(round(max(answers) * 1e3, 2), "ms")
    figures["restarted"] = Figure(restarted, "count")
    figures["trials"] = Figure(len(windows) + len(answers), "count")
    return figures


def _wait_taken_over(events_path: Path, since: int, count: int, timeout: float = 10.0) -> int:
    """CLOCK_MONOTONIC ns at which the new image had taken over all ``count`` services.

    A service is taken over by its ``adopted`` event, or by a ``spawned`` one when it died
    during the exec and the new image started it again.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stamps: Dict[str, int] = {}
        for line in events_path.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line being written right now
            if event.get("event") in ("adopted", "spawned") and event["mono"] * NS > since:
                stamps.setdefault(event["service"], int(event["mono"] * NS))
        if len(stamps) >= count:
            return max(stamps.values())
        time.sleep(0.002)
    raise Skipped("fewer than %d services taken over %.0f s after SIGUSR1" % (count, timeout))


# --------------------------------------------------------------------------- control flood

FLOOD_SCRIPT = Path(__file__).resolve().parent / "control_flood.py"
# How long the flooding clients get to fill every buffer before the trials start.
FLOOD_FILL = 2.0


@one_at_a_time
def control_flood(bench: Bench, subject: Subject, clients: int = 500) -> Dict[str, Figure]:
    """Respawn after SIGKILL, first with nobody on the control socket, then while ``clients``
    clients pipeline ``status`` requests and never read an answer; the supervisor's RSS."""
    if subject.control_socket(bench.workroot) is None:
        raise Skipped("has no control socket speaking our protocol")
    trials = bench.settings.flood_trials
    with bench.running(subject, sleep_services(1)) as run:
        socket_path = subject.control_socket(run.workdir)
        bench.wait_running(run, 1, STARTUP_TIMEOUT)
        time.sleep(SETTLE)
        process = psutil.Process(run.pid)
        quiet = _respawns(bench, run, trials)
        idle_rss = process.memory_info().rss
        flood_dir = run.workdir / "flood"
        flood_dir.mkdir()
        flood, tag = bench.launcher.launch(
            [sys.executable, str(FLOOD_SCRIPT), str(socket_path), str(clients)], flood_dir)
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while b"connected" not in (flood_dir / "output.log").read_bytes():
                if flood.poll() is not None or time.monotonic() > deadline:
                    raise Skipped("the flooding clients could not connect: %s" % (
                        flood_dir / "output.log").read_text()[-400:])
                time.sleep(0.05)  # written by another process: no event to wait on
            time.sleep(FLOOD_FILL)
            rss = [process.memory_info().rss]
            flooded = []
            for _ in range(trials):
                flooded += _respawns(bench, run, 1)
                rss.append(process.memory_info().rss)
        finally:
            bench.launcher.finish(flood, tag, grace=0)
    figures = {"quiet_p50": Figure(round(statistics.median(quiet) * 1e3, 3), "ms"),
               "quiet_p99": Figure(round(percentile(quiet, 0.99) * 1e3, 3), "ms")}
    if flooded:
        figures.update({
            "flood_p50": Figure(round(statistics.median(flooded) * 1e3, 3), "ms"),
            "flood_p99": Figure(round(percentile(flooded, 0.99) * 1e3, 3), "ms"),
            "flood_max": Figure(round(max(flooded) * 1e3, 3), "ms")})
    figures.update({"missed": Figure(2 * trials - len(quiet) - len(flooded), "count"),
                    "rss_idle": Figure(round(idle_rss / 2**20, 1), "MB"),
                    "rss_flood_max": Figure(round(max(rss) / 2**20, 1), "MB"),
                    "rss_growth": Figure(round((max(rss) - idle_rss) / 2**20, 1), "MB"),
                    "clients": Figure(clients, "count"),
                    "trials": Figure(trials, "count")})
    return figures


def _respawns(bench: Bench, run: Run, trials: int) -> List[float]:
    """Kill the one service ``trials`` times; the latencies of the replacements that came."""
    latencies = []
    for _ in range(trials):
        _pause()
        latency = bench.kill_and_wait(run, sorted(run.watch.alive)[:1])
        if latency is not None:
            latencies.append(latency)
        bench.wait_running(run, 1, RESPAWN_TIMEOUT)
    return latencies
