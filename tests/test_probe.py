"""The live probe: any caption through the run's checkpoint gives the extractor's own maps and metrics.

Real extractions: the shared COCO subset with the fine-tuned fixture checkpoint (conftest's `small_db`) and
a small demo database made by `extractor.demo.prepare` with the committed demo model.
"""

import hashlib
import io
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from db import review
from extractor import checkpoint
from extractor import probe as live
from extractor.coco import MAX_PIXELS
from extractor.probe import MEAN, ProbeError, ProbeSettings
from tests.chromium import launch
from tests.review_app import sign_in
from tests.test_dashboard import run_row
from tests.test_inputs import pairs_run, subset_pairs, write_shards

REPO = Path(__file__).resolve().parents[1]
METRIC_COLUMNS = ["peak_row", "peak_col", "peak_value", "entropy", "mask_mass", "box_mass", "background_mass",
                  "iou_top60", "pointing_hit"]  # fmt: skip


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory) -> Path:
    from extractor.demo.prepare import prepare

    return prepare(tmp_path_factory.mktemp("probe_demo"), n_images=4, seed=0, res=128)


@pytest.fixture(params=["small", "demo"])
def extraction(request) -> Path:
    return request.getfixturevalue({"small": "small_db", "demo": "demo_db"}[request.param])


def stored_captions(db: Path, n: int) -> pd.DataFrame:
    """The first caption of the first `n` images, with the image's file."""
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(
            "SELECT c.caption_id, c.image_id, c.raw, i.file_name FROM captions c JOIN images i USING (image_id) "
            "QUALIFY row_number() OVER (PARTITION BY c.image_id ORDER BY c.caption_id) = 1 "
            "ORDER BY c.image_id LIMIT ?",
            [n],
        ).df()


def stored_words(db: Path, caption_id: int) -> pd.DataFrame:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(
            "SELECT * FROM words WHERE caption_id = ? ORDER BY method, layer, word_index", [caption_id]
        ).df()


def codes(blobs: pd.Series) -> np.ndarray:
    return np.stack([np.frombuffer(b, np.uint8).astype(int) for b in blobs])


def test_probe_gives_the_maps_and_metrics_the_run_stored(extraction):
    run = run_row(extraction)
    settings, images_dir = ProbeSettings.from_run(run), Path(run["images_dir"])
    for cap in stored_captions(extraction, 3).itertuples():
        result = live.probe(settings, images_dir / cap.file_name, cap.raw, image_id=int(cap.image_id),
                            images_dir=images_dir)  # fmt: skip
        mine = result.words[result.words["head"] == MEAN].sort_values(["method", "layer", "word_index"])
        stored = stored_words(extraction, cap.caption_id)
        assert len(mine) == len(stored) > 0
        assert mine["word"].tolist() == stored["word"].tolist()
        assert mine["category_id"].fillna(-1).tolist() == stored["category_id"].fillna(-1).tolist()
        assert np.abs(codes(mine["map"]) - codes(stored["map"])).max() <= 1
        np.testing.assert_allclose(mine["map_max"], stored["map_max"], rtol=1e-4)
        for column in METRIC_COLUMNS:
            np.testing.assert_allclose(mine[column].astype(float), stored[column].astype(float), atol=1e-4,
                                       err_msg=column)  # fmt: skip
        assert result.itm_score == pytest.approx(float(stored["itm_score"].iloc[0]), abs=1e-4)


def test_objects_come_with_images_of_the_run_and_not_with_an_upload(small_db):
    run = run_row(small_db)
    settings, images_dir = ProbeSettings.from_run(run), Path(run["images_dir"])
    cap = stored_captions(small_db, 10).iloc[0]
    path = images_dir / cap.file_name
    known = live.probe(settings, path, cap.raw, image_id=int(cap.image_id), images_dir=images_dir).words
    upload = live.probe(settings, path.read_bytes(), cap.raw).words
    assert known["mask_mass"].notna().any() and known["background_mass"].notna().all()
    assert upload["mask_mass"].isna().all() and upload["background_mass"].isna().all()
    assert (codes(upload["map"]) == codes(known["map"])).all()


def test_each_head_on_request_averages_to_the_stored_mean(demo_db):
    run = run_row(demo_db)
    settings = ProbeSettings.from_run(run)
    cap = stored_captions(demo_db, 1).iloc[0]
    words = live.probe(settings, Path(run["images_dir"]) / cap.file_name, cap.raw, heads=True).words
    n_heads = settings.cfg.bert.num_attention_heads
    assert set(words["head"]) == {MEAN, *range(n_heads)}
    for layer in settings.layers:
        rows = words[(words["method"] == "attention") & (words["layer"] == layer)]
        mean = rows[rows["head"] == MEAN].sort_values("word_index")
        per_head = [rows[rows["head"] == h].sort_values("word_index") for h in range(n_heads)]
        decoded = [codes(f["map"]) * f["map_max"].to_numpy()[:, None] / 255 for f in [mean, *per_head]]
        np.testing.assert_allclose(np.mean(decoded[1:], axis=0), decoded[0], atol=2 * decoded[0].max() / 255)
        assert not np.allclose(decoded[1], decoded[2])  # heads do differ


