#!/usr/bin/env python3
"""Benchmark pytest-supervisor against the physical floor (and s6, runit, supervisord,
circus and PM2).

    python benchmarks/run.py [--quick] [--only NAME[,NAME]] [--peers] [--storm-seconds S]

Measures, black-box and the same way for every supervisor, respawn latency after SIGKILL,
start-up time, idle cost, shutdown time, crash storms and self-respawn; writes
``reports/bench.json`` and ``reports/bench.md`` and prints the markdown table. Linux only
(pidfds, /proc). See benchmarks/README.md for what each figure means and how it is taken.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import traceback
import uuid
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple

import psutil

import bench_measure as measure
import bench_report as report
from bench_observe import open_observer
from bench_subjects import (
    REPO_ROOT,
    S6,
    Circus,
    FloorRespawner,
    Launcher,
    Peer,
    Pm2,
    PytestSupervisor,
    Runit,
    Subject,
    Supervisord,
)


class Benchmark(NamedTuple):
    name: str
    group: str  # what --only also accepts
    title: str
    run: Callable[[measure.Bench, List[Subject]], Dict[str, measure.Outcome]]
    in_quick: bool


BENCHMARKS = [
    Benchmark("respawn_sleep", "respawn", "respawn after SIGKILL, 1 `sleep` service",
              measure.respawn_sleep, True),
    Benchmark("respawn_python", "respawn", "respawn after SIGKILL, 1 Python service",
              measure.respawn_python, True),
    Benchmark("respawn_10_of_20", "respawn", "10 of 20 `sleep` services killed at once, "
              "all back", measure.respawn_10_of_20, True),
    Benchmark("startup_100", "startup", "launch until 100 `sleep` services run",
              functools.partial(measure.startup, count=100), True),
    Benchmark("startup_500", "startup", "launch until 500 `sleep` services run",
              functools.partial(measure.startup, count=500), False),
    Benchmark("startup_1000", "startup", "launch until 1,000 `sleep` services run",
              functools.partial(measure.startup, count=1000), False),
    Benchmark("startup_100_installed", "startup", "launch until 100 `sleep` services run, "
              "pytest-supervisor as installed: `python -m supervisor`, bytecode compiled",
              functools.partial(measure.startup, count=100, installed=True), True),
    Benchmark("startup_100_installed_yaml", "startup", "launch until 100 `sleep` services "
              "run, pytest-supervisor as installed, its config in YAML (every other figure: "
              "in JSON, as the pytest plugin writes it)",
              functools.partial(measure.startup, count=100, installed=True, yaml_config=True),
              False),
    Benchmark("startup_interpreters", "startup", "launch until 100 `sleep` services run, "
              "under a virtualenv's interpreter and the machine's default, warm and cold",
              functools.partial(measure.startup_interpreters, count=100), True),
    Benchmark("idle_100", "idle", "idle with 100 services", functools.partial(
        measure.idle, count=100), True),
    Benchmark("idle_1000", "idle", "idle with 1,000 services", functools.partial(
        measure.idle, count=1000), False),
    Benchmark("shutdown_100", "shutdown", "SIGTERM with 100 services",
              functools.partial(measure.shutdown, count=100), True),
    Benchmark("respawn_leaving_10", "trees", "respawn after SIGKILL of a main process that "
              "leaves 10 children", measure.respawn_leaving_children, True),
    Benchmark("shutdown_100_trees", "trees", "SIGTERM with 100 services of 5 children each",
              functools.partial(measure.shutdown_trees, count=100, children=5), True),
    Benchmark("storm", "storm", "crash storm, 100 services crashing 10 ms after start, "
              "restarted at once", measure.storm, True),
    Benchmark("storm_backoff", "storm", "crash storm with backoff 0.1 s x2 up to 1 s",
              measure.storm_backoff, True),
    Benchmark("self_respawn", "self_respawn", "self-respawn (SIGUSR1 fault injection), "
              "20 services", measure.self_respawn, True),
    Benchmark("control_flood", "control", "respawn while 500 control clients pipeline "
              "requests and never read", measure.control_flood, True),
]


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer trials and services: a smoke run of well under a minute")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only these benchmarks or groups (%s); repeatable or "
                             "comma-separated" % ", ".join(sorted(
                                 {b.group for b in BENCHMARKS} | {b.name for b in BENCHMARKS})))
    parser.add_argument("--peers", action="store_true",
                        help="also measure s6, runit, supervisord, circus and PM2 (installed on "
                             "first use; see benchmarks/README.md)")
    parser.add_argument("--storm-seconds", type=float, default=None, metavar="S",
                        help="length of each crash storm (default 10, --quick 2)")
    parser.add_argument("--supervisor", type=Path, default=REPO_ROOT / "supervisor.py",
                        help="the supervisor.py to measure (default: this checkout's)")
    parser.add_argument("--observer", choices=["auto", "proc-connector", "psutil-polling"],
                        default="auto", help="how processes are watched (default: the proc "
                                             "connector when allowed, else polling)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "reports",
                        help="where bench.json and bench.md go (default: reports/)")
    args = parser.parse_args(argv)
    wanted = {word.strip() for value in args.only for word in value.split(",") if word.strip()}
    known = {b.name for b in BENCHMARKS} | {b.group for b in BENCHMARKS}
    if wanted - known:
        parser.error("unknown benchmark %s (choose from %s)"
                     % (", ".join(sorted(wanted - known)), ", ".join(sorted(known))))
    args.selected = [b for b in BENCHMARKS
                     if (not wanted or b.name in wanted or b.group in wanted)
                     and (b.in_quick or not args.quick)]
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt("signal %d" % signum)


def _subjects(args: argparse.Namespace) -> List[Subject]:
    subjects: List[Subject] = [FloorRespawner(), PytestSupervisor(args.supervisor.resolve())]
    if args.peers:
        subjects += [S6(), Runit(), Supervisord(), Circus(), Pm2()]
    return subjects


def _prepare(subject: Subject) -> str:
    """Install a peer if needed; return the subject's version, or a reason it cannot run."""
    try:
        if isinstance(subject, Peer):
            subject.install()
        return subject.version()
    except Exception as exc:  # noqa: BLE001 - any failure skips only this peer
        raise measure.Skipped("cannot install or run %s: %s" % (subject.name, exc)) from exc


