"""`python -m extractor COMMAND`: the extractor's command-line entry point.

`demo` is parsed on its own: `make run` calls it on every start, and a ready demo then answers without
importing the other commands (torch among them).
"""

from __future__ import annotations

import argparse
import logging
import sys
from types import ModuleType

from extractor.demo import prepare


def commands(argv: list[str]) -> tuple[ModuleType, ...]:
    """The command modules that parse `argv`: the demo's alone for `demo`, else all of them."""
    if argv[:1] == ["demo"]:
        return (prepare,)
    from extractor import finalize, merge, run, verify
    from extractor.demo import train, world

    return (run, finalize, merge, verify, prepare, world, train)


def input_errors() -> tuple[type[Exception], ...]:
    """Errors of the user's input: reported in one line, without a traceback."""
    from db.writer import DatabaseLocked
    from extractor.checkpoint import CheckpointError
    from extractor.coco import CocoFormatError
    from extractor.ray_backend import ClusterUnreachable

    return (CocoFormatError, CheckpointError, ClusterUnreachable, DatabaseLocked, FileNotFoundError, ValueError)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m extractor", description="ALBEF per-word attention over COCO.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in commands(argv):
        module.add_parser(subparsers)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except Exception as e:
        if not isinstance(e, input_errors()):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
