import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import duckdb
import fsspec
import pandas as pd
import pyarrow.fs as pafs
import pytest

from db import parts, sample, writer
from db.parts import Store
from db.schema import LOOKUP_ORDER

RUN = "5a3b1e0000000001"
RESULT_TABLES = ("caption_results", "caption_maps", "words", "image_status")


@pytest.fixture(scope="module")
def coco(shared):
    ann = shared / "coco" / "val2017-small" / "annotations"
    return ann / "captions_val2017_small.json", ann / "instances_val2017_small.json"


@pytest.fixture(scope="module")
def dataset(coco):
    return sample.coco_frames(*coco)


@pytest.fixture
def con(tmp_path, dataset):
    con = writer.connect(tmp_path / "x.duckdb")
    writer.start_run(con, sample.sample_run(RUN, sample.DEFAULT_SLICES, grid=6))
    writer.upsert_dataset(con, *(dataset[t] for t in ("categories", "images", "captions", "instances")))
    yield con
    con.close()


def _count(con, table, image_id=None):
    if image_id is None:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    return con.execute(f"SELECT count(*) FROM {table} WHERE image_id = ?", [image_id]).fetchone()[0]


def _image_ids(dataset):
    return sorted(set(dataset["captions"]["image_id"]))


def test_write_images_stores_every_word_of_every_caption(con, dataset):
    image_id = 802
    writer.write_images(con, RUN, sample.image_results(dataset, image_id), [image_id])
    captions = dataset["captions"][dataset["captions"]["image_id"] == image_id]
    n_slices = len(sample.DEFAULT_SLICES)
    assert _count(con, "words", image_id) == captions["n_words"].sum() * n_slices
    assert _count(con, "caption_maps", image_id) == len(captions) * n_slices
    assert _count(con, "caption_results", image_id) == len(captions)
    assert writer.done_image_ids(con, RUN) == {image_id}
    words = con.execute("SELECT DISTINCT word FROM words WHERE category_id = 82").fetchall()
    assert words == [("refrigerator",)]  # the real captions of image 802 name its refrigerator


def test_failure_mid_write_leaves_nothing_of_the_batch(con, dataset):
    frames = sample.image_results(dataset, 802)
    frames["words"].loc[frames["words"].index[-1], "layer"] = 100_000  # SMALLINT overflow: fails last table
    with pytest.raises(Exception, match="(?i)overflow|out of range|conver"):
        writer.write_images(con, RUN, frames, [802])
    assert {t: _count(con, t) for t in RESULT_TABLES} == dict.fromkeys(RESULT_TABLES, 0)
    assert writer.done_image_ids(con, RUN) == set()
    writer.write_images(con, RUN, sample.image_results(dataset, 802), [802])  # the connection still works
    assert writer.done_image_ids(con, RUN) == {802}


def test_writing_a_marked_image_again_is_refused_without_duplicates(con, dataset):
    frames = sample.image_results(dataset, 802)
    writer.write_images(con, RUN, frames, [802])
    before = {t: _count(con, t) for t in RESULT_TABLES}
    with pytest.raises(Exception, match="(?i)constraint|duplicate"):
        writer.write_images(con, RUN, frames, [802])
    assert {t: _count(con, t) for t in RESULT_TABLES} == before


