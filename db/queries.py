"""The dashboard's questions of the extraction database about runs, searches and one image, one small function
each (the Statistics page's aggregates are in db/stats.py, the rankings in db/rankings.py).

SQL text is static: values are bound parameters, and the only names spliced into SQL (metrics, sort
columns) come from the db.metrics.METRICS allow-list. Searches take a `WordFilter` (db/filters.py).
Searches and statistics read the `word_search` and `word_aggregates` views (see db.schema), or the sorted `word_lookup`
table directly for a finalized run. Each function runs on its own cursor, so one cached read-only
connection can serve several Streamlit threads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from db import live, parts
from db.codec import decode_map
from db.filters import WordFilter, all_of, check_metric, eq, range_expr, word_filter_sql
from db.schema import LOOKUP_COLUMNS

ALL_WORDS = WordFilter()  # no filter: every word row
_TIEBREAK = "image_id, caption_id, word_index, method, layer"
_WORD_KEYS = ["run_id", "image_id", "caption_id", "word_index", "method", "layer"]
# What a search hit's caption and image add to it.
_CONTEXT_SQL = """
    SELECT c.caption_id, c.image_id, c.text AS caption, c.raw AS caption_raw,
        i.file_name, i.width, i.height, i.coco_url
    FROM captions AS c JOIN images AS i USING (image_id)
    WHERE c.caption_id IN (SELECT unnest($ids::BIGINT[]))"""


def connect_readonly(path: str | Path, config: Mapping[str, object] | None = None) -> duckdb.DuckDBPyConnection:
    """Open an extraction database read-only (config: DuckDB settings such as {"threads": 2}), with the
    runs still in progress in its parts folder shown beside its own (see db.live).

    Raises FileNotFoundError when there is neither the file nor a parts folder, and db.schema.SchemaMismatch
    for a database of another schema version (or not an extraction database at all).
    """
    path = Path(path)
    if not path.is_file() and not parts.run_ids(parts.parts_dir(path)):
        raise FileNotFoundError(f"no extraction database at {path}")
    return live.connect(path, config)


def list_runs(con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """All runs, newest first."""
    return frame(con, "SELECT * FROM runs ORDER BY started_at DESC NULLS LAST, run_id")


def run_summary(con: duckdb.DuckDBPyConnection, run_id: str) -> dict:
    """One run's row plus live counts (images done/error, captions, word rows per method/layer, errors).

    Returns {} for an unknown run_id. Keys: the runs columns, 'images_done', 'images_error',
    'captions', 'errors', 'images_per_second', and 'slices' (DataFrame method, layer, n_rows).
    """
    runs = frame(con, "SELECT * FROM runs WHERE run_id = $run_id", {"run_id": run_id})
    if runs.empty:
        return {}
    counts = frame(
        con,
        """
        SELECT
            (SELECT count(*) FROM image_status WHERE run_id = $run_id AND status = 'done') AS images_done,
            (SELECT count(*) FROM image_status WHERE run_id = $run_id AND status = 'error') AS images_error,
            (SELECT count(*) FROM caption_results WHERE run_id = $run_id) AS captions,
            (SELECT count(*) FROM errors WHERE run_id = $run_id) AS errors""",
        {"run_id": run_id},
    )
    summary = runs.iloc[0].to_dict() | counts.iloc[0].to_dict()
    seconds = summary["seconds"]
    summary["images_per_second"] = summary["images_done"] / seconds if seconds else None
    summary["slices"] = frame(
        con,
        "SELECT method, layer, sum(n)::BIGINT AS n_rows FROM word_aggregates WHERE run_id = $run_id "
        "GROUP BY method, layer ORDER BY method, layer",
        {"run_id": run_id},
    )
    return summary


def run_errors(con: duckdb.DuckDBPyConnection, run_id: str, limit: int = 200) -> pd.DataFrame:
    """The run's logged errors, newest first: item_kind, item_id, path, message, created_at."""
    return frame(
        con,
        "SELECT item_kind, item_id, path, message, created_at FROM errors WHERE run_id = $run_id "
        "ORDER BY created_at DESC, item_kind, item_id LIMIT $limit",
        {"run_id": run_id, "limit": limit},
    )


