"""Fixtures the test files share. Plain helper functions are in process_helpers.py."""
import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def control_dir():
    """A path for a control socket in a fresh folder with a short name: unix socket paths are
    limited to about 100 bytes, which pytest's tmp_path can exceed."""
    folder = tempfile.mkdtemp(prefix="svctl-")
    yield Path(folder) / "ctl"
    shutil.rmtree(folder, ignore_errors=True)


# Where the conformance tox env installs the peers from PyPI, each in its own virtualenv
# (supervisord's distribution is importable as `supervisor`, our module's name).
PEER_VENVS = Path(__file__).resolve().parent.parent / ".venv-peers"
PEER_PROGRAMS = {"supervisord": "supervisord", "circus": "circusd", "s6": "s6-svscan",
                 "runit": "runsvdir"}
PEER_INSTALL = {
    "supervisord": "python -m venv .venv-peers/supervisord && .venv-peers/supervisord/bin/pip"
                   " install supervisor",
    "circus": "python -m venv .venv-peers/circus && .venv-peers/circus/bin/pip install circus",
    "s6": "apt-get install s6",
    "runit": "apt-get install runit",
}


def peer_program(name):
    """The peer's program: on PATH, else in .venv-peers/; skips the test when not installed."""
    program = PEER_PROGRAMS[name]
    found = shutil.which(program)
    venv = PEER_VENVS / name / "bin" / program
    if found is None and venv.exists():
        found = str(venv)
    if found is None:
        pytest.skip(f"{name} is not installed here ({PEER_INSTALL[name]})")
    return found


@pytest.fixture
def peers():
    """{target: program} of the installed peers; a test asking for a missing one skips."""
    class Peers(dict):
        def __missing__(self, name):
            self[name] = peer_program(name)
            return self[name]
    return Peers()
