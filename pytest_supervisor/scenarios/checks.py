"""Checking the values of a scenario file, and one builder per step kind.

:class:`ValueChecker` checks one value at a time -- a number of seconds, a signal, a
service of the config -- reporting a problem at the value's key path and returning a
usable stand-in, so that one bad value never hides the next. The builders turn a step's
mapping into its frozen step (:mod:`.steps`); :mod:`.loader` reads the file
around them.
"""

from __future__ import annotations

import fnmatch
import math
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from pytest_supervisor.scenarios import steps
from pytest_supervisor.scenarios.document import Document, KeyPath, Problems
from pytest_supervisor.signals import PORTABLE_NAMES, POSIX_NAMES
from pytest_supervisor.suggest import did_you_mean

EVENTS = (
    "supervisor_started",
    "spawned",
    "spawn_failed",
    "ready",
    "exited",
    "restart_scheduled",
    "gave_up",
    "stopping",
    "stopped",
    "adopted",
    "self_respawn",
    "reloaded",
    "supervisor_exiting",
)
STATES = ("stopped", "starting", "running", "backoff", "stopping", "exited", "fatal")
PID_EXPECTATIONS = ("unchanged", "changed", "none")
DEFAULT_TIMEOUT = 10.0

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_SCALED = re.compile(rf"\s*{_NUMBER}\s*\*\s*stress_scale\s*(?:\+\s*{_NUMBER}\s*)?\Z")


class ValueChecker:
    """Checks values of one scenario; problems pile up in ``self.problems``.

    ``services`` are the config's, once known: references to others are reported.
    """

    def __init__(self, document: Document, file: Path, stress_scale: float) -> None:
        self.document = document
        self.file = file
        self.problems = Problems(document)
        self.stress_scale = stress_scale
        self.services: Tuple[str, ...] = ()
        self.services_known = False  # no config, or an unreadable one: names are not checked
        self.uses_status = False  # set by an expect_state step

    def fields(
        self, raw: Any, path: KeyPath, known: Sequence[str], required: Sequence[str] = ()
    ) -> Dict[str, Any]:
        """A step's mapping, with unknown keys and missing required ones reported."""
        if raw is None and not required:
            return {}
        if not isinstance(raw, dict):
            self.problems.add(path, f"expected a mapping with {', '.join(known)}, got {raw!r}")
            return {}
        for key in raw:
            if key not in known:
                self.problems.add(
                    path + (key,),
                    f"unknown key{did_you_mean(key, known)}; known: {', '.join(known)}",
                    at_key=True,
                )
        for key in required:
            if key not in raw:
                self.problems.add(path + (key,), "missing: this key is required")
        return {key: value for key, value in raw.items() if key in known}

    def sequence(self, raw: Any, path: KeyPath) -> List[Any]:
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.problems.add(path, f"expected a list, got {raw!r}")
            return []
        return raw

    def text(self, raw: Any, path: KeyPath) -> str:
        if not isinstance(raw, str) or not raw.strip():
            self.problems.add(path, f"expected text, got {raw!r}")
            return ""
        return raw

    def boolean(self, raw: Any, path: KeyPath, default: bool) -> bool:
        if raw is None:
            return default
        if not isinstance(raw, bool):
            self.problems.add(path, f"expected true or false, got {raw!r}")
            return default
        return raw

    def choice(self, raw: Any, path: KeyPath, options: Sequence[str]) -> str:
        if raw not in options:
            self.problems.add(
                path,
                f"expected one of {', '.join(options)}; got {raw!r}{did_you_mean(raw, options)}",
            )
            return options[0]
        return str(raw)

    def number(
        self, raw: Any, path: KeyPath, *, positive: bool = False, default: float = 0.0
    ) -> float:
        """Seconds or a size: a number, or ``"A * stress_scale [+ B]"``."""
        bound = "> 0" if positive else ">= 0"
        value: Optional[float] = None
        scaled = _SCALED.match(raw) if isinstance(raw, str) else None
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            value = float(raw)
        elif scaled:
            factor, offset = scaled.groups()
            value = float(factor) * self.stress_scale + float(offset or 0)
        if value is None or not math.isfinite(value) or value < 0 or (positive and value == 0):
            self.problems.add(
                path, f"expected a number {bound} or 'N * stress_scale [+ M]', got {raw!r}"
            )
            return default
        return value

    def optional_number(self, raw: Any, path: KeyPath, positive: bool = False) -> Optional[float]:
        return None if raw is None else self.number(raw, path, positive=positive)

    def integer(self, raw: Any, path: KeyPath, minimum: int = 0) -> int:
        """A whole number, or a scaled one rounded up."""
        if isinstance(raw, float) or (isinstance(raw, int) and not isinstance(raw, bool)):
            if raw != int(raw) or raw < minimum:
                self.problems.add(path, f"expected a whole number >= {minimum}, got {raw!r}")
                return minimum
            return int(raw)
        if isinstance(raw, str) and _SCALED.match(raw):
            return max(minimum, math.ceil(self.number(raw, path)))
        self.problems.add(
            path, f"expected a whole number >= {minimum} or 'N * stress_scale [+ M]', got {raw!r}"
        )
        return minimum

    def signal(self, raw: Any, path: KeyPath, default: Any = None) -> Any:
        if raw is None and default is not None:
            return default
        if isinstance(raw, int) and not isinstance(raw, bool) and raw > 0:
            return raw
        known = PORTABLE_NAMES + POSIX_NAMES
        if raw not in known:
            self.problems.add(
                path,
                f"expected a signal: a POSIX name such as SIGTERM, or one of"
                f" {', '.join(PORTABLE_NAMES)}; got {raw!r}{did_you_mean(raw, known)}",
            )
        return raw

    def event(self, raw: Any, path: KeyPath) -> str:
        if raw not in EVENTS:
            self.problems.add(
                path,
                f"expected an event of the stream (SPEC section 4): {', '.join(EVENTS)};"
                f" got {raw!r}{did_you_mean(raw, EVENTS)}",
            )
            return ""
        return str(raw)

    def service(self, raw: Any, path: KeyPath, glob: bool = True) -> str:
        """A service of the config, or (``glob``) a pattern matching at least one."""
        name = self.text(raw, path)
        if not name or not self.services_known:
            return name
        if glob and steps.is_pattern(name):
            if not fnmatch.filter(self.services, name):
                self.problems.add(
                    path,
                    f"the pattern {name!r} matches no service of the config"
                    f" ({', '.join(self.services)})",
                )
        elif name not in self.services:
            self.problems.add(
                path,
                f"expected a service of the config ({', '.join(self.services)}); got"
                f" {name!r}{did_you_mean(name, self.services)}",
            )
        return name