def vocabulary(
    con: duckdb.DuckDBPyConnection, prefix: str = "", run_id: str | None = None, limit: int = 50
) -> pd.DataFrame:
    """Words starting with `prefix`, most frequent first: word, n (occurrences in captions).

    n counts a word once per occurrence (not once per method/layer row), the largest over runs.
    """
    where, params = all_of(
        ("starts_with(word, $prefix)", {"prefix": prefix.strip().lower()}),
        eq("run_id", run_id),
    )
    return frame(
        con,
        f"""
        SELECT word, max(n) AS n FROM (
            SELECT run_id, method, layer, word, sum(n)::BIGINT AS n FROM word_aggregates WHERE {where}
            GROUP BY run_id, method, layer, word)
        GROUP BY word ORDER BY n DESC, word LIMIT $limit""",
        params | {"limit": limit},
    )


def list_categories(con: duckdb.DuckDBPyConnection, run_id: str | None = None) -> pd.DataFrame:
    """The COCO categories, by name, with n_words (caption words naming them), n_instances and n_images."""
    where, params = all_of(("category_id IS NOT NULL", {}), eq("run_id", run_id))
    return frame(
        con,
        f"""
        WITH named AS (
            SELECT category_id, max(n) AS n_words FROM (
                SELECT run_id, method, layer, category_id, sum(n)::BIGINT AS n
                FROM word_aggregates WHERE {where}
                GROUP BY run_id, method, layer, category_id)
            GROUP BY category_id),
        labelled AS (
            SELECT category_id, count(*) AS n_instances, count(DISTINCT image_id) AS n_images
            FROM instances GROUP BY category_id)
        SELECT c.category_id, c.name, c.supercategory, coalesce(named.n_words, 0) AS n_words,
            coalesce(labelled.n_instances, 0) AS n_instances, coalesce(labelled.n_images, 0) AS n_images
        FROM categories AS c LEFT JOIN named USING (category_id) LEFT JOIN labelled USING (category_id)
        ORDER BY c.name, c.category_id""",
        params,
    )


def search_words(
    con: duckdb.DuckDBPyConnection,
    where: WordFilter = ALL_WORDS,
    *,
    sort: str = "mask_mass",
    descending: bool = True,
    limit: int | None = 24,
    offset: int = 0,
    with_maps: bool = True,
) -> pd.DataFrame:
    """Word rows matching every filter of `where`, ranked by `sort` (NULLs last either way).

    Args:
        sort: a metric of METRICS.
        limit: page size; None for all rows (see export_frame).
        with_maps: add map, map_max (the uint8 grid blob and its scale; see db.codec).

    Returns one row per hit: run_id, image_id, caption_id, word_index, word, category_id, method, layer,
    n_pieces, peak_row, peak_col, the metrics, then category (name), caption, caption_raw, file_name,
    width, height, coco_url (and map, map_max).
    """
    clause, params = word_filter_sql(where)
    order = _order(sort, descending)
    hits = frame(
        con,
        f"""
        SELECT page.*, cat.name AS category FROM (
            SELECT {LOOKUP_COLUMNS} FROM {rows_of(con, where.run_id)} WHERE {clause}
            ORDER BY {order} LIMIT $limit OFFSET $offset
        ) AS page LEFT JOIN categories AS cat USING (category_id)
        ORDER BY {order}""",
        params | {"limit": limit, "offset": offset},
    ).astype({"category": "str"})  # also when a page has no category at all (DuckDB gives object then)
    return page_details(con, hits, with_maps)


def page_details(con: duckdb.DuckDBPyConnection, hits: pd.DataFrame, with_maps: bool = True) -> pd.DataFrame:
    """A page of word rows with their caption, image and (`with_maps`) map columns added, as search_words
    returns them."""
    # Captions, images and maps are looked up by the page's ids, in separate queries: joined to the page,
    # DuckDB would scan the whole captions and words tables for a couple dozen rows.
    context = frame(con, _CONTEXT_SQL, {"ids": hits["caption_id"].unique().tolist()})
    hits = hits.merge(context, how="left", on=["caption_id", "image_id"])
    if with_maps:
        maps = frame(
            con,
            f"""
            SELECT {", ".join(_WORD_KEYS)}, map, map_max FROM words
            WHERE image_id IN (SELECT unnest($images::BIGINT[]))
                AND caption_id IN (SELECT unnest($captions::BIGINT[]))""",
            {"images": hits["image_id"].unique().tolist(), "captions": hits["caption_id"].unique().tolist()},
        )
        hits = hits.merge(maps, how="left", on=_WORD_KEYS)
    return hits


