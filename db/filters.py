"""Search filters of word rows: the `WordFilter` a page passes once, and the SQL it becomes.

Values are bound parameters; the only names spliced into SQL are metric names checked against the
db.metrics.METRICS allow-list (`check_metric`) and our own column names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from db.metrics import BY_NAME, METRICS

Range = tuple[float | None, float | None]


@dataclass(frozen=True)
class WordFilter:
    """Which word rows a search matches; a field left None does not filter.

    Args:
        word: exact word (matched lower-cased).
        category_id: the COCO category the word names.
        ranges: metric -> (low, high), inclusive, None for an open end; pointing_hit compares as 0/1.
        has_object: True: the named object is labelled in the image (object metrics defined);
            False: the word names a category that the image's labels lack. Words naming no category
            match neither.
        image_ids: only these images (one page of a search grouped by image).
    """

    word: str | None = None
    category_id: int | None = None
    run_id: str | None = None
    method: str | None = None
    layer: int | None = None
    ranges: Mapping[str, Range] | None = None
    has_object: bool | None = None
    image_ids: tuple[int, ...] | None = None

    def spec(self) -> dict:
        """The filter as JSON-ready keyword values: what it searches for (word or category, whichever is
        set) and every other field."""
        optional = ("word", "category_id", "image_ids")
        return {k: v for k, v in asdict(self).items() if k not in optional or v is not None}


def word_filter_sql(where: WordFilter) -> tuple[str, dict]:
    """The WHERE clause and parameters of a WordFilter (db.queries: search_words, count_words, ranked_sql)."""
    clauses = [
        eq("word", None if where.word is None else where.word.strip().lower()),
        eq("category_id", where.category_id),
        eq("run_id", where.run_id),
        eq("method", where.method),
        eq("layer", where.layer),
    ]
    if where.image_ids is not None:
        clauses.append(("image_id IN (SELECT unnest($image_ids::BIGINT[]))", {"image_ids": list(where.image_ids)}))
    for metric, bounds in (where.ranges or {}).items():
        expr = range_expr(metric)
        for end, op, bound in zip(("low", "high"), (">=", "<="), bounds, strict=True):
            if bound is not None:
                clauses.append((f"{expr} {op} ${end}_{metric}", {f"{end}_{metric}": bound}))
    if where.has_object is not None:
        # background_mass is NULL only when the run had no instance labels: then absence is unknown.
        absent = "category_id IS NOT NULL AND mask_mass IS NULL AND background_mass IS NOT NULL"
        clauses.append(("mask_mass IS NOT NULL" if where.has_object else absent, {}))
    return all_of(*clauses)


def check_metric(name: str) -> str:
    """Validate a metric name against the allow-list (it is spliced into SQL text)."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; expected one of {METRICS}")
    return name


def range_expr(metric: str) -> str:
    """A metric as a number to compare with range bounds: a flag counts as 0/1."""
    return f"{metric}::DOUBLE" if BY_NAME[check_metric(metric)].is_flag else metric


def eq(column: str, value: object) -> tuple[str, dict]:
    """`column = $column` when a value is given, else no clause (column names are ours, not user input)."""
    return (f"{column} = ${column}", {column: value}) if value is not None else ("", {})


def all_of(*clauses: tuple[str, dict]) -> tuple[str, dict]:
    sql = " AND ".join(f"({c})" for c, _ in clauses if c) or "TRUE"
    params: dict = {}
    for _, p in clauses:
        params |= p
    return sql, params
