"""Two runs compared over the same images: which words and categories a metric changes for, and by how much.

A word occurrence is matched across runs by (image_id, caption_id, word_index): the same caption word,
read in a chosen slice (method, layer) of each run. Only occurrences with the metric in both count, so
the runs are compared on the images they share. SQL aggregates the matched pairs per (word or category,
image); db.bootstrap resamples those per-image rows, never the word rows. Metric names reach SQL text only
through db.filters.range_expr (the allow-list); everything else is a bound parameter.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import pandas as pd

from db.bootstrap import ratio_ci
from db.filters import range_expr
from db.queries import frame, rows_of

BY = ("word", "category")


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


def _matched(con: duckdb.DuckDBPyConnection, a: Slice, b: Slice, metric: str, only: str = "TRUE") -> tuple[str, dict]:
    """SQL of the occurrences in both slices with the metric in both (value_a, value_b), and its parameters.
    `only` narrows A's side (our own SQL text, over its columns)."""
    value = range_expr(metric)

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
    return sql, {f"{k}_{name}": v for name, s in (("a", a), ("b", b)) for k, v in _named(s).items()}


def per_image(
    con: duckdb.DuckDBPyConnection, a: Slice, b: Slice, metric: str, by: str = "word", min_count: int = 1
) -> pd.DataFrame:
    """Per (word or category name, image) of the matched occurrences: key, image_id, n, sum_a, sum_b (the
    metric's sums in A and B), for the keys with at least `min_count` matched occurrences in all; ordered
    by key and image."""
    if by not in BY:
        raise ValueError(f"unknown grouping {by!r}; expected one of {BY}")
    matched, params = _matched(con, a, b, metric)
    key, join = ("m.word", "") if by == "word" else ("c.name", "JOIN categories AS c USING (category_id)")
    return frame(
        con,
        f"""
        SELECT {key} AS key, m.image_id, count(*) AS n, sum(m.value_a) AS sum_a, sum(m.value_b) AS sum_b
        FROM ({matched}) AS m {join}
        GROUP BY key, m.image_id QUALIFY sum(count(*)) OVER (PARTITION BY {key}) >= $min_count
        ORDER BY key, m.image_id""",
        params | {"min_count": min_count},
    )


def changes(
    con: duckdb.DuckDBPyConnection,
    a: Slice,
    b: Slice,
    metric: str,
    by: str = "word",
    min_count: int = 1,
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Per word or category, the metric's mean over matched occurrences in A and in B and its change (B - A)
    with a bootstrap interval over images: key, n, n_images, mean_a, mean_b, change, low, high; largest
    change first."""
    rows = per_image(con, a, b, metric, by, min_count)
    group, keys = pd.factorize(rows["key"], sort=True)
    image = pd.factorize(rows["image_id"])[0]
    change, low, high = ratio_ci(
        group, image, rows["sum_b"] - rows["sum_a"], rows["n"], resamples=resamples, level=level, seed=seed
    )
    totals = rows.groupby("key", sort=True).agg(
        n=("n", "sum"), n_images=("image_id", "size"), sum_a=("sum_a", "sum"), sum_b=("sum_b", "sum")
    )
    out = pd.DataFrame(
        {
            "key": keys,
            "n": totals["n"].to_numpy(),
            "n_images": totals["n_images"].to_numpy(),
            "mean_a": (totals["sum_a"] / totals["n"]).to_numpy(),
            "mean_b": (totals["sum_b"] / totals["n"]).to_numpy(),
            "change": change,
            "low": low,
            "high": high,
        }
    )
    return out.sort_values(["change", "key"], ascending=[False, True], ignore_index=True)


def matched_words(
    con: duckdb.DuckDBPyConnection, a: Slice, b: Slice, metric: str, key: str, by: str = "word", limit: int = 8
) -> pd.DataFrame:
    """The occurrences of one word (or of the words naming one category) in both slices, largest change of
    the metric first: image_id, caption_id, word_index, word, category_id, value_a, value_b, caption, file_name, width,
    height, and each run's map (map_a, map_max_a, map_b, map_max_b; see db.codec)."""
    only = "word = $key" if by == "word" else "category_id = (SELECT category_id FROM categories WHERE name = $key)"
    matched, params = _matched(con, a, b, metric, only)
    pairs = frame(
        con,
        f"""
        SELECT m.image_id, m.caption_id, m.word_index, m.word, m.category_id, m.value_a, m.value_b, c.text AS caption,
            i.file_name, i.width, i.height
        FROM ({matched}) AS m JOIN captions AS c USING (caption_id) JOIN images AS i ON i.image_id = m.image_id
        ORDER BY abs(m.value_b - m.value_a) DESC, m.image_id, m.caption_id, m.word_index LIMIT $limit""",
        params | {"key": key, "limit": limit},
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
        params | {"images": pairs["image_id"].unique().tolist(), "captions": pairs["caption_id"].unique().tolist()},
    )
    keys = ["image_id", "caption_id", "word_index"]
    for side, is_a in (("a", True), ("b", False)):
        # A run compared with itself (same slice) has one row per occurrence, which is both A and B.
        rows = maps if a == b else maps[maps["is_a"] == is_a]
        rows = rows[[*keys, "map", "map_max"]].rename(columns={"map": f"map_{side}", "map_max": f"map_max_{side}"})
        pairs = pairs.merge(rows, how="left", on=keys)
    return pairs
