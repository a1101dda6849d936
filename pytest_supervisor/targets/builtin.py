"""The built-in targets: how each writes our config in its own files, runs in the
foreground and is stopped by its users.

=============  ==================================  ==========================  ============
target         files                               foreground command          stopped by
=============  ==================================  ==========================  ============
supervisord    supervisord.conf                    supervisord -n -c FILE      SIGTERM
circus         circus.ini                          circusd FILE                SIGTERM
s6             a scan folder of service folders    s6-svscan DIR               SIGTERM
runit          a service folder per service        runsvdir -P DIR (in sh)     SIGTERM
command        the user's (or our config as is)    the user's command line     SIGTERM
=============  ==================================  ==========================  ============
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Sequence, Tuple, Union

from pytest_supervisor.errors import HarnessUsageError
from pytest_supervisor.suggest import did_you_mean
from pytest_supervisor.targets import NAMES
from pytest_supervisor.targets.translate import (
    Service,
    Unexpressible,
    read_services,
    signal_name,
)

OURS = "ours"

ConfigSource = Union[Mapping[str, Any], Path]
ConfigWriter = Callable[[Mapping[str, Any], Path], Path]


class Unavailable(Unexpressible):
    """The target's program cannot be found here; the message is the skip reason."""


@dataclass(frozen=True)
class Launch:
    """What the harness runs and how it stops it."""

    argv: Tuple[str, ...]
    stop_signal: str  # how its users stop it
    clean_exit_codes: Tuple[int, ...]  # exit codes of a clean stop
    commands: Dict[str, Tuple[str, ...]]  # each service's command line, for the observer
    label: str  # the target's name and the program run
    config_path: Path  # the target's own config file or folder


class Target:
    """A supervisor the harness can run our config on."""

    name = ""
    program = ""  # looked up on PATH unless named (--supervisor-peer NAME=PATH)
    stop_signal = "SIGTERM"
    clean_exit_codes: Tuple[int, ...] = (0,)

    def __init__(self, executable: str | None = None) -> None:
        self.executable = executable

    def launch(self, config: ConfigSource, directory: Path) -> Launch:
        """Write the target's files for ``config`` into ``directory``; what to run."""
        services = read_services(config)
        program = self._program()
        for service in services:
            _refuse_everywhere(self.name, service)
        argv, path = self.write(services, directory, program)
        return Launch(
            tuple(argv),
            self.stop_signal,
            self.clean_exit_codes,
            {service.name: tuple(service.argv) for service in services},
            f"{self.name} ({program})",
            path,
        )

    def write(
        self, services: Sequence[Service], directory: Path, program: str
    ) -> tuple[list[str], Path]:
        raise NotImplementedError

    def _program(self) -> str:
        program = self.executable or shutil.which(self.program)
        if program is None:
            raise Unavailable(
                f"{self.name} is not installed here: no {self.program} on PATH"
                f" (name it with --supervisor-peer {self.name}=PATH)"
            )
        if not os.access(program, os.X_OK):
            raise Unavailable(f"{self.name}: {program} is not an executable file")
        return program


def _refuse_everywhere(target: str, service: Service) -> None:
    """What none of the built-in peers has."""
    service.refuse(target, "depends_on", why="has no dependencies between services")
    service.refuse(target, "backoff", why="has no restart backoff")
    ready = service["ready"]
    if ready is not None and set(ready) - {"after", "timeout"}:
        raise Unexpressible(
            f"{target} has no readiness probe like ours (service {service.name!r} sets ready)"
        )


# -- supervisord ------------------------------------------------------------------------


