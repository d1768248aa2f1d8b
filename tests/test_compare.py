"""Runs compared (db/compare.py, db/bootstrap.py, the Compare runs page) on three real extractions in one
database: the fine-tuned and the pre-trained fixture checkpoints over the same images of the shared COCO
subset, and a pre-trained Grad-CAM-only run over fewer of them. Expected values come from the test's own SQL
and pandas on the word rows."""

import json
import shutil
from urllib.parse import parse_qsl, urlencode

import duckdb
import numpy as np
import pandas as pd
import pytest
import streamlit as st

from db import bootstrap, compare, queries
from db.compare import Slice
from db.schema import UNFINALIZE_SQL
from tests.conftest import FEWER, IMAGES
from tests.test_browser import shoot, streamlit_server, wait_for_overlays
from tests.test_compare_page import open_compare

KEYS = ["image_id", "caption_id", "word_index"]


@pytest.fixture(scope="module")
def con(runs):
    con = queries.connect_readonly(runs["db"])
    yield con
    con.close()


def gradcam(runs, name: str) -> Slice:
    return Slice(runs["ids"][name], "gradcam", runs["gradcam_layer"])


def word_rows(runs, s: Slice) -> pd.DataFrame:
    """A slice's word rows with category names, read with the test's own SQL."""
    with duckdb.connect(str(runs["db"]), read_only=True) as con:
        return con.execute(
            "SELECT w.* EXCLUDE (map, map_max), c.name FROM words AS w LEFT JOIN categories AS c USING (category_id) "
            "WHERE run_id = ? AND method = ? AND layer = ?",
            [s.run_id, s.method, s.layer],
        ).df()


def key_image_means(rows: pd.DataFrame, metric: str, by: str) -> pd.DataFrame:
    """Per (word or category name, image) of one slice's rows with the metric: n and the metric's mean."""
    rows = rows.assign(key=rows["word"] if by == "word" else rows["name"]).dropna(subset=["key", metric])
    rows = rows.astype({metric: float})
    return rows.groupby(["key", "image_id"])[metric].agg(n="size", mean="mean").reset_index()


def expected_changes(runs, a: Slice, b: Slice, metric: str, by: str) -> pd.DataFrame:
    """Per word or category name, in pandas: the (key, image) pairs both slices have, each weighted by its
    occurrences that pair up (the smaller count): n, n_images, mean_a, mean_b and the mean change."""
    pairs = key_image_means(word_rows(runs, a), metric, by).merge(
        key_image_means(word_rows(runs, b), metric, by), on=["key", "image_id"], suffixes=("_a", "_b")
    )
    pairs["w"] = np.minimum(pairs["n_a"], pairs["n_b"])
    pairs = pairs.assign(wa=pairs["w"] * pairs["mean_a"], wb=pairs["w"] * pairs["mean_b"])
    sums = pairs.groupby("key").agg(n=("w", "sum"), n_images=("image_id", "size"), wa=("wa", "sum"), wb=("wb", "sum"))
    return sums.assign(mean_a=sums["wa"] / sums["n"], mean_b=sums["wb"] / sums["n"],
                       change=(sums["wb"] - sums["wa"]) / sums["n"]).drop(columns=["wa", "wb"])  # fmt: skip


def occurrence_changes(runs, a: Slice, b: Slice, metric: str, by: str) -> pd.DataFrame:
    """Per word or category name, in pandas: the mean change over caption words matched by (image, caption,
    word index) with the metric in both slices, and their number n."""
    both = word_rows(runs, a).merge(word_rows(runs, b), on=KEYS, suffixes=("_a", "_b"))
    both = both.dropna(subset=[f"{metric}_a", f"{metric}_b"])
    both["key"] = both["word_a"] if by == "word" else both["name_a"]
    both = both.dropna(subset=["key"]).astype({f"{metric}_a": float, f"{metric}_b": float})
    both["diff"] = both[f"{metric}_b"] - both[f"{metric}_a"]
    return both.groupby("key").agg(n=("diff", "size"), change=("diff", "mean"))


