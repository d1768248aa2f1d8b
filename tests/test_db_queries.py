import json
from collections import Counter
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from db import queries, rankings, sample, stats
from db.codec import decode_map
from db.queries import WordFilter
from db.schema import METRICS

RUN = "5a3b1e0000000001"
SLICE = {"run_id": RUN, "method": "gradcam", "layer": 8}


@pytest.fixture(scope="module")
def coco(shared):
    ann = shared / "coco" / "val2017-small" / "annotations"
    return ann / "captions_val2017_small.json", ann / "instances_val2017_small.json"


@pytest.fixture(scope="module")
def dbs(coco, tmp_path_factory):
    """The same sample run twice: finalized (lookup tables) and left unfinished (queries fall back to words)."""
    root = tmp_path_factory.mktemp("queries")
    sample.build_sample_db(root / "final.duckdb", *coco, run_id=RUN)
    sample.build_sample_db(root / "live.duckdb", *coco, run_id=RUN, finish=None)
    cons = {name: queries.connect_readonly(root / f"{name}.duckdb") for name in ("final", "live")}
    yield cons
    for con in cons.values():
        con.close()


@pytest.fixture(scope="module")
def con(dbs):
    return dbs["final"]


@pytest.fixture(scope="module")
def everything(con):
    return queries.export_frame(con, WordFilter(run_id=RUN))


def test_runs_and_summary_count_the_sample(con, coco):
    runs = queries.list_runs(con)
    assert runs["run_id"].tolist() == [RUN] and runs["status"].iloc[0] == "complete"
    summary = queries.run_summary(con, RUN)
    n_words = sum(len(sample.caption_words(a["caption"])) for a in json.loads(coco[0].read_text())["annotations"])
    assert (summary["images_done"], summary["captions"], summary["n_words"]) == (10, 50, n_words)
    assert summary["slices"]["n_rows"].tolist() == [n_words] * 3
    assert queries.run_summary(con, "no such run") == {}


@pytest.mark.parametrize("sort", ["mask_mass", "entropy", "pointing_hit", "iou_top60"])
@pytest.mark.parametrize("descending", [True, False])
def test_ranking_follows_the_metric_with_nulls_last_both_ways(con, sort, descending):
    ranked = queries.search_words(
        con, WordFilter(run_id=RUN), sort=sort, descending=descending, limit=None, with_maps=False
    )
    values = ranked[sort]
    n_null = int(values.isna().sum())
    assert values.iloc[len(values) - n_null :].isna().all()
    known = values.iloc[: len(values) - n_null].astype(float).to_numpy()
    steps = np.diff(known)
    assert (steps <= 0).all() if descending else (steps >= 0).all()
    assert len(known) > 0 and (sort == "entropy" or n_null > 0)  # both parts exercised


def test_pages_concatenate_to_the_full_ranking(con):
    attention = WordFilter(run_id=RUN, method="attention")
    full = queries.search_words(con, attention, sort="entropy", limit=None, with_maps=False)
    pages = [queries.search_words(con, attention, sort="entropy", limit=24, offset=o, with_maps=False)
             for o in range(0, len(full), 24)]  # fmt: skip
    pd.testing.assert_frame_equal(pd.concat(pages, ignore_index=True), full)


FILTERS = [
    ({"word": "refrigerator"}, lambda f: f["word"] == "refrigerator"),
    ({"word": " Refrigerator "}, lambda f: f["word"] == "refrigerator"),
    ({"category_id": 18}, lambda f: f["category_id"] == 18),
    ({"method": "attention", "layer": 11}, lambda f: (f["method"] == "attention") & (f["layer"] == 11)),
    ({"ranges": {"entropy": (0.9, None)}}, lambda f: f["entropy"] >= 0.9),
    ({"ranges": {"mask_mass": (0.2, 0.5)}}, lambda f: f["mask_mass"].between(0.2, 0.5)),
    ({"ranges": {"pointing_hit": (0.5, None)}}, lambda f: f["pointing_hit"].fillna(False).astype(bool)),
    ({"has_object": True}, lambda f: f["mask_mass"].notna()),
    ({"has_object": False}, lambda f: f["category_id"].notna() & f["mask_mass"].isna()),
    ({"word": "a", "layer": 8, "ranges": {"itm_score": (None, 0.5)}},
     lambda f: (f["word"] == "a") & (f["layer"] == 8) & (f["itm_score"] <= 0.5)),
]  # fmt: skip


