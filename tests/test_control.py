"""The control socket and live operations, through the real CLI and the real socket."""
import json
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from process_helpers import cli, wait_for_role

pytestmark = pytest.mark.integration

posix_only = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="unix sockets")


def config(socket_path, services, **supervisor):
    return {"supervisor": dict(control_socket=str(socket_path), **supervisor),
            "services": services}


def names(handle, kind):
    return [e["service"] for e in handle.events if e["event"] == kind]


@posix_only
def test_socket_is_private(supervisor_factory, dummy_service, control_dir):
    sock = control_dir / "sock"
    handle = supervisor_factory.spawn(config(sock, {"a": {"command": dummy_service()}}))
    handle.pid_of("a")
    assert stat.S_IMODE(os.stat(control_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    handle.signal("SIGTERM")
    assert handle.wait_exit(timeout=15) == 0
    assert not sock.exists()


@posix_only
def test_status_table_and_json(supervisor_factory, dummy_service, control_dir):
    sock = control_dir / "sock"
    handle = supervisor_factory.spawn(config(sock, {
        "web": {"command": dummy_service(), "restart": "always"},
        "job": {"command": dummy_service(exit_after=0.05, exit_code=3), "restart": "never"}}))
    pid = handle.pid_of("web")
    handle.wait_for("exited", "job")
    table = cli("status", "--socket", str(sock))
    assert table.returncode == 0, table.stderr
    header, web, job = table.stdout.splitlines()
    assert header.split() == ["NAME", "STATE", "PID", "PROCS", "UPTIME", "RESTARTS", "LAST",
                              "EXIT", "RSS", "CPU"]
    assert web.split()[:6] == ["web", "running", str(pid), "1", web.split()[4], "0"]
    assert job.split()[:4] == ["job", "exited", "-", "0"] and "exit 3" in job
    as_json = json.loads(cli("status", "web", "--json", "--socket", str(sock)).stdout)
    assert [row["name"] for row in as_json] == ["web"]
    assert as_json[0]["pid"] == pid and as_json[0]["rss"] > 0 and as_json[0]["uptime"] >= 0
    assert as_json[0]["processes"] == [pid]


@posix_only
def test_config_names_the_socket_for_control_commands(supervisor_factory, dummy_service,
                                                      control_dir, tmp_path):
    path = tmp_path / "services.yaml"
    path.write_text(json.dumps(config(control_dir / "sock", {"a": {"command": dummy_service()}})))
    handle = supervisor_factory.spawn(str(path))
    handle.pid_of("a")
    result = cli("-c", str(path), "status", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)[0]["name"] == "a"


@posix_only
def test_start_stop_restart_several_names(supervisor_factory, dummy_service, control_dir):
    sock = control_dir / "sock"
    handle = supervisor_factory.spawn(config(sock, {
        "a": {"command": dummy_service()}, "b": {"command": dummy_service()},
        "c": {"command": dummy_service(), "autostart": False}}))
    old = {n: handle.pid_of(n) for n in ("a", "b")}
    stopped = cli("stop", "a", "b", "--socket", str(sock))
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.splitlines() == ["a: stopped", "b: stopped"]
    assert sorted(names(handle, "stopped")) == ["a", "b"]
    started = cli("start", "a", "c", "--socket", str(sock))
    assert started.stdout.splitlines() == ["a: running", "c: running"]
    restarted = cli("restart", "a", "--socket", str(sock))
    assert restarted.stdout.splitlines() == ["a: running"]
    assert handle.pid_of("a") not in (old["a"],)
    assert handle.wait_for("spawned", "c")["attempt"] == 1


@posix_only
def test_unknown_names_are_an_error_listing_the_known_ones(supervisor_factory, dummy_service,
                                                          control_dir):
    sock = control_dir / "sock"
    handle = supervisor_factory.spawn(config(sock, {"web": {"command": dummy_service()},
                                                    "db": {"command": dummy_service()}}))
    handle.pid_of("web")
    result = cli("stop", "web", "wbe", "--socket", str(sock))
    assert result.returncode == 2
    assert result.stderr.strip() == "error: unknown service 'wbe'; known: web, db"
    assert "stopping" not in [e["event"] for e in handle.events]


def test_no_supervisor_answering_exits_3(control_dir):
    result = cli("status", "--socket", str(control_dir / "nobody-here"))
    assert result.returncode == 3
    assert result.stderr.startswith("cannot reach a running supervisor: no supervisor answers at")


def test_control_socket_false_exits_3(tmp_path):
    path = tmp_path / "services.yaml"
    path.write_text("supervisor:\n  control_socket: false\nservices:\n  a: {command: x}\n")
    result = cli("status", "-c", str(path))
    assert result.returncode == 3
    assert result.stderr == ("%s: supervisor.control_socket is false (no control socket), and no"
                             " --socket was given\n" % path)


@posix_only
@pytest.mark.parametrize("how", ["command", "SIGHUP"])
def test_reload_applies_only_the_difference(supervisor_factory, dummy_service, control_dir,
                                            tmp_path, how):
    sock = control_dir / "sock"
    path = tmp_path / "services.yaml"
    before = config(sock, {"keep": {"command": dummy_service()},
                           "change": {"command": dummy_service()},
                           "drop": {"command": dummy_service()}})
    path.write_text(json.dumps(before))
    handle = supervisor_factory.spawn(str(path))
    pids = {n: handle.pid_of(n) for n in ("keep", "change", "drop")}
    after = config(sock, {"keep": {"command": dummy_service()},
                          "change": {"command": dummy_service(name="changed")},
                          "new": {"command": dummy_service()}})
    path.write_text(json.dumps(after))
    if how == "command":
        result = cli("reload", "--socket", str(sock))
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == ["added: new", "removed: drop", "changed: change"]
    else:
        handle.signal("SIGHUP")
    reloaded = handle.wait_for("reloaded")
    assert (reloaded["added"], reloaded["removed"], reloaded["changed"]) == (
        ["new"], ["drop"], ["change"])
    handle.wait_for("spawned", "new")
    assert handle.wait_for("stopped", "drop")["pid"] == pids["drop"]
    respawned = handle.wait_for("spawned", "change", since=reloaded["mono"])
    assert respawned["pid"] != pids["change"]
    assert handle.pid_of("keep") == pids["keep"]
    status = json.loads(cli("status", "--json", "--socket", str(sock)).stdout)
    assert [row["name"] for row in status] == ["keep", "change", "new"]


@posix_only
def test_bad_reload_changes_nothing_and_says_why(supervisor_factory, dummy_service, control_dir,
                                                 tmp_path):
    sock = control_dir / "sock"
    path = tmp_path / "services.yaml"
    path.write_text(json.dumps(config(sock, {"keep": {"command": dummy_service()}})))
    handle = supervisor_factory.spawn(str(path))
    pid = handle.pid_of("keep")
    path.write_text(json.dumps(config(sock, {"keep": {"command": dummy_service(),
                                                      "restart": "sometimes"}})))
    result = cli("reload", "--socket", str(sock))
    assert result.returncode == 1
    assert result.stderr.startswith("error: reload refused, nothing changed:\n")
    assert "services.keep.restart: expected one of always, on-failure, never" in result.stderr
    # the supervisor's own log says it too, the same way for the command and for SIGHUP
    for refusals in (1, 2):
        time_limit = time.monotonic() + 10
        while sum("ERROR   reload refused, nothing changed:" in line
                  for line in handle.log_lines()) < refusals:
            assert time.monotonic() < time_limit, "refused reload %d was not logged" % refusals
            time.sleep(0.02)  # the log is another process's file: no event to wait on
        if refusals == 1:
            handle.signal("SIGHUP")
    assert "services.keep.restart: expected one of always, on-failure, never" in "\n".join(
        handle.log_lines())
    assert "reloaded" not in [e["event"] for e in handle.events]
    assert handle.pid_of("keep") == pid


@posix_only
def test_reexec_command_keeps_services_and_their_history(supervisor_factory, dummy_service,
                                                         control_dir):
    sock = control_dir / "sock"
    handle = supervisor_factory.spawn(config(sock, {
        "a": {"command": dummy_service(), "restart": "always"},
        "gone": {"command": dummy_service(exit_after=0.05, exit_code=7), "restart": "never"}}))
    handle.kill("a")
    handle.assert_respawned("a", within=5)
    handle.wait_for("exited", "gone")
    before = {row["name"]: row for row in
              json.loads(cli("status", "--json", "--socket", str(sock)).stdout)}
    result = cli("reexec", "--socket", str(sock))
    assert result.returncode == 0 and result.stdout.strip() == "re-executing"
    assert handle.wait_for("adopted", "a")["pid"] == before["a"]["pid"]
    after = {row["name"]: row for row in
             json.loads(cli("status", "--json", "--socket", str(sock)).stdout)}
    assert after["a"]["restarts"] == before["a"]["restarts"] == 1
    assert after["a"]["uptime"] >= before["a"]["uptime"]
    assert after["gone"]["state"] == "exited"
    assert after["gone"]["last_exit"] == {"returncode": 7, "signal": None}


@posix_only
def test_shutdown_command(supervisor_factory, dummy_service, control_dir):
    sock = control_dir / "sock"
    handle = supervisor_factory.spawn(config(sock, {"a": {"command": dummy_service()}}))
    handle.pid_of("a")
    assert cli("shutdown", "--socket", str(sock)).returncode == 0
    assert handle.wait_exit(timeout=15) == 0


@posix_only
def test_services_left_by_a_sigkilled_supervisor_are_stopped_by_the_next(
        supervisor_factory, dummy_service, control_dir, tmp_path):
    path = tmp_path / "services.yaml"
    pids_file = tmp_path / "pids"
    path.write_text(json.dumps(config(control_dir / "sock", {
        "a": {"command": dummy_service(daemon=True, pids_file=pids_file)},
        "b": {"command": dummy_service()}})))
    first = supervisor_factory.spawn(str(path))
    old = {n: first.pid_of(n) for n in ("a", "b")}
    daemon, = wait_for_role(pids_file)["daemon"]
    os.kill(first.pid, signal.SIGKILL)
    first.wait_exit(timeout=10)
    survivors = [psutil.Process(p) for p in (*old.values(), daemon)]
    assert all(p.is_running() for p in survivors)  # orphans now, still running
    second = supervisor_factory.spawn(str(path))
    new = {n: second.pid_of(n) for n in ("a", "b")}
    assert set(new.values()).isdisjoint(old.values())
    gone, alive = psutil.wait_procs(survivors, timeout=5)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    log = "\n".join(second.log_lines())
    assert "left by a supervisor that was killed" in log


@posix_only
def test_a_second_supervisor_of_the_same_config_refuses_to_start(
        supervisor_factory, dummy_service, control_dir, tmp_path):
    path = tmp_path / "services.yaml"
    path.write_text(json.dumps(config(control_dir / "sock", {"a": {"command": dummy_service()}})))
    first = supervisor_factory.spawn(str(path))
    pid = first.pid_of("a")
    second = supervisor_factory.spawn(str(path), wait=False)
    assert second.wait_exit(timeout=15) == 1
    assert any("already running this config" in line or "another supervisor is listening"
               in line for line in second.log_lines())
    assert first.pid_of("a") == pid


@posix_only
def test_garbage_on_the_socket_never_delays_a_respawn(supervisor_factory, dummy_service,
                                                      control_dir):
    """10,000 malformed messages from many clients while a service is killed and respawned."""
    sock_path = str(control_dir / "sock")
    handle = supervisor_factory.spawn(config(sock_path, {
        "victim": {"command": dummy_service(), "restart": "always", "max_retries": None}}))
    handle.pid_of("victim")
    rng = random.Random(7)
    garbage = [b"\x00\xff\xfe", b"{", b"[]", b"null", b'{"v": 1}', b'{"v": 1, "cmd": "nope"}',
               b'{"v": 99, "cmd": "status"}', b'{"v": 1, "cmd": "stop", "args": []}',
               b'{"v": 1, "cmd": "start", "args": {"names": [1]}}', b"\xc3\x28" * 50,
               b'{"v": 1, "cmd": "status", "args": {"names": "x"}}', b"[" * 5000,
               b'{"v": 1, "id": ' + b"7" * 5000 + b', "cmd": "status"}',
               b'{"v": 1, "cmd": ' + b"{\"a\": " * 3000 + b"1" + b"}" * 3000 + b"}",
               b'{"v": 1, "id": [[[[[[[[]]]]]]]], "cmd": "status"}']
    sent = [0]
    stop = threading.Event()

    def fuzz(seed, until):
        local = random.Random(seed)
        while not until.is_set() and sent[0] < 10000:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                    client.settimeout(5)
                    client.connect(sock_path)
                    for _ in range(local.randint(1, 50)):
                        client.sendall(local.choice(garbage) + b"\n")
                        sent[0] += 1
                    if local.random() < 0.1:
                        client.sendall(b"x" * 70000)  # oversized line
                    if local.random() < 0.3:
                        client.recv(4096)
            except OSError:
                pass  # the supervisor may drop us: that is allowed

    silent = []
    for _ in range(200):  # clients that connect and say nothing
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(sock_path)
        silent.append(client)
    threads = [threading.Thread(target=fuzz, args=(rng.random(), stop)) for _ in range(4)]
    for thread in threads:
        thread.start()
    kills = 0
    try:
        while kills < 20 or sent[0] < 10000:  # the kills go on until all the garbage is in
            handle.kill("victim")
            handle.assert_respawned("victim", within=1.0)
            kills += 1
            assert kills < 5000, "the fuzzers stalled at %d messages" % sent[0]
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for client in silent:
            client.close()
    result = cli("status", "--json", "--socket", sock_path)
    assert result.returncode == 0 and json.loads(result.stdout)[0]["state"] == "running"
    assert psutil.Process(handle.pid).is_running()


@posix_only
def test_malformed_requests_get_an_answer_that_says_what_is_wrong(supervisor_factory,
                                                                 dummy_service, control_dir):
    """Each kind of bad request, on one connection, then a good one on the same connection."""
    sock_path = str(control_dir / "sock")
    handle = supervisor_factory.spawn(config(sock_path, {"web": {"command": dummy_service()}}))
    handle.pid_of("web")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(sock_path)
        replies = client.makefile("rb")

        def ask(line):
            client.sendall(line + b"\n")
            reply = json.loads(replies.readline())
            assert reply["v"] == 1
            return reply.get("id"), reply["ok"], reply.get("error")

        assert ask(b"\x00\xff{") == (None, False, "not JSON")
        assert ask(b"[1]") == (None, False, "expected a JSON object")
        assert ask(b'{"v": 2, "id": 7, "cmd": "status"}') == (
            7, False, "unsupported protocol version 2 (this supervisor speaks 1)")
        assert ask(b'{"v": 1, "id": 8, "cmd": "stats"}') == (
            8, False, "unknown command \'stats\' (did you mean \'status\'?)")
        assert ask(b'{"v": 1, "cmd": "start", "args": ["web"]}') == (
            None, False, "args: expected an object")
        assert ask(b'{"v": 1, "cmd": "stop", "args": {"names": "web"}}') == (
            None, False, "names: expected a list of service names")
        assert ask(b'{"v": 1, "cmd": "restart", "args": {}}') == (
            None, False, "names: give at least one service")
        assert ask(b'{"v": 1, "id": "s", "cmd": "status"}')[:2] == ("s", True)
        client.sendall(b"x" * 70000)  # no newline: more than a request may be
        assert json.loads(replies.readline())["error"] == "request longer than 65536 bytes"
        assert replies.readline() == b""  # and the supervisor hung up
    assert handle.pid_of("web") and psutil.Process(handle.pid).is_running()


@posix_only
def test_another_uid_cannot_connect(supervisor_factory, dummy_service, control_dir):
    if os.geteuid() != 0:
        pytest.skip("needs root to create a user and act as it")
    user = "svctl%d" % os.getpid()
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
                   check=True, capture_output=True)
    try:
        sock = control_dir / "sock"
        handle = supervisor_factory.spawn(config(sock, {"a": {"command": dummy_service()}}))
        handle.pid_of("a")
        os.chmod(control_dir, 0o755)  # even with the folder opened up, the socket refuses
        os.chmod(sock, 0o666)
        import pwd
        entry = pwd.getpwnam(user)
        probe = ("import socket, sys\n"
                 "s = socket.socket(socket.AF_UNIX)\n"
                 "s.connect(sys.argv[1])\n"
                 "s.sendall(b'{\"v\": 1, \"cmd\": \"status\"}\\n')\n"
                 "print(repr(s.recv(100)))\n")

        def become_the_other_user():  # user=/group= of subprocess need Python 3.9
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)

        result = subprocess.run(["/usr/bin/python3", "-c", probe, str(sock)],
                                capture_output=True, text=True,
                                preexec_fn=become_the_other_user, timeout=30)
        assert result.stdout.strip() in ("b''", "") or "Error" in result.stderr
        assert "running" not in result.stdout
        os.chmod(control_dir, 0o700)
    finally:
        subprocess.run(["userdel", user], capture_output=True)


