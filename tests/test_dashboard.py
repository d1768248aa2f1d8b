"""The dashboard, headless: every page through streamlit.testing.v1.AppTest.

The database is a real extraction of ../shared/coco/val2017-subset with the fine-tuned fixture checkpoint
(conftest's `extracted_db`); expected values are read straight from its file with SQL of the test's own.
"""

import io
import json
import math
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qsl

import duckdb
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import markup
from db import writer
from db.queries import WordFilter
from tests.conftest import open_page, run_extraction

# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="session")
def db(extracted_db) -> Path:
    return extracted_db


def messages(at: AppTest) -> str:
    return " ".join(m.value for m in [*at.error, *at.warning, *at.info])


def card_links(at: AppTest) -> list[dict[str, str]]:
    """The query parameters of every result card's link to the Image page, in page order."""
    return [dict(parse_qsl(link.proto.query_string)) for link in at.get("page_link") if link.proto.page == "image"]


def shown_slice(at: AppTest) -> tuple[str, str, int]:
    """(run_id, method, layer) the sidebar shows."""
    return at.selectbox(key="run").value, at.radio(key="method").value, int(at.selectbox(key="layer").value)


def word_rows(db: Path, at: AppTest, **where) -> pd.DataFrame:
    """Word rows of the slice the page shows, read straight from the database file."""
    run_id, method, layer = shown_slice(at)
    clauses = "".join(f" AND {column} = ${column}" for column in where)
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(
            "SELECT * EXCLUDE (map) FROM words WHERE run_id = $run AND method = $method AND layer = $layer" + clauses,
            {"run": run_id, "method": method, "layer": layer, **where},
        ).df()


def shown_rows(at: AppTest, db: Path) -> pd.DataFrame:
    """The words table rows of the cards on the page, in page order."""
    table = word_rows(db, at).set_index(["caption_id", "word_index"])
    keys = [(int(link["caption"]), int(link["w"])) for link in card_links(at)]
    return table.loc[keys].reset_index()


def run_row(db: Path) -> dict:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute("SELECT * FROM runs").df().iloc[0].to_dict()


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


# ---------------------------------------------------------------- search


@pytest.mark.parametrize("metric", ["mask_mass", "entropy", "background_mass", "itm_score"])
@pytest.mark.parametrize("order", ["descending", "ascending"])
def test_search_ranks_by_the_chosen_metric(open_app, db, metric, order):
    at = open_page(open_app, db, None, word="man", sort=metric, order=order)
    assert_clean(at)
    assert not at.warning and not at.error
    expected = word_rows(db, at, word="man")
    shown = shown_rows(at, db)
    assert len(shown) == min(24, len(expected)) > 1
    assert (shown["word"] == "man").all()
    values = shown[metric].dropna().tolist()
    # NULLs (no labelled object) rank last either way.
    assert shown[metric].isna().tolist() == sorted(shown[metric].isna().tolist())
    assert values == sorted(values, reverse=order == "descending")
    best = expected[metric].max() if order == "descending" else expected[metric].min()
    assert values[0] == pytest.approx(best)
    assert f"**{len(expected)}** occurrences" in at.markdown[0].value


def test_category_search_finds_every_word_naming_it(open_app, db):
    at = open_page(open_app, db, None, by="category", category="person")
    assert_clean(at)
    expected = word_rows(db, at, category_id=1)
    assert set(expected["word"]) >= {"man", "woman", "people"}
    shown = shown_rows(at, db)
    assert (shown["category_id"] == 1).all() and shown["word"].nunique() > 1
    assert f"**{len(expected):,}** occurrences" in at.markdown[0].value


def test_pages_continue_the_ranking(open_app, db):
    apps = [open_page(open_app, db, None, word="a", sort="entropy", p=str(p)) for p in (1, 2)]
    assert len(word_rows(db, apps[0], word="a")) > 48
    pages = [shown_rows(at, db) for at in apps]
    assert len(pages[0]) == len(pages[1]) == 24
    assert pages[0]["entropy"].min() >= pages[1]["entropy"].max()
    assert not set(pages[0]["caption_id"] * 100 + pages[0]["word_index"]) & set(
        pages[1]["caption_id"] * 100 + pages[1]["word_index"]
    )


def median_and_up(metric: str):
    """A range filter from the metric's median (rounded to the slider's step) to 1."""
    return lambda rows: (round(float(rows[metric].median()), 3), 1.0)


