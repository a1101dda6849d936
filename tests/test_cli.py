"""The command line, run for real: exit codes, error messages, option placement."""

import json
import os
import shutil
import signal
import subprocess
import sys

import psutil
import pytest
from process_helpers import ROOT, SUPERVISOR, cli, open_descriptors, wait_until

import supervisor

pytestmark = pytest.mark.integration



def write(tmp_path, text, name="services.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_check_accepts_a_good_config(tmp_path):
    path = write(tmp_path, "services:\n  web:\n    command: sleep 1\n")
    result = cli("check", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "%s: OK (1 services)" % path


def test_check_lists_every_problem_with_line_and_key_and_exits_2(tmp_path):
    path = write(
        tmp_path,
        (
            "services:\n"
            "  web:\n"
            "    command: sleep 1\n"
            "    restart: alway\n"
            "    stop_signa: TERM\n"
            "  db:\n"
            "    command: []\n"
            "    stop_signal: SIGTREM\n"
        ),
    )
    result = cli("check", "-c", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "%s:4: services.web.restart: expected one of always, on-failure, never; got 'alway' "
        "(did you mean 'always'?)" % path,
        "%s:5: services.web.stop_signa: unknown key (did you mean 'stop_signal'?)" % path,
        "%s:7: services.db.command: expected a non-empty command, got []" % path,
        "%s:8: services.db.stop_signal: expected a signal name such as SIGTERM, got 'SIGTREM' "
        "(did you mean 'SIGTERM'?)" % path,
    ]
    assert "Traceback" not in result.stderr


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path, "services:\n  web:\n    command: [sleep, 1\n")
    result = cli("check", "-c", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith("%s:4: " % path)
    assert "Traceback" not in result.stderr


def test_missing_config_file_is_a_usage_error(tmp_path):
    result = cli("check", "-c", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "%s: cannot read the config file: No such file or directory" % (tmp_path / "nope.yaml")
    )


def test_run_with_a_bad_config_exits_2_and_starts_nothing(tmp_path):
    path = write(tmp_path, "services:\n  web:\n    command: sleep 600\n    restart: sometimes\n")
    result = cli("run", "-c", str(path), "--events", str(tmp_path / "events"))
    assert result.returncode == 2
    assert "services.web.restart: expected one of always, on-failure, never" in result.stderr
    assert not (tmp_path / "events").exists()


def test_unknown_command_and_bad_option_are_usage_errors():
    assert cli("frobnicate").returncode == 2
    result = cli("run", "--log-level", "loud")
    assert result.returncode == 2
    assert "invalid choice: 'loud'" in result.stderr


def test_options_are_accepted_before_or_after_the_subcommand(tmp_path):
    path = write(tmp_path, "services:\n  web:\n    command: sleep 1\n")
    assert cli("-c", str(path), "check").returncode == 0
    assert cli("check", "-c", str(path)).returncode == 0


def test_without_c_the_config_is_services_yaml_in_the_current_folder(tmp_path):
    write(tmp_path, "services:\n  web:\n    command: sleep 1\n")
    result = cli("check", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("services.yaml: OK")


def test_python_dash_m_and_the_console_script_are_the_same_program(tmp_path):
    path = write(tmp_path, "services:\n  web:\n    command: sleep 1\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    runs = {}
    for module in ("supervisor", "pytest_supervisor"):  # the drop-in file; the installed one
        runs[module] = subprocess.run([sys.executable, "-m", module, "check", "-c", str(path)],
                                      capture_output=True, text=True, env=env)
        assert runs[module].returncode == 0 and "OK (1 services)" in runs[module].stdout
    assert runs["supervisor"].stdout == runs["pytest_supervisor"].stdout
    script = shutil.which("supervisor", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("the console script is not installed next to this interpreter")
    by_script = subprocess.run([script, "check", "-c", str(path)], capture_output=True, text=True)
    assert by_script.returncode == 0 and by_script.stdout == runs["supervisor"].stdout


def test_the_demo_config_is_valid():
    assert cli("check", "-c", str(ROOT / "services.yaml")).returncode == 0


@pytest.mark.skipif(sys.platform == "win32", reason="the demo commands name 'python'")
def test_the_demo_runs_fails_respawns_and_gives_up(supervisor_factory):
    handle = supervisor_factory.spawn(
        str(ROOT / "services.yaml"),
        cwd=ROOT,
        env={"PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")},
    )
    for name in ("example_service_1", "example_service_2"):
        handle.pid_of(name)
    gave_up = handle.wait_for("gave_up", "failing_service_demo", timeout=40)
    assert gave_up["retries"] == 3
    scheduled = [
        e
        for e in handle.events
        if e["event"] == "restart_scheduled" and e["service"] == "failing_service_demo"
    ]
    assert [e["delay"] for e in scheduled] == [3.0, 3.0, 3.0]
    handle.kill("example_service_1")
    handle.assert_respawned("example_service_1", within=5.0)


def run_until_spawned(argv, env=None):
    """`python supervisor.py ARGV` until it logs its service's start (the log says when: no
    sleeping); returns the running process and its command line."""
    proc = subprocess.Popen([sys.executable, *argv], stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in proc.stderr:
            if "spawned pid" in line:
                break
        return proc, psutil.Process(proc.pid).cmdline()
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def terminate(proc):
    try:
        proc.terminate()
        assert proc.wait(timeout=15) == 0
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX commands")
def test_runs_with_only_the_standard_library_and_pyyaml(tmp_path):
    """psutil made unimportable: the supervisor still runs, stops its tree and exits 0."""
    path = write(tmp_path, "services:\n  web:\n    command: sleep 600\n")
    events = tmp_path / "events"
    hidden = tmp_path / "hide-psutil"
    hidden.mkdir()
    (hidden / "psutil.py").write_text("raise ImportError('psutil is hidden by the test')\n")
    env = dict(os.environ, PYTHONPATH=str(hidden))  # still in force after the re-exec
    proc, _ = run_until_spawned([SUPERVISOR, "run", "-c", str(path), "--events", str(events)], env)
    terminate(proc)
    kinds = [json.loads(line)["event"] for line in events.read_text().splitlines()]
    assert kinds == ["supervisor_started", "spawned", "stopping", "stopped", "supervisor_exiting"]


@pytest.mark.skipif(sys.platform == "win32", reason="only POSIX exec keeps the PID")
def test_run_as_a_script_reexecutes_itself_as_an_import_in_the_same_process(tmp_path):
    """Run as a script, CPython would keep the file's parse tree (8 MB) for the supervisor's
    whole life; imported, it is freed. The PID and sys.argv stay the same."""
    path = write(tmp_path, "services:\n  web:\n    command: sleep 600\n")
    events = tmp_path / "events"
    argv = [SUPERVISOR, "run", "-c", str(path), "--events", str(events)]
    proc, cmdline = run_until_spawned(argv)
    try:
        assert cmdline[:3] == [sys.executable, "-c", supervisor._RUN_AS_IMPORT]
        assert cmdline[4:] == argv
        if hasattr(os, "memfd_create"):  # the module compiled, handed over in a memfd,
            assert cmdline[3].isdigit()  # read, and closed:
            assert not [link for link in open_descriptors(proc.pid).values()
                        if "memfd:" in link]
        proc.send_signal(signal.SIGUSR2)  # a re-exec: the image it gives is the import again
        started = wait_until(lambda: [e for e in read_events(events)
                                      if e["event"] == "supervisor_started"][1:], "the re-exec")
        assert psutil.Process(proc.pid).cmdline() == cmdline[:3] + ["-"] + argv
    finally:
        terminate(proc)
    assert started[0]["pid"] == proc.pid and started[0]["respawn_count"] == 1
    service_events = [(e["event"], e["pid"]) for e in read_events(events) if e["service"]]
    assert [kind for kind, _ in service_events] == ["spawned", "adopted", "stopping", "stopped"]
    assert len({pid for _, pid in service_events}) == 1  # adopted, not restarted


def imports_until_spawned(path):
    """The modules a supervisor run as a script on config ``path`` imports (by every image it
    is, in order) until its service is spawned."""
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")  # each image prints its imports
    proc = subprocess.Popen([sys.executable, SUPERVISOR, "run", "-c", str(path)],
                            stderr=subprocess.PIPE, text=True, env=env)
    imported = []
    try:
        for line in proc.stderr:
            if "spawned pid" in line:
                break
            if line.startswith("import time:"):
                imported.append(line.rsplit("|", 1)[1].strip())
    finally:
        proc.terminate()  # a clean stop: its service goes with it
        try:
            proc.communicate(timeout=15)
        finally:
            proc.kill()
            proc.wait()
    return imported


@pytest.mark.skipif(sys.platform == "win32", reason="only POSIX exec keeps the PID")
def test_run_as_a_script_imports_its_modules_once(tmp_path):
    """The script re-executes itself before it imports anything: PyYAML and the rest are
    imported by the image that stays, not once more by the one it replaces."""
    imported = imports_until_spawned(write(tmp_path, "services:\n  web:\n    command: sleep 600\n"))
    assert imported.count("yaml") == 1 and imported.count("argparse") == 1, imported


@pytest.mark.skipif(sys.platform == "win32", reason="PYTHONPROFILEIMPORTTIME output as on POSIX")
@pytest.mark.parametrize("written_in", ["YAML", "JSON"])
def test_a_running_supervisor_imports_nothing_it_does_not_use(tmp_path, written_in):
    """typing (annotations only), shutil (argparse's --help width, from Python 3.9 on),
    threading with queue (forwarded output), and PyYAML for a config in JSON, stay out of a
    supervisor that does not use them: each is memory for its whole life and time at every
    start."""
    imported = set(imports_until_spawned(write(
        tmp_path, "services:\n  web:\n    command: sleep 600\n" if written_in == "YAML"
        else '{"services": {"web": {"command": "sleep 600"}}}')))
    assert "argparse" in imported  # (the output is the one looked for)
    at_start = subprocess.run(  # what the interpreter imports before any program (site)
        [sys.executable, "-c", "pass"], env=dict(os.environ, PYTHONPROFILEIMPORTTIME="1"),
        capture_output=True, text=True, check=True).stderr
    imported -= {line.rsplit("|", 1)[1].strip() for line in at_start.splitlines()}
    unwanted = {"typing", "queue"}
    if sys.version_info >= (3, 9):  # (Python 3.8's argparse imports shutil, which imports
        unwanted |= {"shutil", "threading"}  # bz2, which imports threading)
    assert not unwanted & imported
    assert ("yaml" in imported) == (written_in == "YAML")


def read_events(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.skipif(sys.platform == "win32", reason="only POSIX exec keeps the PID")
def test_python_dash_m_pytest_supervisor_reexecutes_the_same_program(tmp_path):
    """`python -m pytest_supervisor run`: a re-exec (SIGUSR2) runs supervisor.py again, as an
    import, and adopts the service."""
    path = write(tmp_path, "services:\n  web:\n    command: sleep 600\n")
    events = tmp_path / "events"
    proc, _ = run_until_spawned(["-m", "pytest_supervisor", "run", "-c", str(path),
                                 "--events", str(events)])
    try:
        proc.send_signal(signal.SIGUSR2)
        wait_until(lambda: [e for e in read_events(events) if e["event"] == "adopted"],
                   "the re-exec")
        cmdline = psutil.Process(proc.pid).cmdline()
        assert cmdline[1:3] == ["-c", supervisor._RUN_AS_IMPORT]
        assert cmdline[3] == "-" and os.path.samefile(cmdline[4], SUPERVISOR)
    finally:
        terminate(proc)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX execute permission")
def test_check_warns_of_programs_it_cannot_run_and_of_empty_variables(tmp_path):
    (tmp_path / "job.sh").write_text("#!/bin/sh\n")  # not executable
    path = write(tmp_path, (
        "services:\n"
        "  web:\n"
        "    command: [pythn, '${PORT}', '${HOST:-localhost}', '$${LITERAL}']\n"
        "    env: {URL: 'http://${DB_HOST}/', HOME_TOO: '${HOME}'}\n"
        "  job:\n"
        "    command: ./job.sh\n"
        "    cwd: %s\n"
        "  fine:\n"
        "    command: [sleep, '1']\n" % tmp_path))
    env = {key: value for key, value in os.environ.items()
           if key not in ("PORT", "HOST", "DB_HOST", "LITERAL")}
    result = subprocess.run([sys.executable, SUPERVISOR, "check", "-c", str(path)],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0
    assert result.stdout == "%s: OK (3 services)\n" % path
    assert result.stderr.splitlines() == [
        "%s:2: warning: services.web.env.URL: ${DB_HOST} has no value and no default" % path,
        "%s:2: warning: services.web.command: ${PORT} has no value and no default" % path,
        "%s:2: warning: services.web.command: program 'pythn' not found on PATH" % path,
        "%s:5: warning: services.job.command: program './job.sh' is not executable" % path,
    ]
    (tmp_path / "job.sh").chmod(0o755)
    quiet = subprocess.run([sys.executable, SUPERVISOR, "check", "-c", str(path)],
                           capture_output=True, text=True, env=dict(env, PORT="1", DB_HOST="db",
                                                                    PATH=os.environ["PATH"]))
    assert quiet.stderr.splitlines() == [
        "%s:2: warning: services.web.command: program 'pythn' not found on PATH" % path]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX execute permission")
def test_check_warns_of_a_program_on_path_that_is_not_executable(tmp_path):
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "mytool").write_text("#!/bin/sh\n")
    path = write(tmp_path, "services:\n  web:\n    command: mytool --serve\n")
    result = subprocess.run([sys.executable, SUPERVISOR, "check", "-c", str(path)],
                            capture_output=True, text=True,
                            env=dict(os.environ, PATH="%s%s%s" % (tools, os.pathsep,
                                                                   os.environ["PATH"])))
    assert result.returncode == 0
    assert result.stderr == ("%s:2: warning: services.web.command: program 'mytool' is on PATH"
                             " but not executable\n" % path)
