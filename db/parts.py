"""An extraction's output as a folder of Parquet parts, written while the run goes on.

    X.parts/                                    beside X.duckdb
      dataset/<key>/<table>.parquet             the COCO rows (categories, images, captions, instances) a run read
      runs/<run_id>/run.json                    the run's settings (`runs` columns)
      runs/<run_id>/sessions/<token>.json       one per process that worked on the run: shard, times, complete
      runs/<run_id>/<table>/<part>.parquet      one file per result table per chunk of images

Every file is written under a temporary name and renamed into place; a chunk's `image_status` file is
renamed last, so a chunk is done exactly when that file exists, and a crash or kill -9 loses at most the
chunks in flight. Part names are unique per attempt, so several processes (shards) write into one folder
and a chunk redone after a crash never mixes with the files its first attempt left. Readers take only the
files of done chunks (`done_files`). `db.writer.build` makes the DuckDB database from the folder.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

DATASET_TABLES = ("categories", "images", "captions", "instances")
RESULT_TABLES = ("caption_results", "caption_maps", "words", "image_maps", "errors")
DONE_TABLE = "image_status"


def parts_dir(db_path: str | Path) -> Path:
    """The parts folder of a database file: X.duckdb -> X.parts."""
    return Path(db_path).with_suffix(".parts")


def run_dir(parts: Path, run_id: str) -> Path:
    return parts / "runs" / run_id


def version(db_path: str | Path) -> int:
    """Changes whenever the database file or any run's done chunks change (a reader's cache key)."""
    db_path = Path(db_path)
    parts = parts_dir(db_path)
    stamps = [db_path.stat().st_mtime_ns if db_path.is_file() else 0]
    stamps += [(run_dir(parts, r) / DONE_TABLE).stat().st_mtime_ns for r in run_ids(parts)
               if (run_dir(parts, r) / DONE_TABLE).is_dir()]  # fmt: skip
    return max(stamps)


def run_ids(parts: Path) -> list[str]:
    """The runs that have a folder of parts, by id."""
    runs = parts / "runs"
    return sorted(p.name for p in runs.iterdir() if (p / "run.json").is_file()) if runs.is_dir() else []


def new_token() -> str:
    """A name no other process or attempt uses."""
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def write_atomic(path: Path, table: pa.Table) -> None:
    """Write a Parquet file under a temporary name, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{new_token()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Mapping[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{new_token()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def write_dataset(parts: Path, key: str, frames: Mapping[str, pd.DataFrame]) -> None:
    """The dataset rows a run reads, once per dataset `key` (a hash of its files): kept when present."""
    folder = parts / "dataset" / key
    for table in DATASET_TABLES:
        path = folder / f"{table}.parquet"
        if not path.is_file():
            write_atomic(path, pa.Table.from_pandas(frames[table], preserve_index=False))


def dataset_files(parts: Path, table: str) -> list[Path]:
    return sorted((parts / "dataset").glob(f"*/{table}.parquet"))


def write_run(parts: Path, run: Mapping[str, object]) -> bool:
    """Record a run's settings; True when its folder already exists (the run resumes)."""
    path = run_dir(parts, str(run["run_id"])) / "run.json"
    if path.is_file():
        return True
    write_json_atomic(path, run)
    return False


def read_run(parts: Path, run_id: str) -> dict:
    return json.loads((run_dir(parts, run_id) / "run.json").read_text())


def write_session(parts: Path, run_id: str, token: str, session: Mapping[str, object]) -> None:
    """What one process did for a run: {shard: [k, n], started_at, finished_at, seconds, complete}."""
    write_json_atomic(run_dir(parts, run_id) / "sessions" / f"{token}.json", session)


def read_sessions(parts: Path, run_id: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run_dir(parts, run_id) / "sessions").glob("*.json"))]


def run_complete(sessions: list[dict]) -> bool:
    """Every shard of the run has a process that finished its share."""
    shards = {tuple(s["shard"]) for s in sessions if s.get("complete")}
    counts = {n for _, n in shards}
    return len(counts) == 1 and {k for k, _ in shards} == set(range(counts.pop()))


def write_chunk(parts: Path, run_id: str, name: str, tables: Mapping[str, pa.Table], status: pa.Table) -> None:
    """One chunk of images: its result tables (empty ones skipped), then its image_status file last."""
    folder = run_dir(parts, run_id)
    for table, data in tables.items():
        if data.num_rows:
            write_atomic(folder / table / f"{name}.parquet", data)
    write_atomic(folder / DONE_TABLE / f"{name}.parquet", status)


def done_files(parts: Path, run_id: str, table: str) -> list[Path]:
    """The files of `table` that belong to done chunks, in name (first image id) order."""
    folder = run_dir(parts, run_id)
    done = {p.name for p in (folder / DONE_TABLE).glob("*.parquet")}
    return sorted(p for p in (folder / table).glob("*.parquet") if p.name in done)


def done_image_ids(parts: Path, run_id: str) -> set[int]:
    """Images of the run that are done or failed: a resume skips them."""
    files = done_files(parts, run_id, DONE_TABLE)
    if not files:
        return set()
    return set(pq.ParquetDataset(files).read(columns=["image_id"]).column("image_id").to_pylist())
