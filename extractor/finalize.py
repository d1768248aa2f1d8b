"""`python -m extractor finalize X.duckdb [--parts URI]`: build (or bring up to date) X from its parts folder
(X.parts beside it, or the run's --parts: a path or an object-store URI)."""

from __future__ import annotations

import argparse
from pathlib import Path

from db import parts, writer


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("finalize", help="build the DuckDB database from a run's Parquet parts",
                              description=__doc__)  # fmt: skip
    p.add_argument("db", type=Path, help="the --db file of `run`; its parts are in X.parts beside it unless --parts")
    p.add_argument("--parts", metavar="URI", help="the run's --parts: a path or a URI (s3://bucket/prefix, gs://...)")
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait while another process holds X")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    folder = parts.open_store(args.parts or parts.parts_dir(args.db))
    if not parts.run_ids(folder):
        raise FileNotFoundError(f"no run parts in {folder}")
    built = writer.build(args.db, wait=args.wait, parts=folder)
    print(f"{args.db}: {len(built)} run(s) built from {folder}" if built else f"{args.db} is up to date")
    return 0
