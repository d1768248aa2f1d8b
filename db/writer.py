"""Write extraction databases: from a run's folder of Parquet parts (`build`), or row by row.

An extraction writes Parquet parts (`db.parts`) and never holds the database while it runs; `build`
then makes the DuckDB file the dashboard reads from the parts, in one process. The row-by-row writers
(`start_run`, `write_images`, ...) serve sample databases and benchmarks: every image's rows and its
`image_status` mark go in one transaction, so a crash leaves each image either complete or absent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pandas as pd

from db import parts as partsdir
from db.schema import FINALIZE_SQL, RUN_COLUMNS, UNFINALIZE_SQL, check_schema, init_db

log = logging.getLogger(__name__)

# Dataset tables and the column their rows are stored in order of.
DATASET_TABLES = {"categories": "category_id", "images": "image_id", "instances": "image_id", "captions": "image_id"}
BATCH_TABLES = partsdir.RESULT_TABLES  # what write_images accepts
RESULT_TABLES = tuple(t for t in BATCH_TABLES if t != "errors")  # keyed by (run_id, image_id)
_MERGE_ALIAS = "_merge_source"
# word_heads' order within a run, written by finalize: one head's rows are contiguous (zone maps prune a
# search ranked by one head to them), in image order within it (joins to given images prune too; by mask
# mass instead, bench/heads_order.py's ascending page read the whole head: 15 ms against 4 at 7.2M rows).
HEADS_ORDER = "layer, head, image_id, caption_id, word_index"


class DatabaseLocked(RuntimeError):
    """Another process holds the database file (DuckDB allows one writer, or readers, never both)."""


def connect(
    path: str | Path, config: Mapping[str, object] | None = None, wait: float = 0.0
) -> duckdb.DuckDBPyConnection:
    """Open (creating if needed) an extraction database read-write, with its schema initialised.

    Args:
        config: DuckDB settings, e.g. {"threads": 2, "memory_limit": "4GB"}.
        wait: seconds to keep retrying while another process holds the file.

    Raises:
        DatabaseLocked: naming the process that holds the file and what to do.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            con = duckdb.connect(str(path), config=dict(config or {}))
            break
        except duckdb.IOException as e:
            if "lock" not in str(e):
                raise
            if time.monotonic() >= deadline:
                raise DatabaseLocked(
                    f"{path} is open in another process ({lock_holder(e)}), perhaps a dashboard: "
                    f"close it, then run `python -m extractor finalize {path}`"
                ) from None
            time.sleep(0.5)
    try:
        init_db(con)
    except BaseException:
        con.close()
        raise
    return con


def lock_holder(error: Exception) -> str:
    """The process named in DuckDB's lock error, e.g. 'python3.11, PID 4078'."""
    found = re.search(r"held in (\S+) \(PID (\d+)\)", str(error))
    return f"{Path(found[1]).name}, PID {found[2]}" if found else "unknown process"


def build(db_path: str | Path, wait: float = 0.0, parts: partsdir.Where | None = None) -> list[str]:
    """Make the database at db_path up to date with its parts folder (`parts`, default X.parts beside it: a
    path or a URI, see db.parts.open_store); returns the ids of the runs built.

    Dataset rows are added (kept where their id exists). A run whose done chunks changed since the last
    build has its rows replaced by those of its parts, in one transaction; a complete run (every shard
    finished) is then finalized. Idempotent: building again with no new parts changes nothing.
    """
    store = partsdir.open_store(parts or partsdir.parts_dir(db_path))
    con = connect(db_path, wait=wait)
    try:
        with _transaction(con):
            for table, order in DATASET_TABLES.items():
                _insert_parts(con, store, table, partsdir.dataset_files(store, table), "OR IGNORE ", order)
        built = [run_id for run_id in partsdir.run_ids(store) if _build_run(con, store, run_id)]
    finally:
        con.close()
    return built


