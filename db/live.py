"""An extraction database as the dashboard reads it: the file, and the runs still in its parts folder.

The extractor never holds the database while it runs, so the file is attached read-only as usual and
shows the runs the last build wrote. A reader's own in-memory database holds a view per table (and the
schema's views on top of them): the file's rows, together with the done chunks of every run whose parts
changed since the last build. The views are a snapshot of the parts at connection time, and live in the
database itself, so every cursor of the connection sees them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import duckdb
import pandas as pd

from db import parts as partsdir
from db.schema import DERIVED_TABLES, check_schema, init_db
from db.writer import RUN_COLUMNS, parts_signature

FILE = "extraction"  # the catalog the database file is attached as
DATASET_KEYS = {"categories": "category_id", "images": "image_id", "captions": "caption_id",
                "instances": "annotation_id"}  # fmt: skip


def connect(path: Path, config: Mapping[str, object] | None = None) -> duckdb.DuckDBPyConnection:
    """The database at `path` (read-only) with the live runs of its parts; an empty one when only parts exist.

    Raises db.schema.SchemaMismatch for a file of another schema version.
    """
    con = duckdb.connect(":memory:", config=dict(config or {}))
    try:
        if path.is_file():
            con.execute(f"ATTACH {_quote(path)} AS {FILE} (READ_ONLY)")
            check_schema(con, FILE)
        else:  # the first run is still being extracted: only its parts so far
            con.execute(f"ATTACH ':memory:' AS {FILE}")
            con.execute(f"USE {FILE}")
            init_db(con)
            con.execute("USE memory")
        _create_views(con, partsdir.parts_dir(path))
    except BaseException:
        con.close()
        raise
    return con


def live_runs(con: duckdb.DuckDBPyConnection, parts: Path) -> dict[str, list[str]]:
    """Runs whose done chunks are not what the database was last built from, each with its done_files of
    image_status (listed once)."""
    built = dict(con.execute(f"SELECT key, value FROM {FILE}.meta WHERE key LIKE 'parts:%'").fetchall())
    done = {r: partsdir.done_files(parts, r, partsdir.DONE_TABLE) for r in partsdir.run_ids(parts)}
    return {r: files for r, files in done.items() if built.get(f"parts:{r}") != parts_signature(parts, r, files)}


def _create_views(con: duckdb.DuckDBPyConnection, parts: Path) -> None:
    done = live_runs(con, parts)
    runs = list(done)
    tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = ?",
                                        [FILE]).fetchall()]  # fmt: skip
    con.execute(f"CREATE TABLE live_runs AS SELECT * FROM {FILE}.main.runs LIMIT 0")
    if runs:
        con.register("_frame", _run_rows(parts, runs))
        con.execute("INSERT INTO live_runs BY NAME SELECT * FROM _frame")
        con.unregister("_frame")
    run_files = {r: partsdir.done_parts(parts, r, partsdir.BUILD_TABLES, files) for r, files in done.items()}
    for table in tables:
        con.execute(f"CREATE VIEW {table} AS {_union(table, parts, runs, run_files)}")
    for (sql,) in con.execute("SELECT sql FROM duckdb_views() WHERE database_name = ? AND NOT internal",
                              [FILE]).fetchall():  # fmt: skip
        con.execute(sql)


def _union(table: str, parts: Path, runs: list[str], run_files: dict[str, dict[str, list[str]]]) -> str:
    """The SELECT of one table's view: the file's rows and the live runs' (replacing any older build);
    `run_files`: each live run's done_parts."""
    own = f"SELECT * FROM {FILE}.main.{table}"
    if table in DATASET_KEYS:
        files = partsdir.dataset_files(parts, table)
        new = f"SELECT * FROM read_parquet({_list(files)}) ANTI JOIN {FILE}.main.{table} USING ({DATASET_KEYS[table]})"
        return f"{own} UNION ALL BY NAME ({new})" if files and runs else own
    if table == "runs":
        return f"{own} WHERE run_id NOT IN (SELECT run_id FROM live_runs) UNION ALL BY NAME SELECT * FROM live_runs"
    if table in partsdir.BUILD_TABLES or table in DERIVED_TABLES:
        done = [f for r in runs for f in run_files[r][table]] if table in partsdir.BUILD_TABLES else []
        parquet = f" UNION ALL BY NAME SELECT * FROM read_parquet({_list(done)}, union_by_name = true)" if done else ""
        return f"{own} WHERE run_id NOT IN (SELECT run_id FROM live_runs){parquet}"
    return own


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _list(files: list[Path]) -> str:
    """A SQL list literal of file paths (paths come from our own folder listing, quotes doubled)."""
    return "[" + ", ".join(_quote(f) for f in files) + "]"


def _run_rows(parts: Path, runs: list[str]) -> pd.DataFrame:
    """`runs` rows of the live runs: their settings, their status (complete once every shard finished,
    though not built yet), and the counts done so far."""
    rows = []
    for run_id in runs:
        run = {k: v for k, v in partsdir.read_run(parts, run_id).items() if k in RUN_COLUMNS}
        sessions = partsdir.read_sessions(parts, run_id)
        done = partsdir.done_image_ids(parts, run_id)
        rows.append({**run, "config": json.dumps(run["config"]) if isinstance(run["config"], dict) else run["config"],
                     "status": "complete" if partsdir.run_complete(sessions) else "running", "n_images": len(done),
                     "started_at": pd.to_datetime(min((s["started_at"] for s in sessions), default=None), unit="s"),
                     "seconds": sum(s.get("seconds", 0) for s in sessions)})  # fmt: skip
    return pd.DataFrame(rows)
