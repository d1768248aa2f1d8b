"""`python -m extractor COMMAND`: the extractor's command-line entry point."""

from __future__ import annotations

import argparse
import logging
import sys

from extractor import run, verify
from extractor.demo import world

COMMANDS = (run, verify, world)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m extractor", description="ALBEF per-word attention over COCO.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(subparsers)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
