"""Turning results into ``reports/bench.json`` and a markdown table, and judging the targets.

A result is a dict: ``benchmark``, ``title``, ``subject``, ``figures`` ({name: {value, unit}}),
``skipped`` (the reason, or None). Every figure of a subject other than the floor gets
``ratio_to_floor``: its value divided by the floor's value for the same figure in this run.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from typing import Callable, Dict, List, Optional, Tuple

import psutil

from bench_subjects import REPO_ROOT

FLOOR = "floor"
# Figures that describe the measurement rather than measure the subject: no ratio.
CONTEXT_FIGURES = {"over", "trials"}


def add_ratios(results: List[dict]) -> None:
    floor = {r["benchmark"]: r["figures"] for r in results
             if r["subject"] == FLOOR and not r["skipped"]}
    for result in results:
        reference = floor.get(result["benchmark"], {})
        if result["subject"] == FLOOR:
            continue
        for name, figure in result["figures"].items():
            base = reference.get(name)
            if (base and figure["unit"] != "count" and name not in CONTEXT_FIGURES
                    and base["value"] > 0):
                figure["ratio_to_floor"] = round(figure["value"] / base["value"], 2)


# --------------------------------------------------------------------------- targets

def _figure(results: List[dict], benchmark: str, name: str) -> Optional[dict]:
    for result in results:
        if (result["benchmark"] == benchmark and result["subject"] == "pytest-supervisor"
                and not result["skipped"]):
            return result["figures"].get(name)
    return None


def _ratio_target(benchmark: str, figure: str, limit: float) -> Callable[[List[dict]], Tuple]:
    def judge(results: List[dict]) -> Tuple[Optional[str], Optional[bool]]:
        found = _figure(results, benchmark, figure)
        if found is None or "ratio_to_floor" not in found:
            return None, None
        return ("%s %s = %.2fx the floor" % (_number(found["value"]), found["unit"],
                                            found["ratio_to_floor"]),
                found["ratio_to_floor"] <= limit)
    return judge


def _limit_target(benchmark: str, figure: str, limit: float, per_10s: bool = False
                  ) -> Callable[[List[dict]], Tuple]:
    def judge(results: List[dict]) -> Tuple[Optional[str], Optional[bool]]:
        found = _figure(results, benchmark, figure)
        if found is None:
            return None, None
        allowed = limit
        text = "%s %s" % (_number(found["value"]), found["unit"])
        if per_10s:  # a shorter idle window (--quick) gets a proportional allowance
            over = _figure(results, benchmark, "over")
            assert over is not None
            allowed = limit * over["value"] / 10
            text += " over %s s" % _number(over["value"])
        return text, found["value"] < allowed
    return judge


def _subject_figure(results: List[dict], benchmark: str, subject: str, name: str
                    ) -> Optional[dict]:
    for result in results:
        if (result["benchmark"] == benchmark and result["subject"] == subject
                and not result["skipped"]):
            return result["figures"].get(name)
    return None


def _floor_plus_target(benchmark: str, figure: str, extra: float
                       ) -> Callable[[List[dict]], Tuple]:
    """Within ``extra`` (the figure's unit) of the floor's figure."""
    def judge(results: List[dict]) -> Tuple[Optional[str], Optional[bool]]:
        ours = _figure(results, benchmark, figure)
        floor = _subject_figure(results, benchmark, FLOOR, figure)
        if ours is None or floor is None:
            return None, None
        return ("%s %s, the floor %s" % (_number(ours["value"]), ours["unit"],
                                        _number(floor["value"])),
                ours["value"] <= floor["value"] + extra)
    return judge


def _faster_than(benchmark: str, figure: str, peer: str) -> Callable[[List[dict]], Tuple]:
    def judge(results: List[dict]) -> Tuple[Optional[str], Optional[bool]]:
        ours = _figure(results, benchmark, figure)
        theirs = _subject_figure(results, benchmark, peer, figure)
        if ours is None or theirs is None:
            return None, None
        return ("%s %s, %s %s" % (_number(ours["value"]), ours["unit"], peer,
                                  _number(theirs["value"])), ours["value"] < theirs["value"])
    return judge


# The speed targets of issues 2, 14 and 16, judged on pytest-supervisor's figures.
TARGETS = [
    ("respawn after SIGKILL, 1 sleep service: p50 within 1.5x of the floor",
     _ratio_target("respawn_sleep", "p50", 1.5)),
    ("10 of 20 killed at once, all back: p50 within 1.5x of the floor",
     _ratio_target("respawn_10_of_20", "p50", 1.5)),
    ("500 sleep services all running within 1 s (median)",
     _limit_target("startup_500", "median", 1.0)),
    ("idle with 100 services: under 0.02 s of CPU over 10 s",
     _limit_target("idle_100", "cpu", 0.02, per_10s=True)),
    ("idle with 100 services: RSS under 25 MB", _limit_target("idle_100", "rss", 25.0)),
    ("SIGTERM with 100 services: all gone within 150 ms (median)",
     _limit_target("shutdown_100", "all_gone", 150.0)),
    # issue 14: clients that flood the control socket cost the services nothing
    ("500 control clients that never read: respawn p99 under 5 ms",
     _limit_target("control_flood", "flood_p99", 5.0)),
    ("500 control clients that never read: RSS within 10 MB of idle",
     _limit_target("control_flood", "rss_growth", 10.0)),
    # issue 16: within a hair of the floor, ahead of s6
    ("issue 16: 100 services running within 1.3x of the floor",
     _ratio_target("startup_100", "median", 1.3)),
    ("issue 16: 100 services running faster than s6", _faster_than("startup_100", "median", "s6")),
    ("issue 16: 100 services running within 1.3x of the floor, as installed "
     "(python -m supervisor)", _ratio_target("startup_100_installed", "median", 1.3)),
    ("issue 16: 100 services running faster than s6, as installed",
     _faster_than("startup_100_installed", "median", "s6")),
    ("issue 16: 500 services running within 1.3x of the floor",
     _ratio_target("startup_500", "median", 1.3)),
    ("issue 16: 1,000 services running within 1.3x of the floor",
     _ratio_target("startup_1000", "median", 1.3)),
    ("issue 16: respawn of 1 service, p50 within 1.25x of the floor",
     _ratio_target("respawn_sleep", "p50", 1.25)),
    ("issue 16: 10 of 20 killed, p50 within 1.2x of the floor",
     _ratio_target("respawn_10_of_20", "p50", 1.2)),
    ("issue 16: 10 of 20 killed, p95 within 1.5x of the floor's p95",
     _ratio_target("respawn_10_of_20", "p95", 1.5)),
    ("issue 16: idle with 100 services, no CPU over 10 s",
     _limit_target("idle_100", "cpu", 0.001, per_10s=True)),
    ("issue 16: idle with 100 services, PSS within 4 MB of the floor",
     _floor_plus_target("idle_100", "pss", 4.0)),
    ("issue 16: idle with 1,000 services, PSS within 8 MB of the floor",
     _floor_plus_target("idle_1000", "pss", 8.0)),
    ("issue 16: SIGTERM with 100 services, all gone within 1.5x of the floor",
     _ratio_target("shutdown_100", "all_gone", 1.5)),
]


def judge_targets(results: List[dict]) -> List[dict]:
    judged = []
    for target, judge in TARGETS:
        measured, met = judge(results)
        if measured is not None:
            judged.append({"target": target, "measured": measured, "met": met})
    return judged


# --------------------------------------------------------------------------- context

def _git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=str(REPO_ROOT), capture_output=True, text=True,
                         check=False)
    return out.stdout.strip()


def machine_info() -> Dict[str, object]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"system": platform.system(), "kernel": platform.release(), "cpu": cpu,
            "cores": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": sys.version.split()[0], "load_average": list(os.getloadavg())}


def git_info() -> Dict[str, object]:
    return {"commit": _git("rev-parse", "HEAD"),
            # others may be editing: say which measured files differ from the commit
            "modified": _git("status", "--porcelain", "--", "supervisor.py").splitlines()}


# --------------------------------------------------------------------------- markdown

def _number(value: float) -> str:
    if isinstance(value, int) or (float(value).is_integer() and abs(value) >= 100):
        return "{:,}".format(int(value))
    if abs(value) >= 100:
        return "{:,.0f}".format(value)
    if abs(value) >= 10:
        return "{:.1f}".format(value)
    return "{:.3g}".format(value) if abs(value) < 1 else "{:.2f}".format(value)


def _cell(figure: dict) -> str:
    text = _number(figure["value"])
    if figure["unit"] != "count":
        text += " " + figure["unit"]
    if "ratio_to_floor" in figure:
        text += " (%sx)" % _number(figure["ratio_to_floor"])
    return text


def markdown(report: dict) -> str:
    subjects = list(report["subjects"])
    machine, git = report["machine"], report["git"]
    lines = ["## Benchmark: %s" % report["date"], "",
             "%s, %s cores, %s GB, %s %s, Python %s; load average at start %.2f. "
             "Commit %s%s." % (machine["cpu"], machine["cores"], machine["memory_gb"],
                               machine["system"], machine["kernel"], machine["python"],
                               machine["load_average"][0], str(git["commit"])[:10],
                               " with supervisor.py modified" if git["modified"] else ""),
             "Observer: %s (%s)." % (report["method"]["observer"], report["method"]["how"]),
             "Ratios in parentheses: the figure divided by the floor's in this run. "
             "*machine busy*: CPU use of the whole machine while a figure was taken (all "
             "processes, other work on the machine included).", "",
             "| benchmark | figure | " + " | ".join(subjects) + " |",
             "|---|---|" + "---|" * len(subjects)]
    notes: List[str] = []
    by_key = {(r["benchmark"], r["subject"]): r for r in report["results"]}
    for benchmark, title in report["benchmarks"]:
        rows: List[str] = []
        for subject in subjects:
            result = by_key.get((benchmark, subject))
            for name in (result or {}).get("figures", {}):
                if name not in rows:
                    rows.append(name)
        skipped_cells = {}
        for subject in subjects:
            result = by_key.get((benchmark, subject))
            if result and result["skipped"]:
                notes.append("%s, %s: %s" % (benchmark, subject, result["skipped"]))
                skipped_cells[subject] = "skipped [%d]" % len(notes)
        for index, name in enumerate(rows or ["-"]):
            cells = []
            for subject in subjects:
                result = by_key.get((benchmark, subject))
                if subject in skipped_cells:
                    cells.append(skipped_cells[subject] if index == 0 else "")
                elif result and name in result["figures"]:
                    cells.append(_cell(result["figures"][name]))
                else:
                    cells.append("")
            lines.append("| %s | %s | %s |" % (title if index == 0 else "", name,
                                                " | ".join(cells)))
        # Context: the whole machine's CPU use meanwhile, other people's work included.
        busy = [None if subject in skipped_cells else
                by_key.get((benchmark, subject), {}).get("machine_cpu_busy_pct")
                for subject in subjects]
        if rows and any(b is not None for b in busy):
            lines.append("|  | *machine busy* | %s |" % " | ".join(
                "" if b is None else "%.0f%%" % b for b in busy))
    lines += [""] + ["[%d] %s" % (i + 1, note) for i, note in enumerate(notes)]
    if report["targets"]:
        lines += ["", "### Targets (issues 2, 14, 16), pytest-supervisor", "",
                  "| target | measured | met |", "|---|---|---|"]
        for target in report["targets"]:
            lines.append("| %s | %s | %s |" % (target["target"], target["measured"],
                                               "yes" if target["met"] else "**no**"))
    return "\n".join(lines) + "\n"
