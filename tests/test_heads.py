"""Grounding heads: the per-head mask masses a real extraction stores equal a direct computation from each
head's maps, relate to the head-mean map's mask mass as mass's linearity says, and the Statistics view
draws their layer x head heatmap."""

import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import torch
from streamlit.testing.v1 import AppTest

from db import heads
from extractor import metrics
from extractor.binding import tag_words
from extractor.categories import match_words
from extractor.checkpoint import load_checkpoint
from extractor.coco import image_objects, load_captions, load_image, load_instances
from extractor.config import ALBEFConfig
from extractor.image import eval_transform
from extractor.maps import caption_maps, merge_pieces
from extractor.model import ALBEF
from extractor.text import Tokenizer, pre_caption


def direct_head_masses(shared) -> pd.DataFrame:
    """Per word with an object of val2017-small, per fusion layer and head: mask_mass (numpy) of that head's
    whole-word map, and the head map's patch sum (its weight in the head-mean map)."""
    ckpt = shared / "fixtures" / "albef-reference" / "finetuned-tiny"
    cfg = ALBEFConfig.from_json(ckpt / "config.json")
    model = ALBEF(cfg).eval()
    load_checkpoint(model, ckpt / "checkpoint.pth")
    coco_dir = shared / "coco" / "val2017-small"
    images, annotations = load_captions(coco_dir / "annotations" / "captions_val2017_small.json")
    coco = load_instances(coco_dir / "annotations" / "instances_val2017_small.json")
    res = cfg.image_res
    pixels = torch.stack([eval_transform(load_image(coco_dir / "val2017" / im["file_name"]), res) for im in images])
    row_of = {im["id"]: i for i, im in enumerate(images)}
    tokens = Tokenizer(shared / "bert-base-uncased" / "vocab.txt")(
        [pre_caption(a["caption"], cfg.max_words) for a in annotations]
    )
    index = [row_of[a["image_id"]] for a in annotations]
    token_maps = caption_maps(model, pixels, tokens, index, cfg.fusion_layers, False, keep_heads=True)
    g = cfg.grid_size
    covers = [metrics.image_covers(image_objects(coco, im["id"], im["height"], im["width"]),
                                   im["height"], im["width"], g) for im in images]  # fmt: skip
    rows = []
    for ann, tok, maps, i in zip(annotations, tokens, token_maps, index, strict=True):
        tags = tag_words(tok.words, match_words(tok.words))
        cat, _, has = metrics.covers_for_words(tags.scored_category, covers[i], g)
        named, scored = (np.array([c or 0 for c in cats]) for cats in (tags.category, tags.scored_category))
        pairs = metrics.other_object_pairs(named, scored, np.zeros(len(named), int))
        for layer in cfg.fusion_layers:
            for head, per_token in enumerate(maps.attention[layer][:, :, 1:]):
                grid = per_token.reshape(len(per_token), g, g)
                word_maps = merge_pieces(grid, tok.word_of_token, len(tok.words)).clip(0)
                mass = metrics.mass_inside(word_maps, cat)
                others = metrics.others_reference(word_maps, pairs)
                spec = metrics.word_metrics_batch(word_maps, others=others)["specificity_others"]
                for w in np.flatnonzero(has):
                    rows.append((ann["id"], w, layer, head, mass[w], word_maps[w].sum(), spec[w]))
    columns = ["caption_id", "word_index", "layer", "head", "direct", "weight", "direct_specificity"]
    return pd.DataFrame(rows, columns=columns)


@pytest.fixture(scope="module")
def stored_and_direct(shared, small_db) -> pd.DataFrame:
    with duckdb.connect(str(small_db), read_only=True) as con:
        stored = con.execute(
            "SELECT h.caption_id, h.word_index, h.layer, h.head, h.mask_mass, h.specificity_others, "
            "w.mask_mass AS mean_map "
            "FROM word_heads AS h JOIN words AS w USING (run_id, image_id, caption_id, word_index, layer) "
            "WHERE w.method = 'attention'"
        ).df()
    keys = ["caption_id", "word_index", "layer", "head"]
    return stored.merge(direct_head_masses(shared), on=keys, how="outer", validate="1:1", indicator=True)


def test_stored_head_masses_equal_a_direct_computation_from_each_heads_map(stored_and_direct):
    both = stored_and_direct
    assert len(both) > 100 and (both["_merge"] == "both").all()  # the same words, layers and heads
    assert both["head"].nunique() > 1 and both["layer"].nunique() > 1  # every head of every layer (the outer merge)
    np.testing.assert_allclose(both["mask_mass"], both["direct"], rtol=0, atol=1e-5)
    assert both["mask_mass"].std() > 0.01  # heads differ


