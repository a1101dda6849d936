"""pytest-supervisor's pytest plugin: spawn the supervisor, kill its children, send it
signals, and assert respawn timing and resource use -- without leaking a process.

This package is what pytest registers, under the name ``pytest_supervisor``, both for
``-p pytest_supervisor`` and for the ``pytest11`` entry point of the same name, so it
is never registered twice. Its hooks and fixtures live in
:mod:`pytest_supervisor.plugin`, which pytest loads once through ``pytest_plugins``.
The classes exported here need no pytest: :class:`SupervisorFactory` spawns
supervisors, each a :class:`SupervisorHandle`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (`X as X`: re-exported)
    from pytest_supervisor.dummy_command import DummyService as DummyService
    from pytest_supervisor.errors import HarnessUsageError as HarnessUsageError
    from pytest_supervisor.errors import LaunchError as LaunchError
    from pytest_supervisor.errors import SupervisorAssertionError as SupervisorAssertionError
    from pytest_supervisor.errors import TeardownFailed as TeardownFailed
    from pytest_supervisor.factory import SupervisorFactory as SupervisorFactory
    from pytest_supervisor.factory import default_supervisor_command as default_supervisor_command
    from pytest_supervisor.handle import SupervisorHandle as SupervisorHandle
    from pytest_supervisor.resources import ResourceSample as ResourceSample
    from pytest_supervisor.resources import ResourceSamples as ResourceSamples
    from pytest_supervisor.signals import SignalUnavailable as SignalUnavailable

pytest_plugins = ["pytest_supervisor.plugin"]

# Where each export lives. They are imported on first use: pytest loads this package in every
# run where it is installed, and most of those runs never touch them.
_EXPORTS = {
    "DummyService": "dummy_command",
    "HarnessUsageError": "errors",
    "LaunchError": "errors",
    "ResourceSample": "resources",
    "ResourceSamples": "resources",
    "SignalUnavailable": "signals",
    "SupervisorAssertionError": "errors",
    "SupervisorFactory": "factory",
    "SupervisorHandle": "handle",
    "TeardownFailed": "errors",
    "default_supervisor_command": "factory",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
