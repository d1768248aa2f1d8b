"""The extraction-database side of team review: the word rows of review items.

The review store (db/review.py, SQLite) keeps only item keys; what a reviewed word *is* (its word,
category, caption, metrics and map) lives in the extraction database (DuckDB). This is the one question
that joins the two: the dashboard asks it for review exports, for a queue's item and for verdict/tag
filters in Search and Statistics.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from db.review import ITEM_COLUMNS
from db.schema import METRICS

_KEYS_VIEW = "review_item_keys"
_WORD_COLUMNS = ", ".join(
    f"w.{c}" for c in (*ITEM_COLUMNS, "word", "category_id", "n_pieces", "peak_row", "peak_col", *METRICS)
)
_SQL = f"""
SELECT {_WORD_COLUMNS}{{maps}}, cat.name AS category, c.text AS caption, c.raw AS caption_raw,
    i.file_name, i.width, i.height, i.coco_url
FROM {_KEYS_VIEW} AS k
JOIN words AS w ON w.run_id = k.run_id AND w.image_id = k.image_id AND w.caption_id = k.caption_id
    AND w.word_index = k.word_index AND w.method = k.method AND w.layer = k.layer
JOIN captions AS c ON c.caption_id = w.caption_id
JOIN images AS i ON i.image_id = w.image_id
LEFT JOIN categories AS cat ON cat.category_id = w.category_id
-- words is stored in image order: this filter lets DuckDB's zone maps skip the other images.
WHERE w.image_id IN (SELECT image_id FROM {_KEYS_VIEW})
ORDER BY k.position"""


def item_words(con: duckdb.DuckDBPyConnection, items: pd.DataFrame, *, with_maps: bool = False) -> pd.DataFrame:
    """The `words` rows of the word items in `items` (a frame with the ITEM_COLUMNS), in their order.

    Rows without a word (image items) and items the database lacks are left out; duplicates once.
    Columns: ITEM_COLUMNS, word, category_id, n_pieces, peak_row, peak_col, the METRICS, with
    `with_maps` map and map_max, then category (name), caption, caption_raw, file_name, width, height,
    coco_url: the columns of db.queries.search_words, so a page draws them the same way.
    """
    keys = items.loc[:, list(ITEM_COLUMNS)].dropna().drop_duplicates()
    keys = keys.astype({"run_id": str, "image_id": "int64", "caption_id": "int64", "word_index": "int64",
                        "method": str, "layer": "int64"})
    keys.insert(0, "position", range(len(keys)))
    # A cursor per call: one cached connection serves several Streamlit threads (see db.queries).
    with con.cursor() as cur:
        cur.register(_KEYS_VIEW, keys)
        return cur.execute(_SQL.format(maps=", w.map, w.map_max" if with_maps else "")).df()
