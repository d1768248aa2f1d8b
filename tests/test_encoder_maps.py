"""The image encoder's own [CLS] attention (DINO's view): taken from the encoder's one pass, stored per image
(each head and their mean), and the reference of each word's `specificity_cls`."""

from dataclasses import replace

import duckdb
import numpy as np
import pytest
import torch

from dashboard.encoder_panel import top_mass_only
from db import queries, stats
from db.codec import decode_map
from db.queries import WordFilter
from extractor import metrics
from extractor.checkpoint import load_checkpoint
from extractor.coco import load_image
from extractor.config import ALBEFConfig
from extractor.image import eval_transform
from extractor.model import ALBEF
from tests.conftest import open_page


@pytest.fixture(scope="module")
def model_and_pixels(shared):
    ckpt = shared / "fixtures" / "albef-reference" / "finetuned-tiny"
    cfg = ALBEFConfig.from_json(ckpt / "config.json")
    model = ALBEF(cfg).eval()
    load_checkpoint(model, ckpt / "checkpoint.pth")
    files = sorted((shared / "coco" / "val2017-small" / "val2017").glob("*.jpg"))[:3]
    return model, torch.stack([eval_transform(load_image(f), cfg.image_res) for f in files])


def test_the_encoder_output_is_unchanged_and_its_cls_attention_is_the_blocks_own(model_and_pixels):
    model, pixels = model_and_pixels
    with torch.no_grad():
        tokens = model.encode_image(pixels)
        got_tokens, got = model.encode_image_attending(pixels)
        # timm's unfused path computes the attention matrix itself; its dropout module receives it.
        attn = model.visual_encoder.blocks[-1].attn
        seen, fused = [], attn.fused_attn
        hook = attn.attn_drop.register_forward_hook(lambda _m, _i, out: seen.append(out))
        try:
            attn.fused_attn = False
            model.encode_image(pixels)
        finally:
            attn.fused_attn = fused
            hook.remove()
    assert torch.equal(got_tokens, tokens)
    assert got.shape == (len(pixels), model.cfg.vision.num_heads, model.cfg.grid_size**2 + 1)
    torch.testing.assert_close(got, seen[0][:, :, 0], rtol=0, atol=1e-6)
    assert not torch.allclose(got[:, 0], got[:, 1])  # the heads differ


def stored(con: duckdb.DuckDBPyConnection, sql: str) -> list[tuple]:
    return con.execute(sql).fetchall()


def test_a_run_stores_each_heads_map_and_their_mean_per_image(small_db):
    con = duckdb.connect(str(small_db), read_only=True)
    n_heads = 4  # the fine-tuned fixture's ViT
    done = {i for (i,) in stored(con, "SELECT image_id FROM image_status WHERE status = 'done'")}
    rows = stored(con, "SELECT image_id, head, map, map_max FROM image_maps ORDER BY image_id, head")
    assert {i for i, *_ in rows} == done
    by_image: dict[int, dict[int, np.ndarray]] = {}
    for image_id, head, blob, peak in rows:
        by_image.setdefault(image_id, {})[head] = decode_map(blob, peak)
    for image_id, maps in by_image.items():
        assert sorted(maps) == [-1, *range(n_heads)], image_id
        for m in maps.values():  # distributions over the patches, within the uint8 codec's rounding
            assert abs(m.sum() - 1) <= m.size * m.max() / 510 + 1e-6
        heads = np.stack([maps[h] for h in range(n_heads)])
        np.testing.assert_allclose(maps[-1], heads.mean(0), atol=2 * heads.max() / 255)


def test_each_words_specificities_are_against_its_stored_references(small_db):
    con = duckdb.connect(str(small_db), read_only=True)
    rows = stored(
        con,
        """
        SELECT w.map, w.map_max, e.map, e.map_max, c.cls_map, c.cls_map_max, w.specificity_cls, w.specificity_row
        FROM words w JOIN image_maps e ON e.run_id = w.run_id AND e.image_id = w.image_id AND e.head = -1
        JOIN caption_maps c ON (c.run_id, c.caption_id, c.method, c.layer) = (w.run_id, w.caption_id, w.method, w.layer)
        ORDER BY w.caption_id, w.method, w.layer, w.word_index""",
    )
    assert len(rows) == stored(con, "SELECT count(*) FROM words")[0][0]
    word, encoder, cls_row = (np.stack([decode_map(r[k], r[k + 1]) for r in rows]) for k in (0, 2, 4))
    spec_cls, spec_row = (np.array([r[k] for r in rows], float) for k in (6, 7))
    assert ((spec_cls >= 0) & (spec_cls <= 1) & (spec_row >= 0) & (spec_row <= 1)).all()
    assert spec_cls.std() > 0.01 and spec_row.std() > 0.01
    # From the uint8 maps the divergences move a little, never by much.
    np.testing.assert_allclose(metrics.specificity(word, encoder), spec_cls, atol=0.03)
    np.testing.assert_allclose(metrics.specificity(word, cls_row), spec_row, atol=0.03)


