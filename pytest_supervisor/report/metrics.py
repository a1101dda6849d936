"""The numbers a test measured, computed from what the harness recorded.

``SupervisorHandle`` records plain data with ``record(name, value)``; the pytest plugin
keeps each record in the test's ``user_properties``, which travel with the test's
reports (through pytest-xdist too) and land in JUnit XML. This module turns those
records into one :class:`Measurements` per test; :mod:`pytest_supervisor.report.metric_targets`
judges them. Nothing here needs pytest.

The records (name: value), all plain JSON-able data:

- ``kill``: ``{supervisor, service, pid, signal}`` -- the test sent a signal to a service.
- ``respawn_latency``: ``{supervisor, service, seconds, cause, scheduled_delay}`` --
  ``assert_respawned`` saw the new process ``seconds`` after the kill (or exit); the
  supervisor had scheduled the restart ``scheduled_delay`` seconds after the exit.
- ``respawn_missed``: ``{supervisor, service, cause, outcome}`` -- ``assert_respawned``
  saw no new process (``outcome``: "given up" or "not respawned").
- ``resource_samples``: ``{supervisor, interval, samples: [...]}`` -- see
  :class:`pytest_supervisor.resources.ResourceSample` for the fields of a sample.
- ``supervisor_run``: made by :func:`supervisor_run` when a handle is closed.
- ``leaked_processes``: ``{supervisor, processes: [description, ...]}`` -- found at teardown.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

KILL = "kill"
RESPAWN_LATENCY = "respawn_latency"
RESPAWN_MISSED = "respawn_missed"
RESOURCE_SAMPLES = "resource_samples"
SUPERVISOR_RUN = "supervisor_run"
LEAKED_PROCESSES = "leaked_processes"

# The supervisor's own defaults (SPEC section 3), for configs that leave them out.
DEFAULT_STOP_TIMEOUT = 10.0
DEFAULT_SHUTDOWN_TIMEOUT = 30.0

# The fields of a resource sample the reports read (ResourceSample has them all).
SAMPLE_COLUMNS = ("elapsed", "rss_mb", "cpu_percent", "tree_rss_mb", "tree_cpu_percent")

# RSS growth compares the first and the last quarter of a series; fewer samples than
# this leave a quarter empty.
MIN_SAMPLES_FOR_GROWTH = 4


class MetricsDataError(ValueError):
    """A record does not have the shape this module reads (see the module docstring)."""


# -- at teardown: one supervisor's run, from its events ---------------------------------


@dataclass(frozen=True)
class ConfigFacts:
    """What the reports need from a supervisor config that its events do not say."""

    # service name -> whether it has a readiness probe (so "running" means `ready`)
    autostart: Mapping[str, bool]
    # How long a shutdown may take: the largest stop_timeout, capped by shutdown_timeout.
    shutdown_limit: float


def read_config_facts(path: Path) -> ConfigFacts | None:
    """The autostarted services and shutdown limit of a config file; None if unreadable.

    A config the supervisor itself rejects (tests of config validation spawn those)
    has no facts: its metrics are simply absent.
    """
    try:
        document = yaml.safe_load(Path(path).read_text("utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if not isinstance(document, dict) or not isinstance(document.get("services"), dict):
        return None
    defaults, supervisor = _mapping(document.get("defaults")), _mapping(document.get("supervisor"))
    autostart: dict[str, bool] = {}
    stop_timeouts = []
    for name, service in document["services"].items():
        merged = {**defaults, **_mapping(service)}
        if merged.get("autostart", True):
            autostart[str(name)] = merged.get("ready") is not None
        stop_timeouts.append(_seconds(merged.get("stop_timeout"), DEFAULT_STOP_TIMEOUT))
    shutdown_timeout = _seconds(supervisor.get("shutdown_timeout"), DEFAULT_SHUTDOWN_TIMEOUT)
    return ConfigFacts(autostart, min(max(stop_timeouts, default=0.0), shutdown_timeout))


def supervisor_run(
    name: str,
    events: Sequence[Mapping[str, Any]],
    *,
    launched: float,
    stop_requested: float | None,
    config_path: Path,
    log_path: Path,
) -> dict[str, object]:
    """The ``supervisor_run`` record of a closed handle.

    ``launched`` and ``stop_requested`` are the test process's ``time.monotonic()`` at
    the launch and at the first graceful-stop signal; events carry the same clock.
    """
    facts = read_config_facts(config_path)
    return {
        "supervisor": name,
        "log": str(log_path),
        "events": len(events),
        "launch_to_all_running": _launch_to_all_running(events, launched, facts),
        "shutdown": _shutdown(events, stop_requested),
        "shutdown_limit": facts.shutdown_limit if facts else None,
        "restarts": restarts_per_service(events),
        "self_respawns": sum(1 for event in events if event.get("event") == "self_respawn"),
    }


def restarts_per_service(events: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Restarts the supervisor made by policy: ``spawned`` events after the first attempt.

    A start asked for by a person (or the first start) has ``attempt`` 1 and is not one.
    """
    restarts: dict[str, int] = {}
    for event in events:
        service = event.get("service")
        if event.get("event") == "spawned" and isinstance(service, str):
            restarts.setdefault(service, 0)
            attempt = event.get("attempt")
            if isinstance(attempt, int) and attempt > 1:
                restarts[service] += 1
    return restarts


