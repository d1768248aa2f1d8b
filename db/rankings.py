"""The whole run at a glance: words, categories and images ranked by a metric, and where a word grounds best.

Words, categories and the best slice read `word_aggregates` (additive counts and sums per run, method,
layer, word and category), images `image_summary` (the same per image), so they cost the same at 616k
captions as at 300. A run not finalized yet has no summary rows: they are aggregated from its `words` live.
Metric names reach SQL text only through db.filters.check_metric; everything else is a bound parameter.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from db.filters import all_of, check_metric
from db.metrics import METRICS
from db.queries import frame, rows_of
from db.schema import metric_sums

# A slice "grounds best" by mean mask mass when enough occurrences have it, else by least background mass.
_GROUNDING = "coalesce(sum(sum_mask_mass) / nullif(sum(n_mask_mass), 0), 0)"


def _aggregates_of(rows: str) -> str:
    """word_summary itself for a finalized run (its word rows in `rows`, from db.queries.rows_of): through the
    word_aggregates view, a word filter would also scan the word column of every `words` row for the view's
    other branch."""
    return "word_summary" if rows == "word_lookup" else "word_aggregates"


def _image_aggregates(rows: str, metric: str, where: str) -> str:
    """The image_summary rows matching `where` for a finalized run, else the same of one metric aggregated
    from `words` (filtered first and only that metric's sums: twice as fast as a view of finalize's)."""
    if rows == "word_lookup":
        return f"(SELECT * FROM image_summary WHERE {where})"
    sums = metric_sums([check_metric(metric)])
    return f"(SELECT image_id, count(*) AS n, {sums} FROM words WHERE {where} GROUP BY image_id)"


def _mean(metric: str) -> str:
    """The mean of a metric over a group of word_aggregates rows."""
    return f"sum(sum_{check_metric(metric)}) / nullif(sum(n_{metric}), 0)"


def _direction(descending: bool) -> str:
    return "DESC" if descending else "ASC"


# What a ranking groups word_aggregates rows by: selected columns, join with categories, GROUP BY, tiebreak.
_GROUPS = {
    "word": ("s.word, any_value(c.name) AS category", "LEFT JOIN", "s.word", "s.word"),
    "category": ("s.category_id, c.name AS category", "JOIN", "s.category_id, c.name", "c.name"),
}


def ranked(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    method: str,
    layer: int,
    metric: str,
    *,
    by: str = "word",
    descending: bool = True,
    min_count: int = 1,
    word_class: str | None = None,
    limit: int = 24,
) -> pd.DataFrame:
    """Words (`by` 'word') or COCO categories (`by` 'category', over the words naming them) of a run slice by
    their mean `metric`; those that never have it are left out.

    Returns word or category_id, category (the category's name; for a word, the one it names if any), n
    (occurrences), n_value (occurrences with the metric) and value (its mean). `word_class` keeps only
    words of that class ('object', 'attribute', 'other').
    """
    columns, join, group, tiebreak = _GROUPS[by]
    rows = rows_of(con, run_id)
    of_class = (
        f"s.word IN (SELECT word FROM {rows} WHERE run_id = $run_id AND method = $method "
        "AND layer = $layer AND word_class = $word_class)",
        {"word_class": word_class},
    )
    where, params = all_of(
        ("s.run_id = $run_id AND s.method = $method AND s.layer = $layer", {}),
        of_class if word_class is not None else ("", {}),
    )
    return frame(
        con,
        f"""
        SELECT {columns}, sum(s.n)::BIGINT AS n, sum(s.n_{check_metric(metric)})::BIGINT AS n_value,
            {_mean(metric)} AS value
        FROM {_aggregates_of(rows)} AS s {join} categories AS c USING (category_id)
        WHERE {where}
        GROUP BY {group} HAVING sum(s.n) >= $min_count AND sum(s.n_{metric}) > 0
        ORDER BY value {_direction(descending)}, n DESC, {tiebreak} LIMIT $limit""",
        params | {"run_id": run_id, "method": method, "layer": layer, "min_count": min_count, "limit": limit},
    )


def ranked_images(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    method: str,
    layer: int,
    metric: str,
    *,
    descending: bool = True,
    category_id: int | None = None,
    limit: int = 24,
    offset: int = 0,
) -> pd.DataFrame:
    """Images of a run slice by the mean `metric` of their words (images without it last), optionally only
    those with a labelled object of `category_id`: image_id, file_name, width, height, n_words, value,
    and n_images (how many images the ranking has in all, on every row)."""
    where, params = all_of(
        ("run_id = $run_id AND method = $method AND layer = $layer", {}),
        ("image_id IN (SELECT image_id FROM instances WHERE category_id = $category_id)", {"category_id": category_id})
        if category_id is not None
        else ("", {}),
    )
    return frame(
        con,
        f"""
        WITH ranked AS (
            SELECT image_id, n AS n_words, sum_{check_metric(metric)} / nullif(n_{metric}, 0) AS value,
                count(*) OVER () AS n_images
            FROM {_image_aggregates(rows_of(con, run_id), metric, where)}
            ORDER BY value {_direction(descending)} NULLS LAST, image_id LIMIT $limit OFFSET $offset)
        SELECT r.image_id, i.file_name, i.width, i.height, r.n_words, r.value, r.n_images
        FROM ranked AS r JOIN images AS i USING (image_id)
        ORDER BY r.value {_direction(descending)} NULLS LAST, r.image_id""",
        params | {"run_id": run_id, "method": method, "layer": layer, "limit": limit, "offset": offset},
    )


def best_slices(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    word: str | None = None,
    category_id: int | None = None,
    min_count: int = 5,
) -> pd.DataFrame:
    """Every (method, layer) of a run, where the word (or the words naming the category, or every word)
    grounds best first: by mean mask mass when at least `min_count` occurrences have one, then by least
    background mass. Columns: method, layer, n, n_object, mask_mass, background_mass (means)."""
    where, params = all_of(
        ("run_id = $run_id", {"run_id": run_id}),
        ("word = $word", {"word": word.strip().lower()}) if word is not None else ("", {}),
        ("category_id = $category_id", {"category_id": category_id}) if category_id is not None else ("", {}),
    )
    return frame(
        con,
        f"""
        SELECT method, layer, sum(n)::BIGINT AS n, sum(n_mask_mass)::BIGINT AS n_object,
            {_mean("mask_mass")} AS mask_mass, {_mean("background_mass")} AS background_mass
        FROM {_aggregates_of(rows_of(con, run_id))} WHERE {where} GROUP BY method, layer
        ORDER BY sum(n_mask_mass) >= $min_count DESC, {_GROUNDING} DESC, background_mass ASC NULLS LAST,
            method, layer""",
        params | {"min_count": min_count},
    )


def present_metrics(con: duckdb.DuckDBPyConnection, run_id: str) -> tuple[str, ...]:
    """The ranked metrics (in db.metrics.METRICS order) that at least one word row of the run has: a run
    without object labels (a pairs table, WebDataset shards, COCO without instances) lacks the object
    metrics and background mass, which are NULL there."""
    counts = ", ".join(f"coalesce(sum(n_{check_metric(m)}), 0) > 0 AS {m}" for m in METRICS)
    has = frame(
        con, f"SELECT {counts} FROM {_aggregates_of(rows_of(con, run_id))} WHERE run_id = $run_id", {"run_id": run_id}
    )
    return tuple(m for m in METRICS if bool(has[m].iloc[0]))
