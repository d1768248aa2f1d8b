import collections
import json
import math
import os
import re
import resource
import shutil
import signal
import subprocess
import sys

import duckdb
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pycocotools.coco import COCO

from db import parts
from db.codec import decode_map
from extractor.text import Tokenizer, pre_caption
from tests.conftest import REPO, run_extraction

FIXTURE = "finetuned-tiny"


def rows(db, sql, params=()):
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql, params).fetchall()


@pytest.mark.parametrize("which", ["small_db", "extracted_db"])
def test_every_caption_word_has_its_rows(shared, request, which):
    db = request.getfixturevalue(which)
    tokenizer = Tokenizer(shared / "bert-base-uncased" / "vocab.txt", 64)
    captions = rows(db, "SELECT caption_id, raw FROM captions ORDER BY caption_id")
    assert len(captions) == (50 if which == "small_db" else 1415)
    expected = {cid: tokenizer([pre_caption(raw, 30)])[0].words for cid, raw in captions}
    kinds = rows(db, "SELECT DISTINCT method, layer FROM words ORDER BY ALL")
    assert kinds == [("attention", 2), ("attention", 3), ("gradcam", 2)]
    got = rows(
        db,
        "SELECT caption_id, method, layer, list(word ORDER BY word_index), count(*), "
        "count(DISTINCT word_index) FROM words GROUP BY ALL",
    )
    assert len(got) == 3 * len(expected)
    for cid, _method, _layer, words, n, n_distinct in got:
        assert words == expected[cid] and n == n_distinct == len(expected[cid])
    (status,) = rows(db, "SELECT DISTINCT status FROM image_status")
    assert status == ("done",)
    assert rows(db, "SELECT status, n_captions FROM runs") == [("complete", len(expected))]


def coverage_on_grid(mask: np.ndarray, g: int) -> np.ndarray:
    """Independent area coverage: PIL's box filter averages exactly the pixels of each cell when g divides."""
    return np.asarray(Image.fromarray(mask.astype(np.float32)).resize((g, g), Image.BOX))