def test_the_overlap_counts_images_in_both_runs_and_in_one_only(runs, con):
    with duckdb.connect(str(runs["db"]), read_only=True) as own:
        images = {
            name: set(own.execute("SELECT DISTINCT image_id FROM words WHERE run_id = ?", [run_id]).df()["image_id"])
            for name, run_id in runs["ids"].items()
        }
    overlap = compare.image_overlap(con, runs["ids"]["a"], runs["ids"]["c"])
    assert overlap == {
        "both": len(images["a"] & images["c"]),
        "only_a": len(images["a"] - images["c"]),
        "only_b": len(images["c"] - images["a"]),
    }
    assert overlap["both"] == FEWER and overlap["only_a"] == IMAGES - FEWER
    assert compare.image_overlap(con, runs["ids"]["a"], runs["ids"]["b"])["only_a"] == 0


@pytest.mark.parametrize(
    ("metric", "by", "other"),
    [("mask_mass", "word", "b"), ("entropy", "word", "b"), ("pointing_hit", "word", "b"),
     ("background_mass", "category", "b"), ("entropy", "word", "c"), ("mask_mass", "category", "c")],
)  # fmt: skip
def test_changes_equal_a_direct_computation_on_the_paired_rows(runs, con, metric, by, other):
    a, b = gradcam(runs, "a"), gradcam(runs, other)
    got = compare.changes(con, a, b, metric, by).set_index("key").sort_index()
    want = expected_changes(runs, a, b, metric, by).sort_index()
    assert len(got) > 10 and got.index.tolist() == want.index.tolist()
    assert (got["n"] == want["n"]).all() and (got["n_images"] == want["n_images"]).all()
    for column in ("mean_a", "mean_b", "change"):
        np.testing.assert_allclose(got[column], want[column], atol=1e-9)
    assert got["change"].abs().max() > 0  # two different checkpoints do differ
    got_min = compare.changes(con, a, b, metric, by, min_count=5)
    assert set(got_min["key"]) == set(want.index[want["n"] >= 5])


@pytest.mark.parametrize(("metric", "by"), [("mask_mass", "word"), ("entropy", "category")])
def test_over_the_same_captions_the_change_is_the_mean_change_per_caption_word(runs, con, metric, by, monkeypatch):
    paired_per_image = []
    pairs = compare._pairs
    monkeypatch.setattr(compare, "_pairs", lambda *args: paired_per_image.append(args) or pairs(*args))
    a, b = gradcam(runs, "a"), Slice(runs["ids"]["b"], "attention", runs["gradcam_layer"])
    got = compare.key_totals(con, a, b, metric, by).set_index("key").sort_index()
    assert not paired_per_image  # every key has the same pairing fingerprint: totalled from key_summary
    want = occurrence_changes(runs, a, b, metric, by).sort_index()
    assert len(got) > 10 and got.index.tolist() == want.index.tolist() and (got["n"] == want["n"]).all()
    np.testing.assert_allclose(got["change"], want["change"], atol=1e-9)
    compare.key_totals(con, a, gradcam(runs, "c"), metric, by)  # fewer images: their keys pair image by image
    assert paired_per_image


def test_a_run_not_finalized_compares_from_its_word_rows_as_a_finalized_one(runs, con, tmp_path):
    a, b = gradcam(runs, "a"), gradcam(runs, "c")
    copy = tmp_path / "unfinalized.duckdb"
    shutil.copyfile(runs["db"], copy)
    with duckdb.connect(str(copy)) as own:
        for sql in UNFINALIZE_SQL:
            own.execute(sql, {"run_id": b.run_id})
        assert own.execute("SELECT count(*) FROM key_image_summary WHERE run_id = ?", [b.run_id]).fetchone() == (0,)
    with queries.connect_readonly(copy) as live:
        assert compare.finalized_runs(live, a.run_id, b.run_id) == {a.run_id}
        for by in compare.BY:
            pd.testing.assert_frame_equal(compare.changes(live, a, b, "mask_mass", by),
                                          compare.changes(con, a, b, "mask_mass", by), rtol=1e-12)  # fmt: skip