def test_kill_9_inside_the_transaction_loses_only_the_open_batch(tmp_path, coco, dataset):
    path = tmp_path / "killed.duckdb"
    script = textwrap.dedent(f"""
        import os, signal
        from db import sample, writer
        dataset = sample.coco_frames({str(coco[0])!r}, {str(coco[1])!r})
        con = writer.connect({str(path)!r})
        writer.start_run(con, sample.sample_run({RUN!r}, sample.DEFAULT_SLICES, 6))
        writer.write_images(con, {RUN!r}, sample.image_results(dataset, 802), [802])
        insert = writer._insert_view
        def insert_then_die(con, table, view, verb="INSERT"):
            insert(con, table, view, verb)
            if table == "words":  # rows of 37777 are inserted but not committed
                os.kill(os.getpid(), signal.SIGKILL)
        writer._insert_view = insert_then_die
        writer.write_images(con, {RUN!r}, sample.image_results(dataset, 37777), [37777])
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(writer.__file__).resolve().parents[1])
    assert proc.returncode == -9
    con = writer.connect(path)
    assert writer.done_image_ids(con, RUN) == {802}
    for table in RESULT_TABLES:
        assert _count(con, table, 37777) == 0
        assert _count(con, table, 802) > 0
    assert writer.start_run(con, sample.sample_run(RUN, sample.DEFAULT_SLICES, 6)) is True  # resumes


def test_resume_skips_marked_images_done_or_error(con, dataset):
    assert writer.start_run(con, sample.sample_run(RUN, sample.DEFAULT_SLICES, 6)) is True
    writer.write_images(con, RUN, sample.image_results(dataset, 802), [802])
    writer.write_images(con, RUN, {}, [37777, 117645], status=["error", "error"])
    assert writer.done_image_ids(con, RUN) == {802, 37777, 117645}
    assert writer.done_image_ids(con, "another run") == set()
    todo = [i for i in _image_ids(dataset) if i not in writer.done_image_ids(con, RUN)]
    assert len(todo) == len(_image_ids(dataset)) - 3


def test_rows_for_images_outside_the_batch_are_rejected(con, dataset):
    with pytest.raises(ValueError, match="not in this batch"):
        writer.write_images(con, RUN, sample.image_results(dataset, 802), [37777])
    with pytest.raises(ValueError, match="unknown tables"):
        writer.write_images(con, RUN, {"runs": pd.DataFrame({"image_id": [802]})}, [802])
    assert _count(con, "image_status") == 0


def test_upsert_dataset_ignores_rows_already_there(con, dataset):
    before = {t: _count(con, t) for t in ("categories", "images", "captions", "instances")}
    changed = dataset["images"].assign(file_name="renamed.jpg")
    writer.upsert_dataset(con, dataset["categories"], changed, dataset["captions"], dataset["instances"])
    assert {t: _count(con, t) for t in before} == before == {"categories": 80, "images": 10, "captions": 50,
                                                              "instances": 44}  # fmt: skip
    assert con.execute("SELECT count(*) FROM images WHERE file_name = 'renamed.jpg'").fetchone()[0] == 0


def test_finish_run_counts_and_finalize_writes_sorted_lookup_and_summary(con, dataset):
    for image_id in _image_ids(dataset)[:4]:
        writer.write_images(con, RUN, sample.image_results(dataset, image_id), [image_id])
    writer.record_error(con, RUN, "image", 999, "missing.jpg", "cannot decode")
    writer.finish_run(con, RUN, 12.5, "complete")
    run = con.execute(
        "SELECT status, seconds, n_images, n_captions, n_words, n_errors, finalized_at FROM runs"
    ).fetchone()
    n_words = dataset["captions"].set_index("image_id").loc[_image_ids(dataset)[:4], "n_words"].sum()
    assert run[:6] == ("complete", 12.5, 4, 20, n_words, 1) and run[6] is not None
    stored = con.execute("SELECT * FROM word_lookup").df()
    expected = con.execute(f"SELECT * FROM word_search ORDER BY {LOOKUP_ORDER}").df()
    pd.testing.assert_frame_equal(stored, expected)
    assert len(stored) == _count(con, "words")
    summary = con.execute("SELECT word, sum(n) FROM word_summary GROUP BY word ORDER BY word").fetchall()
    assert summary == con.execute("SELECT word, count(*) FROM words GROUP BY word ORDER BY word").fetchall()


def test_resuming_a_finalized_run_drops_its_lookup_until_finalized_again(con, dataset):
    ids = _image_ids(dataset)
    writer.write_images(con, RUN, sample.image_results(dataset, ids[0]), ids[:1])
    writer.finish_run(con, RUN, 1.0, "complete")
    assert writer.start_run(con, sample.sample_run(RUN, sample.DEFAULT_SLICES, 6)) is True
    assert _count(con, "word_lookup") == _count(con, "word_summary") == 0
    assert _count(con, "word_search") == _count(con, "words")  # still searchable, from words itself
    writer.write_images(con, RUN, sample.image_results(dataset, ids[1]), ids[1:2])
    writer.finish_run(con, RUN, 1.0, "complete")
    assert _count(con, "word_lookup") == _count(con, "words") == _count(con, "word_search")
    assert con.execute("SELECT status, seconds, n_images FROM runs").fetchone() == ("complete", 2.0, 2)


def _dump(path):
    """Every table's rows in a canonical order; run timing columns dropped (they differ by design)."""
    con = writer.connect(path)
    out = {}
    for table in (
        "categories",
        "images",
        "instances",
        "captions",
        "errors",
        *RESULT_TABLES,
        "word_lookup",
        "word_summary",
    ):
        frame = con.execute(f"SELECT * FROM {table}").df()
        keys = [c for c in frame.columns if c not in ("map", "cls_map")]
        out[table] = frame.sort_values(keys).reset_index(drop=True)
    out["runs"] = con.execute("SELECT * EXCLUDE (started_at, finished_at, seconds, finalized_at) FROM runs").df()
    con.close()
    return out


def test_merge_of_two_shards_equals_one_database_written_directly(tmp_path, coco, dataset):
    ids = _image_ids(dataset)
    direct = tmp_path / "direct.duckdb"
    sample.build_sample_db(direct, *coco, run_id=RUN)
    shards = [tmp_path / "shard0.duckdb", tmp_path / "shard1.duckdb"]
    for k, shard in enumerate(shards):
        sample.build_sample_db(shard, *coco, run_id=RUN, image_ids=ids[k::2], finalize=False)
    merged = tmp_path / "merged.duckdb"
    writer.merge(merged, shards)
    expected, got = _dump(direct), _dump(merged)
    for table in expected:
        pd.testing.assert_frame_equal(got[table], expected[table], obj=table)
    writer.merge(merged, shards[:1])  # merging a shard again adds nothing
    assert _dump(merged)["words"].shape == expected["words"].shape


@pytest.mark.parametrize(("statuses", "merged"), [
    (("complete", "running"), "running"),
    (("complete", "failed"), "failed"),
    (("complete", "complete"), "complete"),
])  # fmt: skip
def test_merged_run_is_complete_only_if_every_shard_is(tmp_path, coco, dataset, statuses, merged):
    ids = _image_ids(dataset)
    shards = [tmp_path / f"shard{k}.duckdb" for k in range(2)]
    for k, (shard, status) in enumerate(zip(shards, statuses, strict=True)):
        sample.build_sample_db(shard, *coco, run_id=RUN, image_ids=ids[k::2], finish=status, finalize=False)
    writer.merge(tmp_path / "merged.duckdb", shards)
    con = writer.connect(tmp_path / "merged.duckdb")
    status, seconds, n_images = con.execute("SELECT status, seconds, n_images FROM runs").fetchone()
    assert (status, seconds, n_images) == (merged, float(len(ids)), len(ids))


class CountingHandler(pafs.FSSpecHandler):
    """A local filesystem seen as a remote store (read through Arrow) that counts folder listings and reads."""

    def __init__(self, fs):
        super().__init__(fs)
        self.listed, self.read = Counter(), Counter()

    def get_file_info_selector(self, selector):
        self.listed[selector.base_dir] += 1
        return super().get_file_info_selector(selector)

    def open_input_stream(self, path):
        self.read[path] += 1
        return super().open_input_stream(path)


def test_a_build_lists_each_folder_of_a_run_and_reads_each_session_once(small_db, tmp_path):
    handler = CountingHandler(fsspec.filesystem("file"))
    store = Store(pafs.PyFileSystem(handler), str(parts.parts_dir(small_db)))
    (run_id,) = parts.run_ids(store)
    db = tmp_path / "rebuilt.duckdb"
    handler.listed.clear()
    assert writer.build(db, parts=store) == [run_id]
    run_dir = store.path("runs", run_id)
    of_run = {folder: n for folder, n in handler.listed.items() if folder.startswith(run_dir)}
    assert set(of_run) >= {f"{run_dir}/{t}" for t in ("sessions", parts.DONE_TABLE, "words")}
    assert set(of_run.values()) == {1}, of_run
    sessions = {path: n for path, n in handler.read.items() if "/sessions/" in path}
    assert sessions and set(sessions.values()) == {1}, sessions
    with duckdb.connect(str(db), read_only=True) as con, duckdb.connect(str(small_db), read_only=True) as want:
        for table in RESULT_TABLES:
            assert _count(con, table) == _count(want, table) > 0


def test_finalize_stores_word_heads_in_run_layer_head_order_with_the_parts_rows(small_db):
    """A Search ranked by one head prunes to its rows only if they are contiguous: stored (rowid) order is
    writer.HEADS_ORDER, and the rows are exactly the parts' ones."""
    (run_id,) = parts.run_ids(parts.parts_dir(small_db))
    files = parts.done_files(parts.parts_dir(small_db), run_id, "word_heads")
    columns = "run_id, image_id, caption_id, word_index, layer, head, mask_mass, specificity_others"
    with duckdb.connect(str(small_db), read_only=True) as con:
        stored = con.execute(f"SELECT {columns} FROM word_heads ORDER BY rowid").df()
        from_parts = con.execute(
            f"SELECT {columns} FROM read_parquet(?) ORDER BY run_id, {writer.HEADS_ORDER}", [files]
        ).df()
    assert stored["layer"].nunique() > 1 and stored["head"].nunique() > 1 and stored["image_id"].nunique() > 1
    pd.testing.assert_frame_equal(stored, from_parts, check_dtype=False)
