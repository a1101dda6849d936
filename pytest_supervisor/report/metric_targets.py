"""The defined metrics: service-level targets every test's measurements are judged by.

Each target has a documented default (docs/reports.md). A run changes them in its ini
file (``supervisor_metric_targets``); a test changes them with the
``supervisor_metric_targets`` marker, and a scenario with a ``metric_targets`` entry in
its ``user_properties`` (:func:`metric_targets_entry`). Later settings win, and a
target set to ``off`` (None) is not judged.

A target is judged only for tests that measured what it talks about: a test that
never asserted a respawn has no respawn targets. Nothing here needs pytest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Union

from pytest_supervisor.report.metrics import Measurements
from pytest_supervisor.suggest import did_you_mean

# The user_properties entry holding a test's targets (all of them, once resolved).
METRIC_TARGETS = "metric_targets"

# shutdown's default limit: each supervisor's largest stop_timeout (capped by its
# shutdown_timeout), read from the config it ran.
STOP_TIMEOUT = "stop_timeout"
OFF = "off"

Limit = Union[float, str, None]  # a number, STOP_TIMEOUT (shutdown only), or None: off
Targets = Dict[str, Limit]


class TargetError(ValueError):
    """A target name or limit is not valid; the message says where it came from."""


@dataclass(frozen=True)
class Verdict:
    target: str
    passed: bool
    value: float
    limit: float
    unit: str
    detail: str  # "0.012 s <= 0.5 s", naming the supervisor when the limit is its own

    @property
    def outcome(self) -> str:
        return "pass" if self.passed else "FAIL"

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class TargetDefinition:
    name: str
    description: str
    unit: str
    default: Limit
    at_most: bool  # the value must be <= the limit (else >=)
    judge: Judge

    def verdict(self, value: float, limit: float, subject: str = "") -> Verdict:
        passed = value <= limit if self.at_most else value >= limit
        sign = ("<=" if passed else ">") if self.at_most else (">=" if passed else "<")
        prefix = f"{subject}: " if subject else ""
        detail = f"{prefix}{_number(value)} {self.unit} {sign} {_number(limit)} {self.unit}"
        return Verdict(self.name, passed, value, limit, self.unit, detail)


Judge = Callable[[TargetDefinition, Measurements, Limit], Optional[Verdict]]


def _summary_value(name: str) -> Judge:
    """Judge the metric of the same name in ``Measurements.summary()``, if measured."""

    def judge(target: TargetDefinition, measured: Measurements, limit: Limit) -> Verdict | None:
        value = measured.summary().get(name)
        if value is None or not isinstance(limit, (int, float)):
            return None
        return target.verdict(value, float(limit))

    return judge


def _judge_shutdown(
    target: TargetDefinition, measured: Measurements, limit: Limit
) -> Verdict | None:
    """The supervisor that overran its limit most; each has its own default limit."""
    verdicts = []
    for run in measured.runs:
        seconds = run.get("shutdown")
        own_limit = run.get("shutdown_limit") if limit == STOP_TIMEOUT else limit
        if isinstance(seconds, (int, float)) and isinstance(own_limit, (int, float)):
            subject = str(run.get("supervisor"))
            verdicts.append(target.verdict(float(seconds), float(own_limit), subject))
    return max(verdicts, key=lambda verdict: verdict.value - verdict.limit, default=None)


DEFINITIONS: Mapping[str, TargetDefinition] = {
    definition.name: definition
    for definition in (
        TargetDefinition(
            "respawn_overhead_p95",
            "95th percentile of respawn latency (kill to new process) minus the restart"
            " delay the supervisor scheduled",
            "s",
            0.5,
            True,
            _summary_value("respawn_overhead_p95"),
        ),
        TargetDefinition(
            "respawn_success_rate",
            "share of expected respawns (assert_respawned / expect_respawn) that came",
            "%",
            100.0,
            False,
            _summary_value("respawn_success_rate"),
        ),
        TargetDefinition(
            "leaked_processes",
            "processes still running after the supervisor was torn down",
            "processes",
            0.0,
            True,
            _summary_value("leaked_processes"),
        ),
        TargetDefinition(
            "shutdown",
            "seconds from the graceful-stop signal to the supervisor's exit; default: the"
            " largest stop_timeout of its config (capped by shutdown_timeout)",
            "s",
            STOP_TIMEOUT,
            True,
            _judge_shutdown,
        ),
        TargetDefinition(
            "rss_growth_mb",
            "growth of the supervisor's RSS over a resource-sampling run (median of the"
            " last quarter of samples minus median of the first)",
            "MB",
            10.0,
            True,
            _summary_value("rss_growth_mb"),
        ),
    )
}

DEFAULT_TARGETS: Targets = {name: target.default for name, target in DEFINITIONS.items()}


def evaluate(measured: Measurements, targets: Mapping[str, Limit]) -> list[Verdict]:
    """A verdict for each target that is on and that the test measured."""
    verdicts = []
    for name, limit in targets.items():
        if limit is None:
            continue
        definition = DEFINITIONS[name]
        verdict = definition.judge(definition, measured, limit)
        if verdict is not None:
            verdicts.append(verdict)
    return verdicts


def resolve(base: Mapping[str, Limit], *overrides: Mapping[str, Limit]) -> Targets:
    """``base`` with each of ``overrides`` applied in turn (already validated)."""
    resolved = dict(base)
    for override in overrides:
        resolved.update(override)
    return resolved


def validate(targets: Mapping[str, object], origin: str) -> Targets:
    """Check names and limits; raise one ``TargetError`` naming every bad one.

    A limit is a number >= 0, or None / ``"off"`` / False (YAML's ``off``) to turn the
    target off; ``shutdown`` also takes ``"stop_timeout"``.

    ``origin`` says where they were written, for the message.
    """
    problems = []
    valid: Targets = {}
    for name, raw in targets.items():
        try:
            valid[_known(str(name))] = _limit(str(name), raw)
        except TargetError as error:
            problems.append(f"{origin}: {error}")
    if problems:
        raise TargetError("\n".join(problems))
    return valid


def parse_lines(lines: Iterable[str], origin: str) -> Targets:
    """Targets from ini lines ``name = limit``; a limit of ``off`` turns a target off."""
    parsed: dict[str, object] = {}
    problems = []
    for line in lines:
        name, equals, value = line.partition("=")
        if not equals or not name.strip() or not value.strip():
            problems.append(f"{origin}: {line.strip()!r}: expected 'name = limit'")
            continue
        parsed[name.strip()] = value.strip()
    try:
        valid = validate(parsed, origin)
    except TargetError as error:
        problems.append(str(error))
    if problems:
        raise TargetError("\n".join(problems))
    return valid


def metric_targets_entry(targets: Mapping[str, object], origin: str) -> tuple[str, Targets]:
    """The ``user_properties`` entry that sets targets for one test (for scenario runners).

    ``item.user_properties.append(metric_targets_entry({"respawn_overhead_p95": 1.0},
    "scenarios/storm.yaml:12"))``. Raises ``TargetError`` naming ``origin``.
    """
    return METRIC_TARGETS, validate(targets, origin)


def targets_in(properties: Sequence[Sequence[Any]]) -> list[Targets]:
    """The ``metric_targets`` entries of a test's ``user_properties``, in order."""
    return [dict(value) for name, value in properties if name == METRIC_TARGETS]


def _known(name: str) -> str:
    if name in DEFINITIONS:
        return name
    raise TargetError(
        f"unknown metric target {name!r}{did_you_mean(name, DEFINITIONS)};"
        f" known: {', '.join(DEFINITIONS)}"
    )


def _limit(name: str, raw: object) -> Limit:
    if raw is None or raw is False or raw == OFF:  # YAML reads a bare `off` as false
        return None
    if name == "shutdown" and raw == STOP_TIMEOUT:
        return STOP_TIMEOUT
    limit = math.nan
    if isinstance(raw, (int, float, str)) and not isinstance(raw, bool):
        try:
            limit = float(raw)
        except ValueError:
            pass  # reported below, with the other bad values
    if not limit >= 0:  # NaN too
        allowed = f"a number >= 0, '{STOP_TIMEOUT}'" if name == "shutdown" else "a number >= 0"
        raise TargetError(f"{name}: expected {allowed} or {OFF}, got {raw!r}")
    return limit


def _number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
