"""The steps of a scenario, as validated frozen values (see docs/scenarios.md).

Each class is one step kind (its YAML name is in ``StepPlace.kind``) and says in words
what it expects, for failure reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple, Union


@dataclass(frozen=True)
class StepPlace:
    """Where a step is: its key path (``steps[2].repeat.steps[0]``) and YAML line."""

    path: str
    line: int
    kind: str

    def __str__(self) -> str:
        return f"{self.path} ({self.kind}, line {self.line})"


@dataclass(frozen=True)
class Start:
    place: StepPlace
    fault_injection: bool
    args: Tuple[str, ...]
    env: Mapping[str, str]
    timeout: float
    nproc_limit: Optional[int]

    def expectation(self) -> str:
        return "the supervisor to start (its supervisor_started event)"


@dataclass(frozen=True)
class Wait:
    """Wait for ``count`` events; ``fields`` choose which events count."""

    place: StepPlace
    event: str
    service: Optional[str]  # a name or a glob; None: any, and events without a service
    count: int
    timeout: float
    fields: Mapping[str, Any]
    before: Optional[str]  # every counted event must come before the first of these

    def expectation(self) -> str:
        text = describe_events(self.count, self.event, self.service, self.fields)
        return (
            text
            + f" within {self.timeout:g}s"
            + (f", all before {self.before!r}" if self.before else "")
        )


@dataclass(frozen=True)
class ExpectEvent:
    """The next matching event must come within ``timeout`` and have ``fields``."""

    place: StepPlace
    event: str
    service: Optional[str]
    timeout: float
    fields: Mapping[str, Any]
    matching: Mapping[str, str]  # field -> regular expression searched in its text

    def expectation(self) -> str:
        wanted = {**self.fields, **{name: f"/{regex}/" for name, regex in self.matching.items()}}
        return describe_events(1, self.event, self.service, wanted) + f" within {self.timeout:g}s"


@dataclass(frozen=True)
class Kill:
    place: StepPlace
    service: str  # a name or a glob: every matching running service
    signal: Union[str, int]

    def expectation(self) -> str:
        return f"to send {self.signal} to {self.service!r}"


@dataclass(frozen=True)
class Signal:
    place: StepPlace
    signal: Union[str, int]

    def expectation(self) -> str:
        return f"to send {self.signal} to the supervisor"


@dataclass(frozen=True)
class ExpectRespawn:
    place: StepPlace
    service: str  # a name or a glob
    within: float
    not_before: Optional[float]
    min_success_rate: float

    def expectation(self) -> str:
        text = f"{self.service!r} respawned within {self.within:g}s"
        if self.not_before is not None:
            text += f", not before {self.not_before:g}s"
        if self.min_success_rate < 1:
            text += f" (at least {self.min_success_rate:.0%} of them)"
        return text


@dataclass(frozen=True)
class ExpectNoRespawn:
    place: StepPlace
    service: str
    duration: float  # `for:` in YAML

    def expectation(self) -> str:
        return f"no respawn of {self.service!r} for {self.duration:g}s"


@dataclass(frozen=True)
class ExpectState:
    place: StepPlace
    service: str
    state: str
    pid: Optional[str]  # "unchanged" | "changed" | "none"

    def expectation(self) -> str:
        return f"{self.service!r} in state {self.state!r}" + (
            f" with its pid {self.pid}" if self.pid else ""
        )


@dataclass(frozen=True)
class ExpectExit:
    place: StepPlace
    code: int
    within: float

    def expectation(self) -> str:
        return f"the supervisor to exit with code {self.code} within {self.within:g}s"


@dataclass(frozen=True)
class ExpectNoLeaks:
    place: StepPlace
    within: float

    def expectation(self) -> str:
        return f"no process of the supervisor left outside its tree after {self.within:g}s"


@dataclass(frozen=True)
class Measure:
    place: StepPlace
    duration: float
    interval: float
    max_rss_mb: Optional[float]
    max_tree_rss_mb: Optional[float]
    max_cpu_percent: Optional[float]
    max_tree_cpu_percent: Optional[float]
    max_processes: Optional[int]
    max_rss_growth_mb: Optional[float]

    def expectation(self) -> str:
        bounds = [
            f"{name}={value:g}"
            for name, value in vars(self).items()
            if name.startswith("max_") and value is not None
        ]
        return f"resource use over {self.duration:g}s within " + (", ".join(bounds) or "no bounds")


@dataclass(frozen=True)
class Repeat:
    place: StepPlace
    times: int
    steps: Tuple["Step", ...]

    def expectation(self) -> str:
        return f"{len(self.steps)} step(s) to pass {self.times} times"


@dataclass(frozen=True)
class Sleep:
    place: StepPlace
    seconds: float

    def expectation(self) -> str:
        return f"to sleep {self.seconds:g}s"


@dataclass(frozen=True)
class Check:
    """Run ``supervisor check`` on a config and compare its exit code and output."""

    place: StepPlace
    config_text: Optional[str]
    config_file: Optional[str]  # absolute
    expect_exit: int
    expect_stdout: Optional[str]
    expect_stderr: Optional[str]

    def expectation(self) -> str:
        outputs = [name for name in ("stdout", "stderr") if getattr(self, f"expect_{name}")]
        return f"`supervisor check` to exit {self.expect_exit}" + (
            f" with the given {' and '.join(outputs)}" if outputs else ""
        )


Step = Union[
    Start,
    Wait,
    ExpectEvent,
    Kill,
    Signal,
    ExpectRespawn,
    ExpectNoRespawn,
    ExpectState,
    ExpectExit,
    ExpectNoLeaks,
    Measure,
    Repeat,
    Sleep,
    Check,
]


def is_pattern(service: str) -> bool:
    """Whether a service reference is a glob (``web-*``) rather than a name."""
    return any(char in service for char in "*?[")


def describe_events(
    count: int, event: str, service: Optional[str], fields: Mapping[str, Any]
) -> str:
    """``2 'stopped' events for services matching 'web-*' with forced=False``."""
    text = f"{count} {event!r} event" + ("s" if count != 1 else "")
    if service is not None:
        kind = "services matching" if is_pattern(service) else "service"
        text += f" for {kind} {service!r}"
    if fields:
        text += " with " + ", ".join(f"{name}={value!r}" for name, value in fields.items())
    return text