def test_object_metrics_use_the_named_categorys_masks(shared, small_db):
    coco = COCO(str(next((shared / "coco" / "val2017-small" / "annotations").glob("instances_*.json"))))
    words = rows(
        small_db,
        "SELECT image_id, coalesce(category_id, bound_category_id), map, map_max, mask_mass, background_mass, "
        "pointing_hit, peak_row, peak_col "
        "FROM words WHERE mask_mass IS NOT NULL AND method = 'gradcam'",
    )
    assert len(words) >= 10
    for image_id, cid, blob, vmax, mask_mass, background, hit, r, c in words:
        info = coco.imgs[image_id]
        anns = coco.imgToAnns[image_id]
        own = np.logical_or.reduce([coco.annToMask(a) > 0 for a in anns if a["category_id"] == cid])
        union = np.logical_or.reduce([coco.annToMask(a) > 0 for a in anns])
        # Resample to a multiple of the grid first so the box filter is exact.
        size = (info["width"] // 4 * 4, info["height"] // 4 * 4)
        own = np.asarray(Image.fromarray(own).resize(size, Image.NEAREST))
        union = np.asarray(Image.fromarray(union).resize(size, Image.NEAREST))
        m = decode_map(blob, vmax)
        p = m / m.sum()
        assert mask_mass == pytest.approx((p * coverage_on_grid(own, 4)).sum(), abs=0.03)
        assert background == pytest.approx((p * (1 - coverage_on_grid(union, 4))).sum(), abs=0.03)
        cov = coverage_on_grid(own, 4)[r, c]
        if cov > 0.02:
            assert hit
        if not hit:
            assert cov < 0.02


def test_words_without_the_object_have_null_object_metrics(small_db):
    unnamed = "category_id IS NULL AND bound_category_id IS NULL"  # neither the word nor its noun names one
    assert rows(small_db, f"SELECT count(*) FROM words WHERE {unnamed} AND mask_mass IS NOT NULL") == [(0,)]
    assert rows(small_db, "SELECT count(*) FROM words WHERE background_mass IS NULL") == [(0,)]
    (n_named,) = rows(small_db, "SELECT count(*) FROM words WHERE category_id IS NOT NULL")[0]
    assert n_named > 0


def cli(shared, db, subset, *extra):
    coco = shared / "coco" / subset
    ann = coco / "annotations"
    return [
        sys.executable, "-m", "extractor", "run",
        "--images", str(coco / "val2017"),
        "--captions", str(next(ann.glob("captions_*.json"))),
        "--instances", str(next(ann.glob("instances_*.json"))),
        "--checkpoint", str(shared / "fixtures" / "albef-reference" / FIXTURE / "checkpoint.pth"),
        "--vocab", str(shared / "bert-base-uncased" / "vocab.txt"),
        "--db", str(db), *extra,
    ]  # fmt: skip


RESULT_KEYS = {
    "words": ["image_id", "caption_id", "word_index", "method", "layer"],
    "caption_results": ["caption_id"],
    "caption_maps": ["caption_id", "method", "layer"],
    "image_maps": ["image_id", "head"],
    "image_status": ["image_id"],
}


def assert_same_results(db, reference):
    """Same rows (none missing, none twice) with the same values, up to float32 kernel noise.

    Two processes can differ in the last bits of a float (BLAS blocking), and a map's uint8 code by one
    step where a value sits on a rounding boundary; everything else must be equal.
    """
    for table, keys in RESULT_KEYS.items():
        sql = f"SELECT * EXCLUDE (run_id) FROM {table} ORDER BY {', '.join(keys)}"
        with duckdb.connect(str(db), read_only=True) as a, duckdb.connect(str(reference), read_only=True) as b:
            got, want = a.execute(sql).df(), b.execute(sql).df()
        assert len(got) == len(want), table
        blobs = [c for c in got.columns if c in ("map", "cls_map")]
        for c in blobs:
            steps = [
                np.abs(np.frombuffer(x, np.uint8).astype(int) - np.frombuffer(y, np.uint8)).max()
                for x, y in zip(got[c], want[c], strict=True)
            ]
            assert max(steps) <= 1, (table, c)
        pd.testing.assert_frame_equal(
            got.drop(columns=blobs), want.drop(columns=blobs), check_exact=False, atol=1e-5, rtol=0
        )


# Enough images that a signal sent after the third one always lands before the run ends.
RESUME_LIMIT = ("--limit", "40")


@pytest.fixture(scope="module")
def uninterrupted_db(shared, tmp_path_factory):
    """The reference for resume tests, made by the same CLI in a subprocess (same threads, same kernels)."""
    db = tmp_path_factory.mktemp("uninterrupted") / "ref.duckdb"
    done = subprocess.run(cli(shared, db, "val2017-subset", *RESUME_LIMIT), cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return db


def images_done(progress: str, bar: str = "extracting") -> int:
    """The highest image count a progress bar ("extracting", "object covers") has printed so far."""
    return max((int(k) for k in re.findall(bar + r":[^|]*\|[^|]*\| *(\d+)/\d+ ", progress)), default=0)


def test_killed_while_laying_out_masks_resumes_to_the_same_result(shared, uninterrupted_db, tmp_path):
    db = tmp_path / "resumed.duckdb"
    argv = cli(shared, db, "val2017-subset", *RESUME_LIMIT)
    proc = subprocess.Popen(argv, cwd=REPO, stderr=subprocess.PIPE, text=True)
    seen = ""
    while images_done(seen, "object covers") < 5:  # amid the covers pass: its block of 1,024 not yet saved
        ch = proc.stderr.read(1)
        assert ch, f"extractor ended before its covers pass: {seen[-500:]}"
        seen += ch
    proc.kill()
    proc.communicate(timeout=60)
    assert images_done(seen) == 0 and not db.exists()
    assert not list(parts.parts_dir(db).glob("covers/*/*.npz"))
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert_same_results(db, uninterrupted_db)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_interrupted_run_resumes_to_the_same_result(shared, uninterrupted_db, tmp_path, sig):
    db = tmp_path / "resumed.duckdb"
    argv = cli(shared, db, "val2017-subset", *RESUME_LIMIT)
    # kill -9 keeps the chunks written; SIGINT and SIGTERM also save the images of the chunk under way.
    chunk = "1" if sig == signal.SIGKILL else "32"
    # Ctrl-C in a terminal, and many schedulers' SIGTERM, reach the whole process group: the workers too.
    workers = () if sig == signal.SIGKILL else ("--workers", "2")
    proc = subprocess.Popen([*argv, "--chunk-images", chunk, *workers], cwd=REPO, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    seen = ""
    while images_done(seen) < 3:
        ch = proc.stderr.read(1)
        assert ch, f"extractor ended before 3 images: {seen[-500:]}"
        seen += ch
    os.killpg(proc.pid, sig)
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode != 0
    if sig != signal.SIGKILL:
        assert "run the same command to resume" in rest
    assert not db.exists()  # the database is built when the run completes; until then only its parts
    (run_id,) = parts.run_ids(parts.parts_dir(db))
    assert 3 <= len(parts.done_image_ids(parts.parts_dir(db), run_id)) < 40
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr
    assert_same_results(db, uninterrupted_db)


def test_worker_processes_and_batches_give_the_same_result(shared, small_db, tmp_path):
    # What CUDA runs do by default, on CPU: batches of images, decoding, tokenizing and object covers in
    # loader workers, parts of a few images each.
    parallel = ("--batch-size", "3", "--workers", "2", "--chunk-images", "4")
    db = run_extraction(shared, tmp_path / "workers.duckdb", "val2017-small", *parallel)
    assert_same_results(db, small_db)


def test_shards_into_one_folder_give_the_same_database(shared, small_db, tmp_path):
    db = tmp_path / "sharded.duckdb"
    run_extraction(shared, db, "val2017-small", "--shard", "1/2")
    assert rows(db, "SELECT status, finalized_at IS NULL FROM runs") == [("running", True)]
    run_extraction(shared, db, "val2017-small", "--shard", "0/2")  # the last shard to finish completes the run
    assert rows(db, "SELECT status, finalized_at IS NULL FROM runs") == [("complete", False)]
    assert_same_results(db, small_db)


def test_shard_databases_merge_into_the_same_database(shared, small_db, tmp_path):
    shards = [run_extraction(shared, tmp_path / f"s{k}.duckdb", "val2017-small", "--shard", f"{k}/2") for k in (0, 1)]
    merged = tmp_path / "merged.duckdb"
    from extractor.__main__ import main

    assert main(["merge", str(merged), *map(str, shards)]) == 0
    assert_same_results(merged, small_db)


@pytest.fixture
def bad_dataset(shared, tmp_path):
    """A COCO folder with every kind of bad image and caption, built from real COCO images."""
    src = shared / "coco" / "val2017-small"
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    captions = json.loads(next((src / "annotations").glob("captions_*.json")).read_text())
    real = sorted(captions["images"], key=lambda im: im["id"])
    files = {im["id"]: src / "val2017" / im["file_name"] for im in real}
    ids = [im["id"] for im in real]
    make = {
        ids[0]: lambda p, f: shutil.copy(f, p),  # a good one
        ids[1]: lambda p, f: p.write_bytes(b""),  # zero bytes
        ids[2]: lambda p, f: p.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 3]),  # truncated
        ids[3]: lambda p, f: p.write_bytes(b"\x00garbage" * 100),  # not an image
        ids[4]: lambda p, f: Image.open(f).convert("L").save(p, "JPEG"),  # grayscale
        ids[5]: lambda p, f: Image.open(f).convert("CMYK").save(p, "JPEG"),  # CMYK
        ids[6]: lambda p, f: Image.open(f).save(p, "PNG"),  # PNG bytes in a .jpg
        # ids[7]: missing file
    }
    for image_id, fn in make.items():
        fn(images_dir / files[image_id].name, files[image_id])
    keep = set(ids[:8])
    captions["images"] = [im for im in real if im["id"] in keep]
    anns = [a for a in captions["annotations"] if a["image_id"] in keep]
    anns[0]["caption"] = " ...!!! "  # empty after cleaning
    anns[1]["caption"] = " ".join(["word"] * 500)  # very long
    anns[2]["caption"] = "Ein Hund läuft über die Straße — 犬が走る 🐕"  # non-ASCII
    captions["annotations"] = anns
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    return tmp_path, ids, anns


def test_bad_images_and_captions_are_logged_and_the_run_goes_on(shared, bad_dataset):
    root, ids, anns = bad_dataset
    db = root / "bad.duckdb"
    argv = cli(shared, db, "val2017-small")
    argv[argv.index("--images") + 1] = str(root / "images")
    argv[argv.index("--captions") + 1] = str(root / "captions.json")
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    status = dict(rows(db, "SELECT image_id, status FROM image_status"))
    assert [status[i] for i in ids[:8]] == ["done", "error", "error", "error", "done", "done", "done", "error"]
    errors = rows(db, "SELECT item_kind, item_id, message FROM errors ORDER BY item_kind, item_id")
    messages = {item: msg for kind, item, msg in errors if kind == "image"}
    assert "empty file" in messages[str(ids[1])]
    assert "truncated or corrupt" in messages[str(ids[2])]
    assert "not an image" in messages[str(ids[3])]
    assert "not found" in messages[str(ids[7])]
    assert ("caption", str(anns[0]["id"]), "caption is empty after ALBEF's cleaning") in errors
    n_long = rows(db, "SELECT count(DISTINCT word_index) FROM words WHERE caption_id = ?", [anns[1]["id"]])
    assert n_long == [(30,)]
    words = rows(db, "SELECT list(DISTINCT word) FROM words WHERE caption_id = ?", [anns[2]["id"]])[0][0]
    assert "über" in words and "🐕" in words


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"images": [], "annotations": [', "truncated"),
        ('{"images": [{"id": 1}], "annotations": []}', "has no 'file_name'"),
        ("[]", "expected a JSON object"),
    ],
)
def test_malformed_coco_file_is_a_clear_error(shared, tmp_path, content, message):
    bad = tmp_path / "captions.json"
    bad.write_text(content)
    argv = cli(shared, tmp_path / "x.duckdb", "val2017-small")
    argv[argv.index("--captions") + 1] = str(bad)
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    assert message in proc.stderr and str(bad) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_documents_every_option():
    out = subprocess.run([sys.executable, "-m", "extractor", "run", "--help"], cwd=REPO, capture_output=True, text=True)
    for flag in (
        "--images",
        "--captions",
        "--instances",
        "--checkpoint",
        "--config",
        "--vocab",
        "--db",
        "--method",
        "--device",
        "--batch-size",
        "--limit",
        "--shard",
    ):
        assert flag in out.stdout


