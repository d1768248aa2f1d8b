"""`python -m extractor merge OUT SHARD...`: merge shard databases of `run --shard K/N` into one."""

from __future__ import annotations

import argparse
from pathlib import Path

from db import writer


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("merge", help="merge shard databases into one", description=__doc__)
    p.add_argument("out", type=Path, help="target DuckDB file (created if missing; merging is idempotent)")
    p.add_argument("shards", type=Path, nargs="+", help="shard DuckDB files written by `run --shard K/N`")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if missing := [str(s) for s in args.shards if not s.is_file()]:
        raise FileNotFoundError(f"shard files not found: {', '.join(missing)}")
    writer.merge(args.out, args.shards)
    print(f"merged {len(args.shards)} shards into {args.out}")
    return 0