def _launch_to_all_running(
    events: Sequence[Mapping[str, Any]], launched: float, facts: ConfigFacts | None
) -> float | None:
    """Seconds from the launch until the last autostarted service first ran.

    A service with a readiness probe runs at its ``ready`` event, any other at its
    ``spawned`` event (the supervisor emits ``ready`` only for probed services).
    None when a service never ran or the config is unknown.
    """
    if facts is None or not facts.autostart:
        return None
    running_at: dict[str, float] = {}
    for event in events:
        service, mono = event.get("service"), _mono(event)
        if not isinstance(service, str) or mono is None:
            continue
        if service not in facts.autostart or service in running_at:
            continue
        if event.get("event") == ("ready" if facts.autostart[service] else "spawned"):
            running_at[service] = mono
    if len(running_at) < len(facts.autostart):
        return None
    return max(running_at.values()) - launched


def _shutdown(events: Sequence[Mapping[str, Any]], stop_requested: float | None) -> float | None:
    """Seconds from the graceful-stop signal to ``supervisor_exiting``; None if no such pair."""
    if stop_requested is None:
        return None
    for event in reversed(events):
        mono = _mono(event)
        if event.get("event") == "supervisor_exiting" and mono is not None:
            return mono - stop_requested if mono >= stop_requested else None
    return None


def _mono(event: Mapping[str, Any]) -> float | None:
    mono = event.get("mono")
    return float(mono) if isinstance(mono, (int, float)) else None


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _seconds(value: object, default: float) -> float:
    # The supervisor validates the config; here a bad value just means "the default".
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return default


# -- per test: everything recorded, summarized --------------------------------------------