@pytest.mark.parametrize(("filters", "expected"), FILTERS, ids=[str(f) for f, _ in FILTERS])
def test_filters_narrow_to_exactly_the_matching_rows(con, everything, filters, expected):
    got = queries.search_words(con, WordFilter(run_id=RUN, **filters), limit=None, with_maps=False)
    want = everything[expected(everything).fillna(False).astype(bool)]
    assert 0 < len(got) < len(everything)
    assert queries.count_words(con, WordFilter(run_id=RUN, **filters)) == len(got)
    keys = ["image_id", "caption_id", "word_index", "method", "layer"]
    assert sorted(got[keys].itertuples(index=False)) == sorted(want[keys].itertuples(index=False))


def test_unfinalized_run_answers_the_same(dbs):
    final, live = dbs["final"], dbs["live"]
    for call in (
        lambda c: queries.search_words(c, WordFilter(word="dog"), sort="iou_top60"),
        lambda c: queries.search_words(
            c, WordFilter(category_id=82, has_object=True, ranges={"entropy": (None, 0.95)})
        ),
        lambda c: stats.word_stats(c, **SLICE),
        lambda c: stats.category_stats(c, **SLICE),
        lambda c: stats.layer_comparison(c, RUN),
        lambda c: queries.vocabulary(c, "s", RUN),
        lambda c: queries.search_images(c, WordFilter(word="a", **SLICE), sort="entropy"),
        lambda c: rankings.ranked(c, **SLICE, metric="entropy"),
        lambda c: rankings.ranked(c, by="category", **SLICE, metric="mask_mass"),
        lambda c: rankings.ranked_images(c, **SLICE, metric="background_mass", category_id=18),
        lambda c: rankings.best_slices(c, RUN, word="dog"),
    ):
        pd.testing.assert_frame_equal(call(live), call(final))


def test_hits_carry_caption_image_and_their_own_map(con, coco):
    hits = queries.search_words(con, WordFilter(word="refrigerator", **SLICE))
    raw = {a["id"]: a["caption"] for a in json.loads(coco[0].read_text())["annotations"]}
    assert len(hits) == 3
    for hit in hits.itertuples():
        assert hit.caption_raw == raw[hit.caption_id] and hit.caption.split()[hit.word_index] == "refrigerator"
        assert hit.file_name == f"{hit.image_id:012d}.jpg" and hit.category == "refrigerator"
        m = decode_map(hit.map, hit.map_max)
        assert m.shape == (6, 6) and m[hit.peak_row, hit.peak_col] >= m.max() - hit.map_max / 255


@pytest.mark.parametrize("text", [
    "dog'; DROP TABLE words; --", "' OR '1'='1", "%", "_", "a%", "\\", '"; SELECT 1; --', "dog\x00",
])  # fmt: skip
def test_injection_looking_words_match_nothing_and_break_nothing(con, text):
    total = queries.count_words(con, WordFilter(run_id=RUN))
    assert queries.search_words(con, WordFilter(word=text, run_id=RUN)).empty
    assert queries.count_words(con, WordFilter(word=text, run_id=RUN)) == 0
    assert queries.vocabulary(con, prefix=text).empty
    assert queries.count_words(con, WordFilter(run_id=RUN)) == total > 0


@pytest.mark.parametrize("call", [
    lambda c: queries.search_words(c, sort="map"),
    lambda c: queries.search_words(c, sort="mask_mass DESC; DROP TABLE words"),
    lambda c: queries.count_words(c, WordFilter(ranges={"word": (0, 1)})),
    lambda c: stats.metric_values(c, "1=1", **SLICE),
    lambda c: stats.word_category_matrix(c, **SLICE, metric="n"),
])  # fmt: skip
def test_unknown_metric_is_rejected(con, call):
    with pytest.raises(ValueError, match="unknown metric"):
        call(con)