@posix_only
def test_requests_that_break_a_json_parser_get_an_answer(supervisor_factory, dummy_service,
                                                         control_dir):
    """Deep nesting, huge numbers and wrong types: each an answer, never an error in the
    loop (six deep ones within a minute used to exhaust self_respawn.max)."""
    sock_path = str(control_dir / "sock")
    handle = supervisor_factory.spawn(config(sock_path, {"web": {"command": dummy_service()}}))
    pid = handle.pid_of("web")
    deep = 900  # parses (under the recursion limit), then sits in the request
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(sock_path)
        replies = client.makefile("rb")

        def ask(line):
            client.sendall(line + b"\n")
            reply = json.loads(replies.readline())
            return reply.get("id"), reply["ok"], reply.get("error")

        def refusal(line):
            """What the supervisor (the same Python as this one) makes of a broken line: its
            parser recurses and gives up on deep nesting up to 3.12, and says it is no JSON
            from 3.13 on, which parses without recursing."""
            try:
                json.loads(line)
            except RecursionError:
                return "nested too deeply"
            except ValueError:
                return "not JSON"
            raise AssertionError("%r parsed" % line[:20])

        deep_lines = [b"[" * 5000,
                      b'{"v": 1, "cmd": "status", "args": ' + b"{\"a\": " * 5000 + b"}"]
        for _ in range(8):
            for line in deep_lines:
                assert ask(line) == (None, False, refusal(line))
        assert ask(b'{"v": 1, "id": ' + b"9" * 5000 + b', "cmd": "status"}') == (
            None, False, "numbers longer than 100 digits are refused")
        assert ask(b'{"v": 1, "cmd": "start", "args": {"names": [-' + b"1" * 60000 + b']}}') == (
            None, False, "numbers longer than 100 digits are refused")
        assert ask(b'{"v": 1, "id": ' + b"[" * deep + b"]" * deep + b', "cmd": "status"}') == (
            None, False, "id: expected a string or a number")
        assert ask(b'{"v": 1, "id": 3, "cmd": ' + b"[" * deep + b"]" * deep + b"}") == (
            3, False, "cmd: expected one of status, start, stop, restart, reload, reexec, "
                      "shutdown, logs, signal, fault")
        assert ask(b'{"v": 1, "id": 4, "cmd": "stop", "args": {"names": '
                   + b"[" * deep + b"]" * deep + b"}}") == (
            4, False, "names: expected a list of service names")
        assert ask(b'{"v": 1, "id": 1e999, "cmd": "status"}')[1:] == (True, None)
        assert ask(b'{"v": 1, "id": 5, "cmd": "status"}')[:2] == (5, True)
    assert handle.pid_of("web") == pid
    assert [e["event"] for e in handle.events].count("supervisor_started") == 1
    assert "self_respawn" not in [e["event"] for e in handle.events]


