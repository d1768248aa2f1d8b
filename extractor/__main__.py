"""`python -m extractor COMMAND`: the extractor's command-line entry point."""

from __future__ import annotations

import argparse
import logging
import sys

from db.writer import DatabaseLocked
from extractor import finalize, merge, run, verify
from extractor.checkpoint import CheckpointError
from extractor.coco import CocoFormatError
from extractor.demo import prepare, train, world
from extractor.ray_backend import ClusterUnreachable

COMMANDS = (run, finalize, merge, verify, prepare, world, train)
# Errors of the user's input: reported in one line, without a traceback.
INPUT_ERRORS = (CocoFormatError, CheckpointError, ClusterUnreachable, DatabaseLocked, FileNotFoundError, ValueError)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m extractor", description="ALBEF per-word attention over COCO.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(subparsers)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except INPUT_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
