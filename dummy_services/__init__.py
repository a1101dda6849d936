"""Dummy services that the supervisor's tests and demo config start.

Every module here is also a script, run as ``python dummy_services/NAME.py``:

- ``dummy.py``: the configurable dummy; its flags choose how it starts, stops, fails,
  spawns helpers and uses resources (see its docstring).
- ``example_service_1.py``, ``example_service_2.py``: well-behaved long-running services
  for the demo config: a heartbeat line every second, exit 0 on SIGTERM or SIGINT.
- ``failing_script.py``: prints a line, then exits with code 1.

Locate the folder with ``importlib.util.find_spec("dummy_services")`` when installed.
"""
