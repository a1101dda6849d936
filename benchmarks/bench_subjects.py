"""The supervisors measured, the services they run, and the guarantee that nothing outlives us.

Each ``Subject`` turns one list of ``Service`` into its own config file and command line.
Every subject gets the same services with the same meaning: restart at once whatever the
exit, never give up, discard the output. The peers are installed when first needed, each
where it cannot meet this project: supervisord and circus into virtualenvs of their own
under ``benchmarks/.venvs/`` (supervisord's distribution is also called ``supervisor``, so it
must never share an environment with this project), PM2 with npm into
``benchmarks/.venvs/pm2/``, s6 and runit from the OS's packages (apt-get, as root). s6 and
runit get their service folders from the test harness's own translation
(``pytest_supervisor.targets.builtin``), written once for both.

``Launcher`` starts a subject in a session of its own with a tag in its environment that
every descendant inherits, so that at the end -- normal, exception or Ctrl+C -- each
process this run caused can be found in ``/proc`` and killed, wherever it was re-parented.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple, Type

import yaml

from pytest_supervisor.targets import builtin

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
VENVS_DIR = BENCH_DIR / ".venvs"
RUN_TAG_ENV = "SUPERVISOR_BENCH_TAG"
CIRCUS_CHECK_DELAY = 0.1


@dataclass(frozen=True)
class Backoff:
    """Our restart delay policy, for the one benchmark that checks backoff."""

    delay: float
    factor: float
    max_delay: float

    def due(self, restart_number: int) -> float:
        """Delay before the ``restart_number``-th restart (1 = the first), as SPEC §3 says."""
        return min(self.delay * self.factor ** (restart_number - 1), self.max_delay)


@dataclass(frozen=True)
class Service:
    name: str
    argv: Tuple[str, ...]  # unique per service, so a process tells which service it is


def _program(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SystemExit("the benchmark needs `%s` on PATH" % name)
    return found


def sleep_services(count: int) -> List[Service]:
    sleep = _program("sleep")
    return [Service("sleep%04d" % i, (sleep, str(1_000_000 + i))) for i in range(count)]


def python_services(count: int) -> List[Service]:
    code = "import time; time.sleep(1e6)"
    return [Service("python%04d" % i, (sys.executable, "-c", code, "python%04d" % i))
            for i in range(count)]


def forking_services(count: int, children: int) -> List[Service]:
    """Services whose main process starts ``children`` sleeping children, then becomes a
    ``sleep`` itself: killing it leaves them behind unless the supervisor stops them."""
    sh = _program("sh")
    script = ('i=0; while [ "$i" -lt %d ]; do sleep 1000000 & i=$((i + 1)); done; '
              'exec sleep 1000000' % children)
    return [Service("tree%04d" % i, (sh, "-c", script, "tree%04d" % i)) for i in range(count)]


def crashing_services(count: int) -> List[Service]:
    """Services that exit with status 1 about 10 ms after they start."""
    sh = _program("sh")
    return [Service("storm%04d" % i, (sh, "-c", "sleep 0.01; exit 1", "storm%04d" % i))
            for i in range(count)]


# --------------------------------------------------------------------------- subjects

class Subject:
    name = ""
    supports_backoff = False
    supports_self_respawn = False
    # A benchmark that a subject cannot run is reported as skipped with this reason.
    no_backoff_reason = "has no configurable exponential backoff comparable to ours"
    no_self_respawn_reason = "has no way to re-execute itself while keeping its children"
    # A service that ran shorter than this is started again only once it has had this long
    # (crash-loop protection); respawn trials kill only older processes, or they would
    # measure that wait instead of the respawn.
    restart_holdoff = 0.0
    # Where its service processes are: how many generations below it, and the command lines
    # of run scripts that exec the service (not the service yet).
    service_depth = 1
    launchers: Set[Tuple[str, ...]] = set()

    def version(self) -> str:
        raise NotImplementedError

    def command(self, services: Sequence[Service], workdir: Path, backoff: Optional[Backoff],
                fault_injection: bool) -> List[str]:
        """Write the subject's config into ``workdir``; return the command that runs it."""
        raise NotImplementedError

    def environment(self, workdir: Path) -> Dict[str, str]:
        """Variables the subject needs set (on top of ours) to run from ``workdir``."""
        return {}

    def under(self, python: str, cold: bool, folder: Path) -> "Subject":
        """The same subject run by the interpreter ``python``, its own code compiled at
        every start (``cold``) or read from bytecode compiled beforehand; ``folder`` is its
        own to write in. Only subjects written in Python that run on any interpreter."""
        raise NotImplementedError

    def events_file(self, workdir: Path) -> Optional[Path]:
        return None

    def control_socket(self, workdir: Path) -> Optional[Path]:
        """Where the subject listens for control commands (ours: JSON lines), if it does."""
        return None