# -- one builder per step kind: (checker, body, path, place) -> step -------------


def _start(ch: ValueChecker, body: Any, path: KeyPath, place: steps.StepPlace) -> steps.Start:
    known = ("fault_injection", "args", "env", "timeout", "nproc_limit")
    fields = ch.fields(body, path, known)
    args = ch.sequence(fields.get("args"), path + ("args",))
    for index, arg in enumerate(args):
        if not isinstance(arg, (str, int, float)) or isinstance(arg, bool):
            ch.problems.add(path + ("args", index), f"expected text, got {arg!r}")
    env = fields.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(value, str) for value in env.values()):
        ch.problems.add(path + ("env",), f"expected a mapping of names to text, got {env!r}")
        env = {}
    nproc = fields.get("nproc_limit")
    return steps.Start(
        place,
        fault_injection=ch.boolean(
            fields.get("fault_injection"), path + ("fault_injection",), False
        ),
        args=tuple(str(arg) for arg in args),
        env=dict(env),
        timeout=ch.number(
            fields.get("timeout", DEFAULT_TIMEOUT),
            path + ("timeout",),
            positive=True,
            default=DEFAULT_TIMEOUT,
        ),
        nproc_limit=None if nproc is None else ch.integer(nproc, path + ("nproc_limit",), 1),
    )


def _event_fields(ch: ValueChecker, raw: Any, path: KeyPath) -> Dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        ch.problems.add(path, f"expected a mapping of event fields to values, got {raw!r}")
        return {}
    return dict(raw)