def test_limit_and_method_restrict_the_run(shared, tmp_path):
    db = run_extraction(shared, tmp_path / "lim.duckdb", "val2017-small", "--limit", "3", "--method", "gradcam")
    assert rows(db, "SELECT count(*) FROM image_status") == [(3,)]
    assert rows(db, "SELECT DISTINCT method FROM words") == [("gradcam",)]
    run_extraction(shared, db, "val2017-small", "--limit", "3", "--method", "gradcam")  # nothing left to do
    assert rows(db, "SELECT count(*) FROM image_status") == [(3,)]
    assert rows(db, "SELECT count(*) FROM runs") == [(1,)]


def limit_memory() -> None:
    """In the child: an address-space limit, so a mask that allocates without bound fails the test instead of
    taking the machine (unchecked, one poisoned polygon grew a run to 22 GB)."""
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))


@pytest.fixture
def poisoned_dataset(shared, tmp_path):
    """The small set with five bad annotations on its most crowded image, and another image whose COCO
    record gives a size its file does not have."""
    ann = shared / "coco" / "val2017-small" / "annotations"
    instances = json.loads(next(ann.glob("instances_*.json")).read_text())
    captions = json.loads(next(ann.glob("captions_*.json")).read_text())
    crowded = collections.Counter(a["image_id"] for a in instances["annotations"]).most_common(1)[0][0]
    mine = [a for a in instances["annotations"] if a["image_id"] == crowded][-5:]  # the table its captions name stays
    bad = {
        mine[0]["id"]: ({"segmentation": [[10, 10, 100, 10, 1e12, 100]]}, "reaches (1e+12, 100)"),
        mine[1]["id"]: ({"segmentation": [[10, 10, math.nan, 50, 60, 70]]}, "not a finite number (nan)"),
        mine[2]["id"]: ({"segmentation": [[10, 10, 50, 50]]}, "polygon 0 has 2 points"),
        mine[3]["id"]: ({"segmentation": {"size": [5, 5], "counts": "0i0"}}, "its RLE has size [5, 5]"),
        mine[4]["id"]: ({"bbox": [math.inf, 0, 10, 10]}, "is not 4 finite numbers"),
    }
    for a in mine:
        a.update(bad[a["id"]][0])
    resized = next(im for im in captions["images"] if im["id"] != crowded)
    resized.update(width=resized["width"] + 8, height=resized["height"] + 6)
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    return tmp_path, crowded, bad, resized


