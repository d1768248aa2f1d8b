"""Where the review store (SQLite) meets the extraction database (DuckDB): the only module that joins them.

The review store keeps only item keys and what reviewers said; what a reviewed word *is* (its word,
category, caption, metrics and map) lives in the extraction database. Every join runs in DuckDB: the
review rows are read from SQLite once (a small frame: only reviewed items), registered on a DuckDB cursor,
and joined there with the words in one query. DuckDB's own SQLite scanner would do the same without the
frame, but it is an extension that `INSTALL sqlite` downloads, and the dashboard must run offline.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from db.review.model import IMAGE_COLUMNS, ITEM_COLUMNS
from db.schema import METRICS

_KEYS_VIEW = "review_item_keys"
_WORD_COLUMNS = ", ".join(
    f"w.{c}" for c in (*ITEM_COLUMNS, "word", "category_id", "n_pieces", "peak_row", "peak_col", *METRICS)
)
_ITEM_WORDS = f"""
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
        return cur.execute(_ITEM_WORDS.format(maps=", w.map, w.map_max" if with_maps else "")).df()


def join_metrics(metrics: pd.DataFrame, reviews: pd.DataFrame) -> pd.DataFrame:
    """Join word metrics rows (extraction `words` columns incl. ITEM_COLUMNS) with `review_summary` rows.

    Word-item review columns join on all ITEM_COLUMNS; image-item review columns join on (run_id,
    image_id) with an `image_` prefix. Every metrics row is kept, in order; unreviewed ones get nulls.
    """
    review_cols = [c for c in reviews.columns if c not in (*ITEM_COLUMNS, "kind")]
    words = reviews.loc[reviews["kind"] == "word", [*ITEM_COLUMNS, *review_cols]]
    images = reviews.loc[reviews["kind"] == "image", [*IMAGE_COLUMNS, *review_cols]]
    images = images.rename(columns={c: f"image_{c}" for c in review_cols})
    # Align key dtypes with the metrics frame (DuckDB gives int16 for word_index/layer).
    words = words.astype({c: metrics[c].dtype for c in ITEM_COLUMNS})
    images = images.astype({c: metrics[c].dtype for c in IMAGE_COLUMNS})
    return metrics.merge(words, on=list(ITEM_COLUMNS), how="left").merge(images, on=list(IMAGE_COLUMNS), how="left")

