"""Demo failing service: prints a line, then exits with code 1 after a short while.

Usage: python failing_script.py [--after SECONDS]   (default 0.5)
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="failing_script.py", description=__doc__)
    parser.add_argument("--after", type=float, default=0.5, metavar="SECONDS")
    args = parser.parse_args(argv)
    if args.after < 0:
        parser.error(f"--after must be at least 0, got {args.after}")
    print(f"failing_script started; failing in {args.after} s", flush=True)
    time.sleep(args.after)
    print("failing_script failing with exit code 1", file=sys.stderr, flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
