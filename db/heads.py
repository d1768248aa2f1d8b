"""Grounding heads: which head of which fusion layer puts its attention on the named object.

`word_heads` holds, per word with an object (mask_mass not NULL) and per attention layer, each head's own
mask mass. Every question here is one aggregate over it; a category filter joins the word's row of the
same layer for its category (an attribute's: its noun's).
"""

from __future__ import annotations

import duckdb
import pandas as pd

from db.queries import frame

_OF_WORD = (
    "JOIN words AS w ON w.run_id = h.run_id AND w.image_id = h.image_id AND w.caption_id = h.caption_id "
    "AND w.word_index = h.word_index AND w.method = 'attention' AND w.layer = h.layer"
)
_CATEGORY = "coalesce(w.bound_category_id, w.category_id) = $category"


def head_mask_mass(con: duckdb.DuckDBPyConnection, run_id: str, category_id: int | None = None) -> pd.DataFrame:
    """Per (layer, head) of a run: n words and their mean mask mass, for one object category or all."""
    join, where = (_OF_WORD, f" AND {_CATEGORY}") if category_id is not None else ("", "")
    params = {"run": run_id, **({"category": category_id} if category_id is not None else {})}
    return frame(
        con,
        f"SELECT h.layer, h.head, count(*) AS n, avg(h.mask_mass) AS mean_mask_mass FROM word_heads AS h {join} "
        f"WHERE h.run_id = $run{where} GROUP BY ALL ORDER BY h.layer, h.head",
        params,
    )


def head_top_words(con: duckdb.DuckDBPyConnection, run_id: str, layer: int, head: int, limit: int = 20) -> pd.DataFrame:
    """The word occurrences whose map of one head puts most mass on their object, best first."""
    return frame(
        con,
        f"SELECT w.word, h.image_id, h.caption_id, h.word_index, h.mask_mass, w.mask_mass AS mean_map_mask_mass "
        f"FROM word_heads AS h {_OF_WORD} WHERE h.run_id = $run AND h.layer = $layer AND h.head = $head "
        "ORDER BY h.mask_mass DESC, h.image_id, h.caption_id, h.word_index LIMIT $limit",
        {"run": run_id, "layer": layer, "head": head, "limit": limit},
    )
