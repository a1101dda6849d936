"""Smoke test of the benchmark: it runs, cleans up and writes a well-formed report.

No timing is asserted: speed is what the benchmark reports, not what a test can judge on a
shared machine. Run it with ``python -m pytest benchmarks/test_bench_smoke.py``.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parent / "run.py"


def _tagged_processes(tag_prefix: str) -> list:
    needle = ("SUPERVISOR_BENCH_TAG=" + tag_prefix).encode()
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open("/proc/%s/environ" % entry, "rb") as environ:
                if needle in environ.read():
                    found.append(entry)
        except OSError:
            continue
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"),
                    reason="the benchmark needs Linux pidfds")
def test_quick_respawn_run_writes_every_field(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(RUN), "--quick", "--only", "respawn",
                           "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]

    report = json.loads((tmp_path / "bench.json").read_text())
    for key in ("date", "machine", "git", "method", "subjects", "results", "targets"):
        assert key in report
    assert report["method"]["observer"] in ("proc-connector", "psutil-polling")
    assert set(report["subjects"]) == {"floor", "pytest-supervisor"}
    measured = {(r["benchmark"], r["subject"]): r for r in report["results"]}
    for benchmark in ("respawn_sleep", "respawn_python", "respawn_10_of_20"):
        for subject in ("floor", "pytest-supervisor"):
            result = measured[(benchmark, subject)]
            assert result["skipped"] is None, result["skipped"]
            for figure in ("p50", "p95", "max"):
                assert result["figures"][figure]["unit"] == "ms"
                assert result["figures"][figure]["value"] > 0
        assert "ratio_to_floor" in measured[(benchmark, "pytest-supervisor")]["figures"]["p50"]
    assert "| benchmark | figure | floor | pytest-supervisor |" in (
        tmp_path / "bench.md").read_text()
    assert not _tagged_processes(report["run_tag"]), "the benchmark left processes behind"


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"),
                    reason="the benchmark needs Linux pidfds")
def test_quick_trees_run_sees_what_a_killed_main_process_leaves(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(RUN), "--quick", "--only", "trees",
                           "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]

    report = json.loads((tmp_path / "bench.json").read_text())
    measured = {(r["benchmark"], r["subject"]): r for r in report["results"]}
    for key in measured:
        assert measured[key]["skipped"] is None, (key, measured[key]["skipped"])
    respawn = {subject: measured[("respawn_leaving_10", subject)]["figures"]
               for subject in ("floor", "pytest-supervisor")}
    for figures in respawn.values():
        assert figures["p50"]["unit"] == "ms" and figures["p50"]["value"] > 0
    # The floor restarts at once and stops nothing: the measurement sees what is left...
    assert respawn["floor"]["leftovers_max"]["value"] == 10
    # ...and pytest-supervisor stops all of it before the replacement starts.
    assert respawn["pytest-supervisor"]["leftovers_total"]["value"] == 0
    shutdown = measured[("shutdown_100_trees", "pytest-supervisor")]["figures"]
    assert shutdown["processes"]["value"] == 600
    assert shutdown["all_gone"]["unit"] == "ms" and shutdown["all_gone"]["value"] > 0
    assert shutdown["outlived_supervisor"]["value"] == 0
    assert shutdown["left_behind"]["value"] == 0
    assert not _tagged_processes(report["run_tag"]), "the benchmark left processes behind"