def _measure(bench: measure.Bench, benchmark: Benchmark, group: List[Subject]) -> List[dict]:
    """Run ``benchmark`` for a group of subjects compared side by side; one result each."""
    psutil.cpu_percent(None)  # starts the machine-wide count that the call below reads
    try:
        outcomes = benchmark.run(bench, group)
    except Exception as exc:  # noqa: BLE001 - one broken measurement must not lose the run
        traceback.print_exc()
        outcomes = {s.name: measure.Skipped("error: %s: %s" % (type(exc).__name__, exc))
                    for s in group}
    # Context, not a figure: other work on the machine (other test runs...) shows here.
    busy = psutil.cpu_percent(None)
    results = []
    for subject in group:
        outcome = outcomes[subject.name]
        result: Dict[str, object] = {"benchmark": benchmark.name, "title": benchmark.title,
                                     "subject": subject.name, "figures": {}, "skipped": None}
        if isinstance(outcome, measure.Skipped):
            result["skipped"] = str(outcome)
        else:
            result["figures"] = {name: {"value": f.value, "unit": f.unit}
                                 for name, f in outcome.items()}
            result["machine_cpu_busy_pct"] = busy
        results.append(result)
    return results


def _progress(result: dict) -> str:
    if result["skipped"]:
        return "skipped: " + result["skipped"]
    return ", ".join("%s %s %s" % (name, f["value"], f["unit"])
                     for name, f in result["figures"].items())


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    if not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"):
        print("run.py needs Linux 5.3+ and Python 3.9+ (pidfds, /proc)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    settings = measure.Settings.choose(args.quick, args.storm_seconds)
    started = datetime.datetime.now(datetime.timezone.utc)
    machine = report.machine_info()
    launcher = Launcher("%d-%s" % (os.getpid(), uuid.uuid4().hex[:8]))
    workroot = Path(tempfile.mkdtemp(prefix="supervisor-bench-"))
    observer = open_observer(args.observer)
    results: List[dict] = []
    versions: Dict[str, str] = {}
    try:
        bench = measure.Bench(settings, observer, launcher, workroot)
        unusable: Dict[str, str] = {}
        subjects = _subjects(args)
        for subject in subjects:
            try:
                versions[subject.name] = _prepare(subject)
            except measure.Skipped as exc:
                versions[subject.name] = "unavailable"
                unusable[subject.name] = str(exc)
        # The floor and pytest-supervisor are compared side by side (the targets are ratios
        # of the two); each peer on its own, so that its periodic work disturbs neither.
        usable = [s for s in subjects if s.name not in unusable]
        groups = [usable[:2]] + [[peer] for peer in usable[2:]]
        for benchmark in args.selected:
            for subject in subjects:
                if subject.name in unusable:
                    results.append({"benchmark": benchmark.name, "title": benchmark.title,
                                    "subject": subject.name, "figures": {},
                                    "skipped": unusable[subject.name]})
            for group in groups:
                for result in _measure(bench, benchmark, group):
                    print("%-17s %-18s %s" % (benchmark.name, result["subject"],
                                              _progress(result)), file=sys.stderr, flush=True)
                    results.append(result)
    finally:
        launcher.kill_everything()
        observer.close()
        shutil.rmtree(workroot, ignore_errors=True)
    report.add_ratios(results)
    document = {
        "schema": "pytest-supervisor-bench/1",
        "date": started.isoformat(timespec="seconds"),
        "duration_s": round((datetime.datetime.now(datetime.timezone.utc) - started)
                            .total_seconds(), 1),
        "machine": machine,
        "run_tag": launcher.run_tag,
        "load_average_at_end": list(os.getloadavg()),
        "git": report.git_info(),
        "supervisor_sha256": hashlib.sha256(args.supervisor.read_bytes()).hexdigest(),
        "method": dict(observer.describe(),
                       cpu="sum of /proc/PID/task/*/schedstat run time (ns) of the "
                           "supervisor's own threads",
                       memory="psutil memory_full_info of the supervisor process (RSS, USS)"),
        "options": {"quick": args.quick, "only": [b.name for b in args.selected],
                    "peers": args.peers},
        "settings": vars(settings),
        "subjects": versions,
        "benchmarks": [(b.name, b.title) for b in args.selected],
        "results": results,
    }
    document["targets"] = report.judge_targets(results)
    table = report.markdown(document)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(document, indent=1) + "\n")
    (args.out / "bench.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        print("interrupted; every process the benchmark started has been killed",
              file=sys.stderr)
        sys.exit(130)