def test_the_model_loads_once_per_process(demo_db, monkeypatch):
    loads = []
    monkeypatch.setattr(checkpoint, "load_checkpoint", lambda model, path: loads.append(path) or live_load(model, path))
    live.loaded_model.cache_clear()
    run = run_row(demo_db)
    settings = ProbeSettings.from_run(run)
    image = Path(run["images_dir"]) / stored_captions(demo_db, 1).iloc[0].file_name
    first = live.probe(settings, image, "a red circle")
    second = live.probe(settings, image, "a blue square left of a red circle")
    assert len(loads) == 1
    assert first.words["word"].nunique() == 3 and second.words["word"].nunique() == 7


live_load = checkpoint.load_checkpoint


def huge_image() -> Image.Image:
    side = int(MAX_PIXELS**0.5) + 1
    return Image.new("1", (side, side))


def huge_png() -> bytes:
    buffer = io.BytesIO()
    huge_image().save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "change, image, caption, message",
    [
        ({"checkpoint": Path("/nowhere/mscoco.pth")}, None, "a dog", "is not on this machine"),
        ({"checkpoint": "garbage"}, None, "a dog", "not a PyTorch checkpoint"),
        ({"checkpoint_sha256": "0" * 64}, None, "a dog", "is not the run's"),
        ({}, "huge", "a dog", f"more than the {MAX_PIXELS} pixels"),
        ({}, "huge image", "a dog", f"more than the {MAX_PIXELS} pixels"),
        ({}, "text", "a dog", "not an image"),
        ({}, None, " ?! ", "caption is empty"),
    ],
)
def test_what_cannot_be_probed_is_said_in_one_sentence(demo_db, tmp_path, change, image, caption, message):
    run = run_row(demo_db)
    if change.get("checkpoint") == "garbage":
        change = {"checkpoint": tmp_path / "checkpoint.pth"}
        change["checkpoint"].write_bytes(b"these are not weights")
    settings = replace(ProbeSettings.from_run(run), **change)
    source = {
        "huge": huge_png(),
        "huge image": huge_image(),
        "text": b"hello",
        None: Path(run["images_dir"]) / stored_captions(demo_db, 1).iloc[0].file_name,
    }[image]
    with pytest.raises(ProbeError) as error:
        live.probe(settings, source, caption)
    text = str(error.value)
    assert message in text and "\n" not in text and "Traceback" not in text
    assert "/tmp" not in text or image is None  # an upload is not named by its temporary file


def test_the_probe_reads_the_vocab_the_run_recorded(demo_db, tmp_path):
    """The run records its --vocab path and sha256; the probe reads that file even where another vocab.txt lies
    beside the checkpoint, and says in one sentence when the file is gone or differs."""
    run = run_row(demo_db)
    recorded = json.loads(run["vocab"])
    vocab = Path(recorded["path"])
    assert vocab.is_file() and recorded["sha256"] == hashlib.sha256(vocab.read_bytes()).hexdigest()
    settings = ProbeSettings.from_run(run)
    assert (settings.vocab, settings.vocab_sha256) == (vocab, recorded["sha256"])
    image = Path(run["images_dir"]) / stored_captions(demo_db, 1).iloc[0].file_name
    moved = tmp_path / "vocab.txt"
    moved.write_bytes(vocab.read_bytes())
    assert live.probe(replace(settings, vocab_file=moved), image, "a red circle").words["word"].nunique() == 3
    gone = tmp_path / "gone" / "vocab.txt"
    with pytest.raises(ProbeError, match=r"^The vocab .* is not on this machine: [^\n]*$"):
        live.probe(replace(settings, vocab_file=gone, vocab_sha256="0" * 64), image, "a red circle")
    moved.write_text(vocab.read_text() + "extra\n")
    with pytest.raises(ProbeError, match=r"^The vocab at .* is not the run's \(its sha256 differs\)[^\n]*$"):
        live.probe(replace(settings, vocab_file=moved), image, "a red circle")