def bytecode_environment(cold: bool) -> Dict[str, str]:
    # An empty value is the same as unset: bytecode is written where it can be.
    return {"PYTHONDONTWRITEBYTECODE": "1" if cold else ""}


def python_copy(script: Path, python: str, cold: bool, folder: Path) -> Path:
    """A copy of ``script`` in ``folder``: without bytecode (``cold``), or with it compiled by
    ``python`` into ``__pycache__``, where an import of it finds it."""
    folder.mkdir(parents=True, exist_ok=True)
    copy = folder / script.name
    shutil.copyfile(script, copy)
    if not cold:
        subprocess.run([python, "-m", "py_compile", str(copy)], check=True,
                       env=dict(os.environ, **bytecode_environment(cold)))
    return copy


class PytestSupervisor(Subject):
    name = "pytest-supervisor"
    supports_backoff = True
    supports_self_respawn = True

    def __init__(self, script: Path, python: str = sys.executable,
                 environment: Optional[Dict[str, str]] = None, as_module: bool = False,
                 yaml_config: bool = False):
        self.script = script
        self.python = python
        self._environment = environment or {}
        self.as_module = as_module  # `python -m supervisor`, not `python supervisor.py`
        # The config in YAML, as people write it; else in JSON, as programs (the pytest
        # plugin) write it, which the supervisor reads without importing PyYAML.
        self.yaml_config = yaml_config

    def environment(self, workdir: Path) -> Dict[str, str]:
        return self._environment

    def under(self, python: str, cold: bool, folder: Path) -> Subject:
        return PytestSupervisor(python_copy(self.script, python, cold, folder), python,
                                bytecode_environment(cold), self.as_module)

    def installed(self, folder: Path, yaml_config: bool = False) -> "PytestSupervisor":
        """Run as an installed program is: `python -m supervisor` (the console script is the
        same), its bytecode compiled beforehand (as pip does), in one interpreter."""
        copy = python_copy(self.script, self.python, False, folder)
        return PytestSupervisor(copy, self.python, dict(
            bytecode_environment(False), PYTHONPATH=str(copy.parent)), as_module=True,
            yaml_config=yaml_config)

    def version(self) -> str:
        out = subprocess.run([sys.executable, str(self.script), "--version"],
                             capture_output=True, text=True, check=False)
        return (out.stdout or out.stderr).strip()

    def command(self, services: Sequence[Service], workdir: Path, backoff: Optional[Backoff],
                fault_injection: bool) -> List[str]:
        policy: Dict[str, object] = {"restart": "always", "max_retries": None,
                                     "stdout": "null", "stderr": "null"}
        if backoff is not None:
            policy.update(restart_delay=backoff.delay, backoff={
                "factor": backoff.factor, "max_delay": backoff.max_delay, "jitter": 0.0})
        config = {
            # a self-respawn benchmark re-executes it many times in a row on purpose
            "supervisor": {"self_respawn": {"enabled": True, "max": 1000, "window": 60},
                           "control_socket": str(self.control_socket(workdir))},
            "defaults": policy,
            "services": {s.name: {"command": list(s.argv)} for s in services},
        }
        path = workdir / "services.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False) if self.yaml_config
                        else json.dumps(config, indent=1))
        program = ["-m", self.script.stem] if self.as_module else [str(self.script)]
        argv = [self.python, *program, "run", "-c", str(path),
                "--events", str(self.events_file(workdir)), "--log-level", "warning"]
        return argv + (["--allow-fault-injection"] if fault_injection else [])

    def events_file(self, workdir: Path) -> Optional[Path]:
        return workdir / "events.jsonl"

    def control_socket(self, workdir: Path) -> Optional[Path]:
        return workdir / "control.sock"


