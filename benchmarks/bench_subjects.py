"""The supervisors measured, the services they run, and the guarantee that nothing outlives us.

Each ``Subject`` turns one list of ``Service`` into its own config file and command line.
Every subject gets the same services with the same meaning: restart at once whatever the
exit, never give up, discard the output. supervisord and circus run from virtualenvs of
their own under ``benchmarks/.venvs/`` (supervisord's distribution is also called
``supervisor``, so it must never share an environment with this project).

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
from typing import Dict, List, Optional, Sequence, Set, Tuple

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

    def version(self) -> str:
        raise NotImplementedError

    def command(self, services: Sequence[Service], workdir: Path, backoff: Optional[Backoff],
                fault_injection: bool) -> List[str]:
        """Write the subject's config into ``workdir``; return the command that runs it."""
        raise NotImplementedError

    def events_file(self, workdir: Path) -> Optional[Path]:
        return None

    def control_socket(self, workdir: Path) -> Optional[Path]:
        """Where the subject listens for control commands (ours: JSON lines), if it does."""
        return None


class PytestSupervisor(Subject):
    name = "pytest-supervisor"
    supports_backoff = True
    supports_self_respawn = True

    def __init__(self, script: Path):
        self.script = script

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
        path.write_text(json.dumps(config, indent=1))  # JSON is YAML
        argv = [sys.executable, str(self.script), "run", "-c", str(path),
                "--events", str(self.events_file(workdir)), "--log-level", "warning"]
        return argv + (["--allow-fault-injection"] if fault_injection else [])

    def events_file(self, workdir: Path) -> Optional[Path]:
        return workdir / "events.jsonl"

    def control_socket(self, workdir: Path) -> Optional[Path]:
        return workdir / "control.sock"


class FloorRespawner(Subject):
    name = "floor"

    def version(self) -> str:
        return "benchmarks/floor_respawner.py"

    def command(self, services: Sequence[Service], workdir: Path, backoff: Optional[Backoff],
                fault_injection: bool) -> List[str]:
        path = workdir / "commands.json"
        path.write_text(json.dumps([list(s.argv) for s in services]))
        return [sys.executable, str(BENCH_DIR / "floor_respawner.py"), str(path)]


class Peer(Subject):
    """A supervisor from PyPI, installed into its own virtualenv when first needed."""

    distribution = ""
    module = ""  # imported to tell whether the virtualenv already has the distribution
    no_backoff_reason = "its restart delays follow its own rules, not a configurable series"

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


class Supervisord(Peer):
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


class Circus(Peer):
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

    def launch(self, argv: List[str], workdir: Path) -> Tuple[subprocess.Popen, str]:
        self._count += 1
        tag = "%s/%d/" % (self.run_tag, self._count)
        env = dict(os.environ, **{RUN_TAG_ENV: tag})
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

