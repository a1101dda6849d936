"""Signals by portable name, mapped once to what the running OS can deliver.

Tests say what they mean -- ``graceful_stop``, ``hard_kill``, ``reload``,
``interrupt`` (and ``reexec``, ``inject_fault`` for the self-respawn paths) -- and
:func:`resolve` turns that into the signal this OS uses for it. Where the OS has no
equivalent, :class:`SignalUnavailable` says so in words; the pytest plugin turns it
into a skip with that reason.

The split is decided by a capability probe, not a platform name: where ``os.kill``
delivers console control events (``signal.CTRL_BREAK_EVENT`` exists, i.e. Windows)
there are no POSIX signals to send, whatever names the ``signal`` module defines.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from typing import Union

import psutil

from pytest_supervisor import wine
from pytest_supervisor.suggest import did_you_mean

PORTABLE_NAMES = ("graceful_stop", "hard_kill", "reload", "interrupt", "reexec", "inject_fault")

# Names a test may use on any OS; those this OS lacks are unavailable, not misspelt.
POSIX_NAMES = (
    "SIGHUP",
    "SIGINT",
    "SIGQUIT",
    "SIGKILL",
    "SIGTERM",
    "SIGUSR1",
    "SIGUSR2",
    "SIGSTOP",
    "SIGCONT",
    "SIGTSTP",
    "SIGABRT",
    "SIGALRM",
    "SIGPIPE",
    "SIGCHLD",
)

SignalSpec = Union[str, int, signal.Signals]


class SignalUnavailable(Exception):
    """The running OS has no way to deliver the requested signal."""


@dataclass(frozen=True)
class Signal:
    """A deliverable signal: the name messages use and the number ``os.kill`` takes."""

    name: str
    number: int

    def send(self, pid: int) -> None:
        os.kill(pid, self.number)


# The named event a supervisor on Windows waits on for a graceful shutdown (supervisor.py's
# SHUTDOWN_EVENT): what the harness sets where it cannot send the supervisor CTRL_BREAK_EVENT.
SHUTDOWN_EVENT = "Local\\supervisor-shutdown-%d"


@dataclass(frozen=True)
class ConsoleBreak(Signal):
    """CTRL_BREAK_EVENT to a process group. It needs a console shared with the target; where
    there is none (a service manager, some CI runners, wine) a supervisor is sent its
    shutdown event instead, which asks for the same graceful shutdown.

    Any other process (a service) has no such event: under wine, which cannot deliver
    CTRL_BREAK_EVENT at all, that is :class:`SignalUnavailable` (a skip, with the reason);
    elsewhere the ``OSError`` says why this console could not deliver it.
    """

    def send(self, pid: int) -> None:
        try:
            os.kill(pid, self.number)
        except ProcessLookupError:
            raise
        except OSError as error:
            if _set_shutdown_event(pid):
                return
            # Not a supervisor: nothing else would stop it gently.
            if not psutil.pid_exists(pid):  # gone: not the console's fault, nor a skip
                raise ProcessLookupError(f"no process {pid}") from None
            if wine.under_wine():
                raise SignalUnavailable(wine.CANNOT_BREAK) from None
            raise OSError(
                f"{error} (CTRL_BREAK_EVENT reaches a process group only through a console"
                f" it shares with the sender)"
            ) from error


def _set_shutdown_event(pid: int) -> bool:
    import ctypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    kernel32.OpenEventW.restype = ctypes.c_void_p
    kernel32.OpenEventW.argtypes = [ctypes.c_ulong, ctypes.c_int, ctypes.c_wchar_p]
    kernel32.SetEvent.argtypes = [ctypes.c_void_p]
    kernel32.CloseHandle.argtypes = [ctypes.c_void_p]
    event_modify_state = 0x0002
    handle = kernel32.OpenEventW(event_modify_state, False, SHUTDOWN_EVENT % pid)
    if not handle:
        return False
    try:
        return bool(kernel32.SetEvent(handle))
    finally:
        kernel32.CloseHandle(handle)


# What each portable name means on a POSIX system (supervisor contract, SPEC section 2).
_POSIX_MEANINGS: dict[str, str] = {
    "graceful_stop": "SIGTERM",
    "hard_kill": "SIGKILL",
    "reload": "SIGHUP",
    "interrupt": "SIGINT",
    "reexec": "SIGUSR2",
    "inject_fault": "SIGUSR1",
}

# Why a portable name has no equivalent where os.kill sends console control events.
_CONSOLE_GAPS: dict[str, str] = {
    "reload": "has no reload signal; use the `reload` control command",
    "interrupt": (
        "cannot send CTRL_C_EVENT to one process group (it reaches every process on"
        " the console, pytest included)"
    ),
    "reexec": "has no re-exec signal; use the `reexec` control command",
    "inject_fault": "has no fault-injection signal; use the control command",
}

_CTRL_BREAK_EVENT: int | None = getattr(signal, "CTRL_BREAK_EVENT", None)


def _console_signal(name: str, ctrl_break: int) -> Signal:
    if name == "graceful_stop":
        return ConsoleBreak("CTRL_BREAK_EVENT", ctrl_break)
    if name == "hard_kill":
        # os.kill() calls TerminateProcess for any value that is not one of the two
        # console control events: the equivalent of SIGKILL.
        return Signal("TerminateProcess", int(signal.SIGTERM))
    if name in _CONSOLE_GAPS:
        raise SignalUnavailable(f"{name}: {sys.platform} {_CONSOLE_GAPS[name]}")
    raise SignalUnavailable(
        f"{name}: {sys.platform} delivers console control events, not POSIX signals;"
        f" use graceful_stop or hard_kill"
    )


def _posix_signal(name: str) -> Signal:
    os_name = _POSIX_MEANINGS.get(name, name)
    number = getattr(signal, os_name, None)
    if not isinstance(number, int):
        raise SignalUnavailable(f"{name}: {sys.platform} has no signal {os_name}")
    return Signal(os_name, int(number))


def _check_known(name: str) -> None:
    # A misspelt name must fail the test, not turn into a skip.
    if name in PORTABLE_NAMES or name in POSIX_NAMES:
        return
    hint = did_you_mean(name, PORTABLE_NAMES + POSIX_NAMES)
    raise ValueError(
        f"unknown signal {name!r}{hint}. Use a portable name ({', '.join(PORTABLE_NAMES)}),"
        f" a POSIX name such as 'SIGTERM', or a number."
    )


def resolve(spec: SignalSpec) -> Signal:
    """Return the deliverable signal for a portable name, a POSIX name or a number.

    Raises ``ValueError`` for a name nobody defines and :class:`SignalUnavailable`
    for one this OS cannot deliver.
    """
    if isinstance(spec, int):
        try:
            return Signal(signal.Signals(spec).name, int(spec))
        except ValueError:
            return Signal(f"signal {int(spec)}", int(spec))
    name = str(spec)
    _check_known(name)
    if _CTRL_BREAK_EVENT is not None:
        return _console_signal(name, _CTRL_BREAK_EVENT)
    return _posix_signal(name)