FLOOD = Path(__file__).resolve().parent.parent / "benchmarks" / "control_flood.py"


@posix_only
def test_clients_that_never_read_cannot_delay_a_respawn(supervisor_factory, dummy_service,
                                                        control_dir):
    """500 clients pipeline status requests and never read an answer: they stop being read,
    and a killed service still comes back at once, without the supervisor's memory growing
    (benchmarks/ measures it: control_flood)."""
    sock_path = str(control_dir / "sock")
    handle = supervisor_factory.spawn(config(sock_path, {
        "victim": {"command": dummy_service(), "restart": "always", "max_retries": None}}))
    handle.pid_of("victim")
    assert cli("status", "--socket", sock_path).returncode == 0  # psutil is loaded now
    supervisor = psutil.Process(handle.pid)
    idle_rss = supervisor.memory_info().rss
    flood = subprocess.Popen([sys.executable, str(FLOOD), sock_path, "500"],
                             stdout=subprocess.PIPE)
    try:
        assert flood.stdout.readline() == b"connected 500\n"
        for _ in range(20):
            handle.kill("victim")
            handle.assert_respawned("victim", within=1.0)
        assert supervisor.memory_info().rss - idle_rss < 30 * 2**20
        # a client that reads still gets its answer
        assert json.loads(cli("status", "--json", "--socket", sock_path).stdout)[0][
            "state"] == "running"
    finally:
        flood.kill()
        flood.wait()
