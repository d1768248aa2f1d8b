"""What the order of `word_heads` costs a Search ranked by one head (db.heads.search_by_head over every word).

Builds a synthetic `word_heads` of N object words x 6 layers x 12 heads in the order the extractor writes it
(chunks, batches, layer-major), and a copy that finalize's own `db.writer.sort_word_heads` rewrites (timed: what
the sort adds to finalize). Times, on each, the queries that depend on the order: one head's first page of 24
keys by mask mass (descending, the Search's default, and ascending), its count, and its rows of the first page's
images (the word rows search_by_head then joins). Prints median and p95 side by side.

    .venv/bin/python -m bench.heads_order --words 280000   # 20M rows, 1/6 of full COCO's object words
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np

from db import writer

LAYERS, HEADS, PAGE = range(6, 12), 12, 24
HEAD_ROWS = "FROM word_heads WHERE run_id = 'r' AND layer = 9 AND head = 7"
_PAGE = "SELECT image_id, caption_id, word_index " + HEAD_ROWS + " ORDER BY mask_mass {}, image_id, caption_id, "
_PAGE += f"word_index LIMIT {PAGE}"
QUERIES = {
    "page": _PAGE.format("DESC NULLS LAST"),
    "page ascending": _PAGE.format("ASC NULLS LAST"),
    "count": "SELECT count(*) " + HEAD_ROWS,
    "page's images": f"SELECT * {HEAD_ROWS} AND image_id IN (SELECT image_id FROM ({_PAGE.format('DESC')}))",
}


def connect(path: Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(path), read_only=read_only)
    con.execute("SET enable_progress_bar = false")
    return con


def build(con: duckdb.DuckDBPyConnection, n_words: int) -> None:
    """word_heads as the extractor writes it (256-image chunks, 32-image batches, layer-major)."""
    con.execute(f"""
        CREATE TABLE word_heads AS
        WITH w AS (SELECT i AS k, i // 25 AS image_id, i // 5 AS caption_id, (i % 5)::SMALLINT AS word_index
                   FROM range({n_words}) AS t(i))
        SELECT 'r' AS run_id, image_id, caption_id, word_index, l::SMALLINT AS layer, h::SMALLINT AS head,
               random()::FLOAT AS mask_mass, random()::FLOAT AS specificity_others
        FROM w, range({LAYERS.start}, {LAYERS.stop}) AS a(l), range({HEADS}) AS b(h)
        ORDER BY image_id // 256, image_id // 32, layer, k, head""")


def sorted_copy(written: Path, path: Path) -> float:
    """Copy the written table to `path` and sort it as finalize does; the sort's seconds (committed)."""
    with connect(path) as con:
        con.execute("ATTACH ? AS written (READ_ONLY)", [str(written)])
        con.execute("CREATE TABLE word_heads AS SELECT * FROM written.word_heads")
        con.execute("DETACH written")
        started = time.perf_counter()
        con.execute("BEGIN TRANSACTION")
        writer.sort_word_heads(con, "r")
        con.execute("COMMIT")
        con.execute("CHECKPOINT")
        return time.perf_counter() - started


def timings(con: duckdb.DuckDBPyConnection, sql: str, repeats: int) -> tuple[float, float]:
    """Median and p95 in ms."""
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        con.execute(sql).fetchall()
        seconds.append(time.perf_counter() - started)
    return 1e3 * float(np.median(seconds)), 1e3 * float(np.percentile(seconds, 95))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--words", type=int, default=280_000, help="object words (rows = words x 72)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs of each query (median and p95 reported)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        written, ordered = Path(tmp) / "written.duckdb", Path(tmp) / "sorted.duckdb"
        with connect(written) as con:
            build(con, args.words)
        seconds = sorted_copy(written, ordered)
        print(f"{args.words * len(LAYERS) * HEADS:,} word_heads rows; finalize's sort ({writer.HEADS_ORDER}): "
              f"{seconds:.1f} s")  # fmt: skip
        with connect(written, read_only=True) as w, connect(ordered, read_only=True) as s:
            for name, sql in QUERIES.items():
                (median, p95), (s_median, s_p95) = (timings(con, sql, args.repeats) for con in (w, s))
                print(f"{name:14s} written order {median:7.1f} ms (p95 {p95:6.1f}) | as finalize sorts it "
                      f"{s_median:5.1f} ms (p95 {s_p95:5.1f}) | x{median / s_median:.1f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
