"""Supervisors under test other than ours (SPEC section 5, ``--supervisor-target``).

A target turns our config (SPEC section 3) into its own files (:mod:`.translate`), says how
it is started in the foreground and how its users stop it (:mod:`.builtin`), and is watched
from outside (:mod:`.observe`): the harness writes the events it sees into the same events
file our supervisor writes, so every wait, assertion, measurement and report works
unchanged. A key a target cannot express raises :class:`.translate.Unexpressible`, which
the harness turns into a skip with the reason.
"""

# The built-in targets; "ours" is this project's supervisor.py, which writes its own events.
NAMES = ("ours", "supervisord", "circus", "s6", "runit", "command")
