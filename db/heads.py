"""Grounding heads: which head of which fusion layer puts its attention on the named object.

`word_heads` holds, per word with an object (mask_mass not NULL) and per attention layer, each head's own
metrics (HEAD_METRICS). The heatmap is one aggregate over it; a search ranked by one head joins its rows
to the word rows the search's `WordFilter` matches in that head's attention layer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import duckdb
import pandas as pd

from db.filters import WordFilter, word_filter_sql
from db.queries import frame, page_details, rows_of
from db.schema import LOOKUP_COLUMNS

# The per-head columns of word_heads, each a metric of db.metrics by the same name: the only names of
# word_heads spliced into SQL. A new column is added here and nowhere else.
HEAD_METRICS = ("mask_mass", "specificity_others")
ATTENTION = "attention"  # the method whose layers have heads


@dataclass(frozen=True)
class Head:
    """One head of one fusion layer's attention, and the per-head metric it is ranked or shown by."""

    layer: int
    head: int
    metric: str = HEAD_METRICS[0]

    def __post_init__(self) -> None:
        if self.metric not in HEAD_METRICS:
            raise ValueError(f"unknown per-head metric {self.metric!r}; expected one of {HEAD_METRICS}")


def head_means(
    con: duckdb.DuckDBPyConnection, run_id: str, metric: str = HEAD_METRICS[0], category_id: int | None = None
) -> pd.DataFrame:
    """Per (layer, head) of a run: layer, head, n (words with a value) and mean of one per-head metric, over
    every word with an object or over the words naming one category (as the Search's category does)."""
    column = Head(0, 0, metric).metric
    join, params = "", {"run_id": run_id}
    if category_id is not None:
        clause, params = word_filter_sql(WordFilter(run_id=run_id, method=ATTENTION, category_id=category_id))
        join = (
            f"SEMI JOIN (SELECT image_id, caption_id, word_index, layer FROM {rows_of(con, run_id)} WHERE {clause}) "
            "AS w USING (image_id, caption_id, word_index, layer)"
        )
    return frame(
        con,
        f"SELECT h.layer, h.head, count(h.{column}) AS n, avg(h.{column}) AS mean FROM word_heads AS h {join} "
        "WHERE h.run_id = $run_id GROUP BY ALL ORDER BY h.layer, h.head",
        params,
    )


def _ranked_rows(con: duckdb.DuckDBPyConnection, where: WordFilter, head: Head) -> tuple[str, dict]:
    """FROM clause of the word rows `where` matches in the head's layer, each with the head's value
    (`head_value`); words without a row in word_heads (no object) are left out."""
    clause, params = word_filter_sql(replace(where, method=ATTENTION, layer=head.layer))
    sql = f"""
        (SELECT {LOOKUP_COLUMNS} FROM {rows_of(con, where.run_id)} WHERE {clause}) AS l
        JOIN (SELECT image_id, caption_id, word_index, {head.metric} AS head_value FROM word_heads
              WHERE run_id = $head_run AND layer = $head_layer AND head = $head_head) AS h
        USING (image_id, caption_id, word_index)"""
    return sql, params | {"head_run": where.run_id, "head_layer": head.layer, "head_head": head.head}


def count_by_head(con: duckdb.DuckDBPyConnection, where: WordFilter, head: Head) -> int:
    """How many word rows search_by_head ranks for the same filter and head."""
    rows, params = _ranked_rows(con, where, head)
    return int(frame(con, f"SELECT count(*) AS n FROM {rows}", params)["n"].iloc[0])


def search_by_head(
    con: duckdb.DuckDBPyConnection, where: WordFilter, head: Head, descending: bool, limit: int, offset: int = 0
) -> pd.DataFrame:
    """One page of the word rows `where` matches in the head's attention layer, ranked by the head's own
    metric (`head_value`): search_words' columns (the layer's mean map and metrics) plus head_value."""
    rows, params = _ranked_rows(con, where, head)
    order = f"head_value {'DESC' if descending else 'ASC'} NULLS LAST, image_id, caption_id, word_index"
    hits = frame(
        con,
        f"""
        SELECT page.*, cat.name AS category FROM (
            SELECT * FROM {rows} ORDER BY {order} LIMIT $limit OFFSET $offset
        ) AS page LEFT JOIN categories AS cat USING (category_id)
        ORDER BY {order}""",
        params | {"limit": limit, "offset": offset},
    ).astype({"category": "str"})
    return page_details(con, hits)
