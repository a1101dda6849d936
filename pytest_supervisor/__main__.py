"""``python -m pytest_supervisor``: the supervisor's command line, the ``supervisor`` command.

The distribution installs ``supervisor.py`` as ``pytest_supervisor_standalone.supervisor``,
never as a top-level ``supervisor``: that is supervisord's package, which may be installed too.
"""

import importlib
import sys
from typing import Any

# (imported by name: type checkers cannot follow an editable install's mapping of that module)
supervisor: Any = importlib.import_module("pytest_supervisor_standalone.supervisor")
# A self-respawn executes sys.argv again: make it run that file, not this one.
sys.argv[0] = supervisor.__file__
supervisor.command_line()