def test_each_words_specificity_against_other_objects_is_against_its_captions_other_object_words(small_db):
    con = duckdb.connect(str(small_db), read_only=True)
    frame = con.execute(
        "SELECT caption_id, method, layer, word_index, coalesce(category_id, 0) AS named, "
        "coalesce(bound_category_id, category_id, 0) AS scored, map, map_max, specificity_others FROM words "
        "ORDER BY caption_id, method, layer, word_index"
    ).df()
    group = frame.groupby(["caption_id", "method", "layer"], sort=False).ngroup().to_numpy()
    pairs = metrics.other_object_pairs(frame["named"].to_numpy(), frame["scored"].to_numpy(), group)
    maps = np.stack([decode_map(b, m) for b, m in zip(frame["map"], frame["map_max"], strict=True)])
    expected = metrics.word_metrics_batch(maps, others=metrics.others_reference(maps, pairs))["specificity_others"]
    stored_values = frame["specificity_others"].to_numpy(float)
    # NULL (never NaN, which sorts above every number and poisons every sum) exactly where the caption names no
    # other category, or the word none; some of each.
    counts = "count(*) FILTER (isnan({0})), count(*) FILTER ({0} IS NULL)"
    for name in ("specificity_cls", "specificity_row"):
        assert con.execute(f"SELECT {counts.format(name)} FROM words").fetchone() == (0, 0), name
    nan, null = con.execute(f"SELECT {counts.format('specificity_others')} FROM words").fetchone()
    assert nan == 0 and null == int(np.isnan(expected).sum())
    summed = con.execute("SELECT sum(n_specificity_others), sum(n), bool_and(isfinite(sum_specificity_others)) "
                         "FROM image_summary").fetchone()  # fmt: skip
    assert summed == (len(frame) - null, len(frame), True)
    np.testing.assert_array_equal(np.isnan(stored_values), np.isnan(expected))
    assert 0 < np.isnan(stored_values).sum() < len(frame) and stored_values[~np.isnan(stored_values)].std() > 0.01
    np.testing.assert_allclose(stored_values, expected, atol=0.03)  # from the uint8 maps, within their rounding


def test_dinos_threshold_keeps_the_fewest_cells_holding_60_percent(small_db):
    con = duckdb.connect(str(small_db), read_only=True)
    for blob, peak in stored(con, "SELECT map, map_max FROM image_maps WHERE head >= 0 LIMIT 8"):
        m = decode_map(blob, peak)
        kept = decode_map(*top_mass_only(blob, peak))
        ranked = np.sort(m.ravel())[::-1]
        n_kept = int((kept > 0).sum())
        assert kept[kept > 0].sum() >= 0.6 * m.sum() - 1e-6
        assert ranked[: n_kept - 1].sum() < 0.6 * m.sum()  # one cell fewer would not hold it
        np.testing.assert_allclose(kept[kept > 0], m[kept > 0], rtol=0.01, atol=peak / 255)


def test_the_image_page_shows_the_encoders_view_beside_the_word(small_db, open_app):
    con = duckdb.connect(str(small_db), read_only=True)
    ((image_id, caption_id, word_index, spec_cls, spec_row, spec_others, method, layer),) = stored(
        con,
        """
        SELECT image_id, caption_id, word_index, specificity_cls, specificity_row, specificity_others, method, layer
        FROM words
        WHERE word_class = 'object' AND specificity_others IS NOT NULL
        ORDER BY image_id, caption_id, word_index, method, layer LIMIT 1""",
    )
    query = {"image": str(image_id), "caption": str(caption_id), "w": str(word_index), "method": method}
    at = open_page(open_app, small_db, "image", layer=str(layer), **query)
    assert not at.exception
    assert any("The image encoder's own attention" in s.value for s in at.subheader)
    text = " ".join(m.value for m in at.markdown)
    assert "image encoder [CLS]" in text and "caption [CLS] row" in text and "caption's other objects" in text
    assert all(f"head {h}" in text for h in range(4))
    assert f"spec·enc {spec_cls:.2f}" in text and f"spec·row {spec_row:.2f}" in text
    assert f"spec·obj {spec_others:.2f}" in text
    n_images = len(at.get("imgs"))
    at.toggle(key="encoder_top").set_value(True).run()
    assert not at.exception and len(at.get("imgs")) == n_images


def test_searches_filter_and_rank_by_specificity_and_statistics_average_it(small_db):
    con = duckdb.connect(str(small_db), read_only=True)
    run_id, method, layer = stored(con, "SELECT run_id, method, layer FROM words WHERE method = 'attention' LIMIT 1")[0]
    slice_ = WordFilter(run_id=run_id, method=method, layer=int(layer))
    ranked = queries.search_words(con, slice_, sort="specificity_cls", descending=True, limit=1000, offset=0)
    values = ranked["specificity_cls"].tolist()
    assert 10 < len(values) < 1000 and values == sorted(values, reverse=True)  # the whole slice, ranked
    middle = float(np.median(values))
    kept = queries.search_words(con, replace(slice_, ranges={"specificity_row": (middle, None)}), sort="entropy",
                                descending=False, limit=1000, offset=0)  # fmt: skip
    assert 0 < len(kept) < len(ranked) and (kept["specificity_row"] >= middle).all()
    per_word = stats.word_stats(con, run_id, method, int(layer))  # a row per (word, category it names)
    weighted = (per_word["n"] * per_word["mean_specificity_cls"]).groupby(per_word["word"]).sum()
    total = weighted / per_word.groupby("word")["n"].sum()
    means = ranked.groupby("word")["specificity_cls"].mean()
    np.testing.assert_allclose(total[means.index], means, atol=1e-6)