def test_the_interval_holds_the_estimate_and_narrows_with_more_images(runs, con):
    a = gradcam(runs, "a")
    many = compare.changes(con, a, gradcam(runs, "b"), "entropy", min_count=1).set_index("key")
    few = compare.changes(con, a, gradcam(runs, "c"), "entropy", min_count=1).set_index("key")
    for table in (many, few):  # resample sums are float32: 1e-7 relative
        assert ((table["low"] <= table["change"] + 1e-6) & (table["change"] <= table["high"] + 1e-6)).all()
    # Words seen in several images of the smaller run: their intervals over 80 images are narrower.
    shared = few.index[few["n_images"] >= 3]
    assert len(shared) >= 5
    width_many = (many.loc[shared, "high"] - many.loc[shared, "low"]).median()
    width_few = (few.loc[shared, "high"] - few.loc[shared, "low"]).median()
    assert 0 < width_many < width_few
    # Seeded: the same call gives the same interval; another seed another one.
    again = compare.changes(con, a, gradcam(runs, "c"), "entropy", min_count=1).set_index("key")
    pd.testing.assert_frame_equal(few, again)
    other = compare.changes(con, a, gradcam(runs, "c"), "entropy", min_count=1, seed=1).set_index("key")
    assert not np.allclose(other.loc[shared, "low"], few.loc[shared, "low"])


def test_intervals_only_for_the_first_keys_of_the_order_asked(runs, con):
    a, b = gradcam(runs, "a"), gradcam(runs, "b")
    full = compare.changes(con, a, b, "mask_mass", "category", order="fall")
    assert full["change"].is_monotonic_increasing and full["low"].notna().all()
    first = compare.changes(con, a, b, "mask_mass", "category", order="fall", intervals=5)
    pd.testing.assert_frame_equal(first.head(5), full.head(5))
    assert first["low"].iloc[5:].isna().all() and first["high"].iloc[5:].isna().all()


def test_no_intervals_asked_reads_no_image_rows_and_resamples_nothing(runs, con, monkeypatch):
    a, b = gradcam(runs, "a"), gradcam(runs, "b")
    full = compare.changes(con, a, b, "entropy", order="rise")

    def refused(*args, **kwargs):
        raise AssertionError("not needed without intervals")

    monkeypatch.setattr(compare, "per_image", refused)
    monkeypatch.setattr(compare, "ratio_ci", refused)
    none = compare.changes(con, a, b, "entropy", order="rise", intervals=0)
    assert len(none) > 10 and none["low"].isna().all() and none["high"].isna().all()
    pd.testing.assert_frame_equal(none.drop(columns=["low", "high"]), full.drop(columns=["low", "high"]))


def test_kept_weights_give_the_intervals_of_freshly_hashed_ones_bit_for_bit(runs, con, monkeypatch):
    rows = compare.per_image(con, gradcam(runs, "a"), gradcam(runs, "b"), "entropy")
    group, _ = pd.factorize(rows["key"], sort=True)
    every = (group, rows["image_id"].to_numpy(), (rows["sum_b"] - rows["sum_a"]).to_numpy(), rows["n"].to_numpy())
    images = rows.groupby("key")["image_id"].size()
    rare = rows["key"].isin(images.index[images <= 3][:5]).to_numpy()  # 5 words of 3 images at most
    few = (pd.factorize(rows.loc[rare, "key"], sort=True)[0], *(column[rare] for column in every[1:]))
    assert len(np.unique(few[1])) < len(np.unique(every[1]))
    fresh = {}
    for name, args in (("few", few), ("every", every)):
        bootstrap.clear_weights()
        fresh[name] = bootstrap.ratio_ci(*args)
    hashed = []
    poisson_weights = bootstrap._poisson_weights
    monkeypatch.setattr(bootstrap, "_poisson_weights", lambda *args: hashed.append(args) or poisson_weights(*args))
    bootstrap.clear_weights()
    # The few words' images hashed; then every word's (the union); then both gathered from the kept table.
    kept = [bootstrap.ratio_ci(*args) for args in (few, every, few, every)]
    assert len(hashed) == 2
    for name, got in zip(("few", "every", "few", "every"), kept, strict=True):
        for want, value in zip(fresh[name], got, strict=True):
            np.testing.assert_array_equal(value, want)
    other_seed = bootstrap.ratio_ci(*every, seed=1)
    assert len(hashed) == 3 and not np.array_equal(other_seed[1], fresh["every"][1])


