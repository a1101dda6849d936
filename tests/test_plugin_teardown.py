"""The plugin's teardown guarantee: after every test the supervisor and every process it
started are gone, leaks are reported and killed -- and nothing survives when pytest itself
dies (SIGKILL, pytest-timeout's thread method, a crashed xdist worker)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest
from process_helpers import HARD_KILL, WINDOWS, command_line, is_running, read_pids

pytestmark = pytest.mark.integration

pytest_plugins = ["pytester"]

# Misbehaves the way its config's "misbehave" key says; stands in for a buggy supervisor.
# It is asked to stop as the harness asks supervisor.py: SIGTERM, or on Windows
# CTRL_BREAK_EVENT or, where that cannot be delivered (no shared console, wine), the
# named shutdown event.
MISBEHAVING_SUPERVISOR = """
import json, os, signal, subprocess, sys, time

args = sys.argv[1:]
with open(args[args.index("-c") + 1]) as config_file:
    config = json.load(config_file)
events = open(args[args.index("--events") + 1], "a")
misbehave = config["misbehave"]
code = 3 if misbehave == "exit_3" else 0

# Ready to be stopped before it says it started, when the harness may stop it.
if sys.platform != "win32":
    if misbehave != "ignore_sigterm":
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(code))
    else:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    import ctypes
    from ctypes import wintypes

    from pytest_supervisor.signals import SHUTDOWN_EVENT

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.CreateEventW.restype = wintypes.HANDLE
    kernel32.CreateEventW.argtypes = [
        wintypes.LPVOID, wintypes.BOOL, wintypes.BOOL, wintypes.LPCWSTR
    ]
    kernel32.SetEvent.argtypes = [wintypes.HANDLE]
    kernel32.WaitForSingleObject.argtypes = [wintypes.HANDLE, wintypes.DWORD]
    stop = kernel32.CreateEventW(None, True, False, SHUTDOWN_EVENT % os.getpid())
    never = kernel32.CreateEventW(None, True, False, None)
    # A console control handler runs on a thread of its own: it sets the event main waits on.
    on_break = ctypes.WINFUNCTYPE(wintypes.BOOL, wintypes.DWORD)(
        lambda kind: bool(kernel32.SetEvent(stop))
    )
    kernel32.SetConsoleCtrlHandler(on_break, True)

if misbehave == "leak":
    orphan = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True
    )
    with open(config["pids_file"], "w") as pids:
        pids.write(str(orphan.pid))
if misbehave == "malformed":
    events.write("not json\\n")
events.write(json.dumps({"ts": time.time(), "mono": time.monotonic(),
    "event": "supervisor_started", "service": None, "pid": os.getpid()}) + "\\n")
events.flush()
if sys.platform != "win32":
    while True:
        signal.pause()
kernel32.WaitForSingleObject(never if misbehave == "ignore_sigterm" else stop, 0xFFFFFFFF)
sys.exit(code)
"""

# Starts a supervisor whose service has a grandchild and a daemon, records every pid,
# says so on stdout, then hangs until something ends pytest.
HANGING_TEST = """
import os, signal, threading

PIDS = {pids!r}

def test_hangs(supervisor_factory, dummy_service, tmp_path):
    ready = tmp_path / "ready"
    web = dummy_service(grandchildren=1, daemon=True, pids_file=PIDS, ready_file=ready)
    handle = supervisor_factory.spawn(
        {{"services": {{"web": {{"command": web, "ready": {{"file": str(ready)}}}}}}}}
    )
    handle.wait_for("ready", "web")
    with open(PIDS, "a") as pids:
        pids.write(f"supervisor {{handle.pid}}\\n")
    print("ALL UP", flush=True)
    {then}
"""


# Long enough for any test here to end the run first; short enough that a broken test
# cannot hang the suite.
HANG = "threading.Event().wait(120)"


def inner_pytest() -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "pytest_supervisor", "-p", "no:cacheprovider"]


def recorded_pids(path: Path) -> list[int]:
    """Every pid of a dummy's --pids-file."""
    return [pid for pids in read_pids(path).values() for pid in pids]


def survivors_of(pids: list[int], timeout: float = 20.0) -> list[str]:
    """Wait for the processes to end; kill and describe those still running at ``timeout``."""
    processes = []
    for pid in pids:
        try:
            processes.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue  # gone already
    deadline = time.monotonic() + timeout
    alive = processes
    while True:
        alive = [process for process in alive if is_running(process.pid)]
        if not alive or time.monotonic() > deadline:
            break
        # These are not our children, and there is no portable way to wait for another
        # process's child: poll.
        time.sleep(0.05)
    described = []
    for process in alive:
        try:
            described.append(f"{process.pid}: {shlex.join(process.cmdline())}")
            process.kill()
        except psutil.Error:
            continue  # ended between the check and the kill
    return described


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "pytest_supervisor", "-p", "no:cacheprovider", *args)


# -- teardown reports what a supervisor did wrong ----------------------------------


@pytest.fixture
def misbehaving(pytester: pytest.Pytester) -> str:
    """--supervisor-cmd for the misbehaving stand-in."""
    script = pytester.makepyfile(misbehaving_supervisor=MISBEHAVING_SUPERVISOR)
    return f"--supervisor-cmd={command_line(sys.executable, str(script))}"