def test_a_poisoned_instances_file_costs_only_its_bad_annotations(shared, poisoned_dataset):
    root, crowded, bad, resized = poisoned_dataset
    db = root / "poisoned.duckdb"
    argv = cli(shared, db, "val2017-small")
    argv[argv.index("--captions") + 1] = str(root / "captions.json")
    argv[argv.index("--instances") + 1] = str(root / "instances.json")
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, preexec_fn=limit_memory, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert rows(db, "SELECT count(*), count(*) FILTER (status = 'done') FROM image_status") == [(10, 10)]
    assert rows(db, "SELECT status FROM runs") == [("complete",)]
    errors = rows(db, "SELECT item_kind, item_id, path, message FROM errors ORDER BY item_kind, item_id")
    skipped = {item: (path, message) for kind, item, path, message in errors if kind == "annotation"}
    assert set(skipped) == {str(i) for i in bad}
    for ann_id, (_, reason) in bad.items():
        path, message = skipped[str(ann_id)]
        assert path == f"{crowded:012d}.jpg"
        assert message.startswith(f"annotation {ann_id} of image {crowded} skipped: ") and reason in message
    real_width, real_height = resized["width"] - 8, resized["height"] - 6
    assert ("image", str(resized["id"]), resized["file_name"],
            f"warning: the file is {real_width}x{real_height}, its COCO record says {resized['width']}x"
            f"{resized['height']}; masks are laid on the file's size, coordinates as they are") in errors  # fmt: skip
    assert len(errors) == len(bad) + 1
    # The crowded image keeps all its captions, and its words still meet the objects that remain.
    assert rows(db, "SELECT count(*) FROM caption_results WHERE image_id = ?", [crowded]) == [(5,)]
    tables = rows(db, "SELECT mask_mass FROM words WHERE image_id = ? AND word = 'table'", [crowded])
    assert tables and all(mass is not None for (mass,) in tables)