def _insert_parts(con: duckdb.DuckDBPyConnection, store: partsdir.Store, table: str, files: list[str],
                  conflict: str = "", order: str | None = None) -> None:  # fmt: skip
    """Insert Parquet parts into `table` by name: parts written before a column existed (a run resumed across a
    schema change) read it as NULL. DuckDB reads local files itself (the fastest build); other stores go through
    Arrow, a group of files at a time."""
    if not files:
        return
    insert = f"INSERT {conflict}INTO {table} BY NAME SELECT * FROM {{}}" + (f" ORDER BY {order}" if order else "")
    if store.local:
        con.execute(insert.format("read_parquet(?, union_by_name = true)"), [files])
        return
    for rows in partsdir.read_groups(store, files):
        con.register("_part", rows)
        try:
            con.execute(insert.format("_part"))
        finally:
            con.unregister("_part")


def _build_run(con: duckdb.DuckDBPyConnection, parts: partsdir.Store, run_id: str) -> bool:
    """Replace a run's rows by its parts unless they are unchanged since the last build; True when built."""
    sessions = partsdir.read_sessions(parts, run_id)
    complete = partsdir.run_complete(sessions)
    done = partsdir.done_files(parts, run_id, partsdir.DONE_TABLE)
    signature = _signature(done, complete)
    key = f"parts:{run_id}"
    if con.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchall() == [(signature,)]:
        return False
    run = partsdir.read_run(parts, run_id)
    tables = partsdir.done_parts(parts, run_id, partsdir.BUILD_TABLES, done)
    finished = [s["finished_at"] for s in sessions if s.get("finished_at")]
    with _transaction(con):
        _run_script(con, UNFINALIZE_SQL, run_id)
        for table in (*partsdir.BUILD_TABLES, "runs"):
            con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
        _insert_run(con, run)
        con.execute(
            "UPDATE runs SET status = ?, started_at = make_timestamp((? * 1e6)::BIGINT), "
            "finished_at = make_timestamp((? * 1e6)::BIGINT), seconds = ? WHERE run_id = ?",
            [
                "complete" if complete else "running",
                min((s["started_at"] for s in sessions), default=None),
                max(finished) if complete and finished else None,
                sum(s.get("seconds", 0) for s in sessions),
                run_id,
            ],
        )
        # Files are named by their first image: read in name order, rows stay in image order.
        for table, files in tables.items():
            _insert_parts(con, parts, table, files)
        _refresh_counts(con, run_id)
        con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", [key, signature])
    if complete:
        finalize(con, run_id)
    log.info("built run %s%s", run_id, "" if complete else " (not complete)")
    return True


def parts_signature(parts: partsdir.Where, run_id: str, done: list[str] | None = None) -> str:
    """What a build of the run reads: its done chunks and whether it is complete (stored in `meta`); `done`:
    the run's done_files of image_status when the caller has them (then that folder is not listed again)."""
    if done is None:
        done = partsdir.done_files(parts, run_id, partsdir.DONE_TABLE)
    return _signature(done, partsdir.run_complete(partsdir.read_sessions(parts, run_id)))


def _signature(done: list[str], complete: bool) -> str:
    """parts_signature of the run's done_files of image_status and whether it is complete."""
    return hashlib.sha256(json.dumps([[p.rsplit("/", 1)[-1] for p in done], complete]).encode()).hexdigest()


def start_run(con: duckdb.DuckDBPyConnection, run: Mapping[str, object]) -> bool:
    """Register a run (status 'running'); True when the run_id already exists, i.e. this resumes it.

    Args:
        run: `runs` columns from RUN_COLUMNS; `run_id` required, `config` may be a dict (stored as JSON).
    """
    run_id = run.get("run_id")
    if con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchall():
        with _transaction(con):
            _run_script(con, UNFINALIZE_SQL, run_id)
            con.execute("UPDATE runs SET status = 'running', finished_at = NULL WHERE run_id = ?", [run_id])
        log.info("resuming run %s", run_id)
        return True
    _insert_run(con, run)
    log.info("started run %s", run_id)
    return False