@pytest.mark.parametrize(
    ("key", "value", "keeps"),
    [
        ("range_entropy", median_and_up("entropy"), lambda r, v: r["entropy"].between(*v)),
        ("range_mask_mass", median_and_up("mask_mass"), lambda r, v: r["mask_mass"].between(*v)),
        ("object", lambda rows: "labelled", lambda r, v: r["mask_mass"].notna()),
        ("object", lambda rows: "not labelled", lambda r, v: r["mask_mass"].isna() & r["category_id"].notna()),
        ("hit", lambda rows: "hit", lambda r, v: r["pointing_hit"].fillna(False).astype(bool)),
    ],
)
def test_filters_narrow_the_results(open_app, db, key, value, keeps):
    at = open_page(open_app, db, None, by="category", category="person")
    expected = word_rows(db, at, category_id=1)
    before = int(at.markdown[0].value.split("**")[1].replace(",", ""))
    assert before == len(expected)
    chosen = value(expected)
    widget = at.slider(key=key) if key.startswith("range_") else at.radio(key=key)
    widget.set_value(chosen).run()
    assert_clean(at)
    n = int(keeps(expected, chosen).sum())
    assert 0 < n < before
    assert f"**{n:,}** occurrences" in at.markdown[0].value
    assert keeps(shown_rows(at, db), chosen).all()


def test_filters_can_leave_nothing(open_app, db):
    at = open_page(open_app, db, None, word="man", range_entropy=["0.999", "1"], range_mask_mass=["0", "0.001"])
    assert_clean(at)
    assert "No occurrences match these filters" in messages(at)
    assert not card_links(at)


def test_unknown_word_says_so(open_app, db):
    at = open_page(open_app, db, None, word="xylophonist")
    assert_clean(at)
    assert "“xylophonist” does not occur" in messages(at)


def test_word_list_offers_the_vocabulary_with_counts(open_app, db):
    at = open_page(open_app, db, None)
    assert_clean(at)
    options = at.selectbox(key="word_choice").options
    counts = word_rows(db, at)["word"].value_counts()
    assert options[0] == f"{counts.index[0]} · {counts.iloc[0]:,}"
    assert f"dog · {counts['dog']:,}" in options
    assert "Choose a word or a COCO category" in messages(at)


def test_overlay_controls_and_masks_render(open_app, db):
    at = open_page(open_app, db, None, word="dog", cmap="viridis", scale="per map", mask="true", box="true")
    assert_clean(at)
    assert at.selectbox(key="cmap").value == "viridis"
    assert at.radio(key="scale").value == "per map"
    assert at.toggle(key="mask").value and at.toggle(key="box").value
    assert len(card_links(at)) == min(24, len(word_rows(db, at, word="dog")))


def test_captions_mark_the_word(open_app, db):
    at = open_page(open_app, db, None, word="dog")
    captions = [m.value for m in at.markdown if "-background[" in m.value]
    assert len(captions) == len(card_links(at)) > 0
    assert all(":yellow-background[dog]" in c for c in captions) and not at.get("html")


def test_export_has_every_row_with_metrics_and_no_maps(open_app, db):
    from dashboard import data

    at = open_page(open_app, db, None, by="category", category="person")
    run_id, method, layer = shown_slice(at)
    expected = word_rows(db, at, category_id=1)
    database = data.Database(str(db), db.stat().st_mtime_ns)
    where = WordFilter(run_id=run_id, method=method, layer=layer, category_id=1)
    csv = pd.read_csv(io.BytesIO(data.export(database, "csv", where, "entropy", False)))
    parquet = pd.read_parquet(io.BytesIO(data.export(database, "parquet", where, "entropy", False)))
    for frame in (csv, parquet):
        assert len(frame) == len(expected)
        assert {"word", "image_id", "caption", "mask_mass", "entropy", "background_mass"} <= set(frame.columns)
        assert "map" not in frame.columns
        assert frame["entropy"].is_monotonic_increasing


# ---------------------------------------------------------------- image


def test_image_page_shows_every_word_of_every_caption(open_app, db):
    at = open_page(open_app, db, "image", image="139")
    assert_clean(at)
    assert not at.warning and not at.error
    with duckdb.connect(str(db), read_only=True) as con:
        texts = [
            t for (t,) in con.execute("SELECT text FROM captions WHERE image_id = 139 ORDER BY caption_id").fetchall()
        ]
    labels = [b.label for b in at.button if b.key.startswith("pick_")]
    expected = [label for text in texts for label in ["whole caption", *text.split(" ")]]
    assert labels == expected
    assert f"{markup.literal('000000000139.jpg')} · 640 x 426" in [h.value for h in at.subheader]


