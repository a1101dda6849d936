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

# A test item's place in the conformance table, a user property: {"case", "target"}, where
# the case is the item's node id without the target (its row) and the target its column.
CONFORMANCE = "supervisor_conformance"


def conformance_case(nodeid: str, target: str) -> str:
    """The row of an item run once per target: its node id with the target's id taken out
    of the parameter ids (``test_x[hard_kill-circus]`` -> ``test_x[hard_kill]``)."""
    base, bracket, ids = nodeid.partition("[")
    if not bracket:
        return nodeid
    kept = [part for part in ids[:-1].split("-") if part != target]
    return f"{base}[{'-'.join(kept)}]" if kept else base
