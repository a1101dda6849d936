"""Real nginx under the supervisor (issue 13, 1): `daemon off;`, a master and two workers.

nginx writes its process title over its environment, so its workers carry no tag a
supervisor could find them by, and they keep the port after their master is SIGKILLed. The
test takes the workers' pids from the process tree while their master lives and checks them
itself; the ``trees`` fixture kills any survivor and fails the test.

nginx comes from the distribution (`.ci/run` installs Debian's nginx-light where it can);
without it the test is skipped, saying so.
"""
import shutil
import socket
import sys

import psutil
import pytest
from process_helpers import wait_until
from process_trees import (
    Trees,
    assert_leftovers_stopped_first,
    backend_params,
    cli,
    free_port,
)

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nginx is tested on Linux"),
    pytest.mark.skipif(
        NGINX is None, reason="nginx is not installed (Debian: apt-get install nginx-light)"
    ),
]

CONFIG = """\
daemon off;
master_process on;
worker_processes 2;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "served by $pid\\n"; }}
    }}
}}
"""


@pytest.fixture(params=backend_params())
def trees(request, supervisor_factory, tmp_path):
    made = Trees(supervisor_factory, tmp_path, request.param)
    yield made
    made.finish()


def served_by(port):
    """The pid of the nginx worker that answered a request on the port."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        response = b""
        while True:
            chunk = connection.recv(4096)
            if not chunk:
                break
            response += chunk
    status, _, body = response.decode().partition("\r\n\r\n")
    assert status.startswith("HTTP/1.1 200"), response
    return int(body.split()[-1])


def workers_of(master):
    """The master's two workers, once both run (nginx forks them after binding)."""

    def both():
        try:
            children = psutil.Process(master).children()
        except psutil.NoSuchProcess:
            return None
        return len(children) == 2 and sorted(child.pid for child in children)

    return wait_until(both, "nginx's two workers")


def test_a_sigkilled_nginx_master_s_workers_are_stopped_before_it_is_started_again(
    trees, tmp_path
):
    port = free_port()
    config = tmp_path / "nginx.conf"
    config.write_text(CONFIG.format(tmp=tmp_path, port=port))
    error_log = tmp_path / "error.log"
    command = [NGINX, "-p", "%s/" % tmp_path, "-c", str(config), "-e", str(error_log)]
    handle = trees.spawn(
        {
            "services": {
                "nginx": {
                    "command": command,
                    "restart": "always",
                    "ready": {"tcp": "127.0.0.1:%d" % port, "timeout": 20},
                    "stop_timeout": 10,
                }
            }
        }
    )
    master = handle.wait_for("ready", "nginx", timeout=20)["pid"]
    old_workers = workers_of(master)
    trees.note([master, *old_workers])
    assert served_by(port) in old_workers

    handle.kill("nginx")  # kill -9 <master>
    exited = handle.wait_for("exited", "nginx", predicate=lambda e: e["pid"] == master)
    assert_leftovers_stopped_first(handle, exited, 2)
    new = handle.assert_respawned("nginx", within=20)
    assert trees.alive(old_workers) == []
    handle.wait_for("ready", "nginx", predicate=lambda e: e["pid"] == new, timeout=20)
    new_workers = workers_of(new)
    trees.note([new, *new_workers])
    # The new master bound the port itself: its workers answer, none of the old ones.
    assert served_by(port) in new_workers
    assert "Address already in use" not in error_log.read_text()
    assert [e["event"] for e in handle.events if e["event"] == "exited"] == ["exited"]

    done = cli("stop", "nginx", "-c", str(handle.spec.config_path))
    assert done.returncode == 0, done.stderr
    handle.wait_for("stopped", "nginx", timeout=20)
    assert trees.alive([new, *new_workers]) == []
    handle.signal("SIGTERM")
    assert handle.wait_exit(timeout=30) == 0
    assert trees.alive([master, *old_workers, new, *new_workers]) == []