def count_words(con: duckdb.DuckDBPyConnection, where: WordFilter = ALL_WORDS) -> int:
    """The number of word rows search_words ranks for the same filter."""
    clause, params = word_filter_sql(where)
    sql = f"SELECT count(*) AS n FROM {rows_of(con, where.run_id)} WHERE {clause}"
    return int(frame(con, sql, params)["n"].iloc[0])


def search_images(
    con: duckdb.DuckDBPyConnection,
    where: WordFilter = ALL_WORDS,
    *,
    sort: str = "mask_mass",
    descending: bool = True,
    limit: int = 24,
    offset: int = 0,
) -> pd.DataFrame:
    """The images with word rows matching `where`, ranked by their best match under search_words' order:
    image_id, n_matches, value (the best match's `sort`), and n_images (the images in all, on every row)."""
    clause, params = word_filter_sql(where)
    best, order = ("max", "DESC") if descending else ("min", "ASC")
    return frame(
        con,
        f"""
        SELECT image_id, count(*) AS n_matches, {best}({range_expr(sort)}) AS value, count(*) OVER () AS n_images
        FROM {rows_of(con, where.run_id)} WHERE {clause} GROUP BY image_id
        ORDER BY value {order} NULLS LAST, image_id LIMIT $limit OFFSET $offset""",
        params | {"limit": limit, "offset": offset},
    )


def export_frame(
    con: duckdb.DuckDBPyConnection,
    where: WordFilter = ALL_WORDS,
    *,
    sort: str = "mask_mass",
    descending: bool = True,
) -> pd.DataFrame:
    """Every row search_words matches (same filter and sort), without maps, for CSV/Parquet."""
    return search_words(con, where, sort=sort, descending=descending, limit=None, offset=0, with_maps=False)


def ranked_sql(con: duckdb.DuckDBPyConnection, where: WordFilter, sort: str, descending: bool) -> tuple[str, dict]:
    """SQL and parameters of every row search_words matches (the LOOKUP_COLUMNS, no category name or
    context) with its 1-based `rank` in search_words' order, for a query to build on (db.review.joined)."""
    clause, params = word_filter_sql(where)
    order = _order(sort, descending)
    sql = (
        f"SELECT {LOOKUP_COLUMNS}, row_number() OVER (ORDER BY {order}) AS rank FROM {rows_of(con, where.run_id)} "
        f"WHERE {clause}"
    )
    return sql, params


def image_detail(con: duckdb.DuckDBPyConnection, image_id: int, run_id: str) -> dict[str, pd.DataFrame]:
    """Everything about one image in one run.

    Returns DataFrames: 'image' (one row, or none for an unknown id), 'captions' (with itm_score,
    itc_score), 'words' (every method/layer, with maps), 'caption_maps', 'instances' (with category).
    """
    params = {"image_id": image_id, "run_id": run_id}
    return {
        "image": frame(con, "SELECT * FROM images WHERE image_id = $image_id", {"image_id": image_id}),
        "captions": frame(
            con,
            """
            SELECT c.caption_id, c.raw, c.text, c.n_words, r.itm_score, r.itc_score
            FROM captions AS c LEFT JOIN (
                SELECT * FROM caption_results WHERE image_id = $image_id AND run_id = $run_id
            ) AS r USING (caption_id)
            WHERE c.image_id = $image_id ORDER BY c.caption_id""",
            params,
        ),
        "words": frame(
            con,
            "SELECT * EXCLUDE (run_id) FROM words WHERE image_id = $image_id AND run_id = $run_id "
            "ORDER BY caption_id, word_index, method, layer",
            params,
        ),
        "caption_maps": frame(
            con,
            "SELECT * EXCLUDE (run_id) FROM caption_maps WHERE image_id = $image_id AND run_id = $run_id "
            "ORDER BY caption_id, method, layer",
            params,
        ),
        "instances": image_instances(con, [image_id]),
    }


