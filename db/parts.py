"""An extraction's output as a folder of Parquet parts, written while the run goes on.

    X.parts/                                    beside X.duckdb, or at --parts (a path, NFS, s3://, gs://...)
      dataset/<key>/<table>.parquet             the COCO rows (categories, images, captions, instances) a run read
      runs/<run_id>/run.json                    the run's settings (`runs` columns)
      runs/<run_id>/sessions/<token>.json       one per process that worked on the run: shard, times, complete
      runs/<run_id>/<table>/<part>.parquet      one file per result table per chunk of images

Every file appears whole or not at all: on a local disk or NFS it is written under a temporary name and
renamed into place; on an object store it is one PUT, which is atomic (see `_renames`). A chunk's
`image_status` file is written last, so a chunk is done exactly when that file exists, and a crash or
kill -9 loses at most the chunks in flight. Part names are unique per attempt, so several processes
(shards) write into one folder and a chunk redone after a crash never mixes with the files its first
attempt left. Readers take only the files of done chunks (`done_files`). All I/O goes through a `Store`
(a pyarrow filesystem and the folder's path on it), so local and remote folders share one code path.
`db.writer.build` makes the DuckDB database from the folder.
"""

from __future__ import annotations

import json
import os
import posixpath
import secrets
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

DATASET_TABLES = ("categories", "images", "captions", "instances")
RESULT_TABLES = ("caption_results", "caption_maps", "words", "image_maps", "word_heads", "errors")
DONE_TABLE = "image_status"
BUILD_TABLES = (*RESULT_TABLES, DONE_TABLE)  # every table of a run's parts
READ_BYTES = 64 << 20  # Parquet bytes `read_groups` reads at once
READ_THREADS = 8  # files read at once: an object store answers each GET after a round trip


class PartsUnreachable(ValueError):
    """--parts names a scheme pyarrow does not know, or storage that does not answer."""


@dataclass(frozen=True)
class Store:
    """A parts folder: a pyarrow filesystem and the folder's path on it."""

    fs: pafs.FileSystem
    root: str

    def path(self, *names: str) -> str:
        return "/".join((self.root, *names))

    @property
    def local(self) -> bool:
        """Whether its paths are this machine's own (DuckDB can read them directly)."""
        return isinstance(self.fs, pafs.LocalFileSystem)

    def __str__(self) -> str:
        return self.root if _renames(self.fs) else f"{self.fs.type_name}://{self.root}"


Where = Store | str | Path  # a Store, a local path, or a URI pyarrow understands


def open_store(where: Where) -> Store:
    """The parts folder at a local path or a URI (s3://bucket/prefix, gs://..., file:///...).

    Raises PartsUnreachable, in one line, for a scheme pyarrow does not know or storage that does not answer.
    """
    if isinstance(where, Store):
        return where
    if "://" not in str(where):
        return Store(pafs.LocalFileSystem(), str(Path(where).absolute()))
    try:
        fs, root = pafs.FileSystem.from_uri(str(where))
        fs.get_file_info(root)
    except (OSError, pa.ArrowException, ValueError) as e:
        raise PartsUnreachable(f"parts folder {where}: {str(e).splitlines()[0]}") from None
    return Store(fs, root.rstrip("/"))


def _renames(fs: pafs.FileSystem) -> bool:
    """Whether the filesystem renames atomically (a local disk, NFS). An object store's move is a copy, but
    its single-object PUT is atomic: an object appears whole when its upload completes, or not at all."""
    base = fs.base_fs if isinstance(fs, pafs.SubTreeFileSystem) else fs
    return isinstance(base, pafs.LocalFileSystem)


def parts_dir(db_path: str | Path) -> Path:
    """The default parts folder of a database file: X.duckdb -> X.parts (also the covers cache and the
    suspects journal, which stay on the local machine whatever --parts says)."""
    return Path(db_path).with_suffix(".parts")