def _insert_run(con: duckdb.DuckDBPyConnection, run: Mapping[str, object]) -> None:
    """A new `runs` row, status 'running', started now."""
    unknown = set(run) - set(RUN_COLUMNS)
    if unknown or "run_id" not in run:
        raise ValueError(f"run needs run_id and only columns of {RUN_COLUMNS}; unknown: {sorted(unknown)}")
    values = {k: json.dumps(v) if k == "config" and not isinstance(v, str) else v for k, v in run.items()}
    columns = ", ".join(values)
    placeholders = ", ".join("?" for _ in values)
    con.execute(
        f"INSERT INTO runs ({columns}, status, started_at) VALUES ({placeholders}, 'running', now())",
        list(values.values()),
    )


def upsert_dataset(
    con: duckdb.DuckDBPyConnection,
    categories_df: pd.DataFrame | None = None,
    images_df: pd.DataFrame | None = None,
    captions_df: pd.DataFrame | None = None,
    instances_df: pd.DataFrame | None = None,
) -> None:
    """Insert COCO dataset rows, keeping rows whose id already exists (INSERT OR IGNORE), in one transaction.

    Frames carry the table's columns by name (any order, missing nullable columns allowed).
    """
    frames = dict(zip(DATASET_TABLES, (categories_df, images_df, instances_df, captions_df), strict=True))
    with _transaction(con, frames) as views:
        for table, view in views.items():
            # Stored in id / image order, so zone maps serve image_detail's `image_id = ?` lookups.
            _insert_view(con, table, view, verb="INSERT OR IGNORE", order=DATASET_TABLES[table])


def done_image_ids(con: duckdb.DuckDBPyConnection, run_id: str) -> set[int]:
    """Ids of the images this run has already marked (done or error): a resume skips them."""
    rows = con.execute("SELECT image_id FROM image_status WHERE run_id = ?", [run_id]).fetchall()
    return {r[0] for r in rows}


def write_images(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    frames: Mapping[str, pd.DataFrame],
    image_ids: Iterable[int],
    status: str | Sequence[str] = "done",
) -> None:
    """Insert the result rows of a batch of images and mark the images, all in ONE transaction.

    Args:
        frames: table name (caption_results, caption_maps, words, image_maps, errors) -> rows, columns by name;
            `run_id` is filled in. Every row's image_id must be one of `image_ids`.
        image_ids: the images this batch completes.
        status: 'done' or 'error' for all of them, or one status per image.
    """
    unknown = set(frames) - set(BATCH_TABLES)
    if unknown:
        raise ValueError(f"unknown tables {sorted(unknown)}; expected some of {BATCH_TABLES}")
    ids = [int(i) for i in image_ids]
    statuses = [status] * len(ids) if isinstance(status, str) else list(status)
    if len(statuses) != len(ids):
        raise ValueError(f"{len(statuses)} statuses for {len(ids)} images")
    for table, frame in frames.items():
        stray = set(frame["image_id"].unique()) - set(ids) if "image_id" in frame and len(frame) else set()
        if stray:
            raise ValueError(f"{table} rows for images not in this batch: {sorted(stray)[:5]}")
    ordered = {t: _with_run_id(frames[t], run_id) for t in BATCH_TABLES if t in frames}
    with _transaction(con, ordered) as views:
        for table, view in views.items():
            _insert_view(con, table, view)
        con.execute(
            "INSERT INTO image_status SELECT ?, unnest(?::BIGINT[]), unnest(?::VARCHAR[])",
            [run_id, ids, statuses],
        )


def record_error(
    con: duckdb.DuckDBPyConnection, run_id: str, kind: str, item_id: object, path: str | None, message: str
) -> None:
    """Log one failed item ('image', 'caption', 'annotation' or 'file') of a run."""
    item, where = (None if v is None else str(v) for v in (item_id, path))
    con.execute("INSERT INTO errors VALUES (?, ?, ?, ?, ?, now())", [run_id, kind, item, where, message])


