"""Where the review store (SQLite) meets the extraction database (DuckDB): the only module that joins them.

The review store keeps only item keys and what reviewers said; what a reviewed word *is* (its word,
category, caption, metrics and map) lives in the extraction database. Every join runs in DuckDB: the
review rows are read from SQLite once (a small frame: only reviewed items), registered on a DuckDB cursor,
and joined there with the words in one query. DuckDB's own SQLite scanner would do the same without the
frame, but it is an extension that `INSTALL sqlite` downloads, and the dashboard must run offline.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

import duckdb
import pandas as pd

from db import queries
from db.queries import WordFilter
from db.review.model import IMAGE_COLUMNS, ITEM_COLUMNS, VERDICTS
from db.review.reads import find_items, review_summary
from db.schema import LOOKUP_NAMES

ANY = "any"
UNREVIEWED = "unreviewed"
STATUSES = ("open", "resolved")
# Review sort keys beside the metrics: the majority verdict in VERDICTS order, then the number of them.
REVIEW_SORTS = ("verdict", "n_verdicts", "n_comments")
_REVIEWS_VIEW = "review_rows"
_KEY_MATCH = " AND ".join(f"w.{c} = r.{c}" for c in ITEM_COLUMNS)
_JOIN_COLUMNS = ", ".join(ITEM_COLUMNS)
# Rows kept by a ReviewFilter, over the review rows `r` (null where a word was never reviewed).
_REVIEW_WHERE = """
    (NOT $unreviewed OR coalesce(r.n_verdicts, 0) = 0)
    AND (NOT $matched_only OR coalesce(r.matched, FALSE))
    AND ($status IS NULL OR coalesce(r.status, 'open') = $status)"""
# Search hits with their review columns, in review-then-metric order: one query for the whole result.
_REVIEWED_SEARCH = f"""
WITH hits AS ({{ranked}})
SELECT hits.* EXCLUDE (rank), cat.name AS category, c.text AS caption, c.raw AS caption_raw,
    i.file_name, i.width, i.height, i.coco_url, r.item_key, r.verdict, coalesce(r.n_verdicts, 0) AS n_verdicts,
    coalesce(r.n_comments, 0) AS n_comments, r.tags, coalesce(r.status, 'open') AS status
FROM hits LEFT JOIN {_REVIEWS_VIEW} AS r USING ({_JOIN_COLUMNS})
LEFT JOIN categories AS cat USING (category_id)
JOIN captions AS c USING (caption_id, image_id) JOIN images AS i USING (image_id)
WHERE {_REVIEW_WHERE}
ORDER BY {{review_order}}hits.rank"""
# Reviewed items of the Reviews page with the word each word item is.
_REVIEWED_ITEMS = f"""
SELECT r.* EXCLUDE (matched, position), w.word
FROM {_REVIEWS_VIEW} AS r LEFT JOIN (
    SELECT {_JOIN_COLUMNS}, word FROM words
    WHERE image_id IN (SELECT image_id FROM {_REVIEWS_VIEW})) AS w ON {_KEY_MATCH}
WHERE {_REVIEW_WHERE}
ORDER BY {{review_order}}r.position"""
# The caption of each word item (review rows `r`: item_key, image_id, caption_id), null when the database lacks it.
_ITEM_CAPTIONS = f"""
SELECT r.item_key, c.text AS caption
FROM {_REVIEWS_VIEW} AS r LEFT JOIN captions AS c ON c.image_id = r.image_id AND c.caption_id = r.caption_id"""
_KEYS_VIEW = "review_item_keys"
_WORD_COLUMNS = ", ".join(f"w.{c}" for c in LOOKUP_NAMES)  # a search row's columns (db.queries.search_words)
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
    Columns: a search row's (db.schema.LOOKUP_NAMES: keys, binding, every metric), with
    `with_maps` map and map_max, then category (name), caption, caption_raw, file_name, width, height,
    coco_url: the columns of db.queries.search_words, so a page draws them the same way.
    """
    keys = items.loc[:, list(ITEM_COLUMNS)].dropna().drop_duplicates()
    keys = keys.astype(
        {
            "run_id": str,
            "image_id": "int64",
            "caption_id": "int64",
            "word_index": "int64",
            "method": str,
            "layer": "int64",
        }
    )
    keys.insert(0, "position", range(len(keys)))
    # A cursor per call: one cached connection serves several Streamlit threads (see db.queries).
    with con.cursor() as cur:
        cur.register(_KEYS_VIEW, keys)
        return cur.execute(_ITEM_WORDS.format(maps=", w.map, w.map_max" if with_maps else "")).df()


def item_captions(con: duckdb.DuckDBPyConnection, items: pd.DataFrame) -> dict[str, str | None]:
    """The caption text of each word item in `items` (item_key, image_id, caption_id), by item key, in one query;
    None for a caption the database lacks."""
    words = items.loc[items["caption_id"].notna(), ["item_key", "image_id", "caption_id"]].drop_duplicates()
    found = _query(con, words.astype({"image_id": "int64", "caption_id": "int64"}), _ITEM_CAPTIONS, {})
    pairs = zip(found["item_key"], found["caption"], strict=True)
    return {key: text if isinstance(text, str) else None for key, text in pairs}


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


def reviews_with_metrics(con: duckdb.DuckDBPyConnection, store: sqlite3.Connection, run_id: str | None) -> pd.DataFrame:
    """Every reviewed word of a run (all runs for None) with its metrics, verdicts, tags and comments,
    plus its image's review as image_* columns (`join_metrics`)."""
    summary = review_summary(store, run_id)
    return join_metrics(item_words(con, summary[summary["kind"] == "word"]), summary)