class Supervisord(Target):
    name = "supervisord"
    program = "supervisord"

    def write(
        self, services: Sequence[Service], directory: Path, program: str
    ) -> tuple[list[str], Path]:
        lines = [
            "[supervisord]",
            "nodaemon=true",
            "loglevel=info",
            f"logfile={directory / 'supervisord.log'}",
            f"pidfile={directory / 'supervisord.pid'}",
            f"childlogdir={directory}",
            "",
        ]
        for service in services:
            lines += [f"[program:{service.name}]", *self._program_lines(service, directory), ""]
        path = directory / "supervisord.conf"
        path.write_text("\n".join(lines), "utf-8")
        return [program, "-n", "-c", str(path)], path

    def _program_lines(self, service: Service, directory: Path) -> list[str]:
        service.refuse(self.name, "restart_delay", why="has no restart delay")
        service.refuse(
            self.name,
            "max_retries",
            "reset_after",
            why="cannot limit the restarts of a program that started (startretries counts"
            " failed starts only)",
        )
        restart = {"always": "true", "on-failure": "unexpected", "never": "false"}
        lines = [
            f"command={_percent(shlex.join(service.argv))}",
            f"autorestart={restart[service['restart']]}",
            "exitcodes=" + ",".join(str(code) for code in service["success_exit_codes"]),
            # A program counts as started at once, so that a quick exit is restarted by its
            # policy instead of counting as a failed start.
            f"startsecs={(service['ready'] or {}).get('after', 0)}",
            f"stopsignal={signal_name(service['stop_signal'])[3:]}",
            f"stopwaitsecs={service['stop_timeout']}",
            f"autostart={'true' if service['autostart'] else 'false'}",
            "environment="
            + ",".join(f'{key}="{_percent(value)}"' for key, value in service.env.items()),
        ]
        if service["kill_mode"] == "tree":
            lines += ["stopasgroup=true", "killasgroup=true"]
        if service["cwd"]:
            lines.append(f"directory={service['cwd']}")
        for stream in ("stdout", "stderr"):
            log = _log_file(service[stream], directory, service.name, stream)
            lines.append(f"{stream}_logfile={log}")
        return lines


def _percent(text: str) -> str:
    return str(text).replace("%", "%%").replace('"', '\\"').replace("\n", " ")


def _log_file(setting: Any, directory: Path, name: str, stream: str) -> str:
    if setting is None or setting == "null":
        return "NONE"
    if isinstance(setting, Mapping):
        return str(setting["file"])
    return str(directory / f"{name}.{stream}.log")


# -- circus -------------------------------------------------------------------------------

# circus replaces an exited process only on its periodic check (5 s by default); 0.1 s is
# the check its users set when restarts must be quick.
CIRCUS_CHECK_DELAY = 0.1


class Circus(Target):
    name = "circus"
    program = "circusd"

    def write(
        self, services: Sequence[Service], directory: Path, program: str
    ) -> tuple[list[str], Path]:
        # ipc endpoints in the handle's folder: TCP defaults would collide between tests.
        lines = [
            "[circus]",
            f"check_delay = {CIRCUS_CHECK_DELAY}",
            f"endpoint = ipc://{directory / 'control.sock'}",
            f"pubsub_endpoint = ipc://{directory / 'pubsub.sock'}",
            # No stats_endpoint: naming one turns circusd-stats on, a process that, starting
            # on a busy machine, could keep circusd from exiting on SIGTERM.
            "statsd = False",
            "",
        ]
        for service in services:
            lines += self._watcher_lines(service)
        path = directory / "circus.ini"
        path.write_text("\n".join(lines), "utf-8")
        log = directory / "circusd.log"
        return [program, "--log-level", "info", "--log-output", str(log), str(path)], path

    def _watcher_lines(self, service: Service) -> list[str]:
        service.refuse(self.name, "restart_delay", why="has no restart delay")
        service.refuse(
            self.name, "max_retries", "reset_after",
            why="has no retry limit (its flapping detection counts restarts in a window)",
        )
        if service.asks("restart") and service["restart"] == "on-failure":
            raise Unexpressible(
                f"circus respawns whatever the exit code: it has no on-failure policy"
                f" (service {service.name!r} sets restart)"
            )
        service.refuse(self.name, "success_exit_codes", why="has no success exit codes")
        service.refuse(self.name, "ready", why="has no readiness delay")
        lines = [
            f"[watcher:{service.name}]",
            f"cmd = {shlex.join(service.argv)}",
            "numprocesses = 1",
            f"respawn = {service['restart'] != 'never'}",
            "check_flapping = False",
            "copy_env = True",  # keeps PATH and the run's marker
            f"stop_signal = {signal_name(service['stop_signal'])}",
            f"graceful_timeout = {service['stop_timeout']}",
            f"stop_children = {service['kill_mode'] == 'tree'}",
            f"autostart = {bool(service['autostart'])}",
        ]
        if service["cwd"]:
            lines.append(f"working_dir = {service['cwd']}")
        lines += ["", f"[env:{service.name}]"]
        lines += [f"{key} = {value}" for key, value in service.env.items()]
        return lines + [""]