def image_instances(
    con: duckdb.DuckDBPyConnection, image_ids: Sequence[int], category_id: int | None = None
) -> pd.DataFrame:
    """The labelled objects of several images (one query for a page of results), optionally of one category.

    Returns the instances columns plus `category` (name) and `supercategory`, by image_id, annotation_id.
    """
    where, params = all_of(
        ("i.image_id IN (SELECT unnest($image_ids::BIGINT[]))", {"image_ids": [int(i) for i in image_ids]}),
        ("i.category_id = $category_id", {"category_id": category_id}) if category_id is not None else ("", {}),
    )
    return frame(
        con,
        f"""
        SELECT i.*, c.name AS category, c.supercategory
        FROM instances AS i JOIN categories AS c USING (category_id)
        WHERE {where} ORDER BY i.image_id, i.annotation_id""",
        params,
    )


def words_at_region(
    con: duckdb.DuckDBPyConnection,
    image_id: int,
    run_id: str,
    method: str,
    layer: int,
    row0: int,
    col0: int,
    row1: int,
    col1: int,
    limit: int = 10,
) -> pd.DataFrame:
    """The image's words whose maps put the largest share of their mass in grid cells [row0:row1, col0:col1].

    The region is half-open like a numpy slice. Returns caption_id, word_index, word, category_id,
    caption, region_mass (0..1), largest first.
    """
    rows = frame(
        con,
        """
        SELECT w.caption_id, w.word_index, w.word, w.category_id, c.text AS caption, w.map, w.map_max
        FROM words AS w JOIN (SELECT caption_id, text FROM captions WHERE image_id = $image_id) AS c
            USING (caption_id)
        WHERE w.image_id = $image_id AND w.run_id = $run_id AND w.method = $method AND w.layer = $layer""",
        {"image_id": image_id, "run_id": run_id, "method": method, "layer": layer},
    )
    rows["region_mass"] = [
        _region_share(decode_map(blob, peak), row0, col0, row1, col1)
        for blob, peak in zip(rows["map"], rows["map_max"], strict=True)
    ]
    ranked = rows.drop(columns=["map", "map_max"]).sort_values(
        ["region_mass", "caption_id", "word_index"], ascending=[False, True, True]
    )
    return ranked.head(limit).reset_index(drop=True)


def rows_of(con: duckdb.DuckDBPyConnection, run_id: str | None) -> str:
    """Where one run's word rows are read: word_lookup itself once the run is finalized (DuckDB then
    reads only the ranked page's columns in full, which it cannot through the word_search union)."""
    if run_id is not None:
        finalized = frame(con, "SELECT finalized_at FROM runs WHERE run_id = $run_id", {"run_id": run_id})
        if len(finalized) and finalized["finalized_at"].notna().all():
            return "word_lookup"
    return "word_search"


def _order(sort: str, descending: bool) -> str:
    return f"{check_metric(sort)} {'DESC' if descending else 'ASC'} NULLS LAST, {_TIEBREAK}"


def _region_share(m: np.ndarray, row0: int, col0: int, row1: int, col1: int) -> float:
    g = m.shape[0]
    if not (0 <= row0 < row1 <= g and 0 <= col0 < col1 <= g):
        raise ValueError(f"region [{row0}:{row1}, {col0}:{col1}] is not inside the {g} x {g} grid")
    total = float(m.sum())
    return float(m[row0:row1, col0:col1].sum()) / total if total > 0 else 0.0


def frame(con: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, object] | None = None) -> pd.DataFrame:
    """Run on a fresh cursor: a DuckDB connection object must not be shared by threads at once."""
    with con.cursor() as cur:
        return cur.execute(sql, dict(params or {})).df()


def image_encoder_maps(con: duckdb.DuckDBPyConnection, image_id: int, run_id: str) -> pd.DataFrame:
    """The image encoder's [CLS] attention maps of one image in one run: head (-1 = the heads' mean first, then
    0, 1, ...), map, map_max; empty for a run extracted before they were stored."""
    return frame(
        con,
        "SELECT head, map, map_max FROM image_maps WHERE image_id = $image_id AND run_id = $run_id ORDER BY head",
        {"image_id": image_id, "run_id": run_id},
    )
