"""Running the supervisor with a low process limit, so that its forks fail (Linux).

``RLIMIT_NPROC`` caps the processes *and threads* of the process's real user, counted
over the whole system, and the kernel ignores it for root (or any process holding
CAP_SYS_RESOURCE or CAP_SYS_ADMIN). So:

* run as an ordinary user, the supervisor gets the limit from ``prlimit``; the count
  then includes every other process of that user, so only a limit at or below what
  already runs (1 is the safe choice) makes *every* fork fail predictably;
* run as root, the supervisor also moves to an otherwise unused uid through
  ``setpriv``, keeping only CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH: enough to read
  the interpreter (often under a 0700 home) and write its events and log into the
  test's folders, while nothing it holds lifts the limit. That uid runs nothing else,
  so the limit counts exactly the supervisor's tree.

Both tools are util-linux's; when one is missing the limit cannot be arranged and
:class:`LimitUnavailable` says why (the scenario is skipped with that reason).
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Set, Tuple

import psutil

FIRST_SPARE_UID = 61000  # above the usual ranges of system and login users
_KEPT_CAPABILITIES = "+dac_override,+dac_read_search"


class LimitUnavailable(Exception):
    """This system cannot run the supervisor under the requested limit."""


def nproc_limited_prefix(limit: int) -> Tuple[str, ...]:
    """The argv prefix that runs a command with ``RLIMIT_NPROC`` = ``limit``."""
    if not sys.platform.startswith("linux"):
        raise LimitUnavailable(f"a fork limit is arranged on Linux only, not on {sys.platform}")
    prlimit = _tool("prlimit", "to set RLIMIT_NPROC")
    limited = (prlimit, f"--nproc={limit}", "--")
    if os.geteuid() != 0:
        return limited
    setpriv = _tool("setpriv", "to leave root, which RLIMIT_NPROC does not apply to")
    uid = spare_uid()
    return (
        setpriv,
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        f"--inh-caps={_KEPT_CAPABILITIES}",
        f"--ambient-caps={_KEPT_CAPABILITIES}",
        "--",
        *limited,
    )


def spare_uid() -> int:
    """A uid with no account and no running process, starting at FIRST_SPARE_UID."""
    in_use: Set[int] = set()
    for process in psutil.process_iter(["uids"]):
        uids = process.info.get("uids")
        if uids is not None:
            in_use.add(uids.real)
    uid = FIRST_SPARE_UID
    while uid in in_use or _has_account(uid):
        uid += 1
    return uid


def _has_account(uid: int) -> bool:
    import pwd  # POSIX only; this module is imported everywhere but used on Linux

    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def _tool(name: str, purpose: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise LimitUnavailable(f"needs the {name} tool (util-linux) {purpose}; it is not on PATH")
    return found
