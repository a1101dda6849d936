"""Text for failure messages: recent events and the tail of the supervisor's log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

RECENT_EVENTS = 15
LOG_TAIL_LINES = 20

# Tail reads stop this far from the end of the log: enough for LOG_TAIL_LINES long lines.
_TAIL_BYTES = 16 * 1024
_ENVELOPE = ("ts", "mono", "event", "service")


def format_event(event: Mapping[str, object], origin: float) -> str:
    """``+  1.234s exited web pid=12 returncode=None signal=SIGKILL ...``.

    ``origin`` is the monotonic time the times are shown relative to (the launch).
    """
    mono = event.get("mono")
    when = f"+{mono - origin:7.3f}s" if isinstance(mono, (int, float)) else "       ?s"
    words = [when, str(event.get("event"))]
    if event.get("service") is not None:
        words.append(str(event["service"]))
    words.extend(f"{key}={_compact(value)}" for key, value in event.items() if key not in _ENVELOPE)
    return " ".join(words)


def format_events(events: Sequence[Mapping[str, object]], origin: float) -> list[str]:
    """The last RECENT_EVENTS events, oldest first, saying how many were left out."""
    lines = []
    if len(events) > RECENT_EVENTS:
        lines.append(f"(... {len(events) - RECENT_EVENTS} earlier events)")
    lines.extend(format_event(event, origin) for event in events[-RECENT_EVENTS:])
    return lines or ["(none)"]


def log_tail(path: Path) -> list[str]:
    """The last LOG_TAIL_LINES lines of a log file, or why there are none."""
    try:
        with open(path, "rb") as log:
            log.seek(0, 2)
            size = log.tell()
            log.seek(max(0, size - _TAIL_BYTES))
            data = log.read()
    except OSError as error:
        return [f"(cannot read {path}: {error.strerror})"]
    lines = data.decode("utf-8", "replace").splitlines()
    if size > _TAIL_BYTES:
        lines = lines[1:]  # the first line was cut by the seek
    return lines[-LOG_TAIL_LINES:] or ["(empty)"]


def indent(lines: Sequence[str], prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in lines)


def _compact(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, str):
        return value
    return json.dumps(value)