class FloorRespawner(Subject):
    name = "floor"

    def __init__(self, script: Path = BENCH_DIR / "floor_respawner.py",
                 python: str = sys.executable, environment: Optional[Dict[str, str]] = None):
        self.script = script
        self.python = python
        self._environment = environment or {}

    def environment(self, workdir: Path) -> Dict[str, str]:
        return self._environment

    def under(self, python: str, cold: bool, folder: Path) -> Subject:
        return FloorRespawner(python_copy(self.script, python, cold, folder), python,
                              bytecode_environment(cold))

    def version(self) -> str:
        return "benchmarks/floor_respawner.py"

    def command(self, services: Sequence[Service], workdir: Path, backoff: Optional[Backoff],
                fault_injection: bool) -> List[str]:
        path = workdir / "commands.json"
        path.write_text(json.dumps([list(s.argv) for s in services]))
        return [self.python, str(self.script), str(path)]


class Peer(Subject):
    """Another project's supervisor, installed for the benchmark when first needed."""

    no_backoff_reason = "its restart delays follow its own rules, not a configurable series"

    def install(self) -> None:
        raise NotImplementedError


class PythonPeer(Peer):
    """A supervisor from PyPI, installed into its own virtualenv when first needed."""

    distribution = ""
    module = ""  # imported to tell whether the virtualenv already has the distribution

    def __init__(self) -> None:
        self.venv = VENVS_DIR / self.name

    def install(self) -> None:
        bin_dir = self.venv / "bin"
        if not (bin_dir / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(self.venv)], check=True)
        if subprocess.run([str(bin_dir / "python"), "-c", "import " + self.module],
                          capture_output=True, check=False).returncode == 0:
            return
        pip = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet",
                              self.distribution], capture_output=True, text=True,
                             check=False, timeout=600)
        if pip.returncode != 0:
            raise RuntimeError("pip install %s failed: %s"
                               % (self.distribution, pip.stderr.strip()[-400:]))

    def version(self) -> str:
        out = subprocess.run(
            [str(self.venv / "bin" / "python"), "-c",
             "import importlib.metadata as m; print(m.version(%r))" % self.distribution],
            capture_output=True, text=True, check=True)
        return "%s %s" % (self.distribution, out.stdout.strip())


class Supervisord(PythonPeer):
    name = "supervisord"
    distribution = "supervisor"
    module = "supervisor.supervisord"

    def command(self, services: Sequence[Service], workdir: Path, backoff: Optional[Backoff],
                fault_injection: bool) -> List[str]:
        lines = ["[supervisord]", "nodaemon=true", "loglevel=warn",
                 "logfile=%s" % (workdir / "supervisord.log"),
                 "pidfile=%s" % (workdir / "supervisord.pid"),
                 "childlogdir=%s" % workdir, ""]
        for service in services:
            lines += ["[program:%s]" % service.name,
                      "command=%s" % shlex.join(service.argv),
                      "autorestart=true",
                      # counted as started at once, so a quick exit is restarted, not FATAL
                      "startsecs=0",
                      "stdout_logfile=NONE", "stderr_logfile=NONE", ""]
        path = workdir / "supervisord.conf"
        path.write_text("\n".join(lines))
        return [str(self.venv / "bin" / "supervisord"), "-n", "-c", str(path)]