def test_clicking_a_word_enlarges_it_and_goes_into_the_link(open_app, db):
    at = open_page(open_app, db, "image", image="139")
    target = next(b for b in at.button if b.label == "woman")
    caption_id, word_index = (int(x) for x in target.key.split("_")[1:])
    target.click().run()
    assert_clean(at)
    assert at.query_params["caption"] == str(caption_id) and at.query_params["w"] == str(word_index)
    _, method, layer = shown_slice(at)
    heading = f"**“woman”** · {method} · layer {layer}"
    assert heading in " ".join(m.value for m in at.markdown)
    # The link restores the same view in a new session.
    again = open_page(open_app, db, "image", **{k: v for k, v in at.query_params.items()})
    assert heading in " ".join(m.value for m in again.markdown)


def test_image_page_compares_slices_and_ranks_region_words(open_app, db):
    run = run_row(db)
    half = str(run["grid_size"] // 2)
    versus = f"gradcam · layer {run['gradcam_layer']}"
    at = open_page(open_app, db, "image", image="139", versus=versus, rows=["0", half], cols=["0", half])
    assert_clean(at)
    _, method, layer = shown_slice(at)
    markdown = " ".join(m.value for m in at.markdown)
    assert versus in markdown and f"{method} · layer {layer}" in markdown
    region = at.dataframe[0].value
    assert len(region) == 10 and region["region_mass"].is_monotonic_decreasing
    assert region["region_mass"].iloc[0] > region["region_mass"].iloc[-1]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, "Choose an image"),
        ({"image": "1"}, "Image 1 is not in this database"),
    ],
)
def test_image_page_without_a_known_image_explains(open_app, db, query, expected):
    at = open_page(open_app, db, "image", **query)
    assert_clean(at)
    assert expected in messages(at)


# ---------------------------------------------------------------- statistics and runs


@pytest.mark.parametrize(
    "view", ["distributions", "frequency vs alignment", "word x category", "leaderboards", "layers and methods"]
)
def test_statistics_views_draw_their_charts(open_app, db, view):
    at = open_page(open_app, db, "statistics", view=view)
    assert_clean(at)
    assert at.get("plotly_chart"), messages(at)


@pytest.mark.parametrize("rank", [None, 3])
def test_noisiest_words_board_follows_its_threshold(open_app, db, rank):
    at = open_page(open_app, db, "statistics", view="leaderboards")
    means = word_rows(db, at).groupby("word")["entropy"].agg(["mean", "size"])
    means = means[means["size"] >= 3]  # the page's default minimum count
    # A threshold (on the slider's 0.001 grid) just under the rank-th noisiest word's mean entropy.
    threshold = 0.0 if rank is None else math.floor(means["mean"].nlargest(rank).iloc[-1] * 1000) / 1000
    at.slider(key="min_H").set_value(threshold).run()
    assert_clean(at)
    eligible = means[means["mean"] >= threshold].nlargest(15, "mean")
    assert len(eligible) == 15 if rank is None else rank <= len(eligible) < 15
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert "Noisiest words" in spec["layout"]["title"]["text"]
    assert sorted(spec["data"][0]["y"]) == sorted(eligible.index)


def test_a_threshold_above_every_word_says_so(open_app, db):
    at = open_page(open_app, db, "statistics", view="leaderboards")
    at.slider(key="min_H").set_value(1.0).run()  # normalised entropy is below 1 unless a map is uniform
    assert_clean(at)
    assert "No word has mean entropy ≥ 1.00" in messages(at)


def test_runs_page_describes_the_run(open_app, db):
    at = open_page(open_app, db, "runs")
    assert_clean(at)
    values = {m.label: m.value for m in at.metric}
    assert values["images done"] == f"{run_row(db)['n_images']:,}" and values["status"] == "complete"
    assert "No errors logged" in " ".join(s.value for s in at.success)


# ---------------------------------------------------------------- shareable state


def test_search_deep_link_restores_every_control(open_app, db):
    layer = str(run_row(db)["gradcam_layer"])
    query = {
        "by": "word",
        "word": "a",
        "sort": "entropy",
        "order": "ascending",
        "object": "any",
        "range_entropy": ["0.4", "0.9"],
        "p": "2",
        "cmap": "magma",
        "method": "gradcam",
        "layer": layer,
    }
    at = open_page(open_app, db, None, **query)
    assert_clean(at)
    assert at.selectbox(key="word_choice").value == "a"
    assert at.selectbox(key="sort").value == "entropy" and at.radio(key="order").value == "ascending"
    assert at.slider(key="range_entropy").value == (0.4, 0.9)
    assert at.selectbox(key="cmap").value == "magma"
    assert shown_slice(at)[1:] == ("gradcam", int(layer))
    links = card_links(at)
    assert len(links) == 24 and all(link["method"] == "gradcam" and link["layer"] == layer for link in links)
    assert f"gradcam layer {layer}" in at.markdown[0].value
    # Same link, same results: a second session shows the same cards in the same order.
    assert card_links(open_page(open_app, db, None, **query)) == links


