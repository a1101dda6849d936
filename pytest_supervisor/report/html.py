"""``report.html``: one self-contained page rendered from the ``report.json`` document.

Self-contained means it opens from a CI artifact with no network: styles inline,
plots inline SVG, no scripts, no fonts or images fetched. It shows the summary, the
defined metrics with their pass/fail counts, the plots, a table per phase, the
failures with their supervisor log excerpts, and where and on what the run happened.
"""

from __future__ import annotations

import html
from typing import Any, Callable, Iterable, Mapping, Sequence

from pytest_supervisor.report import plots as report_plots
from pytest_supervisor.report.document import phase_group

OUTCOMES = ("passed", "failed", "error", "skipped", "xfailed", "xpassed")
FAILED_OUTCOMES = ("failed", "error")
_FAILURES = "Failures and missed targets"


def _seconds(value: float) -> str:
    return f"{value * 1000:.1f} ms" if abs(value) < 1 else f"{value:.2f} s"


# The per-phase tables' metric columns: (heading, summary metric, format).
_COLUMNS: Sequence[tuple[str, str, Callable[[float], str]]] = (
    ("respawn p50", "respawn_latency_p50", _seconds),
    ("respawn p95", "respawn_latency_p95", _seconds),
    ("respawn max", "respawn_latency_max", _seconds),
    ("success", "respawn_success_rate", lambda value: f"{value:.0f} %"),
    ("restarts", "restarts", lambda value: f"{value:.0f}"),
    ("launch → running", "launch_to_all_running", _seconds),
    ("shutdown", "shutdown", _seconds),
    ("peak RSS", "peak_rss_mb", lambda value: f"{value:.1f} MB"),
    ("RSS growth", "rss_growth_mb", lambda value: f"{value:+.1f} MB"),
    ("leaks", "leaked_processes", lambda value: f"{value:.0f}"),
)

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 0 1.5em 3em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 13px; }
.wide { overflow-x: auto; } td.test { min-width: 22em; overflow-wrap: anywhere; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.number { text-align: right; white-space: nowrap; }
.passed, .pass { color: #1e7b34; } .failed, .error, .fail { color: #b3261e; font-weight: bold; }
.skipped, .xfailed, .xpassed, .none { color: #777; }
.badge { display: inline-block; padding: 0.2em 0.7em; margin-right: 0.4em;
         border-radius: 1em; background: #f3f3f3; }
pre { background: #f7f7f7; border: 1px solid #e3e3e3; padding: 0.6em; overflow-x: auto;
      white-space: pre-wrap; font-size: 12px; }
figure { margin: 1em 0; } figcaption { font-weight: bold; margin-bottom: 0.3em; }
svg { max-width: 100%; height: auto; }
.note { color: #8a5a00; }
"""


def render(document: Mapping[str, Any], plots: report_plots.SvgPlots | None) -> str:
    """The page for ``document``; without ``plots`` (no matplotlib) it says so instead."""
    tests = document["tests"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>pytest-supervisor report</title>",
        f"<style>{_STYLE}</style></head><body>",
        _header(document),
        _summary(document["summary"]),
        _targets(document),
        _plots(tests, document["targets"], plots),
        *(_phase_table(phase, tests) for phase in document["summary"]["phases"]),
        _failures(tests),
        _collection_errors(document["collection_errors"]),
        _run(document),
        "</body></html>",
    ]
    return "\n".join(part for part in parts if part) + "\n"


# -- sections ---------------------------------------------------------------------------


def _header(document: Mapping[str, Any]) -> str:
    commit, machine = document["commit_info"], document["machine_info"]
    if commit.get("id"):
        state = ", uncommitted changes" if commit.get("dirty") else ""
        branch = f" on {commit['branch']}" if commit.get("branch") else ""
        revision = f"commit <code>{_e(commit['id'][:12])}</code>{_e(branch)}{state}"
    else:
        revision = f"no commit ({_e(commit.get('error', 'unknown'))})"
    return (
        "<header><h1>pytest-supervisor report</h1>"
        f"<p>{_e(document['created'])} · {revision} · {_e(machine.get('node'))}"
        f" · {_e(machine.get('system'))} {_e(machine.get('release'))}"
        f" · Python {_e(machine.get('python_version'))}"
        f" · {_e(_seconds(document['duration']))}</p></header>"
    )


def _summary(summary: Mapping[str, Any]) -> str:
    badges = "".join(
        f'<span class="badge {outcome}">{count} {outcome}</span>'
        for outcome, count in _ordered(summary["outcomes"])
    )
    rows = [
        [
            _e(phase),
            _num(counts["tests"]),
            *(_num(counts["outcomes"].get(outcome, 0)) for outcome in OUTCOMES),
            _num(_seconds(counts["duration"])),
            _num(_targets_met(counts)),
        ]
        for phase, counts in summary["phases"].items()
    ]
    table = _table(["phase", "tests", *OUTCOMES, "duration", "targets met"], rows)
    return (
        f'<section id="summary"><h2>Summary</h2><p>{summary["tests"]} tests: {badges}</p>'
        f"{table}</section>"
    )


def _targets(document: Mapping[str, Any]) -> str:
    counts: dict[str, list[int]] = {name: [0, 0] for name in document["targets"]}
    for test in document["tests"]:
        for verdict in test["targets"]:
            counts[verdict["target"]][0 if verdict["passed"] else 1] += 1
    rows = []
    for name, target in document["targets"].items():
        passed, failed = counts[name]
        rows.append(
            [
                f"<code>{_e(name)}</code>",
                _e(target["description"]),
                _e(_limit(target)),
                _num(passed + failed),
                f'<td class="number pass">{passed}</td>',
                f'<td class="number {"fail" if failed else "none"}">{failed}</td>',
            ]
        )
    return (
        '<section id="targets"><h2>Defined metrics</h2>'
        "<p>Service-level targets, judged for every test that measured what they talk about."
        " Set them in the ini file (<code>supervisor_metric_targets</code>), per test with"
        " <code>@pytest.mark.supervisor_metric_targets</code>, per scenario with"
        " <code>metric_targets</code>.</p>"
        + _table(["target", "meaning", "limit", "tests judged", "met", "missed"], rows)
        + "</section>"
    )


def _plots(
    tests: Sequence[Mapping[str, Any]],
    definitions: Mapping[str, Any],
    plots: report_plots.SvgPlots | None,
) -> str:
    latencies = [
        respawn for test in _measured(tests) for respawn in test["metrics"]["respawns"]["latencies"]
    ]
    sampled = [test for test in _measured(tests) if test["metrics"]["resources"]]
    heading = '<section id="plots"><h2>Plots</h2>'
    if not latencies and not sampled:
        return heading + "<p>No test measured respawns or resources.</p></section>"
    if plots is None:
        return (
            heading + '<p class="note">The plots need matplotlib, which is not installed here:'
            " <code>pip install 'pytest-supervisor[report]'</code>.</p></section>"
        )
    figures = []
    if latencies:
        limit = definitions["respawn_overhead_p95"]["run"]
        svg = plots.respawn_latencies(
            [respawn["seconds"] for respawn in latencies],
            [respawn["seconds"] - respawn["scheduled_delay"] for respawn in latencies],
            limit if isinstance(limit, (int, float)) else None,
        )
        figures.append(_figure("respawn-latency", "Respawn latency, all tests", svg))
    for index, test in enumerate(sampled):
        svg = plots.resources(test["metrics"]["resources"])
        figures.append(_figure(f"resources-{index + 1}", f"RSS and CPU: {test['nodeid']}", svg))
    return heading + "".join(figures) + "</section>"


def _phase_table(phase: str, tests: Sequence[Mapping[str, Any]]) -> str:
    in_phase = [test for test in tests if phase_group(test) == phase]
    summaries = [test["metrics"]["summary"] if test["metrics"] else {} for test in in_phase]
    # Only the metrics some test of this phase measured: unit tests measure none.
    columns = [column for column in _COLUMNS if any(column[1] in summary for summary in summaries)]
    rows = [
        [
            f'<td class="test"><code>{_e(test["nodeid"])}</code></td>',
            f'<td class="{_e(test["outcome"])}">{_e(test["outcome"])}</td>',
            _num(_seconds(test["duration"])),
            *(_num(show(summary[name]) if name in summary else "") for _, name, show in columns),
            _verdicts_cell(test["targets"]),
        ]
        for test, summary in zip(in_phase, summaries)
    ]
    headings = ["test", "outcome", "duration", *(heading for heading, _, _ in columns), "targets"]
    return (
        f'<section id="phase-{_e(phase.replace(" ", "-"))}"><h2>Phase: {_e(phase)}</h2>'
        f"{_table(headings, rows)}</section>"
    )


def _failures(tests: Sequence[Mapping[str, Any]]) -> str:
    failed = [
        test
        for test in tests
        if test["outcome"] in FAILED_OUTCOMES or any(not v["passed"] for v in test["targets"])
    ]
    if not failed:
        return f'<section id="failures"><h2>{_FAILURES}</h2><p>None.</p></section>'
    articles = []
    for test in failed:
        missed = [verdict for verdict in test["targets"] if not verdict["passed"]]
        parts = [
            f"<article><h3><code>{_e(test['nodeid'])}</code>"
            f' <span class="{_e(test["outcome"])}">{_e(test["outcome"])}</span></h3>'
        ]
        if missed:
            items = "".join(
                f"<li><code>{_e(v['target'])}</code>: {_e(v['detail'])}</li>" for v in missed
            )
            parts.append(f'<p class="fail">Targets missed:</p><ul>{items}</ul>')
        if test["failure"]:
            parts.append(f"<pre>{_e(test['failure'])}</pre>")
        for excerpt in test["log_excerpts"]:
            parts.append(
                f"<h4>Log of supervisor {_e(excerpt['supervisor'])}"
                f" (<code>{_e(excerpt['log'])}</code>), last lines</h4>"
                f"<pre>{_e(chr(10).join(excerpt['lines']))}</pre>"
            )
        articles.append("".join(parts) + "</article>")
    return f'<section id="failures"><h2>{_FAILURES}</h2>{"".join(articles)}</section>'


def _collection_errors(errors: Sequence[Mapping[str, str]]) -> str:
    if not errors:
        return ""
    items = "".join(
        f"<h3><code>{_e(error['nodeid'])}</code></h3><pre>{_e(error['failure'])}</pre>"
        for error in errors
    )
    return f'<section id="collection-errors"><h2>Collection errors</h2>{items}</section>'


def _run(document: Mapping[str, Any]) -> str:
    machine = _table(["machine", ""], _pairs(document["machine_info"]))
    commit = _table(["commit", ""], _pairs(document["commit_info"]))
    workers = ""
    if document["workers"]:
        rows = [
            [
                _e(worker.get("id")),
                _e(worker.get("machine_info", {}).get("node")),
                _e(worker.get("error") or ""),
            ]
            for worker in document["workers"]
        ]
        workers = "<h3>pytest-xdist workers</h3>" + _table(["worker", "node", "error"], rows)
    args = _e(" ".join(document["invocation"]["args"]))
    return (
        f'<section id="run"><h2>Run</h2><p>pytest {args} (exit status'
        f" {document['exit_status']}); report schema {document['schema_version']}</p>"
        f"{machine}{commit}{workers}</section>"
    )


# -- pieces --------------------------------------------------------------------------------


def _table(headings: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    head = "".join(f"<th>{_e(heading)}</th>" for heading in headings)
    body = "".join(
        "<tr>"
        + "".join(cell if cell.startswith("<td") else f"<td>{cell}</td>" for cell in row)
        + "</tr>"
        for row in rows
    )
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="wide">{table}</div>'


def _figure(anchor: str, caption: str, svg: str) -> str:
    return f'<figure id="{anchor}"><figcaption>{_e(caption)}</figcaption>{svg}</figure>'


def _verdicts_cell(verdicts: Sequence[Mapping[str, Any]]) -> str:
    if not verdicts:
        return '<td class="none">-</td>'
    missed = [verdict for verdict in verdicts if not verdict["passed"]]
    details = "; ".join(f"{v['target']}: {v['detail']}" for v in verdicts)
    text = f"{len(missed)} missed" if missed else f"all {len(verdicts)} met"
    return f'<td class="{"fail" if missed else "pass"}" title="{_e(details)}">{text}</td>'


def _measured(tests: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [test for test in tests if test["metrics"]]


def _targets_met(counts: Mapping[str, Any]) -> str:
    judged = counts["targets_judged"]
    return f"{judged - counts['targets_failed']} / {judged}" if judged else "-"


def _limit(target: Mapping[str, Any]) -> str:
    limit = target["run"]
    if limit is None:
        return "off"
    if limit == "stop_timeout":
        return f"{target['comparison']} each supervisor's largest stop_timeout"
    return f"{target['comparison']} {limit:g} {target['unit']}"


def _ordered(outcomes: Mapping[str, int]) -> list[tuple[str, int]]:
    return sorted(outcomes.items(), key=lambda item: OUTCOMES.index(item[0]))


def _pairs(mapping: Mapping[str, Any]) -> list[list[str]]:
    return [[_e(key), _e(value)] for key, value in mapping.items()]


def _num(text: object) -> str:
    return f'<td class="number">{_e(text)}</td>'


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))