def test_a_run_recorded_elsewhere_reads_the_checkpoints_default_vocab_of_the_same_sha256(demo_db, tmp_path):
    """The recorded vocab path is missing here (the run was extracted on another machine or checkout), but the
    vocab.txt beside the checkpoint has the recorded sha256: the probe reads it and splits the words as the run."""
    run = run_row(demo_db)
    settings = replace(ProbeSettings.from_run(run), vocab_file=tmp_path / "elsewhere" / "vocab.txt")
    beside = Path(run["checkpoint_path"]).with_name("vocab.txt")
    assert hashlib.sha256(beside.read_bytes()).hexdigest() == settings.vocab_sha256
    assert live.run_vocab(settings) == beside
    cap = stored_captions(demo_db, 1).iloc[0]
    probed = live.probe(settings, Path(run["images_dir"]) / cap.file_name, cap.raw)
    mine = probed.words[probed.words["head"] == MEAN].sort_values(["method", "layer", "word_index"])
    assert mine["word"].tolist() == stored_words(demo_db, int(cap.caption_id))["word"].tolist()


def test_a_run_records_the_vocab_it_read(small_db, shared):
    vocab = shared / "bert-base-uncased" / "vocab.txt"  # conftest's --vocab
    want = {"path": str(vocab.resolve()), "sha256": hashlib.sha256(vocab.read_bytes()).hexdigest()}
    assert json.loads(run_row(small_db)["vocab"]) == want


def test_a_run_without_a_recorded_vocab_reads_the_checkpoints_default(demo_db, tmp_path, monkeypatch):
    run = run_row(demo_db) | {"vocab": None}
    alone = tmp_path / "checkpoint.pth"  # the demo's checkpoint without its vocab.txt beside it
    alone.write_bytes(Path(run["checkpoint_path"]).read_bytes())
    assert ProbeSettings.from_run(run).vocab == Path(run["checkpoint_path"]).with_name("vocab.txt")
    monkeypatch.setattr(checkpoint, "DEFAULT_VOCAB", tmp_path / "bert-base-uncased" / "vocab.txt")
    settings = replace(ProbeSettings.from_run(run), checkpoint=alone)
    image = Path(run["images_dir"]) / stored_captions(demo_db, 1).iloc[0].file_name
    with pytest.raises(ProbeError, match=r"^The vocab .* is not on this machine: [^\n]*$"):
        live.probe(settings, image, "a red circle")


def test_the_dashboard_starts_without_torch():
    code = "import sys, dashboard.probe_panel, dashboard.data; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


@pytest.fixture
def image_page(demo_db, accounts, tmp_path, open_app):
    """The Image page of the demo database's first image, signed in as a reviewer."""
    store = tmp_path / "review.sqlite"  # open_app's review store
    at = open_app("--db", str(demo_db), timeout=120)
    at.secrets["auth"] = {"public_read": False, "users": accounts}
    sign_in(at.run(), "alice")
    image_id = int(stored_captions(demo_db, 1).iloc[0].image_id)
    at.query_params.update({"image": str(image_id)})
    return at.switch_page("views/image.py").run(), store, image_id


def probe_box(at: AppTest):
    return next(e for e in at.expander if e.label.startswith("Live probe"))


def test_type_a_caption_see_its_maps_and_save_them_as_a_note(image_page, demo_db):
    at, store, image_id = image_page
    assert not probe_box(at).get("image")
    at.text_input(key="probe_caption").input("a big red circle left of a small blue square").run()
    assert not at.exception and not at.error
    assert [m.value for m in probe_box(at).markdown if "ITM" in m.value and "circle" in m.value]
    # The first word's map for each of the demo's 3 slices, then every word's (10) for the sidebar's slice.
    assert len(probe_box(at).get("image")) == 3 + 10
    table = probe_box(at).dataframe[0].value
    assert len(table) == 10 * 3 and {"red", "circle", "blue", "square"} <= set(table["word"])
    at.toggle(key="probe_heads").set_value(True).run()
    n_heads = ProbeSettings.from_run(run_row(demo_db)).cfg.bert.num_attention_heads
    assert len(probe_box(at).get("image")) == 3 + 10 + 2 * n_heads
    next(b for b in probe_box(at).button if b.label == "Save as a note on this image").click().run()
    con = review.connect(store)
    try:
        about = review.item_review(con, review.Item(run_row(demo_db)["run_id"], image_id))
    finally:
        con.close()
    assert len(about.comments) == 1 and about.comments[0].author == "alice"
    assert "circle" in about.comments[0].body and "ITM" in about.comments[0].body


@pytest.fixture(scope="module")
def shards_db(shared, tmp_path_factory) -> Path:
    """A run over one WebDataset shard of two subset images, each with its first caption."""
    folder = tmp_path_factory.mktemp("probe_wds")
    images = shared / "coco" / "val2017-subset" / "val2017"
    firsts = list({f: c for f, c in reversed(subset_pairs(shared))}.items())[:2]
    write_shards(folder / "shards", [(f"{i:09d}", (images / f).read_bytes(), c) for i, (f, c) in enumerate(firsts)],
                 per_shard=2)  # fmt: skip
    db = folder / "wds.duckdb"
    pairs_run(shared, db, "--webdataset", str(folder / "shards" / "00000.tar"))
    return db


