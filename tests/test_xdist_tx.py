"""pytest-xdist gateways (``--tx``) with the plugin: workers on other interpreters.

Two ways a worker runs elsewhere, both with a real supervisor and a real respawn:

* ``--tx popen//python=OTHER``: a local worker process under another interpreter. xdist
  (since 2.3) hands a popen worker the controller's ``sys.path`` in place of its own, so
  OTHER must be the controller's Python version (another installation or virtualenv of it);
  a worker of another version imports the controller's standard library and dies.
* ``--tx socket=HOST:PORT`` to an execnet socket server, the transport ``--tx ssh=...`` uses
  too minus ssh itself: the worker keeps its own interpreter and packages -- any version --
  and receives the project by ``--rsyncdir``. This is the README's recipe for several
  machines, run here against loopback.
"""

import glob
import os
import socket
import subprocess
import sys
import time

import pytest
from process_helpers import ROOT, free_port

pytest_plugins = ["pytester"]
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform == "win32", reason="the gateways are set up for POSIX here"),
]

WORKER_PACKAGES = ["pytest", "pytest-xdist", "psutil", "PyYAML"]

# What each worker runs: a respawn measured by the plugin, and where it all ran.
REMOTE_TEST = """
import os, sys

def test_respawn_measured_on_the_worker(supervisor_factory, dummy_service):
    handle = supervisor_factory.spawn(
        {"services": {"web": {"command": dummy_service(), "restart": "always"}}})
    old = handle.kill("web")
    assert handle.assert_respawned("web", within=5.0) != old
    with open(os.environ["TX_WORKER_SAYS"], "w") as said:
        said.write("%s %d.%d %s" % (sys.executable, sys.version_info[0], sys.version_info[1],
                                    handle.spec.argv[0]))
"""


def version_of(python):
    try:
        out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30)
    except OSError:
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def other_version_interpreter():
    """SUPERVISOR_TX_PYTHON, else the newest pyenv CPython 3.8+ of another version than ours."""
    if os.environ.get("SUPERVISOR_TX_PYTHON"):
        return os.environ["SUPERVISOR_TX_PYTHON"]
    ours = "%d.%d" % sys.version_info[:2]
    found = []
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    for python in glob.glob(os.path.join(root, "versions", "*", "bin", "python")):
        version = version_of(python)
        if version and version != ours and tuple(map(int, version.split("."))) >= (3, 8):
            found.append((tuple(map(int, version.split("."))), python))
    return max(found)[1] if found else None


def worker_report(pytester, monkeypatch):
    pytester.makepyfile(test_remote=REMOTE_TEST)
    said = pytester.path / "worker.txt"
    monkeypatch.setenv("TX_WORKER_SAYS", str(said))
    return said


def worker_venv(base, folder):
    """A virtualenv of ``base`` with what an xdist worker imports before anything else."""
    subprocess.run([base, "-m", "venv", str(folder)], check=True, timeout=120)
    python = str(folder / "bin" / "python")
    installed = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *WORKER_PACKAGES],
        capture_output=True, text=True, timeout=600)
    if installed.returncode != 0:
        pytest.skip("cannot install %s for %s:\n%s" % (" ".join(WORKER_PACKAGES), base,
                                                         installed.stderr[-2000:]))
    return python


def test_popen_worker_under_another_interpreter_of_this_version(pytester, monkeypatch,
                                                                tmp_path):
    base = getattr(sys, "_base_executable", sys.executable)
    other_python = worker_venv(base, tmp_path / "other")
    said = worker_report(pytester, monkeypatch)
    # The worker gets the controller's sys.path, but not an editable install's import hook:
    # the project goes on the path itself.
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    result = pytester.runpytest_subprocess(
        "-p", "pytest_supervisor", "-p", "xdist", "--max-worker-restart=0",
        "--tx", "popen//python=%s" % other_python, "-d", "-v")
    result.assert_outcomes(passed=1)
    worker_python, _, supervisor_python = said.read_text().split()
    assert worker_python == other_python != sys.executable
    assert supervisor_python == other_python  # the supervisor ran on the worker's interpreter


@pytest.fixture(scope="module")
def other_version_python(tmp_path_factory):
    """A virtualenv of another Python version, with what an xdist worker needs."""
    base = other_version_interpreter()
    if base is None:
        pytest.skip("no Python of another version found (set SUPERVISOR_TX_PYTHON)")
    return worker_venv(base, tmp_path_factory.mktemp("tx-venv"))


@pytest.fixture
def socket_server(other_version_python, tmp_path):
    """execnet's socket server under the other Python, on loopback: what a remote host runs."""
    port = free_port()
    remote_home = tmp_path / "remote"
    remote_home.mkdir()
    server = subprocess.Popen(
        [other_version_python, "-m", "execnet.script.socketserver", "127.0.0.1:%d" % port],
        cwd=str(remote_home), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, "the socket server exited"
                assert time.monotonic() < deadline, "the socket server never listened"
                time.sleep(0.1)
        yield port
    finally:
        server.kill()
        server.wait()


def test_socket_worker_of_another_python_version_gets_the_project_by_rsync(
        pytester, monkeypatch, other_version_python, socket_server):
    said = worker_report(pytester, monkeypatch)
    rsync = ["--rsyncdir=%s" % path for path in (
        ROOT / "supervisor.py", ROOT / "pytest_supervisor", ROOT / "dummy_services",
        pytester.path)]
    result = pytester.runpytest_subprocess(
        "-p", "pytest_supervisor", "-p", "xdist", "--max-worker-restart=0",
        "-W", "ignore::DeprecationWarning",  # xdist 3 deprecates rsync; 4.0 drops it
        "--tx", "socket=127.0.0.1:%d//env:TX_WORKER_SAYS=%s" % (socket_server, said),
        *rsync, "-d", "-v",
        str(pytester.path / "test_remote.py"))
    result.assert_outcomes(passed=1)
    worker_python, worker_version, supervisor_python = said.read_text().split()
    assert worker_python == other_version_python
    assert worker_version == version_of(other_version_python) != "%d.%d" % sys.version_info[:2]
    assert supervisor_python == other_version_python
