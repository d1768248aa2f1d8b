"""`run --pairs TABLE` and `run --webdataset SHARDS`: (image, caption) pairs outside COCO's format give the
maps of a COCO-format run of the same pairs, without object metrics, with stable ids and one-line errors."""

import io
import json
import tarfile
from contextlib import suppress
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dashboard import paths
from dashboard.data import load_image
from extractor.__main__ import main
from extractor.pairs import load_webdataset, stable_id

N_IMAGES = 12
CHECKPOINT = ("fixtures", "albef-reference", "finetuned-tiny", "checkpoint.pth")


def subset_pairs(shared) -> list[tuple[str, str]]:
    """(file name, caption) of the first N_IMAGES images of val2017-subset by id, COCO's captions in file order."""
    data = json.loads(next((shared / "coco" / "val2017-subset" / "annotations").glob("captions_*.json")).read_text())
    files = {im["id"]: im["file_name"] for im in data["images"]}
    first = sorted({a["image_id"] for a in data["annotations"]})[:N_IMAGES]
    return [(files[a["image_id"]], a["caption"]) for i in first for a in data["annotations"] if a["image_id"] == i]


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def json_meta(key: str, image: bytes | None) -> bytes:
    """A sample's KEY.json as img2dataset writes it: with the image's size when it has one."""
    with suppress(OSError, TypeError):
        width, height = Image.open(io.BytesIO(image)).size
        return json.dumps({"key": key, "status": "success", "width": width, "height": height}).encode()
    return json.dumps({"key": key, "status": "failed_to_download"}).encode()


def write_shards(folder, samples: list[tuple[str, bytes | None, str | None]], per_shard: int) -> list[str]:
    """img2dataset's layout: shards 00000.tar, ... of KEY.jpg, KEY.txt, KEY.json per (key, image, caption)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for start in range(0, len(samples), per_shard):
        names.append(f"{start // per_shard:05d}.tar")
        with tarfile.open(folder / names[-1], "w") as tar:
            for key, image, caption in samples[start : start + per_shard]:
                if image is not None:
                    add_member(tar, f"{key}.jpg", image)
                if caption is not None:
                    add_member(tar, f"{key}.txt", caption.encode())
                add_member(tar, f"{key}.json", json_meta(key, image))
    return names


def pairs_run(shared, db, *inputs: str) -> None:
    argv = ["run", *inputs, "--checkpoint", str(shared.joinpath(*CHECKPOINT)),
            "--vocab", str(shared / "bert-base-uncased" / "vocab.txt"), "--db", str(db)]  # fmt: skip
    assert main(argv) == 0


def image_sizes(db, file_of=lambda name: name) -> set[tuple[str, int, int]]:
    with duckdb.connect(str(db), read_only=True) as con:
        return {(file_of(f), w, h) for f, w, h in con.execute("SELECT file_name, width, height FROM images").fetchall()}


def word_rows(db, file_of=lambda name: name) -> pd.DataFrame:
    """Every word row keyed by (the image's COCO file, the raw caption, word, method, layer), ids left out."""
    sql = ("SELECT i.file_name, c.raw, w.* EXCLUDE (run_id, image_id, caption_id) FROM words w "
           "JOIN captions c USING (caption_id) JOIN images i ON i.image_id = w.image_id")  # fmt: skip
    with duckdb.connect(str(db), read_only=True) as con:
        got = con.execute(sql).df()
    got["file_name"] = got["file_name"].map(file_of)
    return got.set_index(["file_name", "raw", "word_index", "method", "layer"]).sort_index()


def assert_same_words(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Same words, maps within one uint8 step (float32 kernel noise), metrics within 1e-5."""
    assert len(got) and got.index.is_unique
    want = want.loc[got.index]
    codes = [np.frombuffer(a, np.uint8).astype(int) - np.frombuffer(b, np.uint8) for a, b in
             zip(got["map"], want["map"], strict=True)]  # fmt: skip
    assert max(abs(c).max() for c in codes) <= 1
    pd.testing.assert_frame_equal(got.drop(columns="map"), want.drop(columns="map"), check_exact=False, atol=1e-5)


@pytest.fixture(scope="module")
def coco_run(shared, tmp_path_factory):
    """The COCO-format run of the same pairs: the subset's first N_IMAGES images, without instances."""
    db = tmp_path_factory.mktemp("coco") / "coco.duckdb"
    coco = shared / "coco" / "val2017-subset"
    pairs_run(shared, db, "--images", str(coco / "val2017"), "--captions",
              str(next((coco / "annotations").glob("captions_*.json"))), "--limit", str(N_IMAGES))  # fmt: skip
    return db


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_a_pairs_table_gives_the_coco_runs_maps(shared, coco_run, tmp_path, suffix):
    pairs = subset_pairs(shared)
    table = pa.table({"path": [f for f, _ in pairs], "text": [c for _, c in pairs]})
    path = tmp_path / f"pairs.{suffix}"
    (pq.write_table if suffix == "parquet" else pacsv.write_csv)(table, path)
    db = tmp_path / "table.duckdb"
    pairs_run(shared, db, "--pairs", str(path), "--images", str(shared / "coco" / "val2017-subset" / "val2017"),
              "--image-column", "path", "--caption-column", "text")  # fmt: skip
    got = word_rows(db)
    assert len(got) == len(word_rows(coco_run))  # every caption of every image: 5 per image, rows of one path
    assert_same_words(got, word_rows(coco_run))
    sizes = image_sizes(db)  # read from the images' headers: the table has none
    assert len(sizes) == N_IMAGES and sizes <= image_sizes(coco_run)


@pytest.fixture(scope="module")
def webdataset_run(shared, tmp_path_factory) -> tuple[Path, dict[str, str], list[tuple[str, str]]]:
    """A run over img2dataset shards of the same images, each with its first caption: (db, key -> COCO file,
    (COCO file, caption) pairs)."""
    folder = tmp_path_factory.mktemp("wds")
    images = shared / "coco" / "val2017-subset" / "val2017"
    firsts = list({f: c for f, c in reversed(subset_pairs(shared))}.items())[::-1]  # each image's first caption
    keys = {f"{i:09d}": f for i, (f, _) in enumerate(firsts)}
    names = write_shards(folder / "shards", [(k, (images / f).read_bytes(), c) for (k, f), (_, c) in
                                             zip(keys.items(), firsts, strict=True)], per_shard=5)  # fmt: skip
    assert names == ["00000.tar", "00001.tar", "00002.tar"]
    db = folder / "wds.duckdb"
    pairs_run(shared, db, "--webdataset", str(folder / "shards" / "{00000..00002}.tar"))
    return db, keys, firsts


def test_webdataset_shards_give_the_coco_runs_maps(coco_run, webdataset_run):
    db, keys, firsts = webdataset_run
    coco_file = lambda name: keys[name.split("/")[1].removesuffix(".jpg")]  # noqa: E731
    got = word_rows(db, coco_file)
    assert set(got.index.get_level_values("raw")) == {c for _, c in firsts}
    assert_same_words(got, word_rows(coco_run))
    sizes = image_sizes(db, coco_file)  # from each sample's KEY.json
    assert len(sizes) == N_IMAGES and sizes <= image_sizes(coco_run)


def test_the_dashboard_shows_images_from_inside_the_shards(shared, webdataset_run):
    db, keys, _ = webdataset_run
    with duckdb.connect(str(db), read_only=True) as con:
        images_dir = Path(con.execute("SELECT images_dir FROM runs").fetchone()[0])
        files = [r[0] for r in con.execute("SELECT file_name FROM images ORDER BY file_name").fetchall()]
    assert len(files) == N_IMAGES
    for name in files:
        image, found = load_image(paths.image_path(images_dir, name), 1, 1)
        original = Image.open(shared / "coco" / "val2017-subset" / "val2017" / keys[Path(name).stem])
        assert found and np.array_equal(np.asarray(image), np.asarray(original.convert("RGB")))
    _, found = load_image(paths.image_path(images_dir, "00000.tar/missing.jpg"), 4, 3)
    assert not found


def test_pairs_runs_have_no_object_metrics_but_name_categories(shared, tmp_path):
    pairs = subset_pairs(shared)[:10]
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"image": [f for f, _ in pairs], "caption": [c for _, c in pairs]}), path)
    db = tmp_path / "table.duckdb"
    pairs_run(shared, db, "--pairs", str(path), "--images", str(shared / "coco" / "val2017-subset" / "val2017"))
    with duckdb.connect(str(db), read_only=True) as con:
        (named, objects, background, entropy), = con.execute(
            "SELECT count(category_id), count(mask_mass) + count(box_mass) + count(iou_top60) + count(pointing_hit), "
            "count(background_mass), count(entropy) FROM words").fetchall()  # fmt: skip
        (instances,) = con.execute("SELECT count(*) FROM instances").fetchone()
    assert named > 0 and entropy > 0  # words still name categories; maps still have their own metrics
    assert objects == background == instances == 0  # NULL, not 0: nothing is labelled


