"""Two runs compared over the same images: which words and categories a metric changes for, and by how much.

The runs are matched per (key, image): a key is a word or a COCO category (over the words naming it), read
in a chosen slice (method, layer) of each run, and only the (key, image) pairs where both slices have the
metric count, so runs over different image (or caption) sets are compared on their intersection. Each
pair's change is the difference of the key's mean in that image, B's minus A's, weighted by the
occurrences that pair up, min(n_a, n_b); a key's change is the weighted mean of its images' changes. Over
the same captions (n_a = n_b everywhere) that is exactly the mean change per matched caption word. A
finalized run's side is read from `key_summary` and `key_image_summary` (counts and sums per run, slice,
key, and image; written by db.writer.finalize), another's aggregated from its word rows live. Keys whose
(image, count) pairs are the same in both slices are totalled from their sums, the others pair by pair;
then the (key, image) pairs of the keys that get an interval are listed, and db.bootstrap resamples them.
matched_words pairs single caption words, by (image_id, caption_id, word_index), to show both runs' maps.
Metric names reach SQL text only through db.filters.check_metric and range_expr (the allow-list);
everything else is a bound parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd

from db.bootstrap import ratio_ci
from db.filters import check_metric, range_expr
from db.queries import frame, rows_of
from db.schema import KEY_KINDS, key_image_select, key_select

BY = KEY_KINDS
ORDERS = ("size", "rise", "fall")
_ONLY_KEYS = "key IN (SELECT unnest($keys::VARCHAR[]))"


@dataclass(frozen=True)
class Slice:
    """One run's maps of one method and layer."""

    run_id: str
    method: str
    layer: int


def image_overlap(con: duckdb.DuckDBPyConnection, run_a: str, run_b: str) -> dict[str, int]:
    """How many images both runs extracted ('both'), and how many only one of them did ('only_a', 'only_b')."""
    counts = frame(
        con,
        """
        SELECT count(*) FILTER (WHERE in_a AND in_b) AS both, count(*) FILTER (WHERE in_a AND NOT in_b) AS only_a,
            count(*) FILTER (WHERE in_b AND NOT in_a) AS only_b
        FROM (SELECT image_id, bool_or(run_id = $run_a) AS in_a, bool_or(run_id = $run_b) AS in_b
              FROM image_status WHERE run_id IN ($run_a, $run_b) AND status = 'done' GROUP BY image_id)""",
        {"run_a": run_a, "run_b": run_b},
    )
    return {name: int(counts[name].iloc[0]) for name in ("both", "only_a", "only_b")}


def finalized_runs(con: duckdb.DuckDBPyConnection, *run_ids: str) -> set[str]:
    """Which of `run_ids` are finalized (read from their derived tables): one lookup for a whole call."""
    found = frame(
        con,
        "SELECT run_id FROM runs WHERE run_id IN (SELECT unnest($ids::VARCHAR[])) AND finalized_at IS NOT NULL",
        {"ids": list(run_ids)},
    )
    return set(found["run_id"])


def _named(s: Slice) -> dict:
    return {"run": s.run_id, "method": s.method, "layer": s.layer}


def _params(a: Slice, b: Slice, by: str, keys: Sequence[str] | None = None, *, kind: bool = True) -> dict:
    """The slices' parameters, $by (unless not `kind`: a query whose own filter names the kind) and $keys."""
    if by not in BY:
        raise ValueError(f"unknown grouping {by!r}; expected one of {BY}")
    params = {f"{k}_{name}": v for name, s in (("a", a), ("b", b)) for k, v in _named(s).items()}
    return params | ({"by": by} if kind else {}) | ({} if keys is None else {"keys": list(keys)})


def _slice_where(name: str) -> str:
    return f"run_id = $run_{name} AND method = $method_{name} AND layer = $layer_{name}"


def _key_images(name: str, finalized: bool, metric: str, by: str, only: str = "TRUE") -> str:
    """SQL of one slice's key_image_summary rows of the key kind $by (= `by`): from the table once the run is
    finalized, else those of `metric` aggregated from its word rows."""
    where = _slice_where(name)
    rows = "key_image_summary" if finalized else f"({key_image_select('word_search', where, [metric], [by])})"
    return f"SELECT * FROM {rows} WHERE {where} AND key_kind = $by AND {only}"


def _keys(name: str, finalized: bool, metric: str, by: str) -> str:
    """SQL of one slice's key_summary rows of the key kind $by (from its key_image_summary rows if not finalized)."""
    rows = "key_summary" if finalized else f"({key_select(_key_images(name, False, metric, by), [metric])})"
    return f"SELECT * FROM {rows} WHERE {_slice_where(name)} AND key_kind = $by"


def _pairs(metric: str, by: str, done: set[str], a: Slice, b: Slice, only: str) -> str:
    """SQL of the (key, image) pairs both slices have the metric for: key, image_id, n (the occurrences that pair
    up: the smaller count), mean_a and mean_b (the key's means in that image)."""
    m = check_metric(metric)
    side_a, side_b = (_key_images(name, s.run_id in done, m, by, only) for name, s in (("a", a), ("b", b)))
    return f"""
        SELECT key, image_id, least(a.n_{m}, b.n_{m}) AS n, a.sum_{m} / a.n_{m} AS mean_a, b.sum_{m} / b.n_{m} AS mean_b
        FROM ({side_a}) AS a JOIN ({side_b}) AS b USING (key, image_id) WHERE a.n_{m} > 0 AND b.n_{m} > 0"""


def key_totals(
    con: duckdb.DuckDBPyConnection,
    a: Slice,
    b: Slice,
    metric: str,
    by: str = "word",
    min_count: int = 1,
    finalized: set[str] | None = None,
) -> pd.DataFrame:
    """Per word or category name with at least `min_count` paired occurrences: key, n, n_images, mean_a,
    mean_b (the metric's means in A and B over its paired images, weighted by n) and change (B - A, their
    difference), by key. `finalized`: finalized_runs of a and b, looked up here when None.

    A key whose images and counts per image are the same in both slices (the same pairing fingerprint in
    key_summary: runs over the same captions) is totalled from its sums; only the others are paired image by
    image."""
    done = finalized_runs(con, a.run_id, b.run_id) if finalized is None else finalized
    params, m = _params(a, b, by), check_metric(metric)
    keys = frame(
        con,
        f"""
        SELECT key, a.n_{m} AS n, a.images_{m} AS n_images, a.sum_{m} / a.n_{m} AS mean_a,
            b.sum_{m} / b.n_{m} AS mean_b, (b.sum_{m} - a.sum_{m}) / a.n_{m} AS change,
            a.images_{m} = b.images_{m} AND a.pairing_{m} = b.pairing_{m} AS paired
        FROM ({_keys("a", a.run_id in done, m, by)}) AS a JOIN ({_keys("b", b.run_id in done, m, by)}) AS b USING (key)
        WHERE a.n_{m} > 0 AND b.n_{m} > 0""",
        params,
    )
    others = keys.loc[~keys.pop("paired"), "key"].tolist()
    if others:
        by_image = frame(
            con,
            f"""
            SELECT key, sum(n)::BIGINT AS n, count(*) AS n_images, sum(n * mean_a) / sum(n) AS mean_a,
                sum(n * mean_b) / sum(n) AS mean_b, sum(n * (mean_b - mean_a)) / sum(n) AS change
            FROM ({_pairs(metric, by, done, a, b, _ONLY_KEYS)}) GROUP BY key""",
            params | {"keys": others},
        )
        keys = pd.concat([keys[~keys["key"].isin(others)], by_image], ignore_index=True)
    return keys[keys["n"] >= min_count].sort_values("key", ignore_index=True)


def per_image(
    con: duckdb.DuckDBPyConnection,
    a: Slice,
    b: Slice,
    metric: str,
    by: str = "word",
    keys: Sequence[str] | None = None,
    finalized: set[str] | None = None,
) -> pd.DataFrame:
    """Per paired (word or category name, image) (of `keys` only, if given): key, image_id, n, sum_a, sum_b
    (n times the key's mean in that image in A and in B); ordered by key and image."""
    params = _params(a, b, by, keys)
    done = finalized_runs(con, a.run_id, b.run_id) if finalized is None else finalized
    pairs = _pairs(metric, by, done, a, b, "TRUE" if keys is None else _ONLY_KEYS)
    return frame(
        con,
        f"SELECT key, image_id, n, n * mean_a AS sum_a, n * mean_b AS sum_b FROM ({pairs}) ORDER BY key, image_id",
        params,
    )


def ranked(totals: pd.DataFrame, order: str) -> pd.DataFrame:
    """key_totals in one of ORDERS: the size of the change (either way), its rise or its fall; then by key."""
    if order not in ORDERS:
        raise ValueError(f"unknown order {order!r}; expected one of {ORDERS}")
    by = {"size": totals["change"].abs(), "rise": totals["change"], "fall": -totals["change"]}[order]
    return totals.assign(_by=by).sort_values(["_by", "key"], ascending=[False, True]).drop(columns="_by")


def changes(
    con: duckdb.DuckDBPyConnection,
    a: Slice,
    b: Slice,
    metric: str,
    by: str = "word",
    min_count: int = 1,
    *,
    order: str = "size",
    intervals: int | None = None,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """key_totals ranked by `order`, with a bootstrap interval of each change over images (low, high) for
    the first `intervals` keys (None: all; the others' are NaN)."""
    finalized = finalized_runs(con, a.run_id, b.run_id)
    totals = ranked(key_totals(con, a, b, metric, by, min_count, finalized), order).reset_index(drop=True)
    chosen = totals["key"] if intervals is None else totals["key"].head(intervals)
    if chosen.empty:  # the first paint (intervals=0): no image rows to read, nothing to resample
        return totals.assign(low=np.nan, high=np.nan)
    rows = per_image(con, a, b, metric, by, chosen.tolist(), finalized)
    group, keys = pd.factorize(rows["key"], sort=True)
    _, low, high = ratio_ci(
        group,
        rows["image_id"].to_numpy(),
        rows["sum_b"] - rows["sum_a"],
        rows["n"],
        resamples=resamples,
        level=level,
        seed=seed,
    )
    return totals.merge(pd.DataFrame({"key": keys, "low": low, "high": high}), how="left", on="key")


# A word occurrence of `keys` ($keys: words, or the names of the categories the words name).
_OCCURRENCE_OF = {
    "word": "word IN (SELECT unnest($keys::VARCHAR[]))",
    "category": "category_id IN (SELECT category_id FROM categories WHERE name IN (SELECT unnest($keys::VARCHAR[])))",
}


def _matched(
    con: duckdb.DuckDBPyConnection, a: Slice, b: Slice, metric: str, by: str, keys: Sequence[str]
) -> tuple[str, dict]:
    """SQL of the caption words of `keys` in both slices, matched by (image_id, caption_id, word_index), with
    the metric in both (value_a, value_b), and its parameters."""
    params, value = _params(a, b, by, keys, kind=False), range_expr(metric)  # _OCCURRENCE_OF names the kind

    def side(name: str, s: Slice) -> str:
        rows = rows_of(con, s.run_id)
        return (
            f"SELECT image_id, caption_id, word_index, word, category_id, {value} AS value FROM {rows} "
            f"WHERE {_slice_where(name)} AND {_OCCURRENCE_OF[by]} AND {value} IS NOT NULL"
        )

    sql = f"""
        SELECT a.image_id, a.caption_id, a.word_index, a.word, a.category_id, a.value AS value_a, b.value AS value_b
        FROM ({side("a", a)}) AS a JOIN ({side("b", b)}) AS b USING (image_id, caption_id, word_index)"""
    return sql, params


def matched_words(
    con: duckdb.DuckDBPyConnection, a: Slice, b: Slice, metric: str, key: str, by: str = "word", limit: int = 8
) -> pd.DataFrame:
    """The occurrences of one word (or of the words naming one category) in both slices, largest change of
    the metric first: image_id, caption_id, word_index, word, category_id, value_a, value_b, caption, file_name, width,
    height, and each run's map (map_a, map_max_a, map_b, map_max_b; see db.codec)."""
    matched, params = _matched(con, a, b, metric, by, [key])
    pairs = frame(
        con,
        f"""
        SELECT m.image_id, m.caption_id, m.word_index, m.word, m.category_id, m.value_a, m.value_b, c.text AS caption,
            i.file_name, i.width, i.height
        FROM ({matched}) AS m JOIN captions AS c USING (caption_id) JOIN images AS i ON i.image_id = m.image_id
        ORDER BY abs(m.value_b - m.value_a) DESC, m.image_id, m.caption_id, m.word_index LIMIT $limit""",
        params | {"limit": limit},
    )
    # Maps are read from `words` by the page's images (its zone maps), apart: joined, the whole table is read.
    maps = frame(
        con,
        """
        SELECT run_id = $run_a AND method = $method_a AND layer = $layer_a AS is_a, image_id, caption_id, word_index,
            map, map_max
        FROM words WHERE image_id IN (SELECT unnest($images::BIGINT[]))
            AND caption_id IN (SELECT unnest($captions::BIGINT[]))
            AND ((run_id = $run_a AND method = $method_a AND layer = $layer_a)
                OR (run_id = $run_b AND method = $method_b AND layer = $layer_b))""",
        {k: v for k, v in params.items() if k != "keys"}
        | {"images": pairs["image_id"].unique().tolist(), "captions": pairs["caption_id"].unique().tolist()},
    )
    keys = ["image_id", "caption_id", "word_index"]
    for side, is_a in (("a", True), ("b", False)):
        # A run compared with itself (same slice) has one row per occurrence, which is both A and B.
        rows = maps if a == b else maps[maps["is_a"] == is_a]
        rows = rows[[*keys, "map", "map_max"]].rename(columns={"map": f"map_{side}", "map_max": f"map_max_{side}"})
        pairs = pairs.merge(rows, how="left", on=keys)
    return pairs