def _wait(ch: ValueChecker, body: Any, path: KeyPath, place: steps.StepPlace) -> steps.Wait:
    known = ("event", "service", "count", "timeout", "fields", "before")
    fields = ch.fields(body, path, known, required=("event",))
    before = fields.get("before")
    return steps.Wait(
        place,
        event=ch.event(fields.get("event"), path + ("event",)),
        service=None
        if fields.get("service") is None
        else ch.service(fields["service"], path + ("service",)),
        count=ch.integer(fields.get("count", 1), path + ("count",), minimum=1),
        timeout=ch.number(
            fields.get("timeout", DEFAULT_TIMEOUT),
            path + ("timeout",),
            positive=True,
            default=DEFAULT_TIMEOUT,
        ),
        fields=_event_fields(ch, fields.get("fields"), path + ("fields",)),
        before=None if before is None else ch.event(before, path + ("before",)),
    )


def _expect_event(
    ch: ValueChecker, body: Any, path: KeyPath, place: steps.StepPlace
) -> steps.ExpectEvent:
    known = ("event", "service", "timeout", "fields", "matching")
    fields = ch.fields(body, path, known, required=("event",))
    matching = _event_fields(ch, fields.get("matching"), path + ("matching",))
    for key, pattern in matching.items():
        try:
            re.compile(str(pattern))
        except re.error as error:
            ch.problems.add(path + ("matching", key), f"expected a regular expression: {error}")
    return steps.ExpectEvent(
        place,
        event=ch.event(fields.get("event"), path + ("event",)),
        service=None
        if fields.get("service") is None
        else ch.service(fields["service"], path + ("service",)),
        timeout=ch.number(
            fields.get("timeout", DEFAULT_TIMEOUT),
            path + ("timeout",),
            positive=True,
            default=DEFAULT_TIMEOUT,
        ),
        fields=_event_fields(ch, fields.get("fields"), path + ("fields",)),
        matching={key: str(pattern) for key, pattern in matching.items()},
    )


def _kill(ch: ValueChecker, body: Any, path: KeyPath, place: steps.StepPlace) -> steps.Kill:
    fields = ch.fields(body, path, ("service", "signal"), required=("service",))
    return steps.Kill(
        place,
        service=ch.service(fields.get("service"), path + ("service",)),
        signal=ch.signal(fields.get("signal"), path + ("signal",), default="hard_kill"),
    )


def _signal(ch: ValueChecker, body: Any, path: KeyPath, place: steps.StepPlace) -> steps.Signal:
    return steps.Signal(place, ch.signal(body, path))


def _expect_respawn(
    ch: ValueChecker, body: Any, path: KeyPath, place: steps.StepPlace
) -> steps.ExpectRespawn:
    known = ("service", "within", "not_before", "min_success_rate")
    fields = ch.fields(body, path, known, required=("service", "within"))
    within = ch.number(fields.get("within"), path + ("within",), positive=True, default=1.0)
    not_before = ch.optional_number(fields.get("not_before"), path + ("not_before",))
    if not_before is not None and not_before > within:
        ch.problems.add(
            path + ("not_before",), f"expected at most within ({within:g}), got {not_before:g}"
        )
    service = ch.service(fields.get("service"), path + ("service",))
    rate = fields.get("min_success_rate", 1.0)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
        ch.problems.add(
            path + ("min_success_rate",), f"expected a fraction in (0, 1], got {rate!r}"
        )
        rate = 1.0
    elif "min_success_rate" in fields and not steps.is_pattern(service):
        ch.problems.add(
            path + ("min_success_rate",),
            "applies to a pattern of services (such as 'web-*'), not to one service",
        )
    return steps.ExpectRespawn(
        place,
        service=service,
        within=within,
        not_before=not_before,
        min_success_rate=float(rate),
    )


def _expect_no_respawn(
    ch: ValueChecker, body: Any, path: KeyPath, place: steps.StepPlace
) -> steps.ExpectNoRespawn:
    fields = ch.fields(body, path, ("service", "for"), required=("service", "for"))
    return steps.ExpectNoRespawn(
        place,
        service=ch.service(fields.get("service"), path + ("service",), glob=False),
        duration=ch.number(fields.get("for"), path + ("for",), positive=True, default=1.0),
    )


def _expect_state(
    ch: ValueChecker, body: Any, path: KeyPath, place: steps.StepPlace
) -> steps.ExpectState:
    fields = ch.fields(body, path, ("service", "state", "pid"), required=("service", "state"))
    ch.uses_status = True
    pid = fields.get("pid")
    return steps.ExpectState(
        place,
        service=ch.service(fields.get("service"), path + ("service",), glob=False),
        state=ch.choice(fields.get("state"), path + ("state",), STATES),
        pid=None if pid is None else ch.choice(pid, path + ("pid",), PID_EXPECTATIONS),
    )