def test_image_detail_gathers_the_image(con, coco):
    captions = [a for a in json.loads(coco[0].read_text())["annotations"] if a["image_id"] == 802]
    instances = [a for a in json.loads(coco[1].read_text())["annotations"] if a["image_id"] == 802]
    detail = queries.image_detail(con, 802, RUN)
    assert detail["image"]["file_name"].tolist() == ["000000000802.jpg"]
    assert sorted(detail["captions"]["raw"]) == sorted(a["caption"] for a in captions)
    assert detail["captions"]["itm_score"].between(0, 1).all()
    n_words = sum(len(sample.caption_words(a["caption"])) for a in captions)
    assert len(detail["words"]) == 3 * n_words and detail["words"]["map"].notna().all()
    assert len(detail["caption_maps"]) == 3 * len(captions)
    assert sorted(detail["instances"]["annotation_id"]) == sorted(a["id"] for a in instances)
    assert set(detail["instances"]["category"]) == {"refrigerator", "oven"}
    assert all(frame.empty for frame in queries.image_detail(con, 1, RUN).values())


def test_words_at_region_ranks_by_mass_share(con):
    whole = queries.words_at_region(con, 802, RUN, "gradcam", 8, 0, 0, 6, 6, limit=100)
    np.testing.assert_allclose(whole["region_mass"], 1.0, rtol=1e-5)
    corner = queries.words_at_region(con, 802, RUN, "gradcam", 8, 0, 0, 2, 2, limit=5)
    assert len(corner) == 5 and corner["region_mass"].is_monotonic_decreasing
    words = queries.image_detail(con, 802, RUN)["words"].query("method == 'gradcam' and layer == 8")
    best = words.set_index(["caption_id", "word_index"]).loc[tuple(corner.iloc[0][["caption_id", "word_index"]])]
    m = decode_map(best["map"], best["map_max"])
    assert corner["region_mass"].iloc[0] == pytest.approx(m[:2, :2].sum() / m.sum())
    with pytest.raises(ValueError, match="grid"):
        queries.words_at_region(con, 802, RUN, "gradcam", 8, 0, 0, 7, 7)


def test_word_stats_agree_with_the_rows(con, everything):
    per_word = stats.word_stats(con, **SLICE).set_index("word")
    rows = everything[(everything["method"] == "gradcam") & (everything["layer"] == 8)]
    assert per_word["n"].sum() == len(rows)
    for word in ("a", "refrigerator", "dog"):
        mine = rows[rows["word"] == word]
        assert per_word.loc[word, "n"] == len(mine) == queries.count_words(con, WordFilter(word=word, **SLICE))
        assert per_word.loc[word, "mean_entropy"] == pytest.approx(mine["entropy"].mean())
        assert per_word.loc[word, "median_entropy"] == pytest.approx(mine["entropy"].median())
    assert per_word.loc["dog", "hit_rate"] == pytest.approx(rows.loc[rows["word"] == "dog", "pointing_hit"].mean())
    assert stats.word_stats(con, **SLICE, min_count=5)["n"].min() >= 5


def test_category_stats_and_matrix_and_alignment(con, everything):
    rows = everything[(everything["method"] == "gradcam") & (everything["layer"] == 8)]
    cats = stats.category_stats(con, **SLICE).set_index("category")
    n_dog = queries.count_words(con, WordFilter(category_id=18, **SLICE))
    assert cats.loc["dog", "n"] == (rows["category_id"] == 18).sum() == n_dog
    assert cats.loc["dog", "mean_mask_mass"] == pytest.approx(rows.loc[rows["category_id"] == 18, "mask_mass"].mean())
    matrix = stats.word_category_matrix(con, **SLICE, metric="pointing_hit").set_index("word")
    assert matrix.loc["dog", "value"] == pytest.approx(cats.loc["dog", "hit_rate"])
    assert matrix["category_id"].notna().all()
    aligned = stats.word_frequency_alignment(con, **SLICE)
    assert (aligned["n_object"] > 0).all() and aligned["freq_rank"].is_monotonic_increasing