def finish_run(
    con: duckdb.DuckDBPyConnection, run_id: str, seconds: float, status: str, finalize_run: bool = True
) -> None:
    """Close a run: store counts, status, finish time, add `seconds` to its compute time.

    A 'complete' run is finalized (db.schema.DERIVED_TABLES written) unless finalize_run is False,
    which suits shard files that are merged (and finalized) afterwards.
    """
    with _transaction(con):
        con.execute(
            "UPDATE runs SET status = ?, finished_at = now(), seconds = coalesce(seconds, 0) + ? WHERE run_id = ?",
            [status, seconds, run_id],
        )
        _refresh_counts(con, run_id)
    if status == "complete" and finalize_run:
        finalize(con, run_id)


def finalize(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """Write a run's derived tables (db.schema.DERIVED_TABLES): word_lookup (words without maps, sorted by word
    and category), word_summary, image_summary, and key_image_summary and key_summary (db.compare's).

    Until then, searches and statistics of the run read the unsorted words table: correct but a full
    scan (see bench/dashboard_bench.py). Its word_heads rows are rewritten in HEADS_ORDER (bench/heads_order.py).
    One transaction; a crash leaves the run unfinalized.
    """
    with _transaction(con):
        sort_word_heads(con, run_id)
        _run_script(con, FINALIZE_SQL, run_id)
    log.info("finalized run %s", run_id)


def sort_word_heads(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """Rewrite a run's word_heads rows in HEADS_ORDER (inside the caller's transaction). DuckDB sorts out of
    core: the copy spills to the database's temp directory beyond its memory_limit.

    The DELETE + INSERT leaves the old rows' blocks free but in the file (DuckDB does not shrink it): the run's
    heads take about twice their size on disk until later writes reuse that space. A run already in order is
    sorted again all the same: knowing it is takes a window over all its rows in storage order, not cheap
    enough to be worth it before a sort finalize runs once."""
    con.execute(
        f"CREATE TEMP TABLE _sorted_heads AS SELECT * FROM word_heads WHERE run_id = $run_id ORDER BY {HEADS_ORDER}",
        {"run_id": run_id},
    )
    con.execute("DELETE FROM word_heads WHERE run_id = $run_id", {"run_id": run_id})
    con.execute("INSERT INTO word_heads SELECT * FROM _sorted_heads")
    con.execute("DROP TABLE _sorted_heads")


def merge(target_path: str | Path, shard_paths: Sequence[str | Path]) -> None:
    """Merge shard databases (same schema) into target, then finalize the runs they hold.

    Dataset tables are de-duplicated by id; a shard's images already marked in target are skipped, so
    merging is idempotent and overlapping shards are fine. A run found in several files gets the
    earliest start, latest finish, summed compute seconds, status 'complete' only if every file says
    so ('failed' if any failed), and counts recomputed from the merged rows (the sums for disjoint shards).
    """
    con = connect(target_path)
    try:
        run_ids: set[str] = set()
        for shard in shard_paths:
            con.execute(f"ATTACH ? AS {_MERGE_ALIAS} (READ_ONLY)", [str(shard)])
            try:
                check_schema(con, _MERGE_ALIAS)
                with _transaction(con):
                    run_ids |= _merge_attached(con, _MERGE_ALIAS)
            finally:
                con.execute(f"DETACH {_MERGE_ALIAS}")
            log.info("merged %s", shard)
        for run_id in sorted(run_ids):
            with _transaction(con):
                _refresh_counts(con, run_id)
            finalize(con, run_id)
    finally:
        con.close()


def _merge_attached(con: duckdb.DuckDBPyConnection, src: str) -> set[str]:
    """Copy one attached shard into the target (inside the caller's transaction); returns its run ids."""
    for table in DATASET_TABLES:
        con.execute(f"INSERT OR IGNORE INTO {table} SELECT * FROM {src}.{table}")
    # Combine runs the target already has, then copy the new ones (order matters: no self-combining).
    con.execute(f"""
        UPDATE runs SET
            status = CASE WHEN runs.status = 'complete' AND s.status = 'complete' THEN 'complete'
                          WHEN 'failed' IN (runs.status, s.status) THEN 'failed' ELSE 'running' END,
            started_at = least(runs.started_at, s.started_at),
            finished_at = greatest(runs.finished_at, s.finished_at),
            seconds = coalesce(runs.seconds, 0) + coalesce(s.seconds, 0)
        FROM {src}.runs AS s WHERE runs.run_id = s.run_id""")
    con.execute(f"INSERT OR IGNORE INTO runs SELECT * REPLACE (NULL AS finalized_at) FROM {src}.runs")
    run_ids = {r[0] for r in con.execute(f"SELECT run_id FROM {src}.runs").fetchall()}
    for run_id in run_ids:  # their rows change: the derived tables are rewritten after the merge
        _run_script(con, UNFINALIZE_SQL, run_id)
    con.execute(f"""
        CREATE TEMP TABLE _new_images AS
        SELECT s.* FROM {src}.image_status AS s ANTI JOIN image_status AS t USING (run_id, image_id)""")
    for table in RESULT_TABLES:
        con.execute(
            f"INSERT INTO {table} SELECT r.* FROM {src}.{table} AS r SEMI JOIN _new_images USING (run_id, image_id)"
        )
    con.execute("INSERT INTO image_status SELECT * FROM _new_images")
    con.execute("DROP TABLE _new_images")
    con.execute(f"INSERT INTO errors SELECT * FROM {src}.errors EXCEPT SELECT * FROM errors")
    return run_ids


def _refresh_counts(con: duckdb.DuckDBPyConnection, run_id: str) -> None:
    """Recompute a run's counts from its rows; n_words counts word occurrences (one method/layer slice)."""
    con.execute(
        """
        UPDATE runs SET
            n_images = (SELECT count(*) FROM image_status WHERE run_id = $run_id AND status = 'done'),
            n_captions = (SELECT count(*) FROM caption_results WHERE run_id = $run_id),
            n_words = (SELECT coalesce(max(n), 0) FROM
                        (SELECT count(*) AS n FROM words WHERE run_id = $run_id GROUP BY method, layer)),
            n_errors = (SELECT count(*) FROM errors WHERE run_id = $run_id)
        WHERE run_id = $run_id""",
        {"run_id": run_id},
    )


def _run_script(con: duckdb.DuckDBPyConnection, script: Sequence[str], run_id: str) -> None:
    for sql in script:
        con.execute(sql, {"run_id": run_id})


def _with_run_id(frame: pd.DataFrame, run_id: str) -> pd.DataFrame:
    if "run_id" not in frame.columns:
        return frame.assign(run_id=run_id)
    if (frame["run_id"] != run_id).any():
        raise ValueError(f"frame has rows of another run than {run_id}")
    return frame


def _insert_view(
    con: duckdb.DuckDBPyConnection, table: str, view: str, verb: str = "INSERT", order: str | None = None
) -> None:
    con.execute(f"{verb} INTO {table} BY NAME SELECT * FROM {view}" + (f" ORDER BY {order}" if order else ""))


@contextmanager
def _transaction(
    con: duckdb.DuckDBPyConnection, frames: Mapping[str, pd.DataFrame | None] | None = None
) -> Iterator[dict[str, str]]:
    """BEGIN ... COMMIT, or ROLLBACK when the body raises (anything, KeyboardInterrupt included).

    Yields table -> name of a view of each non-empty frame (DuckDB scans the DataFrame in place, no
    per-row Python). The views are dropped only after COMMIT/ROLLBACK: inside an aborted transaction
    that would fail and hide the real error.
    """
    con.execute("BEGIN TRANSACTION")  # also closes any result left unread, which register() refuses
    views = {table: f"_frame_{table}" for table, frame in (frames or {}).items() if frame is not None and len(frame)}
    try:
        for table, view in views.items():
            con.register(view, frames[table])
        yield views
    except BaseException:
        con.execute("ROLLBACK")
        raise
    else:
        con.execute("COMMIT")
    finally:
        for view in views.values():
            con.unregister(view)
