"""Following the supervisor's JSON-lines event stream.

The supervisor appends one JSON object per line to a regular file (SPEC section 4).
One reader thread per stream tails that file and hands complete lines to everyone
else through a ``threading.Condition``: waiting code never sleeps, it is woken by
the reader the moment a line arrives, when the writer process ends, or when its own
deadline passes.

The reader itself has to poll: a regular file offers no portable cross-process
notification of appends. It re-reads every ``POLL_INTERVAL`` seconds. That delay
only affects when a waiter learns of an event, never what is measured: respawn
timing uses the ``mono`` timestamp the supervisor wrote into the event. And it never
hides an event already written: ``events`` reads what the file holds before answering,
so an event written before a control command's reply is there once the reply is.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Sequence, TypeVar

from pytest_supervisor.errors import SupervisorAssertionError

POLL_INTERVAL = 0.005

Event = Dict[str, Any]
T = TypeVar("T")


class EventStream:
    """Events read so far from one supervisor's events file, and ways to wait for more.

    ``writer_alive`` tells whether the writing process still runs; once it has ended
    and the file is drained, the stream is ``ended`` and waiters stop waiting.
    """

    def __init__(self, path: Path, writer_alive: Callable[[], bool]) -> None:
        self.path = path
        self._writer_alive = writer_alive
        self._condition = threading.Condition()
        self._events: list[Event] = []
        self._malformed: list[str] = []
        self._ended = False
        self._closing = False
        self._file: BinaryIO | None = None  # open from start() until the reader stops
        self._unfinished = b""  # a line read before its end was written
        self._reader = threading.Thread(
            target=self._follow, name=f"pytest-supervisor events {path}", daemon=True
        )

    def start(self) -> None:
        """Open the file (it exists by now) and follow it."""
        self._file = open(self.path, "rb")  # (the reader thread closes it)
        self._reader.start()

    def close(self) -> None:
        """Stop the reader thread (after a last read) and wait for it."""
        with self._condition:
            self._closing = True
            self._condition.notify_all()
        if self._reader.is_alive():
            self._reader.join()

    @property
    def events(self) -> list[Event]:
        """Every event written so far, oldest first."""
        with self._condition:
            self._read_available()
            return list(self._events)

    @property
    def malformed(self) -> list[str]:
        """Lines that were not a JSON object with an ``event`` field."""
        with self._condition:
            return list(self._malformed)

    @property
    def ended(self) -> bool:
        with self._condition:
            return self._ended

    def wait(self, check: Callable[[Sequence[Event]], T | None], deadline: float) -> T | None:
        """Return ``check(events)`` once it is not None, re-checking after every new line.

        Gives up and returns None when ``time.monotonic()`` reaches ``deadline`` or
        when the stream has ended without ``check`` being satisfied.
        """
        with self._condition:
            while True:
                result = check(self._events)
                if result is not None or self._ended:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._condition.wait(remaining)

    def wait_until_ended(self, deadline: float) -> bool:
        """Wait until the writer has ended and every line it wrote was read."""
        with self._condition:
            while not self._ended:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._condition.wait(remaining)
            return True

    def _follow(self) -> None:
        try:
            self._read_until_writer_ends()
        finally:  # however the reader stops, nobody may go on waiting for it
            with self._condition:
                self._ended = True
                self._condition.notify_all()

    def _read_until_writer_ends(self) -> None:
        try:
            while True:
                # Sampled before reading, so the read after the writer's end still
                # sees every line it flushed before it ended.
                writer_alive = self._writer_alive()
                with self._condition:
                    self._read_available()
                    if not writer_alive or self._closing:
                        if self._unfinished.strip():
                            self._malformed.append(
                                _text(self._unfinished) + "  (unterminated last line)")
                        return
                    self._condition.wait(POLL_INTERVAL)
        finally:
            with self._condition:
                if self._file is not None:
                    self._file.close()
                    self._file = None

    def _read_available(self) -> None:
        """Take in the complete lines the file holds now (with the condition held)."""
        if self._file is None:
            return
        chunk = self._file.read()
        if chunk:
            lines = (self._unfinished + chunk).split(b"\n")
            self._unfinished = lines.pop()
            self._add(lines)

    def _add(self, lines: list[bytes]) -> None:
        with self._condition:
            for line in lines:
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    event = None
                if isinstance(event, dict) and isinstance(event.get("event"), str):
                    self._events.append(event)
                else:
                    self._malformed.append(_text(line))
            self._condition.notify_all()


def mono_of(event: Event) -> float:
    """The event's ``mono`` timestamp; a missing one breaks the contract (SPEC section 4)."""
    mono = event.get("mono")
    if not isinstance(mono, (int, float)):
        raise SupervisorAssertionError(f"event without a numeric 'mono' field: {event}")
    return float(mono)


def pid_of_event(event: Event) -> int:
    """The event's ``pid``; a missing one breaks the contract (SPEC section 4)."""
    pid = event.get("pid")
    if not isinstance(pid, int):
        raise SupervisorAssertionError(f"event without an integer 'pid' field: {event}")
    return pid


def first_match(wanted: Callable[[Event], bool]) -> Callable[[Sequence[Event]], Event | None]:
    """A check for ``EventStream.wait`` that scans each event once, oldest first."""
    cursor = 0

    def check(events: Sequence[Event]) -> Event | None:
        nonlocal cursor
        while cursor < len(events):
            event = events[cursor]
            cursor += 1
            if wanted(event):
                return event
        return None

    return check


# Events after which a service has no process until it is spawned again. An exit reported
# for an earlier pid (already replaced) changes nothing; events without a pid always count.
PROCESS_ENDED = ("exited", "stopped", "spawn_failed", "gave_up")


def live_pid(events: Sequence[Event], service: str) -> int | None:
    """The pid the service runs as now, according to the events so far."""
    pid = None
    for event in events:
        if event.get("service") != service:
            continue
        kind = event.get("event")
        if kind in ("spawned", "adopted"):
            pid = event.get("pid")
        elif kind in PROCESS_ENDED and event.get("pid", pid) == pid:
            pid = None
    return pid if isinstance(pid, int) else None


def last_event(events: Sequence[Event], kind: str, service: str) -> Event | None:
    """The newest event of ``kind`` for ``service``."""
    for event in reversed(events):
        if event.get("event") == kind and event.get("service") == service:
            return event
    return None


def _text(line: bytes) -> str:
    return line.decode("utf-8", "replace").rstrip("\r")