class Circus(PythonPeer):
    name = "circus"
    distribution = "circus"
    module = "circus.arbiter"

    def command(self, services: Sequence[Service], workdir: Path, backoff: Optional[Backoff],
                fault_injection: bool) -> List[str]:
        # ipc endpoints: TCP defaults would collide with any other circusd on the machine
        lines = ["[circus]",
                 # circus replaces dead processes only on its periodic check (5 s by default
                 # in a config file); 0.1 s is its best case and keeps each trial short
                 "check_delay = %s" % CIRCUS_CHECK_DELAY,
                 "endpoint = ipc://%s" % (workdir / "control.sock"),
                 "pubsub_endpoint = ipc://%s" % (workdir / "pubsub.sock"),
                 "stats_endpoint = ipc://%s" % (workdir / "stats.sock"), ""]
        for service in services:
            lines += ["[watcher:%s]" % service.name,
                      "cmd = %s" % shlex.join(service.argv),
                      "numprocesses = 1", "respawn = True",
                      # flapping detection would stop a crashing watcher for good
                      "check_flapping = False",
                      # keeps PATH and the run tag the cleanup finds processes by
                      "copy_env = True", ""]
        path = workdir / "circus.ini"
        path.write_text("\n".join(lines))
        return [str(self.venv / "bin" / "circusd"), "--log-level", "warning",
                "--log-output", str(workdir / "circusd.log"), str(path)]


