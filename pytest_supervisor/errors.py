"""Exceptions of the harness.

Expectations about the supervisor that do not hold are ``AssertionError`` subclasses,
so pytest reports them as test failures; their message carries the evidence (recent
events, exit statuses, the supervisor's last log lines). Misuse of the harness is a
``ValueError``, so it reads as a bug in the test rather than in the supervisor.
"""

from __future__ import annotations

from typing import Sequence


class SupervisorAssertionError(AssertionError):
    """The supervisor did not behave as the test expected."""


class TeardownFailed(SupervisorAssertionError):
    """Tearing a supervisor down found problems: it would not stop, or it leaked."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n\n".join(problems))
        self.problems = tuple(problems)


class HarnessUsageError(ValueError):
    """The harness was called in a way it does not support."""


class LaunchError(HarnessUsageError):
    """The supervisor under test cannot be found or started."""
