"""The extraction database schema: one idempotent DDL constant, its version, and the version check.

Ids are the deterministic ones of the contract (run_id hash, COCO ids), never sequences, so shard files
merge with plain INSERT ... SELECT. `words` (with the map blobs) has no key or index: it is appended in
image order, which keeps per-image lookups cheap through DuckDB's min/max zone maps. For lookups by word
or category, db.writer.finalize writes two derived tables per run: `word_lookup`, the words rows without
maps, sorted by (method, layer, category, word), `word_summary`, per-word aggregates, and `image_summary`,
per-image ones. The views `word_search` and `word_aggregates` read the first two for finalized runs and
fall back to `words` for the others; db.rankings reads image_summary.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb

from db.metrics import METRICS, SCORES, WORD_METRICS, words_order

# 4: specificity_cls, specificity_row; image_maps. 5: image_summary. 6: word_heads. 7: words.specificity_others,
# word_heads.specificity_others, runs.vocab, key_image_summary and key_summary (db.compare).
SCHEMA_VERSION = 7

# Every column or metric name that reaches SQL text comes from db.metrics or from the declarations below,
# never from user input; the CREATE TABLEs of `runs`, `words` and the derived tables are made
# from them.

# The settings of a run, as the extractor passes them to db.writer.start_run (RUN_COLUMNS); the rest of
# `runs` (status, timing, counts) db.writer fills in.
RUN_SETTINGS = {
    "run_id": "VARCHAR PRIMARY KEY",
    "checkpoint_path": "VARCHAR",
    "checkpoint_sha256": "VARCHAR",
    "vocab": "JSON",  # v7: {"path", "sha256"} of the vocab.txt the run read, which the probe then reads
    "config": "JSON",
    "method": "VARCHAR CHECK (method IN ('gradcam', 'attention', 'both'))",
    "layers": "INTEGER[]",
    "gradcam_layer": "INTEGER",
    "image_res": "INTEGER",
    "patch_size": "INTEGER",
    "grid_size": "INTEGER",
    "code_version": "VARCHAR",
    "images_dir": "VARCHAR",
    "captions_file": "VARCHAR",
    "instances_file": "VARCHAR",
    "device": "VARCHAR",
}
RUN_COLUMNS = tuple(RUN_SETTINGS)
# A word row's key columns in `words`' order; its metrics follow (db.metrics.words_order), then its map.
_WORD_KEYS = {
    "run_id": "VARCHAR",
    "image_id": "BIGINT",
    "caption_id": "BIGINT",
    "word_index": "SMALLINT",
    "word": "VARCHAR",
    "n_pieces": "TINYINT",
    "category_id": "INTEGER",  # the category the word names; NULL for attribute words, even bound ones
    # extractor.binding: 'object' (names a category), 'attribute' (in its lexicon) or 'other'; an attribute's
    # noun (its word_index) and that noun's category, against whose objects its object metrics are scored.
    "word_class": "VARCHAR",
    "bound_index": "SMALLINT",
    "bound_category_id": "INTEGER",
    "method": "VARCHAR",
    "layer": "SMALLINT",
}
# word_lookup's key columns in its order; every metric follows, in the order of db.metrics.WORD_METRICS.
_LOOKUP_KEYS = (
    "run_id", "method", "layer", "category_id", "word", "image_id", "caption_id", "word_index", "n_pieces",
    "word_class", "bound_index", "bound_category_id",
)  # fmt: skip


def _columns(columns: dict[str, str]) -> str:
    """Column definitions of a CREATE TABLE, one a line."""
    return ",\n    ".join(f"{name} {sql_type}" for name, sql_type in columns.items())


_WORDS_DDL = _columns(_WORD_KEYS | {m.name: m.sql_type for m in words_order()} | {"map": "BLOB", "map_max": "FLOAT"})
_LOOKUP_DDL = _columns({k: _WORD_KEYS[k] for k in _LOOKUP_KEYS} | {m.name: m.sql_type for m in WORD_METRICS})
# The words columns that searches filter, rank and return: everything but the map blob.
LOOKUP_NAMES = (*_LOOKUP_KEYS, *(m.name for m in WORD_METRICS))
LOOKUP_COLUMNS = ", ".join(LOOKUP_NAMES)
# word_lookup's order: each (run, method, layer) slice is contiguous, category words come first grouped by
# category, and each word's rows are adjacent, so the zone maps of a row group prune nearly all others
# for `word = ?` and for `category_id = ?`.
LOOKUP_ORDER = "run_id, method, layer, category_id NULLS LAST, word, image_id, caption_id, word_index"

# word_summary and image_summary keep additive aggregates (count and sum of each metric), so means over
# any grouping of their rows are exact; word_summary also medians per word.
_SUMS = [f"count({m}) AS n_{m}, sum({m}::DOUBLE) AS sum_{m}" for m in METRICS]


def metric_sums(metrics: Sequence[str] = METRICS) -> str:
    """The additive aggregates (n_<metric>, sum_<metric>) of `metrics`, as SQL select items."""
    return ", ".join(sums for m, sums in zip(METRICS, _SUMS, strict=True) if m in metrics)


_SUM_COLUMNS = [f"n_{m} BIGINT, sum_{m} DOUBLE" for m in METRICS]
_SUMMARY_AGGREGATES = ",\n    ".join(_SUMS + [f"median({m}) AS median_{m}" for m in SCORES])
_SUMMARY_COLUMNS = ",\n    ".join(_SUM_COLUMNS + [f"median_{m} DOUBLE" for m in SCORES])
_SUMMARY_SELECT = f"""
SELECT run_id, method, layer, word, category_id, count(*) AS n,
    {_SUMMARY_AGGREGATES}