def test_leaked_processes_fail_the_test_and_are_killed(
    pytester: pytest.Pytester, misbehaving: str
) -> None:
    pids_file = pytester.path / "leaked.pid"
    pytester.makepyfile(
        f"""
        def test_leaks(supervisor_factory):
            supervisor_factory.spawn({{"misbehave": "leak", "pids_file": {str(pids_file)!r}}})
        """
    )
    result = run(pytester, misbehaving)
    result.assert_outcomes(passed=1, errors=1)
    leaked = int(pids_file.read_text())
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks*",
            (
                "supervisor 'supervisor' (pid *) leaked 1 process(es) still running after it"
                " exited; they were killed:"
            ),
            f"    pid {leaked} (ppid *): * -c 'import time; time.sleep(300)'",
        ]
    )
    assert not is_running(leaked)


def test_a_supervisor_that_will_not_stop_is_killed_and_reported(
    pytester: pytest.Pytester, misbehaving: str
) -> None:
    pytester.makepyfile(
        """
        def test_stubborn(supervisor_factory):
            supervisor_factory.spawn({"misbehave": "ignore_sigterm"}, stop_timeout=1)
        """
    )
    result = run(pytester, misbehaving)
    result.assert_outcomes(passed=1, errors=1)
    # Windows: a graceful stop is CTRL_BREAK_EVENT, and TerminateProcess leaves exit code 1.
    graceful_stop, killed = ("CTRL_BREAK_EVENT", " (exit code 1)") if WINDOWS else ("SIGTERM", "")
    result.stdout.fnmatch_lines(
        [
            f"the supervisor did not exit within 1s of {graceful_stop}; it was killed",
            f"supervisor 'supervisor' (pid *): killed by {HARD_KILL}{killed}",
        ]
    )


def test_unclean_exit_and_malformed_events_are_reported(
    pytester: pytest.Pytester, misbehaving: str
) -> None:
    pytester.makepyfile(
        """
        def test_exit_3(supervisor_factory):
            supervisor_factory.spawn({"misbehave": "exit_3"})

        def test_malformed(supervisor_factory):
            supervisor_factory.spawn({"misbehave": "malformed"})
        """
    )
    result = run(pytester, misbehaving)
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines_random(
        [
            "the supervisor exited with code 3 on a graceful stop; expected 0",
            (
                f"the event stream *{os.sep}events.jsonl has 1 line(s) that are not JSON event"
                " objects:"
            ),
            "    not json",
        ]
    )


def test_every_handle_of_a_test_is_torn_down_even_when_it_fails(pytester: pytest.Pytester) -> None:
    pids = pytester.path / "pids"
    pytester.makepyfile(
        f"""
        def test_fails(supervisor_factory, dummy_service):
            for name in ("first", "second"):
                handle = supervisor_factory.spawn(
                    {{"services": {{"web": {{"command": dummy_service()}}}}}}, name=name
                )
                with open({str(pids)!r}, "a") as pids:
                    pids.write(f"supervisor {{handle.pid}}\\nweb {{handle.pid_of('web')}}\\n")
            assert False, "the test failed"
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    assert len(recorded_pids(pids)) == 4
    assert survivors_of(recorded_pids(pids), timeout=0) == []


# -- nothing survives pytest's own death -------------------------------------------


def test_pytest_killed_mid_test_leaves_nothing_alive(pytester: pytest.Pytester) -> None:
    pids = pytester.path / "pids"
    pytester.makepyfile(HANGING_TEST.format(pids=str(pids), then=HANG))
    output = []
    with pytester.popen(
        [*inner_pytest(), "-s"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    ) as pytest_process:
        assert pytest_process.stdout is not None
        for line in pytest_process.stdout:  # ends early only if the inner run ends
            output.append(line.decode(errors="replace"))
            if b"ALL UP" in line:  # after the test's name, as -s prints it
                break
        pytest_process.kill()
    assert output and "ALL UP" in output[-1], "".join(output)
    assert len(recorded_pids(pids)) == 4  # main, grandchild, daemon, supervisor
    assert survivors_of(recorded_pids(pids)) == []


def test_pytest_timeout_thread_method_leaves_nothing_alive(pytester: pytest.Pytester) -> None:
    pids = pytester.path / "pids"
    pytester.makepyfile(HANGING_TEST.format(pids=str(pids), then=HANG))
    result = run(pytester, "--timeout=5", "--timeout-method=thread")
    result.stdout.fnmatch_lines(["*Timeout*"])
    assert result.ret != 0
    assert len(recorded_pids(pids)) == 4
    assert survivors_of(recorded_pids(pids)) == []


def test_crashed_xdist_worker_leaves_nothing_alive(pytester: pytest.Pytester) -> None:
    pids = pytester.path / "pids"
    pytester.makepyfile(
        # Windows has no SIGKILL: there os.kill with any other number is TerminateProcess.
        HANGING_TEST.format(
            pids=str(pids), then="os.kill(os.getpid(), getattr(signal, 'SIGKILL', signal.SIGTERM))"
        )
    )
    result = run(pytester, "-n", "1")
    result.stdout.fnmatch_lines(["*worker 'gw0' crashed while running*test_hangs*"])
    assert len(recorded_pids(pids)) == 4
    assert survivors_of(recorded_pids(pids)) == []


def test_xdist_runs_tests_in_parallel_and_keeps_their_measurements(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        textwrap.dedent(
            """
            import pytest

            @pytest.mark.parametrize("n", range(4))
            def test_respawn(supervisor_factory, dummy_service, n):
                handle = supervisor_factory.spawn(
                    {"services": {"web": {"command": dummy_service(), "restart": "always"}}}
                )
                handle.kill("web")
                handle.assert_respawned("web", within=5)
            """
        )
    )
    result = run(pytester, "-n", "2", "--junitxml=results.xml")
    result.assert_outcomes(passed=4)
    assert (pytester.path / "results.xml").read_text().count('name="respawn_latency"') == 4