def test_weights_over_the_kept_bytes_are_returned_but_not_kept(runs, con, monkeypatch):
    rows = compare.per_image(con, gradcam(runs, "a"), gradcam(runs, "c"), "entropy")
    group = pd.factorize(rows["key"], sort=True)[0]
    args = (group, rows["image_id"].to_numpy(), rows["sum_b"] - rows["sum_a"], rows["n"])
    bootstrap.clear_weights()
    want = bootstrap.ratio_ci(*args)
    assert bootstrap._kept is not None  # under the cap: kept
    n_images = rows["image_id"].nunique()
    monkeypatch.setattr(bootstrap, "_KEPT_BYTES", n_images * 1000 - 1)  # one byte short of this call's table
    bootstrap.clear_weights()
    got = bootstrap.ratio_ci(*args)
    assert bootstrap._kept is None
    for value, expected in zip(got, want, strict=True):
        np.testing.assert_array_equal(value, expected)


@pytest.mark.parametrize("by", ["word", "category"])
def test_a_run_compared_with_itself_changes_nothing(runs, con, by):
    a = gradcam(runs, "a")
    same = compare.changes(con, a, a, "mask_mass", by)
    assert len(same) > 5
    assert (same["change"] == 0).all() and (same["low"] == 0).all() and (same["high"] == 0).all()
    assert (same["mean_a"] == same["mean_b"]).all()


def test_matched_words_carry_both_runs_maps_of_the_same_caption_word(runs, con):
    a, b = gradcam(runs, "a"), Slice(runs["ids"]["b"], "attention", runs["gradcam_layer"])
    word = compare.changes(con, a, b, "entropy", min_count=5)["key"].iloc[0]
    pairs = compare.matched_words(con, a, b, "entropy", word, limit=4)
    assert len(pairs) == 4 and (pairs["word"] == word).all()
    changes = (pairs["value_b"] - pairs["value_a"]).abs()
    assert changes.is_monotonic_decreasing
    with duckdb.connect(str(runs["db"]), read_only=True) as own:
        for row in pairs.to_dict("records"):
            for side, s in (("a", a), ("b", b)):
                map_, value = own.execute(
                    "SELECT map, entropy FROM words WHERE run_id = ? AND method = ? AND layer = ? AND image_id = ? "
                    "AND caption_id = ? AND word_index = ?",
                    [s.run_id, s.method, s.layer, row["image_id"], row["caption_id"], row["word_index"]],
                ).fetchone()
                assert map_ == row[f"map_{side}"] and value == pytest.approx(row[f"value_{side}"])
            assert row["caption"].split(" ")[row["word_index"]] == word


# ---------------------------------------------------------------- the page


@pytest.fixture
def fresh_cache():
    """The page's cached questions forgotten before and after the test (one that patches what they call)."""
    st.cache_data.clear()
    try:
        yield
    finally:
        st.cache_data.clear()