FROM words
WHERE {{runs}}
GROUP BY run_id, method, layer, word, category_id
"""

# key_image_summary and key_summary: per key (a word, or a COCO category's name), what db.compare pairs runs on.
KEY_KINDS = ("word", "category")
KEY_ORDER = "run_id, method, layer, key_kind, key"
_CATEGORY_JOIN = "JOIN categories AS c USING (category_id)"


def key_image_select(rows: str, where: str, metrics: Sequence[str] = METRICS, kinds: Sequence[str] = KEY_KINDS) -> str:
    """SQL of key_image_summary's rows from word rows `rows` matching `where`: per (run, method, layer) and key
    (key_kind 'word': a word; 'category': a COCO category's name, over the words naming it) and image, the
    additive aggregates of `metrics`. db.compare reads it, or this SQL (one metric, one kind) on a run not
    finalized."""
    sums = metric_sums(metrics)
    keys = {"word": ("word", ""), "category": ("c.name", _CATEGORY_JOIN)}
    return " UNION ALL ".join(
        f"SELECT run_id, method, layer, '{kind}' AS key_kind, {keys[kind][0]} AS key, image_id, count(*) AS n, "
        f"{sums} FROM {rows} {keys[kind][1]} WHERE {where} GROUP BY ALL"
        for kind in kinds
    )


def key_select(key_images: str, metrics: Sequence[str] = METRICS) -> str:
    """SQL of key_summary's rows from key_image_summary rows `key_images`: per key, the n and sum of `metrics`,
    the images having each (images_m) and a fingerprint of their (image, n) pairs (pairing_m: two slices
    with the same one pair up each image with the same count, and compare by their sums)."""
    per_metric = [f"sum(n_{m})::BIGINT AS n_{m}, sum(sum_{m}) AS sum_{m}, count(*) FILTER (n_{m} > 0) AS images_{m}, "
                  f"bit_xor(hash(image_id, n_{m})) FILTER (n_{m} > 0) AS pairing_{m}" for m in metrics]  # fmt: skip
    return (
        f"SELECT run_id, method, layer, key_kind, key, sum(n)::BIGINT AS n, {', '.join(per_metric)} "
        f"FROM ({key_images}) GROUP BY ALL"
    )


_KEY_COLUMNS = ", ".join(
    f"{name} {kind} NOT NULL"
    for name, kind in (("run_id", "VARCHAR"), ("method", "VARCHAR"), ("layer", "SMALLINT"), ("key_kind", "VARCHAR"),
                       ("key", "VARCHAR"))
)  # fmt: skip
_NOT_FINALIZED = "run_id IN (SELECT run_id FROM runs WHERE finalized_at IS NULL)"

# Run by db.writer for one run ($run_id), each list in one transaction. Derived rows exist exactly for
# the runs with finalized_at set.
DERIVED_TABLES = ("word_lookup", "word_summary", "image_summary", "key_image_summary", "key_summary")
UNFINALIZE_SQL = (
    *(f"DELETE FROM {table} WHERE run_id = $run_id" for table in DERIVED_TABLES),
    "UPDATE runs SET finalized_at = NULL WHERE run_id = $run_id",
)
FINALIZE_SQL = (
    *UNFINALIZE_SQL[:-1],
    f"INSERT INTO word_lookup BY NAME SELECT {LOOKUP_COLUMNS} FROM words WHERE run_id = $run_id "
    f"ORDER BY {LOOKUP_ORDER}",
    "INSERT INTO word_summary BY NAME " + _SUMMARY_SELECT.format(runs="run_id = $run_id"),
    f"INSERT INTO image_summary BY NAME SELECT run_id, method, layer, image_id, count(*) AS n, {metric_sums()} "
    "FROM words WHERE run_id = $run_id GROUP BY run_id, method, layer, image_id ORDER BY method, layer, image_id",
    f"INSERT INTO key_image_summary BY NAME {key_image_select('words', 'run_id = $run_id')} "
    f"ORDER BY {KEY_ORDER}, image_id",
    f"INSERT INTO key_summary BY NAME {key_select('SELECT * FROM key_image_summary WHERE run_id = $run_id')} "
    f"ORDER BY {KEY_ORDER}",
    "UPDATE runs SET finalized_at = now() WHERE run_id = $run_id",
)

DDL = f"""
CREATE TABLE IF NOT EXISTS meta (
    key VARCHAR PRIMARY KEY,
    value VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    {_columns(RUN_SETTINGS)},
    status VARCHAR NOT NULL CHECK (status IN ('running', 'complete', 'failed')),
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    seconds DOUBLE,
    n_images INTEGER,
    n_captions INTEGER,
    n_words BIGINT,
    n_errors INTEGER,
    finalized_at TIMESTAMP  -- set by db.writer.finalize once the derived tables are written
);
CREATE TABLE IF NOT EXISTS categories (
    category_id INTEGER PRIMARY KEY,
    name VARCHAR NOT NULL,
    supercategory VARCHAR
);
CREATE TABLE IF NOT EXISTS images (
    image_id BIGINT PRIMARY KEY,
    file_name VARCHAR NOT NULL,
    width INTEGER,
    height INTEGER,
    coco_url VARCHAR
);
CREATE TABLE IF NOT EXISTS instances (
    annotation_id BIGINT PRIMARY KEY,
    image_id BIGINT NOT NULL,
    category_id INTEGER NOT NULL,
    bbox_x DOUBLE,
    bbox_y DOUBLE,
    bbox_w DOUBLE,
    bbox_h DOUBLE,
    area DOUBLE,
    iscrowd BOOLEAN,
    segmentation JSON
);
CREATE TABLE IF NOT EXISTS captions (
    caption_id BIGINT PRIMARY KEY,
    image_id BIGINT NOT NULL,
    raw VARCHAR,
    text VARCHAR,
    n_words INTEGER
);
CREATE TABLE IF NOT EXISTS caption_results (
    run_id VARCHAR NOT NULL,
    caption_id BIGINT NOT NULL,
    image_id BIGINT NOT NULL,
    itm_score DOUBLE,
    itc_score DOUBLE
);
CREATE TABLE IF NOT EXISTS caption_maps (
    run_id VARCHAR NOT NULL,
    caption_id BIGINT NOT NULL,
    image_id BIGINT NOT NULL,
    method VARCHAR NOT NULL,
    layer SMALLINT NOT NULL,
    map BLOB,
    map_max FLOAT,
    cls_map BLOB,
    cls_map_max FLOAT
);
-- The image encoder's [CLS] self-attention of its last block over the patches: each head, and their mean as
-- head -1 (the reference of specificity_cls).
CREATE TABLE IF NOT EXISTS image_maps (
    run_id VARCHAR NOT NULL,
    image_id BIGINT NOT NULL,
    head SMALLINT NOT NULL,
    map BLOB,
    map_max FLOAT
);
-- Grounding heads: per word with an object (mask_mass not NULL), each fusion layer's heads' own mask mass and
-- specificity_others.
CREATE TABLE IF NOT EXISTS word_heads (
    run_id VARCHAR NOT NULL,
    image_id BIGINT NOT NULL,
    caption_id BIGINT NOT NULL,
    word_index SMALLINT NOT NULL,
    layer SMALLINT NOT NULL,
    head SMALLINT NOT NULL,
    mask_mass FLOAT NOT NULL,
    specificity_others FLOAT  -- NULL where the caption names no other category
);
CREATE TABLE IF NOT EXISTS words (
    {_WORDS_DDL}
);
CREATE TABLE IF NOT EXISTS image_status (
    run_id VARCHAR NOT NULL,
    image_id BIGINT NOT NULL,
    status VARCHAR NOT NULL CHECK (status IN ('done', 'error')),
    PRIMARY KEY (run_id, image_id)
);
CREATE TABLE IF NOT EXISTS errors (
    run_id VARCHAR NOT NULL,
    item_kind VARCHAR NOT NULL CHECK (item_kind IN ('image', 'caption', 'annotation', 'file')),
    item_id VARCHAR,
    path VARCHAR,
    message VARCHAR,
    created_at TIMESTAMP DEFAULT current_timestamp
);
-- Derived by db.writer.finalize: the words rows of finalized runs without maps, sorted by LOOKUP_ORDER.
CREATE TABLE IF NOT EXISTS word_lookup (
    {_LOOKUP_DDL}
);
-- Derived by db.writer.finalize: one row per (run, method, layer, word, category).
CREATE TABLE IF NOT EXISTS word_summary (
    run_id VARCHAR NOT NULL,
    method VARCHAR NOT NULL,
    layer SMALLINT NOT NULL,
    word VARCHAR NOT NULL,
    category_id INTEGER,
    n BIGINT NOT NULL,
    {_SUMMARY_COLUMNS}
);
-- Derived by db.writer.finalize: one row per (run, method, layer, image), in image order (db.rankings).
CREATE TABLE IF NOT EXISTS image_summary (
    run_id VARCHAR NOT NULL,
    method VARCHAR NOT NULL,
    layer SMALLINT NOT NULL,
    image_id BIGINT NOT NULL,
    n BIGINT NOT NULL,
    {", ".join(_SUM_COLUMNS)}
);
-- Derived by db.writer.finalize: one row per (run, method, layer, key_kind, key, image) (key_image_select).
CREATE TABLE IF NOT EXISTS key_image_summary (
    {_KEY_COLUMNS},
    image_id BIGINT NOT NULL,
    n BIGINT NOT NULL,
    {", ".join(_SUM_COLUMNS)}
);
-- Derived by db.writer.finalize: one row per (run, method, layer, key_kind, key) (key_select).
CREATE TABLE IF NOT EXISTS key_summary (
    {_KEY_COLUMNS},
    n BIGINT NOT NULL,
    {", ".join(f"n_{m} BIGINT, sum_{m} DOUBLE, images_{m} BIGINT, pairing_{m} UBIGINT" for m in METRICS)}
);
-- What queries read: the derived tables for finalized runs, `words` itself for the others (a run that
-- crashed or is still being written stays browsable, only slower). The derived tables hold rows of
-- finalized runs only (db.writer keeps it so), so their branch needs no join with runs.
CREATE VIEW IF NOT EXISTS word_search AS
SELECT {LOOKUP_COLUMNS} FROM word_lookup
UNION ALL
SELECT {LOOKUP_COLUMNS} FROM words WHERE {_NOT_FINALIZED};
CREATE VIEW IF NOT EXISTS word_aggregates AS
SELECT * FROM word_summary
UNION ALL
{_SUMMARY_SELECT.format(runs=_NOT_FINALIZED)};
"""


class SchemaMismatch(RuntimeError):
    """The database was written by another schema version (or is not an extraction database)."""


def schema_version(con: duckdb.DuckDBPyConnection, database: str | None = None) -> int | None:
    """The schema version stored in `meta`, or None when the database has no `meta` table.

    Args:
        con: any connection.
        database: catalog alias to look in (an attached shard); default the connection's own database.
    """
    catalog = database or con.execute("SELECT current_database()").fetchone()[0]
    has_meta = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = ? AND schema_name = 'main' AND table_name = 'meta'",
        [catalog],
    ).fetchone()[0]
    if not has_meta:
        return None
    row = con.execute(f"SELECT value FROM {_identifier(catalog)}.main.meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else None


def check_schema(con: duckdb.DuckDBPyConnection, database: str | None = None) -> None:
    """Raise SchemaMismatch unless the database has exactly SCHEMA_VERSION."""
    version = schema_version(con, database)
    if version != SCHEMA_VERSION:
        found = "no schema version (not an extraction database)" if version is None else f"v{version}"
        raise SchemaMismatch(
            f"database has {found}, this code needs schema v{SCHEMA_VERSION}: re-run the extraction "
            "or open it with the matching code version"
        )


def init_db(con: duckdb.DuckDBPyConnection) -> None:
    """Create the schema in an empty database; a no-op on one already at SCHEMA_VERSION.

    Raises SchemaMismatch for a database of another version or one with foreign tables, rather than
    adding tables to it.
    """
    version = schema_version(con)
    if version is None:
        n_tables = con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database()"
        ).fetchone()[0]
        if n_tables:
            check_schema(con)  # raises: tables exist but no version stamp
    else:
        check_schema(con)
    con.execute(DDL)
    con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])


def _identifier(name: str) -> str:
    """Quote a catalog name for SQL text (it comes from DuckDB or from our own aliases)."""
    return '"' + name.replace('"', '""') + '"'
