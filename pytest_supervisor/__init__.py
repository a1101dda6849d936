"""pytest-supervisor's pytest plugin: spawn the supervisor, kill its children, send it
signals, and assert respawn timing and resource use -- without leaking a process.

This package is what pytest registers, under the name ``pytest_supervisor``, both for
``-p pytest_supervisor`` and for the ``pytest11`` entry point of the same name, so it
is never registered twice. Its hooks and fixtures live in
:mod:`pytest_supervisor.plugin`, which pytest loads once through ``pytest_plugins``.
The classes exported here need no pytest: :class:`SupervisorFactory` spawns
supervisors, each a :class:`SupervisorHandle`.
"""

from pytest_supervisor.dummy_command import DummyService
from pytest_supervisor.errors import (
    HarnessUsageError,
    LaunchError,
    SupervisorAssertionError,
    TeardownFailed,
)
from pytest_supervisor.factory import SupervisorFactory, default_supervisor_command
from pytest_supervisor.handle import SupervisorHandle
from pytest_supervisor.resources import ResourceSample, ResourceSamples
from pytest_supervisor.signals import SignalUnavailable

pytest_plugins = ["pytest_supervisor.plugin"]

__all__ = [
    "DummyService",
    "HarnessUsageError",
    "LaunchError",
    "ResourceSample",
    "ResourceSamples",
    "SignalUnavailable",
    "SupervisorAssertionError",
    "SupervisorFactory",
    "SupervisorHandle",
    "TeardownFailed",
    "default_supervisor_command",
]
