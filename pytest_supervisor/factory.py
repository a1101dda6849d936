"""``SupervisorFactory``: spawns supervisors for one test and tears every one down.

Usable without pytest::

    with SupervisorFactory(Path("/tmp/run")) as factory:
        handle = factory.spawn({"services": {"web": {"command": ["python", "web.py"]}}})
        handle.kill("web")
        handle.assert_respawned("web", within=2.0)
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import re
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, Union

from pytest_supervisor import processes
from pytest_supervisor.errors import HarnessUsageError, LaunchError, TeardownFailed
from pytest_supervisor.handle import (
    DEFAULT_STOP_TIMEOUT,
    DEFAULT_TIMEOUT,
    EVENTS_FILE,
    LaunchSpec,
    ObservedTarget,
    Recorder,
    SupervisorHandle,
    Unsupported,
    discard_measurement,
    raise_signal_unavailable,
)

ConfigSource = Union[Mapping[str, object], str, "os.PathLike[str]"]

_NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")
# What the distribution installs supervisor.py as (see pyproject.toml).
INSTALLED_SUPERVISOR = "pytest_supervisor_standalone.supervisor"

if TYPE_CHECKING:  # typing_extensions is only needed by type checkers
    from typing_extensions import Self

    from pytest_supervisor.targets.builtin import Target

TargetSpec = Union[str, "Target", None]
# The user property naming the supervisor a test ran (for the conformance table).
TARGET_RECORD = "supervisor_target"


def default_supervisor_command() -> tuple[str, ...]:
    """This distribution's ``supervisor.py``, run by the current interpreter: the installed
    module (a wheel or an editable install), else, from a checkout on sys.path, the file
    importable as ``supervisor``."""
    spec = _find_spec(INSTALLED_SUPERVISOR) or _find_spec("supervisor")
    if spec is None or not spec.origin:
        raise LaunchError(
            f"cannot find the supervisor under test: no importable module {INSTALLED_SUPERVISOR!r}"
            " or 'supervisor'. Install pytest-supervisor, or name one with --supervisor-cmd."
        )
    if spec.submodule_search_locations is not None:
        raise LaunchError(
            f"cannot find the supervisor under test: pytest-supervisor is not installed here,"
            f" and the importable 'supervisor' ({spec.origin}) is a package (supervisord's?),"
            " not supervisor.py. Install pytest-supervisor, or name one with --supervisor-cmd."
        )
    return (sys.executable, spec.origin)


def _find_spec(name: str) -> importlib.machinery.ModuleSpec | None:
    try:
        return importlib.util.find_spec(name)
    except ImportError:  # its package is missing
        return None


def _json_default(value: object) -> str:
    # Paths are the one non-JSON type configs commonly hold (commands, cwd, files).
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} {value!r} cannot be written to a supervisor config")


class SupervisorFactory:
    """Launches supervisors into ``workdir``, one folder per handle.

    ``command`` is the supervisor under test as an argv prefix (``run -c ...`` follows);
    None means :func:`default_supervisor_command`, looked up at the first spawn.
    ``target`` is the supervisor every spawn runs unless it names its own: ``"ours"``
    (None), a built-in target's name or a :class:`pytest_supervisor.targets.builtin.Target`;
    ``peers`` maps a built-in target's name to its program (else found on PATH). With the
    target ``command``, ``command`` is the user's supervisor.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        command: Sequence[str] | None = None,
        record: Recorder = discard_measurement,
        unsupported: Unsupported = raise_signal_unavailable,
        target: TargetSpec = None,
        peers: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.target = target
        self._peers = dict(peers or {})
        self._command = tuple(command) if command is not None else None
        self._record = record
        self._unsupported = unsupported
        self._handles: list[SupervisorHandle] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def handles(self) -> list[SupervisorHandle]:
        return list(self._handles)

    @property
    def command(self) -> tuple[str, ...]:
        if self._command is None:
            self._command = default_supervisor_command()
        return self._command

    def spawn(
        self,
        config: ConfigSource,
        *,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        fault_injection: bool = False,
        cwd: str | os.PathLike[str] | None = None,
        wait: bool = True,
        start_timeout: float = DEFAULT_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        target: TargetSpec = None,
        observe: str = "auto",
    ) -> SupervisorHandle:
        """Start a supervisor on ``config`` and return its handle.

        ``config`` is a dict (written as YAML into the handle's folder) or the path of a
        config file. ``env`` is added to the supervisor's environment, ``args`` to its
        command line; ``fault_injection`` passes ``--allow-fault-injection``. The process
        runs in ``cwd``: by default the config file's folder, or the handle's folder for a
        dict. With ``wait`` (the default) this returns once ``supervisor_started`` came.

        ``target`` names the supervisor to run instead of the factory's (see the class);
        another target is watched from outside (``observe``: auto, proc-connector, pidfd or
        psutil), and a config key it cannot express skips the test with the reason.
        """
        # Everything that can be refused is checked before the folder is made.
        name = self._new_name(name)
        given_path, config_text = _config_source(config)
        if isinstance(args, str):
            raise HarnessUsageError(f"args must be a list of arguments, not the string {args!r}")
        directory = self.workdir / name
        directory.mkdir(parents=True)
        config_path = given_path or directory / "config.yaml"
        if config_text is not None:
            config_path.write_text(config_text, "utf-8")
        marker = uuid.uuid4().hex
        chosen = self._target(self.target if target is None else target)
        options: dict[str, Any] = {}
        if chosen is None:
            argv = self._argv(config_path, directory, fault_injection, args)
        else:
            argv, options = self._other_target(chosen, config, config_path, directory, observe)
            argv += tuple(str(arg) for arg in args)
        self._record(TARGET_RECORD, {"supervisor": name, "target": _target_name(chosen)})
        spec = LaunchSpec(
            name=name,
            argv=argv,
            env=_environment(env, marker),
            cwd=Path(cwd) if cwd is not None else config_path.parent,
            directory=directory,
            config_path=config_path,
            marker=marker,
            stop_timeout=stop_timeout,
            **options,
        )
        handle = SupervisorHandle(spec, record=self._record, unsupported=self._unsupported)
        self._handles.append(handle)  # before starting: teardown must see it whatever happens
        handle.start()
        if wait:
            handle.wait_started(start_timeout)
        return handle

    def close(self) -> None:
        """Close every handle, newest first; raise one ``TeardownFailed`` for all problems."""
        problems: list[str] = []
        unexpected: list[BaseException] = []
        for handle in reversed(self._handles):
            try:
                handle.close()
            except TeardownFailed as failed:
                problems.extend(failed.problems)
            except BaseException as error:  # noqa: BLE001 - closing the others comes first
                unexpected.append(error)
        if unexpected:
            raise unexpected[0]
        if problems:
            raise TeardownFailed(problems)

    def _target(self, target: TargetSpec) -> Target | None:
        """The target object for a name (None: ours)."""
        from pytest_supervisor.targets import builtin

        if target is None or target == builtin.OURS:
            return None
        if isinstance(target, str):
            command = self._command if target == "command" else None
            return builtin.make(target, self._peers.get(target), command)
        return target

    def _other_target(
        self,
        target: Target,
        config: ConfigSource,
        config_path: Path,
        directory: Path,
        observe: str,
    ) -> tuple[tuple[str, ...], dict[str, Any]]:
        from pytest_supervisor.targets.translate import Unexpressible

        source = config if isinstance(config, Mapping) else config_path
        try:
            launch = target.launch(source, directory)
        except Unexpressible as reason:
            self._unsupported(str(reason))
        observed = ObservedTarget(launch.label, launch.config_path, launch.commands, observe)
        options = {
            "stop_signal": launch.stop_signal,
            "clean_exit_codes": launch.clean_exit_codes,
            "observed": observed,
        }
        return launch.argv, options

    def _new_name(self, name: str | None) -> str:
        taken = {handle.name for handle in self._handles}
        if name is None:
            name = (
                "supervisor"
                if "supervisor" not in taken
                else f"supervisor-{len(self._handles) + 1}"
            )
        if not _NAME.match(name):
            raise HarnessUsageError(f"supervisor name {name!r} must match [A-Za-z0-9_.-]+")
        if name in taken:
            raise HarnessUsageError(f"a supervisor named {name!r} was already spawned in this test")
        return name

    def _argv(
        self, config_path: Path, directory: Path, fault_injection: bool, args: Sequence[str]
    ) -> tuple[str, ...]:
        argv = [*self.command, "run", "-c", str(config_path)]
        argv += ["--events", str(directory / EVENTS_FILE), "--exit-with-parent"]
        if fault_injection:
            argv.append("--allow-fault-injection")
        return tuple(argv + [str(arg) for arg in args])


def _config_source(config: ConfigSource) -> tuple[Path | None, str | None]:
    """A config file's path, or the YAML to write for a dict config."""
    if isinstance(config, (str, os.PathLike)):
        return Path(config).resolve(), None
    if not isinstance(config, Mapping):
        raise HarnessUsageError(
            f"config must be a dict or the path of a config file, not {type(config).__name__}"
        )
    try:
        # JSON is valid YAML, and the stdlib writes it.
        return None, json.dumps(config, indent=2, default=_json_default) + "\n"
    except (TypeError, ValueError) as error:
        raise HarnessUsageError(f"config cannot be written as YAML: {error}") from None


def _environment(extra: Mapping[str, str] | None, marker: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra or {})
    env[processes.MARKER_VARIABLE] = marker
    return env


def _target_name(target: Target | None) -> str:
    return "ours" if target is None else target.name
