"""What differs when the harness runs in a Windows Python under wine (tools/wine-python.sh).

Wine runs the Windows code paths for real, but lacks a few things every Windows has. The
harness works around what it can -- :func:`cpu_seconds` -- and skips, with one of the reasons
here, what it cannot: the words say what wine cannot do, so that a skip under wine is never
mistaken for a gap of the supervisor or of Windows.
"""

from __future__ import annotations

import functools
import sys

import psutil

# Wine's console server (server/console.c) answers STATUS_NOT_IMPLEMENTED for every console
# control event but CTRL_C_EVENT.
CANNOT_BREAK = (
    "wine cannot deliver CTRL_BREAK_EVENT (its console server implements only CTRL_C_EVENT)"
)


@functools.lru_cache(maxsize=None)
def under_wine() -> bool:
    """True in a Windows Python under wine: wine's ntdll exports wine_get_version, no
    Windows ntdll does."""
    if sys.platform != "win32":
        return False
    import ctypes

    return hasattr(ctypes.WinDLL("ntdll"), "wine_get_version")  # type: ignore[attr-defined]


def cpu_seconds(process: psutil.Process) -> float:
    """The user plus system CPU time a process has used, in seconds.

    Under wine (8.0), GetProcessTimes on *another* process returns the calling process's own
    times, so ``Process.cpu_times()`` of the supervisor would measure the harness. The system
    process list (NtQuerySystemInformation), where psutil looks when it may not open a
    process, has each process's own times under wine too.
    """
    if under_wine():
        platform = psutil._psplatform  # type: ignore[attr-defined]
        try:
            info = platform.cext.proc_info(process.pid)
        except ProcessLookupError:
            raise psutil.NoSuchProcess(process.pid) from None
        fields = platform.pinfo_map
        return float(info[fields["user_time"]] + info[fields["kernel_time"]])
    times = process.cpu_times()
    return times.user + times.system