class DebianPeer(Peer):
    """A C supervisor from the OS's package, whose service folders the test harness writes."""

    package = ""
    program = ""  # on PATH once the package is installed
    target: Type[builtin.Target] = builtin.Target
    launchers = {("/bin/sh", "./run")}  # the service folder's run script, which execs it

    def install(self) -> None:
        if shutil.which(self.program):
            return
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise RuntimeError("no %s on PATH, and installing the Debian package %s needs "
                               "root and apt-get" % (self.program, self.package))
        for step in (["apt-get", "update", "-qq"],
                     ["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                      self.package]):
            done = subprocess.run(step, capture_output=True, text=True, check=False,
                                  timeout=600)
            if done.returncode != 0:
                raise RuntimeError("%s failed: %s" % (" ".join(step),
                                                      done.stderr.strip()[-400:]))

    def version(self) -> str:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", self.package],
                             capture_output=True, text=True, check=False)
        if out.returncode != 0 or not out.stdout:
            return "%s (%s)" % (self.package, shutil.which(self.program))
        return "%s %s" % (self.package, out.stdout.strip())

    def command(self, services: Sequence[Service], workdir: Path, backoff: Optional[Backoff],
                fault_injection: bool) -> List[str]:
        config: Dict[str, Any] = {
            "defaults": {"restart": "always", "stdout": "null", "stderr": "null"},
            "services": {s.name: {"command": list(s.argv)} for s in services}}
        return list(self.target().launch(config, workdir).argv)


class S6(DebianPeer):
    """s6-svscan over one s6-supervise per service, each running the service's ``run``
    script (``sh``, which execs the command). s6-supervise starts a service again a second
    after it died (2.11, however long it ran, finish script or not): its respawn figures
    are that second."""

    name = "s6"
    service_depth = 2  # s6-svscan -> s6-supervise -> service
    package = "s6"
    program = "s6-svscan"
    target = builtin.S6

    def command(self, services: Sequence[Service], workdir: Path, backoff: Optional[Backoff],
                fault_injection: bool) -> List[str]:
        program, *rest = super().command(services, workdir, backoff, fault_injection)
        # s6-svscan supervises at most 500 services unless told otherwise
        return [program, "-c", str(max(500, 2 * len(services))), *rest]


class Runit(DebianPeer):
    """runsvdir over one runsv per service, each running its ``run`` script; under ``sh``,
    which on SIGTERM stops the services as runit's stage 3 does."""

    name = "runit"
    restart_holdoff = 1.1  # runsv waits for a service that ran less than 1 s
    service_depth = 3  # sh -> runsvdir -> runsv -> service
    package = "runit"
    program = "runsvdir"
    target = builtin.Runit


class Pm2(Peer):
    """PM2 in the foreground (``pm2-runtime``), from npm into ``benchmarks/.venvs/pm2``."""

    name = "pm2"
    # PM2 counts a restart within min_uptime (1 s) as unstable and gives up after
    # max_restarts of those (16): "never give up" needs both out of the way.
    MAX_RESTARTS = 1_000_000_000

    def __init__(self) -> None:
        self.folder = VENVS_DIR / "pm2"
        self.runtime = self.folder / "node_modules" / ".bin" / "pm2-runtime"

    def install(self) -> None:
        if self.runtime.exists():
            return
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is not on PATH")
        self.folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([npm, "install", "--prefix", str(self.folder), "--no-audit",
                               "--no-fund", "--silent", "pm2"], capture_output=True,
                              text=True, check=False, timeout=600)
        if done.returncode != 0 or not self.runtime.exists():
            raise RuntimeError("npm install pm2 failed: %s" % done.stderr.strip()[-400:])

    def version(self) -> str:
        package = self.folder / "node_modules" / "pm2" / "package.json"
        node = subprocess.run(["node", "--version"], capture_output=True, text=True,
                              check=True).stdout.strip()
        return "pm2 %s (node %s)" % (json.loads(package.read_text())["version"], node)

    def environment(self, workdir: Path) -> Dict[str, str]:
        return {"PM2_HOME": str(workdir / "pm2-home")}  # its sockets and files, not ~/.pm2

    def command(self, services: Sequence[Service], workdir: Path, backoff: Optional[Backoff],
                fault_injection: bool) -> List[str]:
        apps = [{"name": s.name, "script": s.argv[0], "args": list(s.argv[1:]),
                 "interpreter": "none", "exec_mode": "fork", "autorestart": True,
                 "restart_delay": 0, "min_uptime": 0, "max_restarts": self.MAX_RESTARTS,
                 "out_file": "/dev/null", "error_file": "/dev/null"}
                for s in services]
        path = workdir / "ecosystem.json"
        path.write_text(json.dumps({"apps": apps}, indent=1))
        return [str(self.runtime), "start", str(path)]


# --------------------------------------------------------------------------- launching

def tagged_processes(tag: str) -> Set[int]:
    """PIDs whose environment carries ``tag`` as (a prefix of) the run tag."""
    needle = ("\0%s=%s" % (RUN_TAG_ENV, tag)).encode()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/environ" % entry, "rb") as environ:
                if needle in b"\0" + environ.read():
                    found.add(int(entry))
        except OSError:
            continue  # gone, or a kernel thread
    return found


class Launcher:
    """Starts subjects and makes sure every process they caused is gone afterwards."""

    def __init__(self, run_tag: str):
        self.run_tag = run_tag
        self._count = 0
        self._children: Dict[int, subprocess.Popen] = {}

    def launch(self, argv: List[str], workdir: Path, environment: Optional[Dict[str, str]] = None
               ) -> Tuple[subprocess.Popen, str]:
        self._count += 1
        tag = "%s/%d/" % (self.run_tag, self._count)
        env = dict(os.environ, **(environment or {}), **{RUN_TAG_ENV: tag})
        with open(workdir / "output.log", "ab") as output:
            proc = subprocess.Popen(argv, cwd=str(workdir), env=env, stdin=subprocess.DEVNULL,
                                    stdout=output, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self._children[proc.pid] = proc
        return proc, tag

    def finish(self, proc: subprocess.Popen, tag: str, grace: float) -> None:
        """SIGTERM ``proc``, wait up to ``grace`` s, then SIGKILL whatever its tag still holds.

        What a measurement wanted to know about leftovers it has counted before this.
        """
        if proc.poll() is None:
            _signal(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self.kill_tag(tag)
        proc.wait()
        self._children.pop(proc.pid, None)

    def kill_tag(self, tag: str) -> None:
        # Repeated because a supervisor still alive may spawn again while we kill.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = tagged_processes(tag)
            if not pids:
                return
            for pid in pids:
                _signal(pid, signal.SIGKILL)
            time.sleep(0.02)

    def kill_everything(self) -> None:
        """The last word (finally / Ctrl+C): nothing this run started stays alive."""
        for proc in self._children.values():
            if proc.poll() is None:
                _signal(proc.pid, signal.SIGKILL)
        self.kill_tag(self.run_tag + "/")
        for proc in self._children.values():
            proc.wait()
        self._children.clear()


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass  # already gone: what we wanted

