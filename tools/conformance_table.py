"""The conformance table of a report.json as Markdown (README's form), with the date and
machine of the run. Exits 1 when a test failed on our own supervisor: a peer failing a
scenario is a finding, ours failing one is a bug.

    python tools/conformance_table.py reports/report.json
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Mapping

EVIDENCE_LIMIT = 110  # characters of a failure's evidence or a skip's reason


def main(path: str) -> int:
    document = json.loads(Path(path).read_text("utf-8"))
    table = document.get("conformance")
    if not table:
        print(f"{path}: no conformance table (run with --supervisor-target A,B,...)")
        return 1
    machine = document["machine_info"]
    print(
        f"{document['created']}, {machine['system']} {machine['release']},"
        f" {machine['cpu_count']} cores, {machine['memory_total_mb'] / 1024:.1f} GB,"
        f" Python {machine['python_version']}; `pytest {' '.join(document['invocation']['args'])}`"
    )
    print()
    targets = table["targets"]
    print("| scenario | " + " | ".join(targets) + " |")
    print("|---" * (len(targets) + 1) + "|")
    ours_failed = []
    for case in table["cases"]:
        cells = [_cell(target, case["results"].get(target)) for target in targets]
        print(f"| {_short(case['case'])} | " + " | ".join(cells) + " |")
        ours = case["results"].get("ours")
        if ours is not None and ours["outcome"] in ("failed", "error"):
            ours_failed.append(ours["nodeid"])
    if ours_failed:
        print(f"\nfailed on ours: {', '.join(ours_failed)}", file=sys.stderr)
        return 1
    return 0


def _short(case: str) -> str:
    """scenarios/integration/x.yaml::x[m] -> integration/x[m]"""
    path, _, name = case.partition("::")
    path = re.sub(r"^scenarios/", "", path)
    path = re.sub(r"\.yaml$", "", path)
    stem = path.rsplit("/", 1)[-1]
    return f"`{path}{name[len(stem) :] if name.startswith(stem) else '::' + name}`"


def _cell(target: str, result: Mapping[str, Any] | None) -> str:
    if result is None:
        return "not run"
    outcome = result["outcome"]
    text = {"passed": "pass", "failed": "**FAIL**", "error": "**ERROR**"}.get(outcome, outcome)
    if result["respawn_latency_p50"] is not None:
        text += f" · p50 {_seconds(result['respawn_latency_p50'])}"
    evidence = result["evidence"]
    if evidence and outcome == "skipped":  # "s6 has no retry limit" -> "has no retry limit"
        evidence = evidence[len(target) + 1 :] if evidence.startswith(target + " ") else evidence
        evidence = evidence.replace("is watched from outside, and ", "seen from outside: ", 1)
    if evidence:
        if len(evidence) > EVIDENCE_LIMIT:
            evidence = evidence[: EVIDENCE_LIMIT - 1] + "…"
        text += ": " + evidence.replace("|", "\\|")
    return text


def _seconds(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2] or ["reports/report.json"]))