def test_an_image_inside_a_webdataset_shard_is_probed_on_its_page(shards_db, open_app):
    cap = stored_captions(shards_db, 1).iloc[0]
    assert ".tar/" in cap.file_name  # the image is a shard member, not a file
    at = open_app("--db", str(shards_db), timeout=120).run()
    at.query_params.update({"image": str(int(cap.image_id))})
    at = at.switch_page("views/image.py").run()
    at.text_input(key="probe_caption").input(cap.raw).run()
    assert not at.exception and not at.error and not probe_box(at).warning
    table = probe_box(at).dataframe[0].value.sort_values(["method", "layer"], kind="stable")
    stored = stored_words(shards_db, int(cap.caption_id))
    assert table["word"].tolist() == stored["word"].tolist() and len(table) > 0
    for column in ("entropy", "peak_value", "specificity_row"):  # the stored caption's own metrics, probed again
        np.testing.assert_allclose(table[column].astype(float), stored[column].astype(float), atol=1e-4)


# The demo scene shows a yellow diamond, a red triangle, a pink star and a purple hexagon; "a" comes twice.
CHROMIUM_CAPTIONS = ["a red circle", "a yellow diamond beside the red triangle and a purple hexagon"]


def maps_on_screen(page, box, caption: str) -> float:
    """Type `caption`, press Enter; seconds until its words' maps are all loaded in the page."""
    n_words = len(caption.split())
    box.fill(caption)
    start = time.perf_counter()
    box.press("Enter")
    page.wait_for_function(
        """n => { const imgs = [...document.querySelectorAll('[data-testid="stImage"] img')];
                  return imgs.length === n && imgs.every(img => img.complete && img.naturalWidth > 0); }""",
        arg=3 + n_words,  # the first word's 3 maps, then every word's: a count the other caption does not give
        timeout=120_000,
    )
    return time.perf_counter() - start


def test_probe_an_uploaded_image_in_chromium(demo_db, tmp_path):
    """Upload a demo scene on the Probe page, type a caption, see every word's map (screenshot kept)."""
    from tests import test_browser as browser_test  # skips (fails in CI) without Playwright, as its own tests do

    image = Path(run_row(demo_db)["images_dir"]) / stored_captions(demo_db, 1).iloc[0].file_name
    with (
        browser_test.streamlit_server(demo_db, tmp_path / "review.sqlite") as base,
        browser_test.playwright.sync_playwright() as p,
    ):
        chromium = launch(p)
        page = chromium.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(f"{base}/probe")
        page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(image))
        box = page.get_by_role("textbox", name="Caption to probe")
        box.wait_for(timeout=60_000)
        seconds = [maps_on_screen(page, box, text) for text in CHROMIUM_CAPTIONS]
        shot = browser_test.shoot(page, "probe-upload")
        text = page.locator("body").inner_text()
        chromium.close()
    print(f"maps on screen after Enter: first probe {seconds[0]:.2f} s, warm {seconds[1]:.2f} s")
    assert "ITM" in text and "hexagon" in text and "a · 2" in text
    assert "Error" not in text and "Traceback" not in text
    assert shot.stat().st_size > 10_000


def test_export_holds_every_word_with_its_metrics_and_map(demo_db):
    import json

    from dashboard.probe_panel import export_json, note_text

    run = run_row(demo_db)
    cap = stored_captions(demo_db, 1).iloc[0]
    result = live.probe(ProbeSettings.from_run(run), Path(run["images_dir"]) / cap.file_name, cap.raw, heads=True)
    doc = json.loads(export_json(result))
    assert doc["caption"] == result.caption and doc["itm_score"] == pytest.approx(result.itm_score)
    assert len(doc["words"]) == len(result.words)
    for exported, row in zip(doc["words"], result.words.to_dict("records"), strict=True):
        assert (exported["word"], exported["method"], exported["layer"], exported["head"]) == (
            row["word"], row["method"], row["layer"], row["head"])  # fmt: skip
        grid = np.array(exported["map"])
        assert grid.shape == (result.grid, result.grid)
        assert grid.max() == pytest.approx(row["map_max"], rel=1e-5)
        assert exported["mask_mass"] is None and pd.isna(row["mask_mass"])  # an uploaded image: no objects
    note = note_text(result)
    assert note.startswith(f"Probe: “{result.caption}”") and len(note.splitlines()) == 1 + len(
        result.words[result.words["head"] == MEAN])  # fmt: skip
