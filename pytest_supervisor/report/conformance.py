"""The conformance table of a run on several supervisors (``--supervisor-target a,b``):
one row per test or scenario, one column per target, each cell the outcome with its
evidence (a failure's line, a skip's reason) and the respawn latency p50.

Built from the ``report.json`` test entries: an item run once per target carries a
:data:`pytest_supervisor.targets.CONFORMANCE` property naming its row and column.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from pytest_supervisor.targets import CONFORMANCE, NAMES

# A scenario's failure: "... failed at steps[3] (expect_respawn, line 21), iteration 1 of 5"
# then "expected: ..." and "seen: ..." -- the seen line is the evidence.
_FAILED_STEP = re.compile(r" failed at \S+ (\([^)]*\))")


def table(tests: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """``{"targets": [...], "cases": [{"case", "results": {target: cell}}]}``, or None
    when no test ran on several targets."""
    cases: dict[str, dict[str, Any]] = {}
    targets: list[str] = []
    for test in tests:
        place = next((value for name, value in test["properties"] if name == CONFORMANCE), None)
        if not isinstance(place, Mapping):
            continue
        target = str(place["target"])
        if target not in targets:
            targets.append(target)
        cases.setdefault(str(place["case"]), {})[target] = cell(test)
    if not cases:
        return None
    order = {name: index for index, name in enumerate(NAMES)}
    targets.sort(key=lambda name: order.get(name, len(order)))
    return {
        "targets": targets,
        "cases": [{"case": case, "results": cases[case]} for case in sorted(cases)],
    }


def cell(test: Mapping[str, Any]) -> dict[str, Any]:
    """One target's result for one case."""
    outcome = test["outcome"]
    evidence: str | None
    if outcome in ("failed", "error"):
        evidence = evidence_line(test.get("failure") or "")
    elif outcome == "skipped":
        evidence = test.get("skip_reason")
    else:
        evidence = None
    summary = (test.get("metrics") or {}).get("summary") or {}
    return {
        "nodeid": test["nodeid"],
        "outcome": outcome,
        "evidence": evidence,
        "respawn_latency_p50": summary.get("respawn_latency_p50"),
    }


def evidence_line(failure: str) -> str:
    """The line of a failure that says what was seen: a scenario's ``seen:`` line with its
    step (and the first thing it lists), else the first line of the message."""
    lines = [line.strip() for line in failure.splitlines() if line.strip()]
    at = next((index for index, line in enumerate(lines) if line.startswith("seen: ")), None)
    if at is None:
        errors = [line[2:].strip() for line in lines if line.startswith("E ")]
        return (errors or lines or [""])[0]
    step = next((m.group(1) for m in map(_FAILED_STEP.search, lines) if m), None)
    seen = lines[at][len("seen: ") :]
    if seen.endswith(":") and at + 1 < len(lines):  # a list follows: its first entry
        seen = f"{seen} {lines[at + 1]}"
    return f"{step} {seen}" if step else seen
