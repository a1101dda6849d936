"""The plugin's options, validated in one pass.

Each option comes from the command line, else from the ini file, else a default.
Every bad value is reported together with where it came from, e.g.
``--stress-scale='-1' (command line): expected a number greater than 0``.
"""

from __future__ import annotations

import math
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import AbstractSet, Sequence

from pytest_supervisor.suggest import did_you_mean

PHASES = ("unit", "integration", "stress")


class SettingsError(ValueError):
    """One or more options have bad values; the message lists each."""


@dataclass(frozen=True)
class Setting:
    """A raw option value and where it came from."""

    spelling: str  # as the user wrote it: "--phase" or "supervisor_phase"
    value: str
    origin: str  # "command line", or the ini file's name
    base: Path  # relative paths in the value are relative to this folder

    def problem(self, expected: str) -> str:
        return f"{self.spelling}={self.value!r} ({self.origin}): expected {expected}"


@dataclass(frozen=True)
class PluginSettings:
    supervisor_cmd: tuple[str, ...] | None  # None: this distribution's supervisor.py
    report_dir: Path
    scenarios_dir: Path
    phases: frozenset[str] | None  # None: no phase selection
    stress_scale: float

    def selects(self, item_phases: AbstractSet[str]) -> bool:
        """Whether an item marked with ``item_phases`` runs; unmarked items always do."""
        return self.phases is None or not item_phases or bool(self.phases & item_phases)


def parse(
    rootdir: Path,
    *,
    supervisor_cmd: Setting | None = None,
    report_dir: Setting | None = None,
    scenarios_dir: Setting | None = None,
    phase: Setting | None = None,
    stress_scale: Setting | None = None,
) -> PluginSettings:
    """Validate every given setting; raise one ``SettingsError`` naming all bad ones."""
    problems: list[str] = []
    settings = PluginSettings(
        supervisor_cmd=_command(supervisor_cmd, problems) if supervisor_cmd else None,
        report_dir=_folder(report_dir) if report_dir else rootdir / "reports",
        scenarios_dir=_folder(scenarios_dir) if scenarios_dir else rootdir / "scenarios",
        phases=_phases(phase, problems) if phase else None,
        stress_scale=_scale(stress_scale, problems) if stress_scale else 1.0,
    )
    if problems:
        raise SettingsError("\n".join(problems))
    return settings


def _command(setting: Setting, problems: list[str]) -> tuple[str, ...] | None:
    # Windows paths are full of backslashes, which POSIX quoting rules would eat.
    posix = os.name != "nt"
    try:
        words = shlex.split(setting.value, posix=posix)
    except ValueError as error:
        problems.append(setting.problem(f"a command line ({error})"))
        return None
    if not posix:
        words = [
            word[1:-1] if len(word) > 1 and word[0] == word[-1] == '"' else word for word in words
        ]
    if not words:
        problems.append(setting.problem("a command, e.g. 'python path/to/supervisor.py'"))
        return None
    return tuple(words)


def format_command(words: Sequence[str]) -> str:
    """``words`` as a command line that --supervisor-cmd reads back as the same words: POSIX
    shell quoting, or on Windows double quotes around a word that needs them."""
    if os.name != "nt":
        return shlex.join(words)
    return " ".join(
        f'"{word}"' if not word or word[0] in "'\"" or any(c.isspace() for c in word) else word
        for word in words
    )


def _folder(setting: Setting) -> Path:
    return setting.base / Path(setting.value).expanduser()


def _phases(setting: Setting, problems: list[str]) -> frozenset[str] | None:
    names = [name.strip() for name in setting.value.split(",") if name.strip()]
    unknown = [name for name in names if name not in PHASES]
    if unknown or not names:
        hint = did_you_mean(unknown[0], PHASES) if unknown else ""
        problems.append(
            setting.problem(f"one or more of {', '.join(PHASES)}, comma-separated{hint}")
        )
        return None
    return frozenset(names)


def _scale(setting: Setting, problems: list[str]) -> float:
    try:
        scale = float(setting.value)
    except ValueError:
        scale = math.nan
    if not (math.isfinite(scale) and scale > 0):
        problems.append(setting.problem("a number greater than 0"))
        return 1.0
    return scale
