"""What the order of `word_heads` costs a Search ranked by one head (db.heads.search_by_head over every word).

Builds a synthetic `word_heads` of N object words x 6 layers x 12 heads in the order the extractor writes it
(chunks, batches, layer-major), and a copy sorted by (run_id, layer, head); times, on each, the two queries that
depend on it: one head's first page of 24 keys by mask mass, and its count. Prints median and p95 side by side.

    .venv/bin/python -m bench.heads_order --words 280000   # 20M rows, 1/6 of full COCO's object words
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np

LAYERS, HEADS, PAGE = range(6, 12), 12, 24
HEAD_ROWS = "FROM {table} WHERE run_id = 'r' AND layer = 9 AND head = 7"
QUERIES = {
    "page": "SELECT image_id, caption_id, word_index " + HEAD_ROWS
    + f" ORDER BY mask_mass DESC NULLS LAST, image_id, caption_id, word_index LIMIT {PAGE}",
    "count": "SELECT count(*) " + HEAD_ROWS,
}  # fmt: skip


def build(con: duckdb.DuckDBPyConnection, n_words: int) -> None:
    """word_heads as the extractor writes it (256-image chunks, 32-image batches, layer-major), and sorted."""
    con.execute(f"""
        CREATE TABLE word_heads AS
        WITH w AS (SELECT i AS k, i // 25 AS image_id, i // 5 AS caption_id, (i % 5)::SMALLINT AS word_index
                   FROM range({n_words}) AS t(i))
        SELECT 'r' AS run_id, image_id, caption_id, word_index, l::SMALLINT AS layer, h::SMALLINT AS head,
               random()::FLOAT AS mask_mass
        FROM w, range({LAYERS.start}, {LAYERS.stop}) AS a(l), range({HEADS}) AS b(h)
        ORDER BY image_id // 256, image_id // 32, layer, k, head""")
    con.execute("CREATE TABLE word_heads_sorted AS SELECT * FROM word_heads ORDER BY run_id, layer, head")


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
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, duckdb.connect(str(Path(tmp) / "heads.duckdb")) as con:
        build(con, args.words)
        print(f"{args.words * len(LAYERS) * HEADS:,} word_heads rows")
        for name, sql in QUERIES.items():
            (median, p95), (s_median, s_p95) = (
                timings(con, sql.format(table=t), args.repeats) for t in ("word_heads", "word_heads_sorted")
            )
            print(f"{name:6s} written order {median:7.1f} ms (p95 {p95:6.1f}) | sorted by run, layer, head "
                  f"{s_median:5.1f} ms (p95 {s_p95:5.1f}) | x{median / s_median:.0f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
