"""The Statistics page's aggregates of one run's slice: per word, per category, per word and category, per
layer, and a metric's values for distributions.

They read `word_aggregates` (word_summary's counts and sums, or live from a running run's parts) or one run's
word rows (`db.queries.rows_of`); the only names spliced into SQL are metrics of the db.metrics allow-list.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import pandas as pd

from db.filters import all_of, check_metric, range_expr
from db.metrics import SCORES
from db.queries import frame, rows_of

# Per-group statistics computed from words rows (live), and the same from word_summary's counts and sums:
# for one summary row, or totalled over a group of them.
_LIVE_STATS = ", ".join(
    ["count(mask_mass) AS n_object", "avg(pointing_hit::DOUBLE) AS hit_rate"]
    + [f"avg({m}) AS mean_{m}" for m in SCORES]
    + [f"median({m}) AS median_{m}" for m in SCORES]
)


def _summary_stats(total: bool) -> str:
    """n_object, hit_rate and mean_<metric> from word_summary's counts and sums, per row or totalled."""

    def col(name: str) -> str:
        return f"sum({name})" if total else name

    hit_rate = f"{col('sum_pointing_hit')} / nullif({col('n_pointing_hit')}, 0) AS hit_rate"
    means = [f"{col(f'sum_{m}')} / nullif({col(f'n_{m}')}, 0) AS mean_{m}" for m in SCORES]
    return ", ".join([f"{col('n_mask_mass')}::BIGINT AS n_object", hit_rate, *means])


_ROW_STATS, _TOTAL_STATS = _summary_stats(total=False), _summary_stats(total=True)


def word_stats(
    con: duckdb.DuckDBPyConnection, run_id: str, method: str, layer: int, min_count: int = 1
) -> pd.DataFrame:
    """Per word (and the category it names, if any): n, n_object, hit_rate, mean_* and median_* of the metrics."""
    medians = ", ".join(f"s.median_{m}" for m in SCORES)
    return frame(
        con,
        f"""
        SELECT s.word, s.category_id, c.name AS category, s.n, {_ROW_STATS}, {medians}
        FROM word_aggregates AS s LEFT JOIN categories AS c USING (category_id)
        WHERE s.run_id = $run_id AND s.method = $method AND s.layer = $layer AND s.n >= $min_count
        ORDER BY s.n DESC, s.word""",
        _slice(run_id, method, layer) | {"min_count": min_count},
    )


def category_stats(
    con: duckdb.DuckDBPyConnection, run_id: str, method: str, layer: int, min_count: int = 1
) -> pd.DataFrame:
    """Per category, over the words naming it: n, n_words (distinct), n_object, hit_rate, means, medians."""
    return frame(
        con,
        f"""
        SELECT s.category_id, c.name AS category, c.supercategory, count(*) AS n,
            count(DISTINCT s.word) AS n_words, {_LIVE_STATS}
        FROM {rows_of(con, run_id)} AS s JOIN categories AS c USING (category_id)
        WHERE s.run_id = $run_id AND s.method = $method AND s.layer = $layer AND s.category_id IS NOT NULL
        GROUP BY s.category_id, c.name, c.supercategory
        HAVING count(*) >= $min_count
        ORDER BY n DESC, s.category_id""",
        _slice(run_id, method, layer) | {"min_count": min_count},
    )


def word_category_matrix(
    con: duckdb.DuckDBPyConnection, run_id: str, method: str, layer: int, metric: str, min_count: int = 1
) -> pd.DataFrame:
    """Long form (word, category_id, category, n, value = mean of `metric`) for the words naming a category."""
    return frame(
        con,
        f"""
        SELECT s.word, s.category_id, c.name AS category, s.n,
            s.sum_{check_metric(metric)} / nullif(s.n_{metric}, 0) AS value
        FROM word_aggregates AS s JOIN categories AS c USING (category_id)
        WHERE s.run_id = $run_id AND s.method = $method AND s.layer = $layer AND s.n >= $min_count
        ORDER BY c.name, s.n DESC, s.word""",
        _slice(run_id, method, layer) | {"min_count": min_count},
    )


def metric_values(
    con: duckdb.DuckDBPyConnection,
    metric: str,
    run_id: str,
    method: str,
    layer: int,
    words: Sequence[str] | None = None,
    max_rows: int = 100_000,
) -> pd.DataFrame:
    """Non-null values of one metric (word, value) for distribution plots.

    Only the given `words` when set; a repeatable sample of max_rows rows when there are more.
    """
    where, params = all_of(
        ("run_id = $run_id AND method = $method AND layer = $layer", _slice(run_id, method, layer)),
        (f"{check_metric(metric)} IS NOT NULL", {}),
        ("word IN (SELECT unnest($words::VARCHAR[]))", {"words": list(words)}) if words is not None else ("", {}),
    )
    return frame(
        con,
        f"""
        SELECT * FROM (SELECT word, {range_expr(metric)} AS value FROM {rows_of(con, run_id)} WHERE {where})
        USING SAMPLE reservoir({int(max_rows)} ROWS) REPEATABLE (0)""",
        params,
    )


def layer_comparison(con: duckdb.DuckDBPyConnection, run_id: str) -> pd.DataFrame:
    """Per method and layer: n, n_object, hit_rate and the mean of each metric (which layer localises best)."""
    return frame(
        con,
        f"""
        SELECT method, layer, sum(n)::BIGINT AS n, {_TOTAL_STATS}
        FROM word_aggregates WHERE run_id = $run_id GROUP BY method, layer ORDER BY method, layer""",
        {"run_id": run_id},
    )


def word_frequency_alignment(
    con: duckdb.DuckDBPyConnection, run_id: str, method: str, layer: int, min_count: int = 1
) -> pd.DataFrame:
    """Words naming a labelled object: caption frequency (n, freq_rank) beside localisation quality."""
    return frame(
        con,
        f"""
        SELECT word, category_id, n, rank() OVER (ORDER BY n DESC) AS freq_rank, {_ROW_STATS}
        FROM word_aggregates
        WHERE run_id = $run_id AND method = $method AND layer = $layer AND n_mask_mass > 0
            AND n >= $min_count
        ORDER BY n DESC, word""",
        _slice(run_id, method, layer) | {"min_count": min_count},
    )


def _slice(run_id: str, method: str, layer: int) -> dict:
    return {"run_id": run_id, "method": method, "layer": layer}
