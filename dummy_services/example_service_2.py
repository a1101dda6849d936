"""Demo service: a heartbeat line every second; exits 0 on SIGTERM or SIGINT.

Run as ``python dummy_services/example_service_2.py`` or ``python -m
dummy_services.example_service_2``. It is the configurable dummy with the flags of a
well-behaved long-running service.
"""

import sys

if __package__:
    from . import dummy
else:  # run as a file: its folder is sys.path[0]
    import dummy

if __name__ == "__main__":
    sys.exit(
        dummy.main(["--name", "example_service_2", "--heartbeat", "1", "--shutdown-delay", "0"])
    )