def run_dir(parts: Path, run_id: str) -> Path:
    """A run's folder in a local parts folder."""
    return parts / "runs" / run_id


def version(db_path: str | Path) -> int:
    """Changes whenever the database file or any run's done chunks change (a reader's cache key)."""
    db_path = Path(db_path)
    parts = parts_dir(db_path)
    stamps = [db_path.stat().st_mtime_ns if db_path.is_file() else 0]
    stamps += [(run_dir(parts, r) / DONE_TABLE).stat().st_mtime_ns for r in run_ids(parts)
               if (run_dir(parts, r) / DONE_TABLE).is_dir()]  # fmt: skip
    return max(stamps)


def _listing(store: Store, *names: str) -> list[pafs.FileInfo]:
    """The entries of a folder (none when it does not exist), by name."""
    found = store.fs.get_file_info(pafs.FileSelector(store.path(*names), allow_not_found=True))
    return sorted(found, key=lambda info: info.base_name)


def _exists(store: Store, path: str) -> bool:
    return store.fs.get_file_info(path).type == pafs.FileType.File


def _read_bytes(store: Store, path: str) -> bytes:
    with store.fs.open_input_stream(path) as f:
        return f.read()


def run_ids(parts: Where) -> list[str]:
    """The runs that have a folder of parts, by id."""
    store = open_store(parts)
    runs = [info.base_name for info in _listing(store, "runs") if info.type == pafs.FileType.Directory]
    return [r for r in runs if _exists(store, store.path("runs", r, "run.json"))]


def new_token() -> str:
    """A name no other process or attempt uses."""
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def _put(store: Store, path: str, data: pa.Buffer | bytes) -> None:
    """Write a file so that it appears whole or not at all (see `_renames`)."""
    if not _renames(store.fs):
        with store.fs.open_output_stream(path) as f:
            f.write(data)
        return
    folder, name = posixpath.split(path)
    store.fs.create_dir(folder, recursive=True)
    tmp = f"{folder}/.{name}.{new_token()}.tmp"
    with store.fs.open_output_stream(tmp) as f:
        f.write(data)
    store.fs.move(tmp, path)


def write_parquet(store: Store, path: str, table: pa.Table) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    _put(store, path, sink.getvalue())


def write_json(store: Store, path: str, data: Mapping[str, object]) -> None:
    _put(store, path, json.dumps(data, indent=1, default=str).encode())


def read_groups(parts: Where, files: list[str], budget: int = READ_BYTES) -> Iterator[pa.Table]:
    """The files' rows, in file order, as tables of about `budget` bytes of Parquet each, their files read in
    parallel; a column some files lack (written before it existed) is null in their rows."""
    store = open_store(parts)
    groups: list[list[str]] = [[]]
    total = 0
    for info in store.fs.get_file_info(files):
        if groups[-1] and total + info.size > budget:
            groups.append([])
            total = 0
        groups[-1].append(info.path)
        total += info.size
    with ThreadPoolExecutor(READ_THREADS) as pool:
        for group in filter(None, groups):
            tables = pool.map(lambda path: pq.read_table(path, filesystem=store.fs), group)
            yield pa.concat_tables(list(tables), promote_options="permissive")


def write_dataset(parts: Where, key: str, frames: Mapping[str, pd.DataFrame]) -> None:
    """The dataset rows a run reads, once per dataset `key` (a hash of its files): kept when present."""
    store = open_store(parts)
    for table in DATASET_TABLES:
        path = store.path("dataset", key, f"{table}.parquet")
        if not _exists(store, path):
            write_parquet(store, path, pa.Table.from_pandas(frames[table], preserve_index=False))


def dataset_files(parts: Where, table: str) -> list[str]:
    """The files of a dataset table, one per dataset key: paths on the store's filesystem."""
    store = open_store(parts)
    keys = [info.base_name for info in _listing(store, "dataset") if info.type == pafs.FileType.Directory]
    return [p for p in (store.path("dataset", k, f"{table}.parquet") for k in keys) if _exists(store, p)]


