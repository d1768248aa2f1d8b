import math

import numpy as np
import pytest

from extractor import metrics
from extractor.coco import image_objects, load_instances

RNG = np.random.default_rng(0)


def one_hot(g: int, row: int, col: int) -> np.ndarray:
    m = np.zeros((g, g))
    m[row, col] = 1.0
    return m


def upsampled_coverage(mask: np.ndarray, g: int) -> np.ndarray:
    """Independent reference: blow every pixel up to g x g sub-pixels; cell (r, c) is then exactly the
    block of H x W sub-pixels at (r*H, c*W), and its coverage that block's mean."""
    H, W = mask.shape
    fine = np.kron(mask, np.ones((g, g), dtype=bool))
    return fine.reshape(g, H, g, W).mean(axis=(1, 3))


def dino_top_cells(m: np.ndarray, fraction: float = 0.6) -> np.ndarray:
    """DINO's visualize_attention.py, transcribed: argsort, cumsum, threshold, unsort."""
    p = m.ravel() / m.sum()
    idx = np.argsort(p, kind="stable")
    keep_sorted = np.cumsum(p[idx]) > 1 - fraction
    keep = np.empty_like(keep_sorted)
    keep[idx] = keep_sorted
    return keep.reshape(m.shape)


@pytest.mark.parametrize("H, W, g", [(8, 8, 4), (5, 7, 2), (13, 11, 4), (43, 61, 24), (24, 24, 24), (3, 5, 4)])
def test_grid_coverage_matches_exact_subpixel_reference(H, W, g):
    mask = RNG.random((H, W)) > 0.6
    np.testing.assert_allclose(metrics.grid_coverage(mask, g), upsampled_coverage(mask, g), atol=1e-12)


def test_grid_coverage_splits_a_pixel_across_a_fractional_cell_bound():
    # 5 rows in 2 cells: the bound at row 2.5 cuts pixel row 2 in half; cells are 2.5 x 3.5 pixels.
    mask = np.zeros((5, 7), dtype=bool)
    mask[2, 0] = True
    cover = metrics.grid_coverage(mask, 2)
    np.testing.assert_allclose(cover, [[0.5 / 8.75, 0], [0.5 / 8.75, 0]])


@pytest.mark.parametrize("fill, expected", [(True, 1.0), (False, 0.0)])
def test_grid_coverage_of_full_and_empty_masks(fill, expected):
    cover = metrics.grid_coverage(np.full((427, 640), fill), 24)
    np.testing.assert_allclose(cover, expected, atol=1e-12)


@pytest.mark.parametrize(
    "boxes, expected",
    [
        ([[0, 0, 4, 4]], np.ones((2, 2))),  # the whole image
        ([[1, 1, 2, 2]], np.full((2, 2), 0.25)),  # a 1x1 corner of each 2x2 cell
        ([[0, 0, 2, 2], [0, 0, 2, 2]], [[1, 0], [0, 0]]),  # a duplicate box counts once
        ([[0, 0, 3, 2], [1, 0, 3, 2]], [[1, 1], [0, 0]]),  # overlapping boxes: union, not sum
        ([[-5, 2, 20, 9]], [[0, 0], [1, 1]]),  # clipped to the image
        ([[0.5, 0, 1, 2]], [[0.5, 0], [0, 0]]),  # fractional coordinates
        ([], np.zeros((2, 2))),
    ],
)
def test_box_coverage(boxes, expected):
    np.testing.assert_allclose(metrics.box_coverage(boxes, 4, 4, 2), expected, atol=1e-12)


def test_box_coverage_equals_grid_coverage_of_the_rasterised_boxes():
    H, W, g = 37, 53, 6
    boxes = np.c_[RNG.integers(0, 40, (5, 2)), RNG.integers(1, 20, (5, 2))]
    mask = np.zeros((H, W), dtype=bool)
    for x, y, w, h in boxes:
        mask[y : y + h, x : x + w] = True
    np.testing.assert_allclose(
        metrics.box_coverage(boxes.tolist(), H, W, g), metrics.grid_coverage(mask, g), atol=1e-12
    )


