"""Commands for the configurable dummy service (``dummy_services/dummy.py``).

``DummyService.locate()(exit_after=1, exit_code=3)`` gives
``[python, .../dummy_services/dummy.py, "--exit-after", "1", "--exit-code", "3"]``.
Keyword names are the dummy's flags with underscores; a misspelt one is an error
with a suggestion, not a flag the dummy would reject at run time, in another process.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from pytest_supervisor.errors import HarnessUsageError
from pytest_supervisor.suggest import did_you_mean

# The dummy's flags as keywords (``--exit-after`` is ``exit_after``): those that take
# a value, then the switches.
_VALUE_FLAGS = (
    "exit_after",
    "exit_code",
    "shutdown_delay",
    "grandchildren",
    "pids_file",
    "alloc_mb_per_s",
    "max_mb",
    "ready_line",
    "ready_file",
    "heartbeat",
    "name",
)
_SWITCHES = ("crash_at_start", "ignore_sigterm", "daemon", "burn_cpu")
# keyword -> whether its flag takes a value
OPTIONS: dict[str, bool] = {
    **{key: True for key in _VALUE_FLAGS},
    **{key: False for key in _SWITCHES},
}


class DummyService:
    """Builds command lines that run the dummy service with chosen behaviour."""

    def __init__(self, script: Path, python: str = sys.executable) -> None:
        self.script = Path(script)
        self.python = python

    @classmethod
    def locate(cls) -> DummyService:
        """The dummy shipped in the importable ``dummy_services`` package."""
        spec = importlib.util.find_spec("dummy_services")
        folders = list(spec.submodule_search_locations or []) if spec else []
        for folder in folders:
            script = Path(folder) / "dummy.py"
            if script.is_file():
                return cls(script)
        raise HarnessUsageError(
            "cannot find the dummy service: no importable package 'dummy_services' with a"
            f" dummy.py (searched {folders or 'nothing'}). Install pytest-supervisor with its"
            " dummy services."
        )

    @property
    def folder(self) -> Path:
        """What scenario files call ``{dummy}``."""
        return self.script.parent

    def command(self, **options: object) -> list[str]:
        """The dummy's command line; options map to flags, None or False omit them."""
        argv = [self.python, str(self.script)]
        for key, value in options.items():
            flag = self._flag(key)
            if OPTIONS[key]:
                if value is not None:
                    argv += [
                        flag,
                        os.fspath(value) if isinstance(value, os.PathLike) else str(value),
                    ]
            elif value not in (True, False, None):
                raise HarnessUsageError(
                    f"dummy service option {key!r} is a switch: pass True or False, not {value!r}"
                )
            elif value:
                argv.append(flag)
        return argv

    __call__ = command

    @staticmethod
    def _flag(key: str) -> str:
        if key not in OPTIONS:
            known = ", ".join(sorted(OPTIONS))
            raise HarnessUsageError(
                f"unknown dummy service option {key!r}{did_you_mean(key, OPTIONS)}. Known: {known}."
            )
        return "--" + key.replace("_", "-")
