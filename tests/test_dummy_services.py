"""Real-process tests of the dummy services: each mode does what its docstring says.

Tests wait on events (a line on stdout, a process exit), with generous bounds, and the
``dummies`` fixture kills everything a test started, helpers included, and fails the test
if any of it is still alive afterwards.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from process_helpers import is_running, read_pids, wait_until

pytestmark = pytest.mark.integration

DUMMY_SERVICES = Path(__file__).resolve().parent.parent / "dummy_services"
# A bound for anything that should take well under a second, generous for a loaded CI box.
PATIENCE = 10.0
MEGABYTE = 1024 * 1024
POSIX = hasattr(os, "killpg")
# os.kill on Windows terminates the process for any signal but the console ones.
KILL = getattr(signal, "SIGKILL", signal.SIGTERM)

posix_only = pytest.mark.skipif(not POSIX, reason="needs POSIX signals and process groups")


class Running:
    """A started dummy: its Popen, its stdout lines as they arrive, its stderr in a file."""

    def __init__(self, popen: subprocess.Popen[str], stderr_path: Path) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.stderr_path = stderr_path
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._closed = False
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def next_line(self, timeout: float = PATIENCE) -> str:
        line = self._next(timeout)
        if line is None:
            pytest.fail(f"stdout closed while a line was expected; stderr: {self.stderr()!r}")
        return line

    def remaining_lines(self, timeout: float = PATIENCE) -> list[str]:
        """Every line up to the end of stdout, which comes once no process holds it open."""
        lines = []
        while True:
            line = self._next(timeout)
            if line is None:
                return lines
            lines.append(line)

    def expect_heartbeats(self, beats: int) -> None:
        """Wait for ``beats`` heartbeat lines, proof that the dummy is still running."""
        for _ in range(beats):
            assert " heartbeat " in self.next_line()

    def _next(self, timeout: float) -> str | None:
        if self._closed:
            return None
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no line on stdout within {timeout} s; stderr: {self.stderr()!r}")
        self._closed = line is None
        return line

    def wait(self, timeout: float = PATIENCE) -> int:
        return self.popen.wait(timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text()


class Dummies:
    """Starts dummy services; ``cleanup`` kills them and every helper they reported."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Running] = []
        self.helper_pids: set[int] = set()

    def start(self, script: str, *args: str) -> Running:
        return self.run([sys.executable, str(DUMMY_SERVICES / script), *args])

    def run(self, command: list[str]) -> Running:
        stderr_path = self.tmp_path / f"stderr-{len(self.started)}.txt"
        with open(stderr_path, "w") as stderr:
            popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                cwd=DUMMY_SERVICES.parent,
                # Its own group, so the tests can signal it with its grandchildren, and the
                # cleanup can kill all of them, without touching pytest.
                start_new_session=POSIX,
            )
        running = Running(popen, stderr_path)
        self.started.append(running)
        return running

    def read_pids(self, path: Path) -> dict[str, list[int]]:
        """The pids file as {role: [pid, ...]}; the helpers' pids are kept for cleanup."""
        pids: dict[str, list[int]] = read_pids(path)
        for role, role_pids in pids.items():
            if role != "main":
                self.helper_pids.update(role_pids)
        return pids

    def cleanup(self) -> None:
        for running in self.started:
            if POSIX:
                # The group outlives its leader while grandchildren are in it, and the
                # leader's pid cannot be reused until it is reaped below.
                try:
                    os.killpg(running.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            else:
                running.popen.kill()
            running.popen.wait(PATIENCE)
        for pid in self.helper_pids:
            try:
                os.kill(pid, KILL)
            except OSError:
                pass  # already gone, as it should be when the test itself ended it
        if POSIX:
            wait_until_gone(self.helper_pids)


@pytest.fixture
def dummies(tmp_path: Path) -> Iterator[Dummies]:
    started = Dummies(tmp_path)
    try:
        yield started
    finally:
        started.cleanup()


def wait_until_gone(pids: set[int] | list[int]) -> None:
    wait_until(lambda: not any(is_running(pid) for pid in pids), f"the end of pids {sorted(pids)}",
               PATIENCE)


@pytest.mark.parametrize("flags, code", [([], 0), (["--exit-code", "3"], 3)])
def test_exit_after_exits_with_the_exit_code(dummies: Dummies, flags: list[str], code: int):
    started = time.monotonic()
    running = dummies.start("dummy.py", "--exit-after", "0.2", *flags)
    assert running.wait() == code
    assert time.monotonic() - started >= 0.2
    assert running.remaining_lines() == [f"dummy exiting with code {code}"]


@pytest.mark.parametrize("flags, code", [([], 1), (["--exit-code", "7"], 7)])
def test_crash_at_start_exits_at_once_saying_why(dummies: Dummies, flags: list[str], code: int):
    running = dummies.start("dummy.py", "--crash-at-start", "--ready-line", "ready", *flags)
    assert running.wait() == code
    assert running.remaining_lines() == []
    assert running.stderr() == f"dummy crashing at start with exit code {code}\n"


@posix_only
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_stop_signals_kill_it_by_default(dummies: Dummies, signame: str):
    signum = getattr(signal, signame)
    running = dummies.start("dummy.py", "--ready-line", "ready")
    assert running.next_line() == "ready"
    os.kill(running.pid, signum)
    assert running.wait() == -signum
    assert running.stderr() == ""


@posix_only
def test_ignore_sigterm_leaves_it_to_sigkill(dummies: Dummies):
    running = dummies.start(
        "dummy.py", "--ignore-sigterm", "--heartbeat", "0.05", "--ready-line", "ready"
    )
    assert running.next_line() == "ready"
    os.kill(running.pid, signal.SIGTERM)
    running.expect_heartbeats(4)
    os.kill(running.pid, signal.SIGKILL)
    assert running.wait() == -signal.SIGKILL


@posix_only
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_shutdown_delay_takes_its_time_then_exits_0(dummies: Dummies, signame: str):
    running = dummies.start("dummy.py", "--shutdown-delay", "1", "--ready-line", "ready")
    assert running.next_line() == "ready"
    sent = time.monotonic()
    os.kill(running.pid, getattr(signal, signame))
    assert running.next_line() == "dummy shutting down"
    assert running.wait() == 0
    assert 0.9 <= time.monotonic() - sent < PATIENCE
    assert running.remaining_lines() == []


@posix_only
def test_a_repeated_sigterm_does_not_cut_the_shutdown_delay_short(dummies: Dummies):
    running = dummies.start("dummy.py", "--shutdown-delay", "1", "--ready-line", "ready")
    assert running.next_line() == "ready"
    sent = time.monotonic()
    os.kill(running.pid, signal.SIGTERM)
    assert running.next_line() == "dummy shutting down"
    os.kill(running.pid, signal.SIGTERM)
    assert running.wait() == 0
    assert time.monotonic() - sent >= 0.9


@posix_only
def test_grandchildren_share_its_group_and_die_with_it(dummies: Dummies, tmp_path: Path):
    pids_file = tmp_path / "pids"
    running = dummies.start(
        "dummy.py", "--grandchildren", "2", "--pids-file", str(pids_file), "--ready-line", "ready"
    )
    assert running.next_line() == "ready"
    pids = dummies.read_pids(pids_file)
    assert pids["main"] == [running.pid]
    grandchildren = pids["grandchild"]
    assert len(set(grandchildren)) == 2
    for pid in grandchildren:
        assert is_running(pid)
        assert os.getpgid(pid) == running.pid
    os.killpg(running.pid, signal.SIGTERM)
    assert running.wait() == -signal.SIGTERM
    wait_until_gone(grandchildren)


@posix_only
def test_grandchildren_ignore_sigterm_along_with_it(dummies: Dummies, tmp_path: Path):
    pids_file = tmp_path / "pids"
    running = dummies.start(
        "dummy.py",
        "--grandchildren",
        "2",
        "--ignore-sigterm",
        "--heartbeat",
        "0.05",
        "--pids-file",
        str(pids_file),
        "--ready-line",
        "ready",
    )
    assert running.next_line() == "ready"
    grandchildren = dummies.read_pids(pids_file)["grandchild"]
    os.killpg(running.pid, signal.SIGTERM)
    # The dummy's heartbeats give a helper that did not ignore SIGTERM the time to die.
    running.expect_heartbeats(4)
    assert all(is_running(pid) for pid in grandchildren)
    os.killpg(running.pid, signal.SIGKILL)
    assert running.wait() == -signal.SIGKILL
    wait_until_gone(grandchildren)


@posix_only
def test_daemon_leaves_group_and_session_and_lets_go_of_stdout(dummies: Dummies, tmp_path: Path):
    pids_file = tmp_path / "pids"
    running = dummies.start(
        "dummy.py", "--daemon", "--pids-file", str(pids_file), "--ready-line", "ready"
    )
    assert running.next_line() == "ready"
    pids = dummies.read_pids(pids_file)
    assert pids["main"] == [running.pid]
    [daemon] = pids["daemon"]
    assert is_running(daemon)
    assert os.getpgid(daemon) != running.pid
    assert os.getsid(daemon) not in (os.getsid(running.pid), daemon)
    os.killpg(running.pid, signal.SIGKILL)
    assert running.wait() == -signal.SIGKILL
    # Had the daemon kept the dummy's stdout, this would time out instead of reaching EOF.
    assert running.remaining_lines() == []
    assert is_running(daemon)


@posix_only
def test_daemon_and_grandchildren_ignore_sigterm_along_with_it(dummies: Dummies, tmp_path: Path):
    pids_file = tmp_path / "pids"
    running = dummies.start(
        "dummy.py",
        "--grandchildren",
        "1",
        "--daemon",
        "--ignore-sigterm",
        "--heartbeat",
        "0.05",
        "--pids-file",
        str(pids_file),
        "--ready-line",
        "ready",
    )
    assert running.next_line() == "ready"
    pids = dummies.read_pids(pids_file)
    assert sorted(pids) == ["daemon", "grandchild", "main"]
    helpers = pids["daemon"] + pids["grandchild"]
    for pid in helpers:
        os.kill(pid, signal.SIGTERM)
    # The dummy's heartbeats give a helper that did not ignore SIGTERM the time to die.
    running.expect_heartbeats(4)
    assert all(is_running(pid) for pid in helpers)


def test_ready_file_holds_the_pid_before_the_ready_line(dummies: Dummies, tmp_path: Path):
    ready_file = tmp_path / "ready"
    running = dummies.start("dummy.py", "--ready-file", str(ready_file), "--ready-line", "up!")
    assert running.next_line() == "up!"
    assert ready_file.read_text() == f"{running.pid}\n"


def test_pids_file_lists_the_main_process(dummies: Dummies, tmp_path: Path):
    pids_file = tmp_path / "pids"
    running = dummies.start("dummy.py", "--pids-file", str(pids_file), "--ready-line", "ready")
    assert running.next_line() == "ready"
    assert pids_file.read_text() == f"main {running.pid}\n"


def test_heartbeat_counts_under_its_name(dummies: Dummies):
    started = time.monotonic()
    running = dummies.start("dummy.py", "--heartbeat", "0.2", "--name", "svc")
    beats = [running.next_line() for _ in range(3)]
    assert beats == ["svc heartbeat 1", "svc heartbeat 2", "svc heartbeat 3"]
    assert time.monotonic() - started >= 0.4


def test_alloc_holds_memory_at_its_rate_up_to_the_cap(dummies: Dummies):
    psutil = pytest.importorskip("psutil")
    running = dummies.start(
        "dummy.py", "--alloc-mb-per-s", "100", "--max-mb", "40", "--ready-line", "ready"
    )
    assert running.next_line() == "ready"
    process = psutil.Process(running.pid)
    baseline = process.memory_info().rss
    started = time.monotonic()
    assert running.next_line() == "dummy allocated 40 MB"
    assert time.monotonic() - started >= 0.3
    assert 35 <= (process.memory_info().rss - baseline) / MEGABYTE < 60


@posix_only
@pytest.mark.parametrize("flags", [[], ["--heartbeat", "0.02"]], ids=["plain", "heartbeat"])
def test_waiting_does_not_busy_loop(dummies: Dummies, flags: list[str]):
    resource = pytest.importorskip("resource")

    def children_cpu_seconds() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return float(usage.ru_utime + usage.ru_stime)

    before = children_cpu_seconds()
    running = dummies.start("dummy.py", "--exit-after", "1.5", *flags)
    assert running.wait() == 0
    # Start-up costs well under 0.3 s of CPU, and a loaded machine only lowers the rest.
    assert children_cpu_seconds() - before < 0.3


def test_burn_cpu_keeps_a_core_busy(dummies: Dummies):
    psutil = pytest.importorskip("psutil")
    running = dummies.start("dummy.py", "--burn-cpu", "--ready-line", "ready")
    assert running.next_line() == "ready"
    process = psutil.Process(running.pid)

    def cpu_seconds() -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    # Counted in CPU time, which a loaded machine slows down but a busy loop still gathers
    # at a good fraction of a core; an idle wait would not get there in the time allowed.
    wait_until(lambda: cpu_seconds() >= 0.5, "half a second of CPU time")


def test_modes_that_start_no_helper_do_not_import_subprocess(dummies: Dummies):
    # -I -S: only the dummy's own imports, none from site-packages' .pth files.
    dummy = str(DUMMY_SERVICES / "dummy.py")
    flags = ["--exit-after", "0", "--heartbeat", "1", "--shutdown-delay", "1", "--burn-cpu"]
    running = dummies.run([sys.executable, "-I", "-S", "-X", "importtime", dummy, *flags])
    assert running.wait() == 0
    imported = {line.split("|")[-1].strip() for line in running.stderr().splitlines()}
    assert "argparse" in imported
    assert "subprocess" not in imported


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--heartbeat", "0", "argument --heartbeat: must be more than 0, got 0"),
        ("--exit-after", "-1", "argument --exit-after: must be at least 0, got -1"),
        ("--shutdown-delay", "soon", "argument --shutdown-delay: expected a number, got 'soon'"),
        ("--grandchildren", "2.5", "argument --grandchildren: expected a whole number, got '2.5'"),
    ],
)
def test_bad_flag_values_exit_2_naming_flag_and_value(
    dummies: Dummies, flag: str, value: str, message: str
):
    running = dummies.start("dummy.py", flag, value)
    assert running.wait() == 2
    assert running.stderr().endswith(f"dummy.py: error: {message}\n")


