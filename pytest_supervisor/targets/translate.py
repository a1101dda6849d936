"""Our config, read the way our supervisor reads it, for other supervisors' files.

Only what a test wrote counts as asked for: a key left at our default is translated to the
target's nearest behaviour, a key the test set that the target cannot express raises
:class:`Unexpressible` naming the target and what it lacks, and the test is skipped with
that reason -- never run with the key silently dropped.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from pytest_supervisor.errors import HarnessUsageError

# Every process of a service carries its name here (inherited like the run's marker), so
# that the observer can tell which service a process of the target's tree belongs to.
SERVICE_VARIABLE = "PYTEST_SUPERVISOR_SERVICE"

# Our defaults (SPEC section 3) for the keys a translation reads.
DEFAULTS: dict[str, Any] = {
    "shell": False,
    "cwd": None,
    "env": {},
    "restart": "on-failure",
    "success_exit_codes": [0],
    "max_retries": 3,
    "restart_delay": 0,
    "backoff": None,
    "reset_after": 10,
    "stop_signal": "SIGTERM",
    "stop_timeout": 10,
    "kill_mode": "tree",
    "ready": None,
    "depends_on": [],
    "stdout": "inherit",
    "stderr": "inherit",
    "autostart": True,
}


# Values that ask for nothing a target has to do: writing them is the same as leaving them out.
_ASK_NOTHING: dict[str, Any] = {
    "restart_delay": 0,
    "max_retries": None,
    "backoff": None,
    "reset_after": 10,
    "ready": None,
    "depends_on": [],
    "success_exit_codes": [0],
}
_UNSET = object()


class Unexpressible(Exception):
    """The config asks for something the target cannot do; the message is the skip reason."""


@dataclass(frozen=True)
class Service:
    """One service of our config with our defaults filled in."""

    name: str
    keys: Mapping[str, Any]
    written: frozenset[str] = field(default_factory=frozenset)  # keys the config set

    def __getitem__(self, key: str) -> Any:
        return self.keys[key]

    def asks(self, key: str) -> bool:
        """Whether the config set ``key`` (to a value that asks for something)."""
        return key in self.written and self.keys[key] != _ASK_NOTHING.get(key, _UNSET)

    @property
    def argv(self) -> list[str]:
        """The command as the target executes it (a shell command goes through /bin/sh)."""
        command = self.keys["command"]
        if self.keys["shell"]:
            text = command if isinstance(command, str) else shlex.join(command)
            return ["/bin/sh", "-c", text]
        return shlex.split(command) if isinstance(command, str) else [str(p) for p in command]

    @property
    def env(self) -> dict[str, str]:
        """The service's own variables, with the one that names it to the observer."""
        env = {str(k): str(v) for k, v in (self.keys["env"] or {}).items()}
        env[SERVICE_VARIABLE] = self.name
        return env

    def refuse(self, target: str, *keys: str, why: str) -> None:
        """Raise :class:`Unexpressible` if the config asks for any of ``keys``."""
        asked = [key for key in keys if self.asks(key)]
        if asked:
            raise Unexpressible(
                f"{target} {why} (service {self.name!r} sets {', '.join(asked)})"
            )


def read_services(config: Mapping[str, Any] | Path) -> list[Service]:
    """The services of a config dict or file, each with our defaults filled in."""
    if not isinstance(config, Mapping):
        config = yaml.safe_load(Path(config).read_text("utf-8")) or {}
    services = config.get("services")
    if not isinstance(services, Mapping) or not services:
        raise HarnessUsageError("a config for another supervisor needs a 'services' mapping")
    defaults = config.get("defaults") or {}
    found = []
    for name, body in services.items():
        body = body or {}
        keys = {**DEFAULTS, **defaults, **body}
        if "command" not in keys:
            raise HarnessUsageError(f"service {name!r} has no command")
        found.append(Service(str(name), keys, frozenset(defaults) | frozenset(body)))
    return found


def signal_name(name: str) -> str:
    """``SIGTERM`` for ``SIGTERM``, ``TERM`` or ``sigterm``."""
    name = str(name).upper()
    return name if name.startswith("SIG") else "SIG" + name