def test_stored_head_specificities_equal_a_direct_computation_from_each_heads_word_maps(small_db, stored_and_direct):
    with duckdb.connect(str(small_db), read_only=True) as con:
        nan = con.execute("SELECT count(*) FILTER (isnan(specificity_others)) FROM word_heads").fetchone()[0]
    assert nan == 0  # NULL, never NaN
    both = stored_and_direct
    stored, direct = both["specificity_others"].to_numpy(float), both["direct_specificity"].to_numpy(float)
    # NULL (the frame's NaN) where the caption names no other category; some rows of each, and heads that differ.
    np.testing.assert_array_equal(np.isnan(stored), np.isnan(direct))
    assert 0 < np.isnan(stored).sum() < len(both) and np.nanstd(stored) > 0.01
    np.testing.assert_allclose(stored, direct, rtol=0, atol=1e-5)


def test_the_mean_maps_mass_is_the_heads_masses_weighted_by_their_patch_share(stored_and_direct):
    # Mass is linear in the map, but each map is renormalised: the head-mean map's mask mass is the mean of the
    # heads' masses weighted by each head's patch mass (1 - its image [CLS] share), not their plain mean.
    both = stored_and_direct.assign(weighted=lambda d: d["mask_mass"] * d["weight"])
    per_word = both.groupby(["caption_id", "word_index", "layer"]).agg(
        weighted=("weighted", "sum"),
        weight=("weight", "sum"),
        plain=("mask_mass", "mean"),
        mean_map=("mean_map", "first"),
    )
    np.testing.assert_allclose(per_word["weighted"] / per_word["weight"], per_word["mean_map"], rtol=0, atol=1e-5)
    assert np.abs(per_word["plain"] - per_word["mean_map"]).max() > 1e-4  # the plain mean is only close
    np.testing.assert_allclose(per_word["plain"], per_word["mean_map"], rtol=0, atol=0.1)


def test_layer_by_head_means_are_the_stored_masses_means(small_db, stored_and_direct):
    with duckdb.connect(str(small_db), read_only=True) as con:
        run_id = con.execute("SELECT run_id FROM runs").fetchone()[0]
        grid = heads.head_means(con, run_id)
        expected = stored_and_direct.groupby(["layer", "head"])["mask_mass"].agg(["size", "mean"]).reset_index()
        np.testing.assert_allclose(grid["mean"], expected["mean"], rtol=1e-6)
        assert grid["n"].tolist() == expected["size"].tolist()
        category = con.execute("SELECT category_id FROM words WHERE mask_mass IS NOT NULL AND category_id IS NOT NULL "
                               "GROUP BY 1 ORDER BY count(*) DESC LIMIT 1").fetchone()[0]  # fmt: skip
        one = heads.head_means(con, run_id, category_id=category)
        naming = stored_and_direct.merge(
            con.execute(
                "SELECT DISTINCT caption_id, word_index FROM words WHERE category_id = $c", {"c": category}
            ).df()
        )
    expected = naming.groupby(["layer", "head"])["mask_mass"].agg(["size", "mean"]).reset_index()
    np.testing.assert_allclose(one["mean"], expected["mean"], rtol=1e-6)
    assert one["n"].tolist() == expected["size"].tolist() and 0 < one["n"].sum() < grid["n"].sum()


def statistics_heads(open_app, db: Path, category: str | None = None) -> AppTest:
    """The Statistics page's grounding-heads view, headless, optionally for one category."""
    at = open_app("--db", str(db)).run()
    at.query_params.update(view="grounding heads")
    at = at.switch_page("views/statistics.py").run()
    if category:
        at = at.selectbox(key="heads_category").select(category).run()
    return at


def heatmap_of(at: AppTest) -> dict:
    (chart,) = at.get("plotly_chart")
    return json.loads(chart.proto.spec)["data"][0]


def test_statistics_draws_the_layer_by_head_heatmap(open_app, small_db):
    at = statistics_heads(open_app, small_db)
    assert not at.exception, [e.value for e in at.exception]
    with duckdb.connect(str(small_db), read_only=True) as con:
        run_id = con.execute("SELECT run_id FROM runs").fetchone()[0]
        grid = heads.head_means(con, run_id)
        person = heads.head_means(con, run_id, category_id=1)  # COCO's person, the subset's most named category
    shown = heatmap_of(at)  # one square cell per (layer, head), its colour the mean
    assert (shown["y"], shown["x"]) == (grid["layer"].tolist(), grid["head"].tolist())
    np.testing.assert_allclose(shown["marker"]["color"], grid["mean"], rtol=1e-6)
    assert shown["customdata"] == grid["n"].tolist() and grid["layer"].nunique() > 1
    at = statistics_heads(open_app, small_db, "person")
    np.testing.assert_allclose(heatmap_of(at)["marker"]["color"], person["mean"], rtol=1e-6)
