"""``SupervisorHandle``: one supervisor under test and everything a test does with it.

The handle launches the supervisor as a direct child of the current process, always
with ``--exit-with-parent``: if this process dies in any way -- SIGKILL, pytest-timeout's
``os._exit``, a crashed xdist worker -- the supervisor stops its services and exits,
so nothing outlives the test run. (On Linux that guard may be PR_SET_PDEATHSIG, which
fires when the *thread* that spawned the child ends: spawn from a thread that lives as
long as the test run, as pytest's main thread does.)

Teardown (:meth:`SupervisorHandle.close`) stops the supervisor gracefully, expects exit
code 0, then looks for leftovers: processes carrying this handle's environment marker
or remembered as its descendants (see :mod:`pytest_supervisor.processes`). Leftovers
are killed and reported with their pids and command lines.

Everything that waits does so on the event stream's condition (see
:mod:`pytest_supervisor.events`); nothing here sleeps. Methods that can fail a test set
``__tracebackhide__``, pytest's convention for reporting the failure at the test's line
rather than inside the harness.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, NoReturn, Sequence

import psutil

from pytest_supervisor import diagnostics, processes, signals
from pytest_supervisor.errors import (
    HarnessUsageError,
    LaunchError,
    SupervisorAssertionError,
    TeardownFailed,
)
from pytest_supervisor.events import (
    Event,
    EventStream,
    first_match,
    last_event,
    live_pid,
    mono_of,
    pid_of_event,
)
from pytest_supervisor.report import metrics
from pytest_supervisor.resources import ResourceSample, ResourceSampler, ResourceSamples

EVENTS_FILE = "events.jsonl"
LOG_FILE = "supervisor.log"

DEFAULT_TIMEOUT = 10.0
# The supervisor's default shutdown_timeout (30 s), plus time to report it.
DEFAULT_STOP_TIMEOUT = 35.0
# How long after a deadline an event stamped before it may still be on its way to
# the reader (written, flushed, polled); only the failing path ever waits for it.
EVENT_DELIVERY_GRACE = 1.0
# Leftovers already dying (a SIGKILLed grandchild not yet reaped) get this long.
LEAK_GRACE = 1.0
KILL_TIMEOUT = 5.0

Recorder = Callable[[str, object], None]
Unsupported = Callable[[str], NoReturn]

USAGE_ERROR = 2  # the supervisor's exit code for a bad config or command line

if TYPE_CHECKING:  # typing_extensions is only needed by type checkers
    from typing_extensions import Self

    from pytest_supervisor.targets.observe import Observer


def discard_measurement(name: str, value: object) -> None:
    """Default recorder: keeps nothing (the pytest plugin keeps them on the test)."""


def raise_signal_unavailable(reason: str) -> NoReturn:
    raise signals.SignalUnavailable(reason)


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one supervisor; built by ``SupervisorFactory``."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: Path
    directory: Path  # holds the config (if generated), events and log
    config_path: Path
    marker: str
    stop_timeout: float = DEFAULT_STOP_TIMEOUT
    # How the supervisor is stopped, and the exit codes of a clean stop (another target's).
    stop_signal: str = "graceful_stop"
    clean_exit_codes: tuple[int, ...] = (0,)
    # Set for a target without our event stream: the harness watches it and writes its events.
    observed: ObservedTarget | None = None

    @property
    def events_path(self) -> Path:
        return self.directory / EVENTS_FILE

    @property
    def log_path(self) -> Path:
        return self.directory / LOG_FILE


@dataclass(frozen=True)
class ObservedTarget:
    """A target watched from outside (see :mod:`pytest_supervisor.targets.observe`)."""

    label: str  # its name and program, as the supervisor_started event tells
    config_path: Path  # its own config
    commands: Mapping[str, Sequence[str]] = field(default_factory=dict)
    method: str = "auto"


@dataclass(frozen=True)
class _Kill:
    """A signal the test sent to a service, kept to time what happens next."""

    pid: int
    signal: str
    mono: float  # the test's time.monotonic() just before sending

    @property
    def cause(self) -> str:
        return f"{self.signal} to pid {self.pid}"


# The supervisor gets its own session (Windows: process group), which keeps terminal
# signals meant for pytest away from it, so the harness alone drives its shutdown; on
# Windows a new process group is also what lets CTRL_BREAK_EVENT target it.
_NEW_PROCESS_GROUP: int = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)


class SupervisorHandle:
    """A supervisor process under test.

    ``record(name, value)`` receives measurements (respawn latencies, resource samples,
    event counts); ``unsupported(reason)`` is called when a test asks for a signal this
    OS lacks -- the pytest plugin passes ``pytest.skip``.
    """

    def __init__(
        self,
        spec: LaunchSpec,
        *,
        record: Recorder = discard_measurement,
        unsupported: Unsupported = raise_signal_unavailable,
    ) -> None:
        self.spec = spec
        self._record = record
        self._unsupported = unsupported
        self._process: subprocess.Popen | None = None
        self._stream = EventStream(spec.events_path, self._writer_alive)
        self._observer: Observer | None = None
        self._pending_kills: dict[str, _Kill] = {}
        self._seen: dict[int, float] = {}  # descendants ever seen: pid -> creation time
        self._launched_wall = 0.0
        self._launched_mono = 0.0
        self._stop_requested: float | None = None  # the first graceful stop: shutdown time
        self._killed = False  # by the harness (on Windows its exit code cannot tell)
        self._closed = False

    def __repr__(self) -> str:
        return f"<SupervisorHandle {self.name!r} pid={self.pid if self._process else None}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- launching ---------------------------------------------------------------

    def start(self) -> None:
        """Launch the supervisor and start following its events."""
        self.spec.directory.mkdir(parents=True, exist_ok=True)
        self.spec.events_path.touch()
        self._launched_wall = time.time()
        self._launched_mono = time.monotonic()
        with open(self.spec.log_path, "ab") as log:
            try:
                self._process = subprocess.Popen(
                    self.spec.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=dict(self.spec.env),
                    cwd=str(self.spec.cwd),
                    creationflags=_NEW_PROCESS_GROUP,
                    start_new_session=not _NEW_PROCESS_GROUP,
                    preexec_fn=self._parent_death_signal(),
                )
            except OSError as error:
                raise LaunchError(
                    f"cannot start the supervisor {list(self.spec.argv)}: {error}"
                ) from error
        observed = self.spec.observed
        if observed is not None:
            from pytest_supervisor.targets.observe import Observer

            self._observer = Observer(
                self._process,
                marker=self.spec.marker,
                commands=observed.commands,
                events_path=self.spec.events_path,
                label=observed.label,
                config=observed.config_path,
                method=observed.method,
            )
            self._observer.start()
        self._stream.start()

    def _parent_death_signal(self) -> Callable[[], None] | None:
        """For another target (it has no --exit-with-parent): on Linux, the kernel sends it
        its stop signal when this process dies, so that nothing outlives the test run."""
        if self.spec.observed is None or not sys.platform.startswith("linux"):
            return None
        signum = int(signals.resolve(self.spec.stop_signal).number)

        def set_parent_death_signal() -> None:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signum)  # PR_SET_PDEATHSIG

        return set_parent_death_signal

    def wait_started(self, timeout: float = DEFAULT_TIMEOUT) -> Event:
        """Wait for ``supervisor_started``; a supervisor that exits first fails here, and one
        that refused its config or command line (exit code 2) says why in the headline."""
        __tracebackhide__ = True
        try:
            return self.wait_for("supervisor_started", timeout=timeout)
        except SupervisorAssertionError:
            if self.returncode != USAGE_ERROR or self._stream.events:
                raise
        said = diagnostics.log_tail(self.log_path)
        if all(line.startswith(str(self.spec.config_path)) for line in said):
            headline = f"the supervisor refused its config, {self.spec.config_path}:"
        else:
            headline = "the supervisor refused to start (exit code 2, a bad command line):"
        raise SupervisorAssertionError(f"{headline}\n{diagnostics.indent(said)}\n{self._status()}")

    # -- what the test reads ---------------------------------------------------

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int:
        return self._started().pid

    @property
    def returncode(self) -> int | None:
        """The exit code once the supervisor has exited (negative: killed by that signal)."""
        return self._started().poll()

    @property
    def events(self) -> list[Event]:
        """Every event read so far, oldest first."""
        return self._stream.events

    @property
    def log_path(self) -> Path:
        return self.spec.log_path

    @property
    def events_path(self) -> Path:
        return self.spec.events_path

    def log_lines(self) -> list[str]:
        """The supervisor's output so far (its log and inherited service output)."""
        return self.spec.log_path.read_text("utf-8", "replace").splitlines()

    def processes(self) -> list[psutil.Process]:
        """The supervisor and all its live descendants, as psutil processes."""
        tree = processes.tree(self.pid)
        processes.remember(tree[1:], self._seen)
        return tree

    def pid_of(self, service: str, timeout: float = DEFAULT_TIMEOUT) -> int:
        """The service's current pid, waiting up to ``timeout`` for it to be running."""
        __tracebackhide__ = True
        pid = self._stream.wait(
            lambda events: live_pid(events, service), time.monotonic() + timeout
        )
        if pid is None:
            raise self._failure(
                f"service {service!r} had no running process {self._gave_up_waiting(timeout)}",
                service,
            )
        return pid

    # -- waiting ---------------------------------------------------------------

    def wait_for(
        self,
        event: str,
        service: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        predicate: Callable[[Event], bool] | None = None,
        since: float | None = None,
    ) -> Event:
        """Wait for the first event named ``event`` (for ``service``, if given); return it.

        ``since`` is a ``time.monotonic()`` value: earlier events are ignored.
        ``predicate`` narrows further, e.g. ``lambda e: e["returncode"] == 3``.
        """
        __tracebackhide__ = True

        def wanted(candidate: Event) -> bool:
            return (
                candidate.get("event") == event
                and (service is None or candidate.get("service") == service)
                and (since is None or mono_of(candidate) >= since)
                and (predicate is None or predicate(candidate))
            )

        found = self._stream.wait(first_match(wanted), time.monotonic() + timeout)
        if found is None:
            what = f"{event!r} event" + (f" for service {service!r}" if service else "")
            if since is not None:
                what += f" since +{since - self._launched_mono:.3f}s"
            if predicate is not None:
                what += " matching the predicate"
            raise self._failure(f"no {what} {self._gave_up_waiting(timeout)}", service)
        return found

    def wait_exit(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait for the supervisor to exit and return its exit code."""
        __tracebackhide__ = True
        if not self._stream.wait_until_ended(time.monotonic() + timeout):
            raise self._failure(f"the supervisor did not exit within {timeout:g}s")
        return self._started().wait()

    # -- acting ----------------------------------------------------------------

    def signal(self, sig: signals.SignalSpec) -> None:
        """Send a signal (portable name, POSIX name or number) to the supervisor."""
        __tracebackhide__ = True
        resolved = self._resolve(sig)
        # An exited child's pid is not an error to os.kill on every OS (a POSIX zombie takes
        # signals; Windows may fail in other words): ask the process itself first.
        if self.returncode is not None:
            raise self._failure(f"the supervisor was gone when {resolved.name} was sent")
        self._note_stop_request(resolved)
        try:
            resolved.send(self.pid)
        except ProcessLookupError:
            raise self._failure(f"the supervisor was gone when {resolved.name} was sent") from None
        except signals.SignalUnavailable as missing:
            self._unsupported(str(missing))
        except OSError as error:
            raise self._failure(
                f"{resolved.name} could not be sent to the supervisor (pid {self.pid}): {error}"
            ) from None

    def kill(self, service: str, sig: signals.SignalSpec = "hard_kill") -> int:
        """Send ``sig`` to the service's process and return the pid it was sent to.

        The moment is kept: the next ``assert_respawned`` or ``assert_not_respawned``
        for this service is timed from it.
        """
        __tracebackhide__ = True
        resolved = self._resolve(sig)
        pid = self.pid_of(service)
        # The pid comes from an event that may be a few milliseconds old: confirm it is
        # still one of ours before signalling it.
        if pid not in {process.pid for process in self.processes()[1:]}:
            raise self._failure(
                f"service {service!r} pid {pid} is not a live descendant of the supervisor", service
            )
        sent_at = time.monotonic()
        try:
            resolved.send(pid)
        except ProcessLookupError:
            raise self._failure(
                f"service {service!r} pid {pid} was gone when {resolved.name} was sent", service
            ) from None
        except signals.SignalUnavailable as missing:  # e.g. CTRL_BREAK_EVENT under wine
            self._unsupported(str(missing))
        except OSError as error:  # e.g. CTRL_BREAK_EVENT without a console shared with it
            raise self._failure(
                f"{resolved.name} could not be sent to service {service!r} (pid {pid}): {error}",
                service,
            ) from None
        self._pending_kills[service] = _Kill(pid, resolved.name, sent_at)
        self._record(
            metrics.KILL,
            {"supervisor": self.name, "service": service, "pid": pid, "signal": resolved.name},
        )
        return pid

    def stop(self, timeout: float | None = None) -> int:
        """Stop the supervisor gracefully and return its exit code.

        If it has not exited within ``timeout`` (default: the spec's stop timeout) it
        is killed and the stop fails.
        """
        __tracebackhide__ = True
        if self.returncode is not None:
            return self.returncode
        timeout = self.spec.stop_timeout if timeout is None else timeout
        graceful = signals.resolve(self.spec.stop_signal)
        self.processes()
        self._note_stop_request(graceful)
        try:
            graceful.send(self.pid)
        except ProcessLookupError:
            pass  # it exited on its own since the check above; its code is what counts
        if self._stream.wait_until_ended(time.monotonic() + timeout):
            return self._started().wait()
        self._kill()
        raise self._failure(
            f"the supervisor did not exit within {timeout:g}s of {graceful.name}; it was killed"
        )

    # -- asserting -------------------------------------------------------------

    def assert_respawned(self, service: str, within: float, not_before: float | None = None) -> int:
        """Assert the service came back within ``within`` seconds; return its new pid.

        Timed from the test's own clock when it sent the last ``kill(service)``, to the
        ``mono`` the supervisor stamped on the ``spawned`` event -- so neither event
        delivery nor this process's scheduling enters the figure. Without a kill, the
        service's last ``exited`` event is the start. The latency is recorded.
        """
        __tracebackhide__ = True
        if within <= 0 or (not_before is not None and not 0 <= not_before <= within):
            raise HarnessUsageError(
                f"assert_respawned({service!r}): need 0 <= not_before <= within and within > 0,"
                f" got within={within!r}, not_before={not_before!r}"
            )
        start, old_pid, cause = self._respawn_start(service)

        def outcome(event: Event) -> bool:
            if event.get("service") != service or mono_of(event) < start:
                return False
            kind = event.get("event")
            return (kind == "spawned" and event.get("pid") != old_pid) or kind == "gave_up"

        found = self._stream.wait(first_match(outcome), start + within + EVENT_DELIVERY_GRACE)
        if found is None or found["event"] == "gave_up":
            self._record(
                metrics.RESPAWN_MISSED,
                {
                    "supervisor": self.name,
                    "service": service,
                    "cause": cause,
                    "outcome": "not respawned" if found is None else "given up",
                },
            )
        if found is None:
            raise self._failure(
                f"service {service!r} was not respawned within {within:g}s of {cause}"
                + (" (the supervisor exited)" if self._stream.ended else ""),
                service,
            )
        if found["event"] == "gave_up":
            raise self._failure(
                f"service {service!r} was given up (retries={found.get('retries')}) instead of"
                f" respawned after {cause}",
                service,
            )
        latency = mono_of(found) - start
        self._record(
            metrics.RESPAWN_LATENCY,
            {
                "supervisor": self.name,
                "service": service,
                "seconds": latency,
                "cause": cause,
                "scheduled_delay": self._scheduled_delay(service, start, mono_of(found)),
            },
        )
        if latency > within:
            raise self._failure(
                f"service {service!r} was respawned {latency:.3f}s after {cause},"
                f" later than the {within:g}s allowed",
                service,
            )
        if not_before is not None and latency < not_before:
            raise self._failure(
                f"service {service!r} was respawned {latency:.3f}s after {cause},"
                f" sooner than the {not_before:g}s minimum",
                service,
            )
        return pid_of_event(found)

    def assert_not_respawned(self, service: str, for_: float) -> None:
        """Assert no ``spawned`` event for the service arrives in the next ``for_`` seconds.

        Right after ``kill(service)`` the window starts at the kill, so a respawn that
        came before this call is caught too.
        """
        __tracebackhide__ = True
        kill = self._pending_kills.pop(service, None)
        start = kill.mono if kill else time.monotonic()
        cause = kill.cause if kill else "the check began"

        def respawn(event: Event) -> bool:
            return (
                event.get("event") == "spawned"
                and event.get("service") == service
                and mono_of(event) >= start
            )

        found = self._stream.wait(first_match(respawn), time.monotonic() + for_)
        if found is not None:
            raise self._failure(
                f"service {service!r} was respawned (pid {found.get('pid')})"
                f" {mono_of(found) - start:.3f}s after {cause}; expected no respawn for {for_:g}s",
                service,
            )

    def sample_resources(self, duration: float, interval: float = 0.5) -> ResourceSamples:
        """Sample memory and CPU of the supervisor and its tree for ``duration`` seconds."""
        __tracebackhide__ = True
        if duration <= 0 or interval <= 0:
            raise HarnessUsageError(
                "sample_resources needs duration > 0 and interval > 0,"
                f" got {duration!r} and {interval!r}"
            )
        sampler = ResourceSampler(self.pid)
        begin = time.monotonic()
        if sampler.sample(0.0) is None:  # primes the CPU counters
            raise self._failure("cannot sample resources: the supervisor is not running")
        taken: list[ResourceSample] = []
        for tick in range(1, max(1, round(duration / interval)) + 1):
            if self._stream.wait_until_ended(begin + tick * interval):
                raise self._failure(
                    f"the supervisor exited while its resources were sampled ({len(taken)} samples)"
                )
            sample = sampler.sample(time.monotonic() - begin)
            if sample is None:
                raise self._failure("the supervisor vanished while its resources were sampled")
            taken.append(sample)
        self.processes()
        result = ResourceSamples(interval, tuple(taken))
        self._record("resource_samples", {"supervisor": self.name, **result.as_record()})
        return result

    # -- teardown --------------------------------------------------------------

    def close(self) -> None:
        """Stop the supervisor, then find, kill and report anything it left behind.

        Raises ``TeardownFailed`` listing every problem: it would not stop, it exited
        non-zero on a graceful stop, it leaked processes, or its event stream was malformed.
        """
        if self._closed or self._process is None:
            return
        self._closed = True
        findings: list[str | None] = []
        try:
            findings.append(self._stop_for_teardown())
        finally:  # even when interrupted: nothing may outlive the test
            self._kill()
            if self._observer is not None:
                self._observer.close()
            self._stream.close()
            findings.append(self._kill_leftovers())
        problems = [finding for finding in findings if finding]
        malformed = self._stream.malformed
        if malformed:
            problems.append(
                f"the event stream {self.events_path} has {len(malformed)} line(s) that are not"
                f" JSON event objects:\n" + diagnostics.indent(malformed[:5])
            )
        self._record(
            "supervisor_events", {"supervisor": self.name, "count": len(self._stream.events)}
        )
        self._record(
            metrics.SUPERVISOR_RUN,
            metrics.supervisor_run(
                self.name,
                self._stream.events,
                launched=self._launched_mono,
                stop_requested=self._stop_requested,
                config_path=self.spec.config_path,
                log_path=self.log_path,
            ),
        )
        if problems:
            raise TeardownFailed(problems)

    def explain(self, headline: str, service: str | None = None) -> str:
        """``headline`` followed by the evidence: status, recent events, log tail."""
        events = self._stream.events
        parts = [headline, self._status()]
        if service is not None:
            last_exit = last_event(events, "exited", service)
            if last_exit is not None:
                shown = diagnostics.format_event(last_exit, self._launched_mono)
                parts.append(f"last exit of {service!r}: {shown}")
        parts.append(
            "recent events (time since launch):\n"
            + diagnostics.indent(diagnostics.format_events(events, self._launched_mono))
        )
        parts.append(
            f"supervisor log {self.log_path} (last lines):\n"
            + diagnostics.indent(diagnostics.log_tail(self.log_path))
        )
        return "\n".join(parts)

    # -- internals -------------------------------------------------------------

    def _stop_for_teardown(self) -> str | None:
        """Stop a still running supervisor; what went wrong, if anything."""
        if self.returncode is not None:
            return None  # the test saw it end, and judged its exit code itself
        try:
            code = self.stop()
        except SupervisorAssertionError as error:
            return str(error)
        if code not in self.spec.clean_exit_codes:
            expected = " or ".join(str(clean) for clean in self.spec.clean_exit_codes)
            return self.explain(
                f"the supervisor exited with code {code} on a graceful stop; expected {expected}"
            )
        return None

    def _started(self) -> subprocess.Popen:
        if self._process is None:
            raise HarnessUsageError(f"supervisor {self.name!r} has not been started")
        return self._process

    def _running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _writer_alive(self) -> bool:
        """Whether events may still be written: by the supervisor, or by its observer."""
        if self.spec.observed is not None:
            return self._observer is not None and self._observer.alive()
        return self._running()

    def _kill(self) -> None:
        """Kill the supervisor if it still runs (SIGKILL; Windows: TerminateProcess)."""
        if self._running():
            self._started().kill()
            self._killed = True
        self._started().wait()

    def _status(self) -> str:
        code = self.returncode
        if code is None:
            state = "running"
        elif code < 0:
            state = f"killed by {signals.resolve(-code).name}"
        elif self._killed:  # Windows: TerminateProcess leaves an exit code, not a signal
            state = f"killed by {signals.resolve('hard_kill').name} (exit code {code})"
        else:
            state = f"exited with code {code}"
        return f"supervisor {self.name!r} (pid {self.pid}): {state}"

    def _gave_up_waiting(self, timeout: float) -> str:
        """How a wait ended without its event: out of time, or out of supervisor."""
        if self._stream.ended:
            return "before the supervisor exited"
        return f"within {timeout:g}s"

    def _failure(self, headline: str, service: str | None = None) -> SupervisorAssertionError:
        return SupervisorAssertionError(self.explain(headline, service))

    def _resolve(self, sig: signals.SignalSpec) -> signals.Signal:
        try:
            return signals.resolve(sig)
        except signals.SignalUnavailable as missing:
            self._unsupported(str(missing))
        except ValueError as error:
            raise HarnessUsageError(str(error)) from None

    def _respawn_start(self, service: str) -> tuple[float, int | None, str]:
        kill = self._pending_kills.pop(service, None)
        if kill is not None:
            return kill.mono, kill.pid, kill.cause
        last_exit = last_event(self._stream.events, "exited", service)
        if last_exit is None:
            raise HarnessUsageError(
                f"assert_respawned({service!r}) has nothing to time from: kill it with"
                f" handle.kill({service!r}) or wait_for('exited', {service!r}) first"
            )
        pid = last_exit.get("pid")
        return mono_of(last_exit), pid if isinstance(pid, int) else None, f"its exit (pid {pid})"

    def _note_stop_request(self, sig: signals.Signal) -> None:
        """Keep when the supervisor was first asked to shut down, to time the shutdown."""
        asks_to_stop = sig == signals.resolve(self.spec.stop_signal) or sig.name == "SIGINT"
        if asks_to_stop and self._stop_requested is None:
            self._stop_requested = time.monotonic()

    def _scheduled_delay(self, service: str, since: float, until: float) -> float:
        """The restart delay the supervisor announced for ``service`` between two times."""
        for event in reversed(self._stream.events):
            if (
                event.get("event") == "restart_scheduled"
                and event.get("service") == service
                and since <= mono_of(event) <= until
            ):
                return float(event.get("delay") or 0.0)
        return 0.0

    def _kill_leftovers(self) -> str | None:
        found = processes.carrying_marker(self.spec.marker, self._launched_wall)
        found += processes.still_running(self._seen)
        leftovers = processes.wait_gone(processes.unique(found), LEAK_GRACE) if found else []
        if not leftovers:
            return None
        described = [processes.describe(process) for process in leftovers]
        self._record(metrics.LEAKED_PROCESSES, {"supervisor": self.name, "processes": described})
        survivors = processes.kill(leftovers, KILL_TIMEOUT)
        text = (
            f"supervisor {self.name!r} (pid {self.pid}) leaked {len(leftovers)} process(es)"
            f" still running after it exited; they were killed:\n" + diagnostics.indent(described)
        )
        if survivors:
            text += "\nstill alive after the kill: " + ", ".join(
                str(process.pid) for process in survivors
            )
        return text