def test_daemon_without_a_way_to_start_one_exits_64(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    from dummy_services import dummy

    monkeypatch.setattr(dummy, "CAN_FORK_DAEMON", False)
    monkeypatch.delattr(subprocess, "DETACHED_PROCESS", raising=False)
    assert dummy.main(["--daemon", "--name", "nodaemon"]) == dummy.EXIT_UNSUPPORTED == 64
    assert capsys.readouterr().err == (
        "nodaemon --daemon needs os.fork or Windows process creation flags\n"
    )


@pytest.mark.parametrize("flags, after", [([], 0.5), (["--after", "0.1"], 0.1)])
def test_failing_script_prints_then_exits_1(dummies: Dummies, flags: list[str], after: float):
    started = time.monotonic()
    running = dummies.start("failing_script.py", *flags)
    assert running.next_line() == f"failing_script started; failing in {after} s"
    assert running.wait() == 1
    assert time.monotonic() - started >= after
    assert running.stderr() == "failing_script failing with exit code 1\n"


@posix_only
@pytest.mark.parametrize("service", ["example_service_1", "example_service_2"])
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_example_service_beats_every_second_and_stops_with_0(
    dummies: Dummies, service: str, signame: str
):
    running = dummies.start(f"{service}.py")
    assert running.next_line() == f"{service} heartbeat 1"
    first = time.monotonic()
    assert running.next_line() == f"{service} heartbeat 2"
    assert 0.8 <= time.monotonic() - first < 5
    os.kill(running.pid, getattr(signal, signame))
    assert running.wait(timeout=2) == 0
    assert running.remaining_lines() == [f"{service} shutting down"]


def test_example_service_runs_as_a_module_of_the_package(dummies: Dummies):
    running = dummies.run([sys.executable, "-m", "dummy_services.example_service_2"])
    assert running.next_line() == "example_service_2 heartbeat 1"
