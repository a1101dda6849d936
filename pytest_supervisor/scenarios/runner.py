"""Executing a scenario's steps against real supervisors (no pytest needed).

:class:`ScenarioRunner` drives a :class:`SupervisorFactory` and the handle it spawns;
every wait is a wait on the event stream, never a sleep (except the ``sleep`` step).

Which events a wait looks at: those stamped after the last *action* (``start``,
``kill``, ``signal``) -- so a respawn that beats the next step is still seen -- and,
for the same event kind and service, after the last event an earlier wait or
``expect_event`` matched -- so a ``repeat`` of ``expect_event: exited`` sees each exit
in turn rather than the first one again.

A failing step raises :class:`ScenarioFailure`: which step (index, YAML line,
iteration), what was expected, what was seen, and the supervisor's recent events and
log lines.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, NoReturn, Optional, Tuple

from pytest_supervisor import processes
from pytest_supervisor.errors import HarnessUsageError, SupervisorAssertionError, TeardownFailed
from pytest_supervisor.events import Event, live_pid, mono_of
from pytest_supervisor.factory import SupervisorFactory
from pytest_supervisor.handle import Recorder, SupervisorHandle
from pytest_supervisor.process_limits import LimitUnavailable, nproc_limited_prefix
from pytest_supervisor.resources import ResourceSamples
from pytest_supervisor.scenarios import steps
from pytest_supervisor.scenarios.loader import Scenario, fill_placeholders, fill_yaml_placeholders
from pytest_supervisor.scenarios.steps import is_pattern

CHECK_TIMEOUT = 60.0  # for one `supervisor check` or `status` command
SHOWN_FAILURES = 10  # of the services an expect_respawn over a pattern found wanting


class ScenarioFailure(AssertionError):
    """A step did not see what it expected; the message is the whole report."""


class ScenarioRunner:
    """Runs one scenario.

    ``factory`` spawns the supervisor; ``placeholders`` fill ``{python}``, ``{dummy}``
    and ``{tmp}``; ``workdir`` holds the configs written for ``check`` steps;
    ``record(name, value)`` keeps measurements (the plugin passes ``record_property``);
    ``skip(reason)`` ends the scenario when this system cannot run it.
    """

    def __init__(
        self,
        scenario: Scenario,
        factory: SupervisorFactory,
        *,
        placeholders: Mapping[str, str],
        workdir: Path,
        record: Recorder,
        skip: Callable[[str], NoReturn],
    ) -> None:
        self.scenario = scenario
        self.factory = factory
        self.placeholders = dict(placeholders)
        self.workdir = Path(workdir)
        self.record = record
        self.skip = skip
        self.handle: Optional[SupervisorHandle] = None
        self._own_factory: Optional[SupervisorFactory] = None  # for a process limit
        self._socket_dir: Optional[tempfile.TemporaryDirectory] = None
        self._launched_wall = 0.0
        self._action_mono = 0.0
        self._action = "the start"
        self._pids_at_action: Dict[str, Optional[int]] = {}
        self._matched_up_to: Dict[Tuple[str, Optional[str]], float] = {}
        self._iteration = ""  # ", iteration 2 of 5" inside a repeat (nested ones add up)
        self._run: Dict[type, Callable[[Any], None]] = {
            steps.Start: self._start,
            steps.Wait: self._wait,
            steps.ExpectEvent: self._expect_event,
            steps.Kill: self._kill,
            steps.Signal: self._signal,
            steps.ExpectRespawn: self._expect_respawn,
            steps.ExpectNoRespawn: self._expect_no_respawn,
            steps.ExpectState: self._expect_state,
            steps.ExpectExit: self._expect_exit,
            steps.ExpectNoLeaks: self._expect_no_leaks,
            steps.Measure: self._measure,
            steps.Repeat: self._repeat,
            steps.Sleep: self._sleep,
            steps.Check: self._check,
        }

    def run(self) -> None:
        """Run every step; ``ScenarioFailure`` at the first that fails."""
        try:
            self._steps(self.scenario.steps)
        except BaseException:
            self._close(quietly=True)  # the step's failure is the one to report
            raise
        self._close(quietly=False)

    # -- plumbing --------------------------------------------------------------

    def _steps(self, body: Tuple[steps.Step, ...]) -> None:
        for step in body:
            try:
                self._run[type(step)](step)
            except (SupervisorAssertionError, HarnessUsageError) as error:
                raise ScenarioFailure(self._report(step, str(error))) from None

    def _report(self, step: steps.Step, seen: str) -> str:
        where = f"{step.place.path} ({step.place.kind}, line {step.place.line}){self._iteration}"
        return (
            f"scenario {self.scenario.name!r} ({self.scenario.shown_as}) failed at {where}\n"
            f"expected: {step.expectation()}\n"
            f"seen: {seen}"
        )

    def _failure(self, headline: str, service: Optional[str] = None) -> SupervisorAssertionError:
        """A failed expectation with the evidence: status, recent events, log tail."""
        if self.handle is None:
            return SupervisorAssertionError(headline)
        exact = service if service is not None and not is_pattern(service) else None
        return SupervisorAssertionError(self.handle.explain(headline, exact))

    def _started(self) -> SupervisorHandle:
        if self.handle is None:  # validation puts a `start` first; this guards misuse
            raise HarnessUsageError("the scenario has not started its supervisor")
        return self.handle

    def _mark_action(self, what: str) -> None:
        self._action, self._action_mono = what, time.monotonic()
        if self.handle is not None:
            events = self.handle.events
            self._pids_at_action = {name: live_pid(events, name) for name in self.scenario.services}

    def _services(self, service: str, running_only: bool = False) -> List[str]:
        """The services a name or pattern means (patterns: only running ones if asked)."""
        if not is_pattern(service):
            return [service]
        names = fnmatch.filter(self.scenario.services, service)
        if running_only:
            events = self._started().events
            names = [name for name in names if live_pid(events, name) is not None]
        return names

    def _close(self, quietly: bool) -> None:
        try:
            if self._own_factory is not None:
                self._own_factory.close()
        except TeardownFailed as failed:
            if not quietly:
                raise ScenarioFailure(f"scenario {self.scenario.name!r}: {failed}") from None
        finally:
            if self._socket_dir is not None:
                self._socket_dir.cleanup()

    # -- acting ----------------------------------------------------------------

    def _start(self, step: steps.Start) -> None:
        factory = self.factory
        if step.nproc_limit is not None:
            try:
                prefix = nproc_limited_prefix(step.nproc_limit)
            except LimitUnavailable as missing:
                self.skip(f"RLIMIT_NPROC={step.nproc_limit}: {missing}")
            factory = self._own_factory = SupervisorFactory(
                self.workdir / "nproc-limited",
                command=(*prefix, *self.factory.command),
                record=self.record,
                unsupported=self.skip,
            )
        # `python` in a config file means the interpreter running the scenario, as {python}.
        path = os.pathsep.join((os.path.dirname(sys.executable), os.environ.get("PATH", "")))
        env = {"PATH": path, **fill_placeholders(dict(step.env), self.placeholders)}
        self._mark_action("the start")
        self._launched_wall = time.time()
        self.handle = factory.spawn(
            self._config(),
            env=env,
            args=fill_placeholders(list(step.args), self.placeholders),
            fault_injection=step.fault_injection,
            start_timeout=step.timeout,
        )

    def _config(self) -> Any:
        if self.scenario.config_file is not None:
            return self.scenario.config_file
        config = fill_placeholders(dict(self.scenario.config or {}), self.placeholders)
        settings = dict(config.get("supervisor") or {})
        if self.scenario.uses_status and not settings.get("control_socket"):
            # A short folder of its own: socket paths are limited to ~100 bytes.
            self._socket_dir = tempfile.TemporaryDirectory(prefix="pss-")
            settings["control_socket"] = os.path.join(self._socket_dir.name, "control.sock")
            config["supervisor"] = settings
        return config

    def _kill(self, step: steps.Kill) -> None:
        handle = self._started()
        names = self._services(step.service, running_only=True)
        if not names:
            raise self._failure(f"no running service matches {step.service!r}", step.service)
        for name in names:
            # Running before the mark: its spawn is not mistaken for a result of the kill.
            handle.pid_of(name)
        self._mark_action(f"{step.signal} to {step.service}")
        for name in names:
            handle.kill(name, step.signal)

    def _signal(self, step: steps.Signal) -> None:
        self._mark_action(f"{step.signal} to the supervisor")
        self._started().signal(step.signal)

    # -- waiting for events ----------------------------------------------------

    def _wait(self, step: steps.Wait) -> None:
        handle = self._started()
        key = (step.event, step.service)
        after = self._matched_up_to.get(key, -math.inf)
        counted: List[Event] = []

        def counts(event: Event) -> bool:
            # Called once per candidate, oldest first: so counting here is exact.
            if (
                _service_matches(event, step.service)
                and mono_of(event) > after
                and _has_fields(event, step.fields)
            ):
                counted.append(event)
            return len(counted) >= step.count

        try:
            handle.wait_for(
                step.event, timeout=step.timeout, predicate=counts, since=self._action_mono
            )
        except SupervisorAssertionError:
            wanted = steps.describe_events(step.count, step.event, step.service, step.fields)
            raise self._failure(
                f"{len(counted)} of the {wanted} came {_ending(handle, step.timeout)}"
                f" after {self._action}",
                step.service,
            ) from None
        self._matched_up_to[key] = mono_of(counted[-1])
        if step.before is not None:
            self._check_before(step, counted)

    def _check_before(self, step: steps.Wait, counted: List[Event]) -> None:
        last = counted[-1]
        for event in self._started().events:
            if event.get("event") == step.before and mono_of(event) >= self._action_mono:
                if mono_of(event) < mono_of(last):
                    raise self._failure(
                        f"{step.before!r} came {mono_of(last) - mono_of(event):.3f}s before the"
                        f" last of the {step.count} {step.event!r} event(s)"
                        f" ({last.get('service')})",
                        step.service,
                    )
                return

    def _expect_event(self, step: steps.ExpectEvent) -> None:
        handle = self._started()
        key = (step.event, step.service)
        after = self._matched_up_to.get(key, -math.inf)

        def first(event: Event) -> bool:
            return _service_matches(event, step.service) and mono_of(event) > after

        try:
            found = handle.wait_for(
                step.event, timeout=step.timeout, predicate=first, since=self._action_mono
            )
        except SupervisorAssertionError:
            raise self._failure(
                f"no {steps.describe_events(1, step.event, step.service, {})} came"
                f" {_ending(handle, step.timeout)} after {self._action}",
                step.service,
            ) from None
        self._matched_up_to[key] = mono_of(found)
        wrong = [
            f"{name}={found.get(name)!r} (expected {value!r})"
            for name, value in step.fields.items()
            if found.get(name) != value
        ]
        wrong += [
            f"{name}={found.get(name)!r} (expected to match {pattern!r})"
            for name, pattern in step.matching.items()
            if re.search(pattern, str(found.get(name, ""))) is None
        ]
        if wrong:
            shown = {name: value for name, value in found.items() if name not in ("ts", "mono")}
            raise self._failure(
                f"the {step.event!r} event had {', '.join(wrong)}: {json.dumps(shown)}",
                step.service,
            )

    # -- asserting -------------------------------------------------------------

    def _expect_respawn(self, step: steps.ExpectRespawn) -> None:
        handle = self._started()
        if not is_pattern(step.service):  # one service: its own report says it best
            handle.assert_respawned(step.service, within=step.within, not_before=step.not_before)
            return
        names = self._services(step.service)
        missed: List[str] = []
        for name in names:
            try:
                handle.assert_respawned(name, within=step.within, not_before=step.not_before)
            except (SupervisorAssertionError, HarnessUsageError) as error:
                missed.append(str(error).splitlines()[0])
        rate = (len(names) - len(missed)) / len(names)
        if rate < step.min_success_rate:
            shown = missed[:SHOWN_FAILURES] + (
                [f"... and {len(missed) - SHOWN_FAILURES} more"]
                if len(missed) > SHOWN_FAILURES
                else []
            )
            raise self._failure(
                f"{len(missed)} of {len(names)} service(s) were not respawned as expected"
                f" (success rate {rate:.3f}):\n" + "\n".join(f"  {line}" for line in shown),
                step.service,
            )

    def _expect_no_respawn(self, step: steps.ExpectNoRespawn) -> None:
        self._started().assert_not_respawned(step.service, for_=step.duration)

    def _expect_state(self, step: steps.ExpectState) -> None:
        handle = self._started()
        argv = [
            *self.factory.command,
            "status",
            step.service,
            "--json",
            "-c",
            str(handle.spec.config_path),
        ]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=CHECK_TIMEOUT, cwd=str(handle.spec.cwd)
        )
        try:
            rows = json.loads(done.stdout)
            row = next(row for row in rows if row.get("name") == step.service)
        except (ValueError, TypeError, AttributeError, StopIteration):
            raise self._failure(
                f"`supervisor status {step.service} --json` exited {done.returncode} without"
                f" the service's row:\n{done.stdout}{done.stderr}",
                step.service,
            ) from None
        seen = f"state {row.get('state')!r}, pid {row.get('pid')}, restarts {row.get('restarts')}"
        if row.get("state") != step.state:
            raise self._failure(f"{step.service!r} has {seen}", step.service)
        before = self._pids_at_action.get(step.service)
        pid = row.get("pid")
        wrong_pid = {
            None: False,
            "none": pid is not None,
            "unchanged": pid is None or pid != before,
            "changed": pid is None or pid == before,
        }[step.pid]
        if wrong_pid:
            raise self._failure(
                f"{step.service!r} has {seen}; its pid at {self._action} was {before}",
                step.service,
            )

    def _expect_exit(self, step: steps.ExpectExit) -> None:
        code = self._started().wait_exit(step.within)
        if code != step.code:
            raise self._failure(f"the supervisor exited with code {code}")

    def _expect_no_leaks(self, step: steps.ExpectNoLeaks) -> None:
        handle = self._started()
        # Once the supervisor is gone its pid may be reused: only a live one has a tree.
        tree = (
            {process.pid for process in handle.processes()} if handle.returncode is None else set()
        )
        marked = processes.carrying_marker(handle.spec.marker, self._launched_wall)
        outside = [process for process in marked if process.pid not in tree]
        left = processes.wait_gone(outside, step.within) if outside else []
        if left:
            raise self._failure(
                f"{len(left)} process(es) started under this supervisor still run outside its"
                " tree:\n" + "\n".join(f"  {processes.describe(process)}" for process in left)
            )

    def _measure(self, step: steps.Measure) -> None:
        samples = self._started().sample_resources(step.duration, step.interval)
        seen = _summary(samples)
        bounds = {
            "max_rss_mb": ("peak RSS of the supervisor", "rss_mb", "MB"),
            "max_tree_rss_mb": ("peak RSS of the whole tree", "tree_rss_mb", "MB"),
            "max_cpu_percent": ("mean CPU of the supervisor", "cpu_percent", "%"),
            "max_tree_cpu_percent": ("mean CPU of the whole tree", "tree_cpu_percent", "%"),
            "max_processes": ("most processes in the tree", "processes", ""),
            "max_rss_growth_mb": ("RSS growth of the supervisor (fitted)", "rss_growth_mb", "MB"),
        }
        over = [
            f"{label} {seen[key]:.2f}{unit} > {bound} {getattr(step, bound):g}{unit}"
            for bound, (label, key, unit) in bounds.items()
            if getattr(step, bound) is not None and seen[key] > getattr(step, bound)
        ]
        if over:
            raise self._failure(
                f"over {step.duration:g}s ({len(samples.samples)} samples): " + "; ".join(over)
            )

    def _repeat(self, step: steps.Repeat) -> None:
        outer = self._iteration
        for number in range(1, step.times + 1):
            self._iteration = f"{outer}, iteration {number} of {step.times}"
            self._steps(step.steps)
        self._iteration = outer

    def _sleep(self, step: steps.Sleep) -> None:
        time.sleep(step.seconds)  # the one deliberate sleep: the scenario asked for it

    def _check(self, step: steps.Check) -> None:
        if step.config_file is not None:
            path = Path(step.config_file)
        else:
            path = self.workdir / (re.sub(r"\W+", "-", step.place.path).strip("-") + ".yaml")
            text = fill_yaml_placeholders(step.config_text or "", self.placeholders)
            path.write_text(text, "utf-8")
        done = subprocess.run(
            [*self.factory.command, "check", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT,
            cwd=str(self.workdir),
        )
        values = {**self.placeholders, "file": str(path)}
        mismatches, unchecked = [], []
        if done.returncode != step.expect_exit:
            mismatches.append(f"exit code {done.returncode}, expected {step.expect_exit}")
        for stream, expected, actual in (
            ("stdout", step.expect_stdout, done.stdout),
            ("stderr", step.expect_stderr, done.stderr),
        ):
            if expected is not None:
                mismatches += _text_difference(stream, fill_placeholders(expected, values), actual)
            elif actual.strip():  # nothing to compare it with, but it may explain the rest
                unchecked.append(f"its {stream}:\n{actual.rstrip()}")
        if mismatches:
            raise self._failure(
                f"`supervisor check -c {path}`: " + "\n".join(mismatches + unchecked)
            )


# -- helpers ---------------------------------------------------------------------


def _service_matches(event: Event, service: Optional[str]) -> bool:
    if service is None:
        return True
    name = event.get("service")
    return isinstance(name, str) and fnmatch.fnmatchcase(name, service)


def _has_fields(event: Event, fields: Mapping[str, Any]) -> bool:
    return all(event.get(name) == value for name, value in fields.items())


def _ending(handle: SupervisorHandle, timeout: float) -> str:
    return (
        "before the supervisor exited"
        if handle.returncode is not None
        else (f"within {timeout:g}s")
    )


def _normalized(text: str) -> List[str]:
    return [line.rstrip() for line in text.strip().splitlines()]


def _text_difference(stream: str, expected: str, actual: str) -> List[str]:
    if _normalized(expected) == _normalized(actual):
        return []
    diff = difflib.unified_diff(
        _normalized(expected), _normalized(actual), "expected", "seen", lineterm=""
    )
    return [f"{stream} differs:\n" + "\n".join(diff)]


def _summary(samples: ResourceSamples) -> Dict[str, float]:
    """The figures a measure step bounds."""
    taken = samples.samples
    tree_cpu = sum(sample.tree_cpu_percent for sample in taken) / len(taken) if taken else 0.0
    slope = _slope([(sample.elapsed, sample.rss_mb) for sample in taken])
    span = taken[-1].elapsed - taken[0].elapsed if taken else 0.0
    return {
        "rss_mb": samples.peak_rss_mb,
        "tree_rss_mb": samples.peak_tree_rss_mb,
        "cpu_percent": samples.mean_cpu_percent,
        "tree_cpu_percent": tree_cpu,
        "processes": float(max((sample.processes for sample in taken), default=0)),
        "rss_growth_mb": slope * span,
        "rss_slope_mb_per_hour": slope * 3600,
    }


def _slope(points: List[Tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 for fewer than two distinct x)."""
    if len(points) < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread
