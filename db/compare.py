"""Two runs compared over the same images: which words and categories a metric changes for, and by how much.

A word occurrence is matched across runs by (image_id, caption_id, word_index): the same caption word,
read in a chosen slice (method, layer) of each run. Only occurrences with the metric in both count, so
the runs are compared on the images they share. SQL totals the matched pairs per word or category (every
key's change), then per (key, image) for the keys that get an interval; db.bootstrap resamples those
per-image rows, never the word rows. Metric names reach SQL text only through db.filters.range_expr (the
allow-list); everything else is a bound parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import pandas as pd

from db.bootstrap import ratio_ci
from db.filters import range_expr
from db.queries import frame, rows_of

BY = ("word", "category")
ORDERS = ("size", "rise", "fall")
# Narrow slice A to some words, or to the words naming some categories ($keys: their names).
_KEY_FILTERS = {
    "word": "word IN (SELECT unnest($keys::VARCHAR[]))",
    "category": "category_id IN (SELECT category_id FROM categories WHERE name IN (SELECT unnest($keys::VARCHAR[])))",
}


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


def _named(s: Slice) -> dict:
    return {"run": s.run_id, "method": s.method, "layer": s.layer}


def _matched(
    con: duckdb.DuckDBPyConnection, a: Slice, b: Slice, metric: str, by: str = "word", keys: Sequence[str] | None = None
) -> tuple[str, dict]:
    """SQL of the occurrences in both slices with the metric in both (value_a, value_b), and its parameters;
    with `keys`, only the occurrences of these words (or of the words naming these categories)."""
    if by not in BY:
        raise ValueError(f"unknown grouping {by!r}; expected one of {BY}")
    value = range_expr(metric)
    only = "TRUE" if keys is None else _KEY_FILTERS[by]

    def side(name: str, s: Slice, where: str) -> str:
        return (
            f"SELECT image_id, caption_id, word_index, word, category_id, {value} AS value "
            f"FROM {rows_of(con, s.run_id)} "
            f"WHERE run_id = $run_{name} AND method = $method_{name} AND layer = $layer_{name} "
            f"AND {value} IS NOT NULL AND {where}"
        )

    sql = f"""
        SELECT a.image_id, a.caption_id, a.word_index, a.word, a.category_id, a.value AS value_a, b.value AS value_b
        FROM ({side("a", a, only)}) AS a JOIN ({side("b", b, "TRUE")}) AS b USING (image_id, caption_id, word_index)"""
    params = {f"{k}_{name}": v for name, s in (("a", a), ("b", b)) for k, v in _named(s).items()}
    return sql, params | ({} if keys is None else {"keys": list(keys)})


def _grouped(by: str) -> tuple[str, str]:
    """The key expression over matched rows `m`, and the join it needs."""
    return ("m.word", "") if by == "word" else ("c.name", "JOIN categories AS c USING (category_id)")


def key_totals(
    con: duckdb.DuckDBPyConnection, a: Slice, b: Slice, metric: str, by: str = "word", min_count: int = 1
) -> pd.DataFrame:
    """Per word or category name with at least `min_count` matched occurrences: key, n, n_images, mean_a,
    mean_b (the metric's means in A and B) and change (B - A, their difference), by key."""
    matched, params = _matched(con, a, b, metric, by)
    key, join = _grouped(by)
    return frame(
        con,
        f"""
        SELECT {key} AS key, count(*) AS n, count(DISTINCT m.image_id) AS n_images, avg(m.value_a) AS mean_a,
            avg(m.value_b) AS mean_b, avg(m.value_b - m.value_a) AS change
        FROM ({matched}) AS m {join}
        GROUP BY {key} HAVING count(*) >= $min_count ORDER BY key""",
        params | {"min_count": min_count},
    )


def per_image(
    con: duckdb.DuckDBPyConnection, a: Slice, b: Slice, metric: str, by: str = "word", keys: Sequence[str] | None = None
) -> pd.DataFrame:
    """Per (word or category name, image) of the matched occurrences (of `keys` only, if given): key,
    image_id, n, sum_a, sum_b (the metric's sums in A and B); ordered by key and image."""
    matched, params = _matched(con, a, b, metric, by, keys)
    key, join = _grouped(by)
    return frame(
        con,
        f"""
        SELECT {key} AS key, m.image_id, count(*) AS n, sum(m.value_a) AS sum_a, sum(m.value_b) AS sum_b
        FROM ({matched}) AS m {join}
        GROUP BY {key}, m.image_id ORDER BY key, m.image_id""",
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
    totals = ranked(key_totals(con, a, b, metric, by, min_count), order).reset_index(drop=True)
    chosen = totals["key"] if intervals is None else totals["key"].head(intervals)
    rows = per_image(con, a, b, metric, by, chosen.tolist())
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
