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
        head_metric(self.metric)


def head_metric(metric: str) -> str:
    """`metric` when it is a per-head metric (a column spliced into SQL), else ValueError."""
    if metric not in HEAD_METRICS:
        raise ValueError(f"unknown per-head metric {metric!r}; expected one of {HEAD_METRICS}")
    return metric


def head_means(
    con: duckdb.DuckDBPyConnection, run_id: str, metric: str = HEAD_METRICS[0], category_id: int | None = None
) -> pd.DataFrame:
    """Per (layer, head) of a run: layer, head, n (words with a value) and mean of one per-head metric, over
    every word with an object or over the words naming one category (as the Search's category does)."""
    column = head_metric(metric)
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


_HEAD_ROWS = "FROM word_heads WHERE run_id = $head_run AND layer = $head_layer AND head = $head_head"


def _head_params(where: WordFilter, head: Head) -> dict:
    return {"head_run": where.run_id, "head_layer": head.layer, "head_head": head.head}


def _every_word(where: WordFilter) -> bool:
    """Whether `where` matches every word that has a head row (any word with an object in the run): then
    word_heads alone ranks and counts, without joining the layer's whole slice of word rows."""
    rest = replace(where, run_id=None, method=None, layer=None, has_object=None)
    return rest == WordFilter() and where.has_object is not False


def _order(column: str, descending: bool) -> str:
    return f"{column} {'DESC' if descending else 'ASC'} NULLS LAST, image_id, caption_id, word_index"


def _ranked_rows(con: duckdb.DuckDBPyConnection, where: WordFilter, head: Head) -> tuple[str, dict]:
    """FROM clause of the word rows `where` matches in the head's layer, each with the head's value
    (`head_value`); words without a row in word_heads (no object) are left out."""
    clause, params = word_filter_sql(replace(where, method=ATTENTION, layer=head.layer))
    sql = f"""
        (SELECT {LOOKUP_COLUMNS} FROM {rows_of(con, where.run_id)} WHERE {clause}) AS l
        JOIN (SELECT image_id, caption_id, word_index, {head.metric} AS head_value {_HEAD_ROWS}) AS h
        USING (image_id, caption_id, word_index)"""
    return sql, params | _head_params(where, head)


def count_by_head(con: duckdb.DuckDBPyConnection, where: WordFilter, head: Head) -> int:
    """How many word rows search_by_head ranks for the same filter and head."""
    if _every_word(where):
        sql, params = f"SELECT count(*) AS n {_HEAD_ROWS}", _head_params(where, head)
    else:
        rows, params = _ranked_rows(con, where, head)
        sql = f"SELECT count(*) AS n FROM {rows}"
    return int(frame(con, sql, params)["n"].iloc[0])


def search_by_head(
    con: duckdb.DuckDBPyConnection, where: WordFilter, head: Head, descending: bool, limit: int, offset: int = 0
) -> pd.DataFrame:
    """One page of the word rows `where` matches in the head's attention layer, ranked by the head's own
    metric (`head_value`): search_words' columns (the layer's mean map and metrics) plus head_value."""
    page = None
    if _every_word(where):
        # The page's words are word_heads' own first rows: only their images' word rows are read then.
        sql = f"SELECT image_id, caption_id, word_index {_HEAD_ROWS} ORDER BY {_order(head.metric, descending)} "
        page = frame(
            con, sql + "LIMIT $limit OFFSET $offset", _head_params(where, head) | {"limit": limit, "offset": offset}
        )
        where, limit, offset = replace(where, image_ids=tuple(int(i) for i in page["image_id"].unique())), None, 0
    rows, params = _ranked_rows(con, where, head)
    order = _order("head_value", descending)
    hits = frame(
        con,
        f"""
        SELECT page.*, cat.name AS category FROM (
            SELECT * FROM {rows} ORDER BY {order} LIMIT $limit OFFSET $offset
        ) AS page LEFT JOIN categories AS cat USING (category_id)
        ORDER BY {order}""",
        params | {"limit": limit, "offset": offset},
    ).astype({"category": "str"})
    if page is not None:
        hits = page.merge(hits, on=["image_id", "caption_id", "word_index"])  # those words, in their order
    return page_details(con, hits)