def tag_list(tags: str) -> list[str]:
    """The tags of a review_summary row (stored there as a JSON list, like CSV and Parquet exports)."""
    return json.loads(tags)


@dataclass(frozen=True)
class ReviewFilter:
    """Verdict/tag/status filters and review sort key chosen on a page (ANY = no filter)."""

    verdict: str = ANY  # a verdict (by anyone), UNREVIEWED (no verdict at all), or ANY
    tag: str = ANY
    status: str = ANY
    sort: str | None = None  # one of REVIEW_SORTS, before the metric ranking

    @property
    def active(self) -> bool:
        """Whether results depend on the review store at all."""
        return (self.verdict, self.tag, self.status) != (ANY, ANY, ANY) or self.sort is not None

    def params(self) -> dict:
        """The bound parameters of the filter's WHERE clause."""
        return {
            "unreviewed": self.verdict == UNREVIEWED,
            "matched_only": self._by_store is not None,
            "status": None if self.status == ANY else self.status,
        }

    @property
    def _by_store(self) -> dict | None:
        """The find_items filters (a verdict by anyone, a tag), None when there are none."""
        found = {
            "verdict": self.verdict if self.verdict not in (ANY, UNREVIEWED) else None,
            "tag": None if self.tag == ANY else self.tag,
        }
        return found if any(v is not None for v in found.values()) else None

    def order(self) -> str:
        """The review sort key as the first ORDER BY terms (ties keep the order that follows)."""
        if self.sort is None:
            return ""
        if self.sort == "verdict":  # majority verdict in VERDICTS order, unjudged last
            return f"coalesce(list_position({list(VERDICTS)!r}, r.verdict), {len(VERDICTS) + 1}), "
        if self.sort not in REVIEW_SORTS:
            raise ValueError(f"unknown review sort {self.sort!r}; expected one of {REVIEW_SORTS}")
        return f"coalesce(r.{self.sort}, 0) DESC, "

    def rows(self, store: sqlite3.Connection, run_id: str | None) -> pd.DataFrame:
        """The review store's rows of a run (review_summary) with `matched` (passes the verdict and tag
        filters, read in SQLite) and `position` (the summary's order)."""
        summary = review_summary(store, run_id)
        found = self._by_store
        matched = (
            summary["item_key"].isin(find_items(store, run_id=run_id, **found)["item_key"])
            if found
            else pd.Series(True, index=summary.index)
        )
        return summary.assign(matched=matched, position=range(len(summary)))


def _query(con: duckdb.DuckDBPyConnection, reviews: pd.DataFrame, sql: str, params: dict) -> pd.DataFrame:
    with con.cursor() as cur:  # a cursor per call, as in db.queries
        cur.register(_REVIEWS_VIEW, reviews)
        return cur.execute(sql, params).df()


def reviewed_search(
    con: duckdb.DuckDBPyConnection,
    store: sqlite3.Connection,
    where: WordFilter,
    sort: str,
    descending: bool,
    spec: ReviewFilter,
) -> pd.DataFrame:
    """Every row of a search (db.queries.export_frame's columns) that passes the review filter, with its
    review columns (item_key, verdict, n_verdicts, n_comments, tags, status), in review-then-metric order."""
    reviews = spec.rows(store, where.run_id)
    words = reviews[reviews["kind"] == "word"]
    ranked, params = queries.ranked_sql(con, where, sort, descending)
    sql = _REVIEWED_SEARCH.format(ranked=ranked, review_order=spec.order())
    return _query(con, words, sql, params | spec.params())


def reviewed_items(
    con: duckdb.DuckDBPyConnection, store: sqlite3.Connection, run_id: str, spec: ReviewFilter
) -> pd.DataFrame:
    """The run's reviewed items (review_summary columns) with the `word` of word items, kept by the
    review filter, in the summary's order re-sorted by its review sort key."""
    sql = _REVIEWED_ITEMS.format(review_order=spec.order())
    items = _query(con, spec.rows(store, run_id), sql, spec.params())
    for col in ("image_id", "caption_id", "word_index", "layer"):
        items[col] = items[col].astype("Int64")
    return items


def verdicts_by_word(
    con: duckdb.DuckDBPyConnection, store: sqlite3.Connection, run_id: str, method: str, layer: int
) -> pd.DataFrame:
    """Per word (and the category it names) of one run slice: n_reviewed, one n_<verdict> column per
    verdict (items whose majority verdict it is), n_disputed and the tags in use, for Statistics."""
    summary = review_summary(store, run_id)
    words = summary[(summary["kind"] == "word") & (summary["method"] == method) & (summary["layer"] == layer)]
    named = item_words(con, words)[[*ITEM_COLUMNS, "word", "category_id"]]
    joined = named.merge(words.astype({c: named[c].dtype for c in ITEM_COLUMNS}), on=list(ITEM_COLUMNS))
    per_verdict = {f"n_{v}": (joined["verdict"] == v).astype(int) for v in VERDICTS}
    joined = joined.assign(**per_verdict, tag_list=joined["tags"].map(tag_list))
    return (
        joined.groupby(["word", "category_id"], dropna=False)
        .agg(
            n_reviewed=("item_key", "size"),
            **{c: (c, "sum") for c in per_verdict},
            n_disputed=("disputed", "sum"),
            tags=("tag_list", lambda lists: sorted({t for x in lists for t in x})),
        )
        .reset_index()
        .astype({"n_disputed": int})
    )