def test_peak_is_argmax_and_share_of_mass():
    m = np.full((4, 4), 1.0)
    m[2, 3] = 5.0
    row, col, value = metrics.peak(m)
    assert (row, col) == (2, 3)
    assert value == pytest.approx(5 / 20)


@pytest.mark.parametrize(
    "m, expected",
    [
        (np.ones((4, 4)), 1.0),
        (one_hot(4, 1, 2), 0.0),
        (one_hot(4, 0, 0) + one_hot(4, 3, 3), math.log(2) / math.log(16)),
        (np.full((24, 24), 7.0), 1.0),
    ],
)
def test_normalized_entropy(m, expected):
    assert metrics.normalized_entropy(m) == pytest.approx(expected)


def test_map_all_on_the_object_has_all_its_mass_there():
    cover = np.zeros((4, 4))
    cover[1:3, 1:3] = 1.0
    m = cover * RNG.random((4, 4))
    out = metrics.word_metrics(m, cover, cover, union_cover=cover)
    assert out["mask_mass"] == pytest.approx(1.0)
    assert out["box_mass"] == pytest.approx(1.0)
    assert out["background_mass"] == pytest.approx(0.0)
    assert out["pointing_hit"] is True


def test_uniform_map_mass_is_the_area_share():
    cover = RNG.random((24, 24))
    union = np.maximum(cover, RNG.random((24, 24)))
    out = metrics.word_metrics(np.ones((24, 24)), cover, cover, union)
    assert out["entropy"] == pytest.approx(1.0)
    assert out["peak_value"] == pytest.approx(1 / 576)
    assert out["mask_mass"] == pytest.approx(cover.mean())
    assert out["background_mass"] == pytest.approx(1 - union.mean())


@pytest.mark.parametrize(
    "values, kept",
    [
        ([0.5, 0.2, 0.15, 0.1, 0.05], 2),  # 0.5 < 0.6 <= 0.5 + 0.2
        ([0.4, 0.2, 0.2, 0.1, 0.1], 2),  # exactly 0.6: the smallest set holding >= 60%
        ([0.7, 0.1, 0.1, 0.1, 0.0], 1),
        ([0.2] * 5, 3),
    ],
)
def test_top_mass_cells_is_the_smallest_set_holding_60_percent(values, kept):
    m = np.zeros((4, 4))
    m.flat[[5, 0, 15, 9, 3]] = values  # scattered, not in value order
    top = metrics.top_mass_cells(m)
    assert top.sum() == kept
    assert m[top].sum() >= 0.6 - 1e-12
    assert m[top].min() >= m[~top].max()


def test_top_mass_cells_of_a_uniform_map():
    assert metrics.top_mass_cells(np.ones((4, 4))).sum() == 10  # ceil(0.6 * 16)


@pytest.mark.parametrize("g", [4, 16, 24])
def test_top_mass_cells_agrees_with_dino(g):
    maps = RNG.random((20, g, g)) ** 6
    for m, top in zip(maps, metrics.top_mass_cells(maps), strict=True):
        np.testing.assert_array_equal(top, dino_top_cells(m))


def test_iou_top60_against_object_cells():
    cover = np.zeros((4, 4))
    cover[0, 0:2] = cover[1, 0:2] = 1.0
    m = cover.copy()  # equal mass on the 4 object cells: the top-60% set is 3 of them
    assert metrics.iou_top60(m, cover) == pytest.approx(3 / 4)
    assert metrics.iou_top60(one_hot(4, 3, 3), cover) == 0.0


def test_object_cells_fall_back_to_the_most_covered_cell():
    cover = np.zeros((4, 4))
    cover[2, 1], cover[2, 2] = 0.3, 0.1  # a small object: no cell half covered
    np.testing.assert_array_equal(metrics.object_cells(cover), one_hot(4, 2, 1).astype(bool))
    assert metrics.iou_top60(one_hot(4, 2, 1), cover) == 1.0
    assert not metrics.object_cells(np.zeros((4, 4))).any()


