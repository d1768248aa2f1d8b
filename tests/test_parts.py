"""The extraction's Parquet parts: done chunks, resumption, the build, readers of a run in progress."""

import multiprocessing
import subprocess
import sys
import threading
from pathlib import Path

import duckdb
import pytest
import torch
from threadpoolctl import threadpool_info
from torch.utils.data import DataLoader, Dataset

from db import parts, queries, writer
from extractor.batch import worker_init
from extractor.covers import one_thread
from tests.conftest import REPO, run_extraction
from tests.test_run import assert_same_results, cli, rows

SMALL = "val2017-small"


def test_parts_hold_every_table_and_build_the_database(shared, small_db):
    folder = parts.parts_dir(small_db)
    (run_id,) = parts.run_ids(folder)
    assert len(parts.done_image_ids(folder, run_id)) == 10
    for table in ("words", "caption_results", "caption_maps", "image_status"):
        assert parts.done_files(folder, run_id, table), table
    assert rows(small_db, "SELECT status, finalized_at IS NOT NULL FROM runs") == [("complete", True)]
    n_words = rows(small_db, "SELECT count(*) FROM words")[0][0]
    files = [str(f) for f in parts.done_files(folder, run_id, "words")]
    assert duckdb.execute("SELECT count(*) FROM read_parquet(?)", [files]).fetchall() == [(n_words,)]
    assert n_words > 0


def test_building_again_changes_nothing(shared, small_db, tmp_path):
    copy = tmp_path / "copy.duckdb"
    run_extraction(shared, copy, SMALL, "--limit", "4")
    assert writer.build(copy) == []  # up to date
    before = rows(copy, "SELECT count(*), sum(hash(word)) FROM words")
    parts.write_session(
        parts.parts_dir(copy),
        parts.run_ids(parts.parts_dir(copy))[0],
        "extra",
        {"shard": [0, 1], "started_at": 0, "complete": True},
    )  # same chunks: same signature
    assert writer.build(copy) == []
    assert rows(copy, "SELECT count(*), sum(hash(word)) FROM words") == before


def test_orphan_files_of_an_unfinished_chunk_are_never_read(shared, tmp_path):
    db = run_extraction(shared, tmp_path / "x.duckdb", SMALL, "--limit", "2")
    folder = parts.parts_dir(db)
    (run_id,) = parts.run_ids(folder)
    (words,) = parts.done_files(folder, run_id, "words")
    orphan = Path(words).with_name("000000000001-crashed.parquet")  # a chunk killed before its image_status file
    orphan.write_bytes(Path(words).read_bytes())
    assert parts.done_files(folder, run_id, "words") == [words]
    assert writer.build(db) == []


def holding_read_lock(db, seconds: float) -> threading.Thread:
    """A reader (as the dashboard is) holding the database for `seconds`, in another process."""
    code = f"import duckdb, time; c = duckdb.connect({str(db)!r}, read_only=True); print('open', flush=True); " \
           f"time.sleep({seconds})"  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "open"
    waiter = threading.Thread(target=proc.wait)
    waiter.start()
    return waiter


def test_extraction_beside_an_open_dashboard_says_what_holds_the_file(shared, tmp_path):
    db = run_extraction(shared, tmp_path / "x.duckdb", SMALL, "--limit", "2")
    reader = holding_read_lock(db, 60)
    argv = cli(shared, db, SMALL, "--limit", "5", "--wait-db", "1")
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "is open in another process" in done.stderr and "PID" in done.stderr
    assert "extractor finalize" in done.stderr and "Traceback" not in done.stderr
    # Nothing is lost: the parts are complete, and a reader sees the new images before any build.
    folder = parts.parts_dir(db)
    (run_id,) = parts.run_ids(folder)
    assert len(parts.done_image_ids(folder, run_id)) == 5
    con = queries.connect_readonly(db)
    assert con.execute("SELECT count(DISTINCT image_id) FROM words").fetchone()[0] == 5
    assert queries.list_runs(con)[["status", "n_images"]].values.tolist() == [["complete", 5]]  # done, not built
    con.close()
    reader.join()


def test_build_waits_for_a_reader_to_close(shared, tmp_path):
    db = run_extraction(shared, tmp_path / "x.duckdb", SMALL, "--limit", "2")
    folder = parts.parts_dir(db)
    run_extraction(shared, tmp_path / "y.duckdb", SMALL, "--limit", "3")
    reader = holding_read_lock(db, 2)
    with pytest.raises(writer.DatabaseLocked, match="open in another process"):
        writer.build(db)
    assert writer.build(db, wait=30) == []  # waited; nothing new to build
    reader.join()
    assert len(parts.run_ids(folder)) == 1


def test_a_run_in_progress_is_browsable_from_its_parts(shared, tmp_path):
    db = tmp_path / "live.duckdb"
    run_extraction(shared, db, SMALL, "--shard", "0/2")  # half of the run: built, status 'running'
    db.unlink()  # as if the database had never been built: only parts
    con = queries.connect_readonly(db)
    runs = queries.list_runs(con)
    assert runs["status"].tolist() == ["running"] and runs["n_images"].tolist() == [5]
    cursor = con.cursor()  # the dashboard asks on cursors: they see the same views
    assert cursor.execute("SELECT count(DISTINCT image_id) FROM word_search").fetchone()[0] == 5
    assert cursor.execute("SELECT count(*) FROM images").fetchone()[0] == 10
    con.close()


def test_two_shards_into_one_folder_equal_one_run(shared, small_db, tmp_path):
    db = tmp_path / "sharded.duckdb"
    procs = [subprocess.Popen(cli(shared, db, SMALL, "--shard", f"{k}/2"), cwd=REPO, stderr=subprocess.PIPE, text=True)
             for k in (0, 1)]  # fmt: skip
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert rows(db, "SELECT status FROM runs") == [("complete",)]
    assert_same_results(db, small_db)


class _ThreadCounts(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> tuple[int, list[int]]:
        return torch.get_num_threads(), [p["num_threads"] for p in threadpool_info()]


def _counts(_: int) -> tuple[int, list[int]]:
    return _ThreadCounts()[0]


def test_worker_processes_use_one_thread_each():
    loader = DataLoader(_ThreadCounts(), batch_size=None, num_workers=2, worker_init_fn=worker_init)
    pool = multiprocessing.get_context("fork").Pool(2, initializer=one_thread)
    try:
        seen = [*loader, *pool.map(_counts, range(2))]
    finally:
        pool.terminate()
    for torch_threads, blas_threads in seen:
        assert torch_threads == 1 and blas_threads and set(blas_threads) == {1}