def write_run(parts: Where, run: Mapping[str, object]) -> bool:
    """Record a run's settings; True when its folder already exists (the run resumes)."""
    store = open_store(parts)
    path = store.path("runs", str(run["run_id"]), "run.json")
    if _exists(store, path):
        return True
    write_json(store, path, run)
    return False


def read_run(parts: Where, run_id: str) -> dict:
    store = open_store(parts)
    return json.loads(_read_bytes(store, store.path("runs", run_id, "run.json")))


def write_session(parts: Where, run_id: str, token: str, session: Mapping[str, object]) -> None:
    """What one process did for a run: {shard: [k, n], started_at, finished_at, seconds, complete}."""
    store = open_store(parts)
    write_json(store, store.path("runs", run_id, "sessions", f"{token}.json"), session)


def read_sessions(parts: Where, run_id: str) -> list[dict]:
    store = open_store(parts)
    files = [i for i in _listing(store, "runs", run_id, "sessions") if i.base_name.endswith(".json")]
    return [json.loads(_read_bytes(store, info.path)) for info in files]


def run_complete(sessions: list[dict]) -> bool:
    """Every shard of the run has a process that finished its share."""
    shards = {tuple(s["shard"]) for s in sessions if s.get("complete")}
    counts = {n for _, n in shards}
    return len(counts) == 1 and {k for k, _ in shards} == set(range(counts.pop()))


def write_chunk(parts: Where, run_id: str, name: str, tables: Mapping[str, pa.Table], status: pa.Table) -> None:
    """One chunk of images: its result tables (empty ones skipped), then its image_status file last."""
    store = open_store(parts)
    for table, data in tables.items():
        if data.num_rows:
            write_parquet(store, store.path("runs", run_id, table, name), data)
    write_parquet(store, store.path("runs", run_id, DONE_TABLE, name), status)


def _parquet_names(store: Store, run_id: str, table: str) -> list[str]:
    found = _listing(store, "runs", run_id, table)
    return [i.base_name for i in found if i.base_name.endswith(".parquet") and not i.base_name.startswith(".")]


def done_files(parts: Where, run_id: str, table: str) -> list[str]:
    """The files of `table` that belong to done chunks, in name (first image id) order: paths on the store's
    filesystem (for a local folder, absolute paths)."""
    return done_parts(parts, run_id, [table])[table]


def done_parts(
    parts: Where, run_id: str, tables: Sequence[str], done: Sequence[str] | None = None
) -> dict[str, list[str]]:
    """done_files of each of `tables`, listing each folder once (a round trip on an object store); `done`: the
    run's done_files of DONE_TABLE when the caller has them (then that folder is not listed again)."""
    store = open_store(parts)
    chunks = _parquet_names(store, run_id, DONE_TABLE) if done is None else [p.rsplit("/", 1)[-1] for p in done]
    names = {t: chunks if t == DONE_TABLE else _parquet_names(store, run_id, t) for t in tables}
    kept = set(chunks)
    return {t: [store.path("runs", run_id, t, n) for n in found if n in kept] for t, found in names.items()}


def chunk_done(parts: Where, run_id: str, first_image: int) -> bool:
    """Whether a chunk of images starting at `first_image` is done (parts are named by their first image)."""
    return any(n.startswith(f"{first_image:012d}-") for n in _parquet_names(open_store(parts), run_id, DONE_TABLE))


def done_image_ids(parts: Where, run_id: str) -> set[int]:
    """Images of the run that are done or failed: a resume skips them."""
    store = open_store(parts)
    files = done_files(store, run_id, DONE_TABLE)
    if not files:
        return set()
    table = pq.ParquetDataset(files, filesystem=store.fs).read(columns=["image_id"])
    return set(table.column("image_id").to_pylist())