def test_ids_are_hashes_of_the_keys_whatever_shards_are_read(tmp_path):
    samples = [(f"{i:09d}", b"not read", f"caption {i}") for i in range(6)]
    write_shards(tmp_path, samples, per_shard=3)
    both, _ = load_webdataset(str(tmp_path / "*.tar"))
    second, root = load_webdataset(str(tmp_path / "00001.tar"))
    assert root == tmp_path.resolve()
    assert list(both.images) == [stable_id(k) for k, _, _ in samples]  # input order, ids of the keys
    assert set(second.images) == {stable_id(k) for k, _, _ in samples[3:]}
    four = stable_id("000000004")
    assert [c["id"] for c in second.captions[four]] == [c["id"] for c in both.captions[four]]
    assert second.images[four]["file_name"] == "00001.tar/000000004.jpg"


def bad_table(path) -> None:
    pq.write_table(pa.table({"file": ["a.jpg"], "caption": ["a dog"]}), path)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (lambda d: ["--pairs", str(d / "missing.parquet")], "missing.parquet: pairs table not found"),
        (lambda d: ["--pairs", str(d / "bad.parquet")], "bad.parquet: no column 'image' (it has file, caption)"),
        (lambda d: ["--webdataset", str(d / "{00000..00003}.tar")], "no shard"),
        (lambda d: ["--webdataset", str(d / "zipped.tar")], "zipped.tar: not an uncompressed tar shard"),
        (lambda d: ["--pairs", str(d / "bad.parquet"), "--instances", str(d / "x.json")], "--instances goes with"),
    ],
)
def test_bad_pair_inputs_are_one_line_errors(shared, tmp_path, capsys, inputs, message):
    bad_table(tmp_path / "bad.parquet")
    (tmp_path / "zipped.tar").write_bytes(b"\x1f\x8b" + b"\x00" * 100)
    argv = ["run", *inputs(tmp_path), "--checkpoint", str(shared.joinpath(*CHECKPOINT)), "--db", str(tmp_path / "x.db")]
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and message in line