# -- s6 and runit: a folder per service ----------------------------------------------------


def _run_script(service: Service) -> str:
    lines = ["#!/bin/sh", "exec 2>&1"]
    if service["cwd"]:
        lines.append(f"cd {shlex.quote(str(service['cwd']))} || exit 111")
    for key, value in service.env.items():
        lines.append(f"export {key}={shlex.quote(value)}")
    lines.append("exec " + shlex.join(service.argv))
    return "\n".join(lines) + "\n"


def _finish_script(service: Service, exit_code: str, no_restart: str) -> str | None:
    """The finish script that applies the restart policy and delay, if one is needed."""
    lines = ["#!/bin/sh"]
    policy = service["restart"]
    if policy == "never":
        lines.append(no_restart)
    elif policy == "on-failure":
        codes = " ".join(str(code) for code in service["success_exit_codes"])
        lines += [f'for code in {codes}; do [ "{exit_code}" = "$code" ] && {no_restart}; done']
    if service["restart_delay"]:
        lines.append(f"sleep {float(service['restart_delay'])}")
    return "\n".join(lines) + "\n" if len(lines) > 1 else None


def _executable(path: Path, text: str) -> None:
    path.write_text(text, "utf-8")
    path.chmod(0o755)


class S6(Target):
    name = "s6"
    program = "s6-svscan"

    def write(
        self, services: Sequence[Service], directory: Path, program: str
    ) -> tuple[list[str], Path]:
        scan = directory / "s6"
        scan.mkdir()
        for service in services:
            service.refuse(
                self.name, "max_retries", "reset_after", why="has no retry limit"
            )
            service.refuse(self.name, "kill_mode", why="signals the main process only")
            service.refuse(self.name, "ready", why="has no readiness delay")
            folder = scan / service.name
            folder.mkdir()
            _executable(folder / "run", _run_script(service))
            # finish gets the exit code (256 when killed by a signal); 125 means: stay down
            finish = _finish_script(service, "$1", "exit 125")
            if finish:
                _executable(folder / "finish", finish)
                limit = int((float(service["restart_delay"]) + 5) * 1000)
                (folder / "timeout-finish").write_text(f"{limit}\n")
            (folder / "down-signal").write_text(signal_name(service["stop_signal"]) + "\n")
            (folder / "timeout-kill").write_text(f"{int(float(service['stop_timeout']) * 1000)}\n")
            if not service["autostart"]:
                (folder / "down").write_text("")
        return [program, str(scan)], scan


# runsvdir alone cannot stop the services: on SIGHUP it tells each runsv to exit once its
# service is down, and exits, but nothing takes the services down. So runsvdir runs under
# sh, which on SIGTERM does what runit's own stage 3 does: sv force-stop, sv exit, then
# SIGHUP to runsvdir. It waits for the runsv processes to exit too (sv -w), as runit's PID 1
# sees to after stage 3: else they can outlive the sh, and count as leaked.
RUNIT_STAGE_3 = """\
runsvdir -P "$1" &
runsvdir=$!
trap 'sv -w "$2" force-stop "$1"/*; sv -w "$2" exit "$1"/*; kill -HUP $runsvdir' TERM
wait $runsvdir
wait $runsvdir
"""