def _expect_exit(
    ch: ValueChecker, body: Any, path: KeyPath, place: steps.StepPlace
) -> steps.ExpectExit:
    fields = ch.fields(body, path, ("code", "within"))
    return steps.ExpectExit(
        place,
        code=ch.integer(fields.get("code", 0), path + ("code",)),
        within=ch.number(
            fields.get("within", DEFAULT_TIMEOUT),
            path + ("within",),
            positive=True,
            default=DEFAULT_TIMEOUT,
        ),
    )


def _expect_no_leaks(
    ch: ValueChecker, body: Any, path: KeyPath, place: steps.StepPlace
) -> steps.ExpectNoLeaks:
    fields = ch.fields(body, path, ("within",))
    return steps.ExpectNoLeaks(
        place, within=ch.number(fields.get("within", 2.0), path + ("within",), default=2.0)
    )


_MEASURE_BOUNDS = (
    "max_rss_mb",
    "max_tree_rss_mb",
    "max_cpu_percent",
    "max_tree_cpu_percent",
    "max_processes",
    "max_rss_growth_mb",
)


def _measure(ch: ValueChecker, body: Any, path: KeyPath, place: steps.StepPlace) -> steps.Measure:
    fields = ch.fields(
        body, path, ("duration", "interval", *_MEASURE_BOUNDS), required=("duration",)
    )
    duration = ch.number(fields.get("duration"), path + ("duration",), positive=True, default=1.0)
    interval = ch.number(
        fields.get("interval", 0.5), path + ("interval",), positive=True, default=0.5
    )
    bounds = {key: ch.optional_number(fields.get(key), path + (key,)) for key in _MEASURE_BOUNDS}
    if bounds["max_rss_growth_mb"] is not None and duration / interval < 3:
        ch.problems.add(
            path + ("max_rss_growth_mb",),
            "a growth trend needs at least 3 samples: make duration / interval >= 3",
        )
    processes = bounds.pop("max_processes")
    return steps.Measure(
        place,
        duration=duration,
        interval=interval,
        max_processes=None if processes is None else int(processes),
        **bounds,
    )


def _sleep(ch: ValueChecker, body: Any, path: KeyPath, place: steps.StepPlace) -> steps.Sleep:
    return steps.Sleep(place, ch.number(body, path, positive=True))


def _check(ch: ValueChecker, body: Any, path: KeyPath, place: steps.StepPlace) -> steps.Check:
    known = ("config", "config_file", "expect_exit", "expect_stdout", "expect_stderr")
    fields = ch.fields(body, path, known, required=("expect_exit",))
    text, named = fields.get("config"), fields.get("config_file")
    if (text is None) == (named is None):
        ch.problems.add(path, "expected either config (YAML text) or config_file")
    if text is not None and not isinstance(text, str):
        ch.problems.add(path + ("config",), "expected the config as YAML text: write `config: |`")
        text = None
    config_file = None
    if named is not None:
        config_file = (ch.file.parent / ch.text(named, path + ("config_file",))).resolve()
        if not config_file.is_file():
            ch.problems.add(path + ("config_file",), f"no such file: {config_file}")
    outputs = {}
    for key in ("expect_stdout", "expect_stderr"):
        value = fields.get(key)
        if value is not None and not isinstance(value, str):
            ch.problems.add(path + (key,), f"expected text, got {value!r}")
            value = None
        outputs[key] = value
    return steps.Check(
        place,
        config_text=text,
        config_file=None if config_file is None else str(config_file),
        expect_exit=ch.integer(fields.get("expect_exit"), path + ("expect_exit",)),
        **outputs,
    )


STEP_BUILDERS: Dict[str, Callable[[ValueChecker, Any, KeyPath, steps.StepPlace], Any]] = {
    "start": _start,
    "wait": _wait,
    "expect_event": _expect_event,
    "kill": _kill,
    "signal": _signal,
    "expect_respawn": _expect_respawn,
    "expect_no_respawn": _expect_no_respawn,
    "expect_state": _expect_state,
    "expect_exit": _expect_exit,
    "expect_no_leaks": _expect_no_leaks,
    "measure": _measure,
    "sleep": _sleep,
    "check": _check,
}