def test_the_page_ranks_changes_and_shows_both_maps_side_by_side(runs, con, open_app):
    ids, layer = runs["ids"], runs["gradcam_layer"]
    query = {"run_a": ids["a"], "run_b": ids["b"], "slice_a": f"gradcam-{layer}", "metric": "entropy"}
    at = open_compare(open_app, runs["db"], **query)
    assert not at.exception
    table = at.dataframe[0].value
    want = compare.changes(con, gradcam(runs, "a"), gradcam(runs, "b"), "entropy", min_count=3)
    assert set(table["key"]) == set(want["key"])
    assert table["change"].abs().is_monotonic_decreasing  # ranked by the size of the change
    pick = table["key"].iloc[0]
    assert at.query_params["pick"] == pick and at.query_params["slice_b"] == f"gradcam-{layer}"
    captions = [c.value for c in at.caption]
    assert sum(c.startswith("Run A:") for c in captions) == sum(c.startswith("Run B:") for c in captions) > 0
    cards = [dict(parse_qsl(link.proto.query_string)) for link in at.get("page_link") if link.proto.page == "image"]
    sides = [(ids[side], "gradcam", str(layer)) for side in "ab"] * (len(cards) // 2)
    assert [(card["run"], card["method"], card["layer"]) for card in cards] == sides and cards  # each its own run
    assert not [m for m in at.info if "different images" in m.value]  # same images: no note
    # The final state: the first keys' intervals filled in, the chart's error bars drawn, no pending note.
    first = table.head(100)
    assert first["low"].notna().all() and (first["low"] <= first["change"] + 1e-6).all()
    pd.testing.assert_frame_equal(table.head(100), want.set_index("key").loc[first["key"]].reset_index())
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert "95% bootstrap intervals" in chart["layout"]["title"]["text"] and chart["data"][0]["error_x"]["array"]
    assert not [c for c in at.caption if "omputing intervals" in c.value]
    # The deep link round-trips: the URL it wrote opens the same view.
    link = dict(at.query_params)
    again = open_compare(open_app, runs["db"], **link)
    pd.testing.assert_frame_equal(again.dataframe[0].value, table)
    assert dict(again.query_params) == link


def test_the_ranking_shows_before_the_intervals_with_a_note_while_they_compute(
    runs, con, monkeypatch, open_app, fresh_cache
):
    def stalled(*args, **kwargs):  # the SQL-only first paint does not bootstrap; the intervals' call stops here
        raise RuntimeError("intervals stalled")

    monkeypatch.setattr(compare, "ratio_ci", stalled)
    ids, layer = runs["ids"], runs["gradcam_layer"]
    query = {"run_a": ids["a"], "run_b": ids["b"], "slice_a": f"gradcam-{layer}", "metric": "mask_mass"}
    at = open_compare(open_app, runs["db"], **query)
    assert at.exception  # the intervals never came (the app redacts the message)
    table = at.dataframe[0].value
    want = compare.changes(con, gradcam(runs, "a"), gradcam(runs, "b"), "mask_mass", min_count=3, intervals=0)
    pd.testing.assert_frame_equal(table, want)
    assert len(table) > 0 and table["low"].isna().all() and table["high"].isna().all()
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert "computing intervals" in chart["layout"]["title"]["text"] and "error_x" not in chart["data"][0]
    assert [c for c in at.caption if "Computing intervals" in c.value]


def test_runs_over_different_images_compare_on_their_intersection_and_say_so(runs, open_app):
    ids, layer = runs["ids"], runs["gradcam_layer"]
    query = {"run_a": ids["a"], "run_b": ids["c"], "slice_a": f"gradcam-{layer}", "per": "category", "order_by": "rise"}
    at = open_compare(open_app, runs["db"], **query)
    assert not at.exception
    note = " ".join(m.value for m in at.info)
    assert f"compared on the {FEWER} images in both; A has {IMAGES - FEWER} more, B has 0 more" in note
    table = at.dataframe[0].value
    assert table["change"].is_monotonic_decreasing and len(table) > 0


def test_the_compare_page_in_chromium(runs, page, tmp_path):
    ids, layer = runs["ids"], runs["gradcam_layer"]
    query = {"run_a": ids["a"], "run_b": ids["b"], "slice_a": f"gradcam-{layer}", "metric": "entropy"}
    with queries.connect_readonly(runs["db"]) as con:
        top = compare.changes(con, gradcam(runs, "a"), gradcam(runs, "b"), "entropy", min_count=3)
    top = top.iloc[top["change"].abs().argmax()]
    with streamlit_server(runs["db"], tmp_path / "review.sqlite") as base:
        page.goto(f"{base}/compare?{urlencode(query)}")
        page.get_by_text("Top 20 changes").wait_for(timeout=90_000)
        wait_for_overlays(page, 2 * min(int(top["n"]), 6), timeout_ms=90_000)  # run A's and run B's maps
        page.wait_for_timeout(1000)  # let plotly finish drawing
        assert f"pick={top['key']}" in page.url
        shoot(page, "compare_runs")
        page.locator('[data-testid="stImage"]').first.scroll_into_view_if_needed()
        shoot(page, "compare_runs_maps")
