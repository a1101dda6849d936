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