def test_pointing_hit_needs_the_peak_cell_touched():
    cover = np.zeros((4, 4))
    cover[1, 1] = 0.01
    assert metrics.pointing_hit(one_hot(4, 1, 1), cover)
    assert not metrics.pointing_hit(one_hot(4, 1, 2), cover)


def test_object_metrics_are_null_without_an_object_and_background_without_instances():
    m = RNG.random((4, 4))
    out = metrics.word_metrics(m, None, None, None)
    assert {k for k, v in out.items() if v is None} == {
        "mask_mass",
        "box_mass",
        "iou_top60",
        "pointing_hit",
        "background_mass",
        "specificity_cls",
        "specificity_row",
        "specificity_others",
    }
    assert out["entropy"] is not None and out["peak_value"] is not None


def test_batch_equals_single_maps_with_mixed_objects():
    n, g = 12, 6
    maps = RNG.random((n, g, g)) ** 3
    cover = RNG.random((n, g, g)) * (RNG.random((n, g, g)) > 0.5)
    box, union = RNG.random((n, g, g)), RNG.random((g, g))
    has_object = RNG.random(n) > 0.4
    batch = metrics.word_metrics_batch(maps, cover, box, union, has_object)
    for i in range(n):
        covers = (cover[i], box[i]) if has_object[i] else (None, None)
        single = metrics.word_metrics(maps[i], *covers, union)
        for key, value in single.items():
            if value is None:
                assert np.isnan(batch[key][i]) or (key == "pointing_hit" and not batch[key][i])
            else:
                assert batch[key][i] == pytest.approx(value), key


def test_batch_matches_the_single_metric_functions():
    maps, cover = RNG.random((5, 4, 4)), RNG.random((5, 4, 4))
    out = metrics.word_metrics_batch(maps, cover, cover, cover[0])
    np.testing.assert_allclose(out["entropy"], metrics.normalized_entropy(maps))
    np.testing.assert_allclose(out["mask_mass"], metrics.mass_inside(maps, cover))
    np.testing.assert_allclose(out["background_mass"], metrics.background_mass(maps, cover[0]))
    np.testing.assert_allclose(out["iou_top60"], metrics.iou_top60(maps, cover))
    np.testing.assert_array_equal(out["pointing_hit"], metrics.pointing_hit(maps, cover))
    refs = metrics.word_metrics_batch(maps, encoder_cls=cover, cls_row=maps[::-1])
    np.testing.assert_allclose(refs["specificity_cls"], metrics.specificity(maps, cover))
    np.testing.assert_allclose(refs["specificity_row"], metrics.specificity(maps, maps[::-1]))


def test_specificity_is_0_for_the_reference_itself_and_1_for_a_map_elsewhere():
    m = RNG.random((6, 6))
    assert metrics.specificity(m, m) == pytest.approx(0.0, abs=1e-12)
    assert metrics.specificity(3 * m, m) == pytest.approx(0.0, abs=1e-12)  # a distribution: scale does not count
    assert metrics.specificity(one_hot(6, 0, 0), one_hot(6, 5, 5)) == pytest.approx(1.0)
    # Half the mass on the reference's cell: JSD of (1/2, 1/2) and (1, 0) = H(3/4, 1/4) - 1/2.
    half = one_hot(6, 0, 0) + one_hot(6, 5, 5)
    expected = -(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25)) - 0.5
    assert metrics.specificity(half, one_hot(6, 0, 0)) == pytest.approx(expected)
    other = RNG.random((6, 6)) ** 4
    assert metrics.specificity(m, other) == pytest.approx(metrics.specificity(other, m))  # symmetric
    assert 0 < metrics.specificity(m, other) < metrics.specificity(one_hot(6, 2, 3), other) < 1


def test_a_map_without_mass_reads_as_uniform():
    out = metrics.word_metrics(np.zeros((4, 4)), None, None, np.zeros((4, 4)))
    assert out["entropy"] == pytest.approx(1.0)
    assert out["peak_value"] == pytest.approx(1 / 16)
    assert out["background_mass"] == pytest.approx(1.0)


def test_negative_maps_are_rejected():
    with pytest.raises(ValueError, match="non-negative"):
        metrics.word_metrics_batch(-np.ones((1, 4, 4)))