class Runit(Target):
    name = "runit"
    program = "runsvdir"
    clean_exit_codes = (111,)  # runsvdir's on SIGHUP, which the script passes on

    def write(
        self, services: Sequence[Service], directory: Path, program: str
    ) -> tuple[list[str], Path]:
        scan = directory / "runit"
        scan.mkdir()
        sv = shutil.which("sv") or "sv"
        for service in services:
            service.refuse(self.name, "max_retries", "reset_after", why="has no retry limit")
            service.refuse(self.name, "kill_mode", why="signals the main process only")
            service.refuse(self.name, "ready", why="has no readiness delay")
            if signal_name(service["stop_signal"]) != "SIGTERM":
                raise Unexpressible(
                    f"runit stops a service with SIGTERM only (service {service.name!r}"
                    " sets stop_signal)"
                )
            folder = scan / service.name
            folder.mkdir()
            _executable(folder / "run", _run_script(service))
            # finish gets the exit code (-1 when killed by a signal)
            here = shlex.quote(str(folder))
            finish = _finish_script(service, "$1", f"exec {sv} once {here}")
            if finish:
                _executable(folder / "finish", finish)
            if not service["autostart"]:
                (folder / "down").write_text("")
        timeout = max([float(service["stop_timeout"]) for service in services] or [10.0])
        env_path = f"{Path(program).parent}:{os.environ.get('PATH', '')}"
        argv = ["/usr/bin/env", f"PATH={env_path}", "/bin/sh", "-c", RUNIT_STAGE_3, "runit"]
        return [*argv, str(scan), str(int(timeout))], scan


# -- the user's own -------------------------------------------------------------------------

CONFIG_PLACEHOLDER = "{config}"


class Command(Target):
    """The user's own supervisor: ``argv`` with ``{config}`` replaced by the config file's
    path. ``write_config(config, directory) -> path`` writes that file from our config; by
    default it is our config as it is (JSON, which is YAML)."""

    name = "command"

    def __init__(
        self,
        argv: Sequence[str] | None = None,
        write_config: ConfigWriter | None = None,
        *,
        stop_signal: str = "SIGTERM",
        clean_exit_codes: Sequence[int] = (0,),
    ) -> None:
        super().__init__()
        self.argv = list(argv or [])
        self.write_config = write_config
        self.stop_signal = stop_signal
        self.clean_exit_codes = tuple(clean_exit_codes)

    def launch(self, config: ConfigSource, directory: Path) -> Launch:
        if not self.argv:
            raise HarnessUsageError(
                "target 'command' needs the command line of your supervisor: --supervisor-cmd,"
                " or spawn(..., target=Command([...]))"
            )
        services = read_services(config)
        document = config if isinstance(config, Mapping) else _load(config)
        if self.write_config is not None:
            path = Path(self.write_config(document, directory))
        else:
            path = directory / "target-config.yaml"
            path.write_text(json.dumps(_with_service_names(document), indent=2), "utf-8")
        argv = [part.replace(CONFIG_PLACEHOLDER, str(path)) for part in self.argv]
        if not any(CONFIG_PLACEHOLDER in part for part in self.argv):
            argv.append(str(path))
        return Launch(
            tuple(argv),
            self.stop_signal,
            self.clean_exit_codes,
            {service.name: tuple(service.argv) for service in services},
            f"command ({shlex.join(self.argv)})",
            path,
        )


def _load(path: Path) -> Mapping[str, Any]:
    import yaml

    loaded = yaml.safe_load(Path(path).read_text("utf-8"))
    return loaded if isinstance(loaded, Mapping) else {}


def _with_service_names(config: Mapping[str, Any]) -> dict[str, Any]:
    """Our config with each service's env naming it, for a user's script that passes env."""
    from pytest_supervisor.targets.translate import SERVICE_VARIABLE

    copy = dict(config)
    services = {}
    for name, body in (config.get("services") or {}).items():
        body = dict(body or {})
        body["env"] = {**(body.get("env") or {}), SERVICE_VARIABLE: name}
        services[name] = body
    copy["services"] = services
    return copy


BUILTIN: Dict[str, type] = {
    "supervisord": Supervisord,
    "circus": Circus,
    "s6": S6,
    "runit": Runit,
    "command": Command,
}


def make(name: str, executable: str | None = None, command: Sequence[str] | None = None) -> Target:
    """The built-in target ``name``; ``executable`` overrides its program's PATH lookup."""
    if name not in BUILTIN:
        raise HarnessUsageError(
            f"unknown supervisor target {name!r}{did_you_mean(name, NAMES)};"
            f" known: {', '.join(NAMES)}"
        )
    if name == "command":
        return Command(command)
    target = BUILTIN[name](executable)
    assert isinstance(target, Target)
    return target