def test_search_writes_its_word_to_the_url(open_app, db):
    at = open_page(open_app, db, None)
    at.selectbox(key="word_choice").set_value("dog").run()
    assert at.query_params["word"] == "dog"
    assert len(card_links(at)) == min(24, len(word_rows(db, at, word="dog")))


# ---------------------------------------------------------------- bad databases and files


def test_missing_image_files_are_drawn_grey_with_a_note(open_app, db, tmp_path):
    at = open_page(open_app, db, None, "--images", str(tmp_path / "nowhere"), word="dog")
    assert_clean(at)
    assert "image files were not found" in messages(at)
    assert card_links(at) and all(
        "(file missing)" in link.label for link in at.get("page_link") if link.proto.page == "image"
    )


def _empty_db(path: Path) -> Path:
    writer.connect(path).close()
    return path


def _old_schema_db(path: Path) -> Path:
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
        con.execute("INSERT INTO meta VALUES ('schema_version', '0')")
    return path


def _not_a_db(path: Path) -> Path:
    path.write_text("not a database")
    return path


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_empty_db, "no extraction runs yet"),
        (_old_schema_db, "v0, this code needs schema"),
        (_not_a_db, "not a readable DuckDB extraction database"),
        (lambda path: path, "No database file"),
    ],
)
@pytest.mark.parametrize("page", [None, "image", "statistics", "runs"])
def test_bad_databases_show_a_message_not_a_traceback(open_app, tmp_path, make, expected, page):
    db = make(tmp_path / "bad.duckdb")
    at = open_page(open_app, db, page)
    assert_clean(at)
    assert expected in messages(at)


def test_database_being_built_says_so(open_app, tmp_path):
    db = _empty_db(tmp_path / "busy.duckdb")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time\ncon = duckdb.connect(sys.argv[1])\nprint('ready', flush=True)\ntime.sleep(60)",
            str(db),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        at = open_app("--db", str(db)).run()
        assert_clean(at)
        assert "being built by another process" in messages(at) and "finalize" in messages(at)
    finally:
        holder.kill()
        holder.wait()


def test_a_caption_of_another_image_is_ignored(open_app, db):
    with duckdb.connect(str(db), read_only=True) as con:
        (other,) = con.execute("SELECT min(caption_id) FROM captions WHERE image_id <> 139").fetchone()
    at = open_page(open_app, db, "image", image="139", caption=str(other), w="1")
    assert_clean(at)
    assert "caption" not in at.query_params and "w" not in at.query_params
    assert "**whole caption**" in " ".join(m.value for m in at.markdown)


def test_without_db_it_opens_the_demo_database(open_app, db, monkeypatch, tmp_path):
    from dashboard import data

    monkeypatch.setattr(data, "DEMO_DB", tmp_path / "demo" / "demo.duckdb")
    at = open_app().run()
    assert_clean(at)
    assert "demo database is missing: build it with `make run`" in messages(at)
    monkeypatch.setattr(data, "DEMO_DB", db)
    at = open_app(word="man").run()
    assert_clean(at)
    assert card_links(at) and at.selectbox(key="run").value == run_row(db)["run_id"]


@pytest.mark.parametrize("name", ["../secret.jpg", "/etc/passwd", "a/../../x.jpg"])
def test_image_paths_cannot_escape_the_image_folder(tmp_path, name):
    from dashboard.paths import image_path

    root = tmp_path / "images"
    root.mkdir()
    assert image_path(root, name) is None
    assert image_path(root, "ok.jpg") == (root / "ok.jpg").resolve()
    assert image_path(None, "ok.jpg") is None


def test_a_run_still_in_progress_is_browsable_from_its_parts(open_app, shared, tmp_path):
    db = run_extraction(shared, tmp_path / "live.duckdb", "val2017-small", "--shard", "0/2")
    db.unlink()  # nothing built yet: the extraction has only written its parts so far
    at = open_page(open_app, db, "runs")
    assert_clean(at)
    values = {m.label: m.value for m in at.metric}
    assert values["status"] == "running" and values["images done"] == "5"
    search = open_page(open_app, db, None, by="word", word="a")
    assert_clean(search)
    assert len(card_links(search)) > 0