def test_image_covers_of_a_real_image(shared):
    coco = load_instances(shared / "coco/val2017-small/annotations/instances_val2017_small.json")
    image_id = max(coco.imgToAnns, key=lambda i: len({a["category_id"] for a in coco.imgToAnns[i]}))
    info = coco.imgs[image_id]
    H, W, g = info["height"], info["width"], 24
    objects = image_objects(coco, image_id, H, W)
    covers = metrics.image_covers(objects, H, W, g)
    cell_area = (H / g) * (W / g)

    assert set(covers.by_category) == {o.category_id for o in objects}
    union_mask = np.logical_or.reduce([o.mask for o in objects])
    assert covers.union.sum() * cell_area == pytest.approx(union_mask.sum())
    for cid, (mask_cover, box_cover) in covers.by_category.items():
        mask = np.logical_or.reduce([o.mask for o in objects if o.category_id == cid])
        assert mask_cover.sum() * cell_area == pytest.approx(mask.sum())
        assert (mask_cover <= covers.union + 1e-9).all()
        # A mask lies in its boxes up to the rasterised edge pixels.
        assert (mask_cover <= box_cover + 0.05).all()

    # A word whose map is uniform over its object's cells: at least half its mass is on the object,
    # it peaks there, and its top-60% cells are ceil(0.6 k) of the k object cells.
    cid = max(covers.by_category, key=lambda c: covers.by_category[c][0].sum())
    cat_cover, box_cover, has_object = metrics.covers_for_words([None, cid, 999], covers, g)
    assert has_object.tolist() == [False, True, False]
    cells = metrics.object_cells(cat_cover[1])
    k = cells.sum()
    maps = np.stack([np.ones((g, g)), cells.astype(float), np.ones((g, g))])
    out = metrics.word_metrics_batch(maps, cat_cover, box_cover, covers.union, has_object)
    assert out["pointing_hit"].tolist() == [False, True, False]
    assert out["mask_mass"][1] >= 0.5 and np.isnan(out["mask_mass"][[0, 2]]).all()
    assert out["background_mass"][1] <= 0.5
    assert out["iou_top60"][1] == pytest.approx(math.ceil(0.6 * k) / k)


def test_other_object_pairs_join_each_scored_word_to_its_captions_other_categories():
    # "a red bus and a dog" | "two dogs and a dog": named 3 = bus, 18 = dog; "red" is bound to the bus.
    named = np.array([0, 0, 3, 0, 0, 18, 0, 18, 0, 0, 18])
    scored = np.array([0, 3, 3, 0, 0, 18, 0, 18, 0, 0, 18])
    caption = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    word, other = metrics.other_object_pairs(named, scored, caption)
    # red -> dog, bus -> dog, dog -> bus; in the second caption every object word names the same category.
    assert sorted(zip(word.tolist(), other.tolist(), strict=True)) == [(1, 5), (2, 5), (5, 2)]


def test_specificity_others_is_the_divergence_from_the_other_objects_mean_map():
    maps = RNG.random((4, 5, 5))
    # word 0 names category 1, words 1 and 2 name category 2, word 3 names nothing.
    pairs = metrics.other_object_pairs(np.array([1, 2, 2, 0]), np.array([1, 2, 2, 0]), np.zeros(4, int))
    reference = metrics.others_reference(maps, pairs)
    mean_of_others = (metrics.distribution(maps[1]) + metrics.distribution(maps[2])) / 2
    np.testing.assert_allclose(reference[0], mean_of_others)
    np.testing.assert_allclose(reference[1], metrics.distribution(maps[0]))
    assert np.isnan(reference[3]).all()
    out = metrics.word_metrics_batch(maps, others=reference)
    assert out["specificity_others"][0] == pytest.approx(metrics.specificity(maps[0], mean_of_others))
    assert out["specificity_others"][2] == pytest.approx(metrics.specificity(maps[2], maps[0]))
    assert np.isnan(out["specificity_others"][3])
    single = metrics.word_metrics(maps[3], None, None, None, others=reference[3])
    assert single["specificity_others"] is None