def test_layer_comparison_has_one_row_per_slice(con, everything):
    layers = stats.layer_comparison(con, RUN)
    assert list(zip(layers["method"], layers["layer"], strict=True)) == [("attention", 8), ("attention", 11),
                                                                         ("gradcam", 8)]  # fmt: skip
    rows = everything[(everything["method"] == "attention") & (everything["layer"] == 11)]
    row = layers.iloc[1]
    assert row["n"] == len(rows) and row["n_object"] == rows["mask_mass"].notna().sum()
    for metric in set(METRICS) - {"pointing_hit"}:
        assert row[f"mean_{metric}"] == pytest.approx(rows[metric].mean(), nan_ok=True)  # NaN: not in the sample
    assert row["hit_rate"] == pytest.approx(rows["pointing_hit"].astype(float).mean())


def test_vocabulary_counts_occurrences_once_per_word(con, coco):
    captions = json.loads(coco[0].read_text())["annotations"]
    counts = Counter(w for a in captions for w in sample.caption_words(a["caption"]))
    vocab = queries.vocabulary(con, limit=1000)
    assert dict(zip(vocab["word"], vocab["n"], strict=True)) == dict(counts)
    assert vocab["n"].is_monotonic_decreasing
    assert queries.vocabulary(con, prefix="REFR")["word"].tolist() == ["refrigerator"]


def test_list_categories_counts_labels_and_words(con, coco):
    instances = json.loads(coco[1].read_text())["annotations"]
    cats = queries.list_categories(con, RUN).set_index("name")
    assert len(cats) == 80 and cats.index.is_monotonic_increasing
    assert cats.loc["person", "n_instances"] == sum(a["category_id"] == 1 for a in instances)
    assert cats.loc["refrigerator", "n_words"] == 3 and cats.loc["giraffe", "n_words"] == 0


def test_metric_values_for_chosen_words_and_sampled(con):
    values = stats.metric_values(con, "mask_mass", **SLICE, words=["refrigerator", "oven"])
    assert set(values["word"]) == {"refrigerator", "oven"} and values["value"].notna().all()
    assert len(stats.metric_values(con, "entropy", **SLICE, max_rows=7)) == 7
    assert stats.metric_values(con, "entropy", **SLICE, words=[]).empty


def test_export_has_metrics_but_no_maps(con):
    frame = queries.export_frame(con, WordFilter(word="a", run_id=RUN), sort="entropy")
    assert "map" not in frame and set(METRICS) <= set(frame.columns)
    assert len(frame) == queries.count_words(con, WordFilter(word="a", run_id=RUN))


def ranked_by_hand(rows: pd.DataFrame, key: str, metric: str, descending: bool, min_count: int) -> pd.DataFrame:
    """What rankings.ranked should give, from the rows themselves."""
    groups = rows.assign(v=rows[metric].astype(float)).groupby(key)
    table = pd.DataFrame({"n": groups.size(), "n_value": groups["v"].count(), "value": groups["v"].mean()})
    table = table[(table["n"] >= min_count) & (table["n_value"] > 0)].reset_index()
    return table.sort_values(["value", "n", key], ascending=[not descending, False, True]).head(24)


@pytest.mark.parametrize("metric", ["background_mass", "mask_mass", "pointing_hit"])
@pytest.mark.parametrize("descending", [True, False])
def test_word_and_category_rankings_are_the_means_of_their_rows(con, everything, metric, descending):
    rows = everything[(everything["method"] == SLICE["method"]) & (everything["layer"] == SLICE["layer"])]
    words = rankings.ranked(con, **SLICE, metric=metric, descending=descending, min_count=3)
    want = ranked_by_hand(rows, "word", metric, descending, 3)
    assert words["word"].tolist() == want["word"].tolist() and len(words) > 3
    np.testing.assert_allclose(words["value"], want["value"], rtol=1e-6)
    assert words["n"].tolist() == want["n"].tolist()
    categories = rankings.ranked(con, by="category", **SLICE, metric=metric, descending=descending)
    named = rows[rows["category_id"].notna()].astype({"category_id": int})
    want = ranked_by_hand(named, "category_id", metric, descending, 1)
    # Ties are broken by name, not id: compare what is ranked, (mean, count) in order.
    np.testing.assert_allclose(categories["value"], want["value"], rtol=1e-6)
    assert categories["n"].tolist() == want["n"].tolist() and len(categories) > 3