def percentile(values: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile: the smallest value with ``percent`` % of values at or below it."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Respawn:
    supervisor: str
    service: str
    seconds: float
    scheduled_delay: float

    @property
    def overhead(self) -> float:
        """The part of the latency the supervisor added to the delay it was configured with."""
        return self.seconds - self.scheduled_delay


@dataclass(frozen=True)
class ResourceSeries:
    supervisor: str
    interval: float
    samples: tuple[Mapping[str, float], ...]

    def column(self, name: str) -> list[float]:
        return [float(sample[name]) for sample in self.samples]

    def peak(self, name: str) -> float | None:
        return max(self.column(name), default=None)

    @property
    def rss_growth_mb(self) -> float | None:
        """How much the supervisor's own RSS grew over the series, robust to noise.

        The median of the last quarter of the samples minus that of the first quarter:
        a leak shows as steady growth, a single spike does not.
        """
        rss = self.column("rss_mb")
        if len(rss) < MIN_SAMPLES_FOR_GROWTH:
            return None
        quarter = len(rss) // 4
        return statistics.median(rss[-quarter:]) - statistics.median(rss[:quarter])


@dataclass(frozen=True)
class Measurements:
    """Everything one test measured, across every supervisor it spawned."""

    kills_sent: int = 0
    respawns: tuple[Respawn, ...] = ()
    respawns_missed: int = 0
    runs: tuple[Mapping[str, Any], ...] = ()  # the supervisor_run records
    resources: tuple[ResourceSeries, ...] = ()
    leaks: tuple[Mapping[str, Any], ...] = ()  # the leaked_processes records

    @classmethod
    def from_properties(cls, properties: Iterable[Sequence[Any]]) -> Measurements:
        """Read a test's ``user_properties`` (pairs; xdist may turn them into lists).

        Properties of other names (the test's own ``record_property`` calls) are not metrics.
        """
        kills = missed = 0
        respawns, runs, resources, leaks = [], [], [], []
        for name, value in properties:
            if name == KILL:
                kills += 1
            elif name == RESPAWN_LATENCY:
                respawns.append(_respawn(value))
            elif name == RESPAWN_MISSED:
                missed += 1
            elif name == RESOURCE_SAMPLES:
                resources.append(_series(value))
            elif name == SUPERVISOR_RUN:
                runs.append(_record(name, value))
            elif name == LEAKED_PROCESSES:
                leaks.append(_record(name, value))
        return cls(kills, tuple(respawns), missed, tuple(runs), tuple(resources), tuple(leaks))

    @property
    def measured_anything(self) -> bool:
        return bool(
            self.kills_sent
            or self.respawns
            or self.respawns_missed
            or self.runs
            or self.resources
            or self.leaks
        )

    @property
    def respawn_latencies(self) -> list[float]:
        return [respawn.seconds for respawn in self.respawns]

    @property
    def respawn_overheads(self) -> list[float]:
        return [respawn.overhead for respawn in self.respawns]

    @property
    def respawn_success_rate(self) -> float | None:
        """Percent of expected respawns (``assert_respawned`` calls) that came; None: none."""
        expected = len(self.respawns) + self.respawns_missed
        return 100.0 * len(self.respawns) / expected if expected else None

    @property
    def leaked_processes(self) -> int | None:
        """Processes left behind at teardown; None when no supervisor was torn down."""
        if not self.runs and not self.leaks:
            return None
        return sum(len(leak.get("processes", ())) for leak in self.leaks)

    def summary(self) -> dict[str, float]:
        """The headline numbers, flat (JUnit properties, report tables); absent if unmeasured."""
        numbers: dict[str, float | None] = {}
        if self.kills_sent:
            numbers["kills_sent"] = self.kills_sent
        latencies, overheads = self.respawn_latencies, self.respawn_overheads
        if latencies:
            numbers["respawn_latency_p50"] = percentile(latencies, 50)
            numbers["respawn_latency_p95"] = percentile(latencies, 95)
            numbers["respawn_latency_max"] = max(latencies)
            numbers["respawn_overhead_p95"] = percentile(overheads, 95)
        numbers["respawn_success_rate"] = self.respawn_success_rate
        if self.runs:
            numbers["restarts"] = sum(sum(run.get("restarts", {}).values()) for run in self.runs)
            numbers["launch_to_all_running"] = _largest(
                run.get("launch_to_all_running") for run in self.runs
            )
            numbers["shutdown"] = _largest(run.get("shutdown") for run in self.runs)
            numbers["self_respawns"] = sum(run.get("self_respawns", 0) for run in self.runs)
        numbers["peak_rss_mb"] = _largest(series.peak("rss_mb") for series in self.resources)
        numbers["peak_cpu_percent"] = _largest(
            series.peak("cpu_percent") for series in self.resources
        )
        numbers["peak_tree_rss_mb"] = _largest(
            series.peak("tree_rss_mb") for series in self.resources
        )
        numbers["rss_growth_mb"] = _largest(series.rss_growth_mb for series in self.resources)
        numbers["leaked_processes"] = self.leaked_processes
        return {name: value for name, value in numbers.items() if value is not None}

    def as_json(self) -> dict[str, Any]:
        """Every measurement, for ``report.json`` (see docs/reports.md for the schema)."""
        return {
            "summary": self.summary(),
            "respawns": {
                "kills_sent": self.kills_sent,
                "expected": len(self.respawns) + self.respawns_missed,
                "seen": len(self.respawns),
                "latencies": [respawn.__dict__.copy() for respawn in self.respawns],
            },
            "supervisors": [dict(run) for run in self.runs],
            "resources": [
                {
                    "supervisor": series.supervisor,
                    "interval": series.interval,
                    "samples": [dict(sample) for sample in series.samples],
                }
                for series in self.resources
            ],
            "leaks": [dict(leak) for leak in self.leaks],
        }


def _respawn(value: object) -> Respawn:
    record = _record(RESPAWN_LATENCY, value)
    try:
        return Respawn(
            supervisor=str(record.get("supervisor")),
            service=str(record["service"]),
            seconds=float(record["seconds"]),
            scheduled_delay=float(record.get("scheduled_delay") or 0.0),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise MetricsDataError(f"{RESPAWN_LATENCY} record {record!r}: {error!r}") from None


def _series(value: object) -> ResourceSeries:
    record = _record(RESOURCE_SAMPLES, value)
    samples = record.get("samples")
    try:
        interval = float(record["interval"])
        if not isinstance(samples, list):
            raise TypeError("samples is not a list")
        for sample in samples:
            for column in SAMPLE_COLUMNS:
                float(sample[column])
    except (KeyError, TypeError, ValueError) as error:
        raise MetricsDataError(f"{RESOURCE_SAMPLES} record: {error!r}") from None
    return ResourceSeries(str(record.get("supervisor")), interval, tuple(samples))


def _record(name: str, value: object) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise MetricsDataError(f"{name} record is a {type(value).__name__}, not an object")
    return value


def _largest(values: Iterable[float | None]) -> float | None:
    return max((float(value) for value in values if value is not None), default=None)
