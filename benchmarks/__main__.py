"""``python -m dreamfleet.benchmarks [options]``: the same as ``dreamfleet bench [options]``."""
from __future__ import annotations

import argparse
import logging
import sys

from .commands import add_arguments, handle


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dreamfleet.benchmarks", description="dreamfleet benchmarks")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return handle(args)
    except ValueError as exc:
        print(f"dreamfleet bench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