def test_images_rank_by_the_mean_of_their_words_and_filter_by_category(con, everything):
    rows = everything[(everything["method"] == SLICE["method"]) & (everything["layer"] == SLICE["layer"])]
    means = rows.groupby("image_id")["entropy"].mean().sort_values(ascending=False)
    ranked = rankings.ranked_images(con, **SLICE, metric="entropy", limit=5, offset=2)
    assert ranked["image_id"].tolist() == means.index[2:7].tolist()
    np.testing.assert_allclose(ranked["value"], means.iloc[2:7], rtol=1e-6)
    assert (ranked["n_images"] == len(means)).all()
    with_dog = {i for (i,) in con.execute("SELECT DISTINCT image_id FROM instances WHERE category_id = 18").fetchall()}
    dogs = rankings.ranked_images(con, **SLICE, metric="entropy", category_id=18, limit=100)
    assert set(dogs["image_id"]) == with_dog and 0 < len(with_dog) < len(means)


def test_finalize_writes_one_image_summary_row_per_image_of_each_slice(dbs, everything):
    """The finalized run ranks images from image_summary; the unfinished one has none and aggregates words."""
    summary = dbs["final"].execute("SELECT * FROM image_summary").df().set_index(["method", "layer", "image_id"])
    groups = everything.groupby(["method", "layer", "image_id"])
    assert len(summary) == groups.ngroups > 0 and (summary["n"] == groups.size()).all()
    for metric in ("background_mass", "pointing_hit"):
        values = everything.assign(v=everything[metric].astype(float)).groupby(["method", "layer", "image_id"])["v"]
        assert (summary[f"n_{metric}"] == values.count()).all()
        np.testing.assert_allclose(summary[f"sum_{metric}"], values.sum(min_count=1).loc[summary.index], rtol=1e-6)
    assert dbs["live"].execute("SELECT count(*) FROM image_summary").fetchone() == (0,)


def test_present_metrics_are_those_some_row_has(dbs, everything):
    has = tuple(m for m in METRICS if everything[m].notna().any())
    assert rankings.present_metrics(dbs["final"], RUN) == rankings.present_metrics(dbs["live"], RUN) == has
    assert "mask_mass" in has and rankings.present_metrics(dbs["final"], "no such run") == ()


def test_best_slice_is_where_the_word_grounds_best(con, everything):
    for word in ("dog", "refrigerator"):
        means = everything[everything["word"] == word].groupby(["method", "layer"])["mask_mass"].mean()
        best = rankings.best_slices(con, RUN, word=word)
        assert (best["method"].iloc[0], best["layer"].iloc[0]) == means.idxmax()
        assert len(best) == len(means) and best["mask_mass"].is_monotonic_decreasing
    # A word that never names an object ranks by least background mass.
    background = rankings.best_slices(con, RUN, word="a")
    assert (background["n_object"] == 0).all() and background["background_mass"].is_monotonic_increasing
    assert rankings.best_slices(con, RUN, word="no such word").empty


def test_a_search_grouped_by_image_ranks_images_by_their_best_hit(con, everything):
    where = WordFilter(word="a", **SLICE)
    hits = queries.search_words(con, where, sort="entropy", descending=False, limit=None, with_maps=False)
    best = hits.groupby("image_id")["entropy"].min().sort_values(kind="stable")
    images = queries.search_images(con, where, sort="entropy", descending=False, limit=4)
    assert images["image_id"].tolist() == best.index[:4].tolist()
    assert images["n_matches"].tolist() == hits["image_id"].value_counts()[best.index[:4]].tolist()
    page = queries.search_words(con, replace(where, image_ids=tuple(images["image_id"])), limit=None, with_maps=False)
    assert set(page["image_id"]) == set(images["image_id"]) and len(page) == images["n_matches"].sum()
