"""The torch metrics and codec equal the numpy reference (extractor.metrics, db.codec) on real maps."""

import numpy as np
import pytest
import torch

from db.codec import encode_maps
from extractor import device_metrics, metrics
from extractor.binding import tag_words
from extractor.categories import match_words
from extractor.checkpoint import load_checkpoint
from extractor.coco import image_objects, load_captions, load_image, load_instances
from extractor.config import ALBEFConfig
from extractor.image import eval_transform
from extractor.maps import caption_maps, merge_pieces
from extractor.model import ALBEF
from extractor.text import Tokenizer, pre_caption
from extractor.word_picks import Others

RNG = np.random.default_rng(0)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]
FLOATS = [
    "peak_value", "entropy", "mask_mass", "box_mass", "background_mass", "iou_top60", "specificity_cls",
    "specificity_row", "specificity_others",
]  # fmt: skip
EXACT = ["peak_row", "peak_col", "pointing_hit", "has_object"]


def real_words(shared, res: int) -> dict[str, np.ndarray]:
    """Every word map (both methods, every fusion layer) of val2017-small's captions from the fine-tuned
    fixture model run at `res` px, with its COCO covers (float64) and word-blind references: the image
    encoder's [CLS] map and the caption's [CLS] row of the same map."""
    ckpt = shared / "fixtures" / "albef-reference" / "finetuned-tiny"
    cfg = ALBEFConfig.from_dict({**ALBEFConfig.from_json(ckpt / "config.json").to_dict(), "image_res": res})
    model = ALBEF(cfg).eval()
    load_checkpoint(model, ckpt / "checkpoint.pth")
    coco_dir = shared / "coco" / "val2017-small"
    images, annotations = load_captions(coco_dir / "annotations" / "captions_val2017_small.json")
    coco = load_instances(coco_dir / "annotations" / "instances_val2017_small.json")
    pixels = torch.stack([eval_transform(load_image(coco_dir / "val2017" / im["file_name"]), res) for im in images])
    row_of = {im["id"]: i for i, im in enumerate(images)}
    tokens = Tokenizer(shared / "bert-base-uncased" / "vocab.txt")(
        [pre_caption(a["caption"], cfg.max_words) for a in annotations]
    )
    index = [row_of[a["image_id"]] for a in annotations]
    token_maps = caption_maps(model, pixels, tokens, index, cfg.fusion_layers, gradcam=True)

    g = cfg.grid_size
    covers = [metrics.image_covers(image_objects(coco, im["id"], im["height"], im["width"]),
                                   im["height"], im["width"], g) for im in images]  # fmt: skip
    parts, named, scored = [], [], []
    for tok, maps, i in zip(tokens, token_maps, index, strict=True):
        tags = tag_words(tok.words, match_words(tok.words))
        cat, box, has = metrics.covers_for_words(tags.scored_category, covers[i], g)
        for grid in [*(maps.attention_grid(layer) for layer in cfg.fusion_layers), maps.gradcam]:
            word_maps = merge_pieces(grid, tok.word_of_token, len(tok.words)).clip(0)
            union = np.broadcast_to(covers[i].union, word_maps.shape)
            encoder = np.broadcast_to(maps.encoder_cls.mean(0), word_maps.shape)
            cls_row = np.broadcast_to(grid[0].clip(0), word_maps.shape)
            parts.append((word_maps, cat, box, union, has, encoder, cls_row))
            named.append([c or 0 for c in tags.category])
            scored.append([c or 0 for c in tags.scored_category])
    names = ["maps", "category_cover", "box_cover", "union_cover", "has_object", "encoder_cls", "cls_row"]
    out = {name: np.concatenate(column) for name, column in zip(names, zip(*parts, strict=True), strict=True)}
    group = np.repeat(np.arange(len(named)), [len(n) for n in named])  # a caption's words of one slice
    out["pairs"] = metrics.other_object_pairs(np.concatenate(named), np.concatenate(scored), group)
    return out


@pytest.fixture(scope="module", params=[64, 96, 384], ids=["g4", "g6-demo", "g24-base"])
def real(shared, request) -> dict[str, np.ndarray]:
    return real_words(shared, request.param)


def flat(a: np.ndarray | None, device: str) -> torch.Tensor | None:
    """(n, g, g) numpy -> (n, g*g) tensor on device; None stays None."""
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a).reshape(len(a), -1)).to(device)


def shared_reference(a: np.ndarray | None, device: str) -> device_metrics.Reference | None:
    """(n, g, g) per-word references -> their distinct maps once and each word's row among them."""
    if a is None:
        return None
    distinct, index = np.unique(np.ascontiguousarray(a).reshape(len(a), -1), axis=0, return_inverse=True)
    return device_metrics.Reference(torch.from_numpy(distinct).to(device), torch.from_numpy(index.ravel()).to(device))


def assert_metrics_equal(device: str, maps, category_cover=None, box_cover=None, union_cover=None,
                         has_object=None, encoder_cls=None, cls_row=None, pairs=None) -> dict[str, float]:  # fmt: skip
    """Both implementations on the same (n, g, g) arrays; returns the max |difference| per float metric."""
    others = None if pairs is None else metrics.others_reference(maps, pairs)
    expected = metrics.word_metrics_batch(
        maps, category_cover, box_cover, union_cover, has_object, encoder_cls, cls_row, others
    )
    got = device_metrics.word_metrics(
        flat(maps, device),
        flat(category_cover, device),
        flat(box_cover, device),
        flat(union_cover, device),
        None if has_object is None else torch.from_numpy(np.flatnonzero(has_object)).to(device),
        shared_reference(encoder_cls, device),
        shared_reference(cls_row, device),
        None if pairs is None else Others.of_pairs(*pairs).to(device),
    )
    assert got.keys() == expected.keys()
    assert all(value.device.type == device for value in got.values())
    got = {key: value.cpu().numpy() for key, value in got.items()}
    assert {key: value.dtype for key, value in got.items()} == {key: value.dtype for key, value in expected.items()}
    for key in EXACT:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    for key in FLOATS:
        np.testing.assert_allclose(got[key], expected[key], rtol=0, atol=1e-5, err_msg=key)  # NaN where NaN
    return {key: float(np.nanmax(np.abs(got[key] - expected[key]), initial=0.0)) for key in FLOATS}


@pytest.mark.parametrize("device", DEVICES)
def test_metrics_of_real_maps_equal_numpy(real, device):
    assert real["has_object"].any() and not real["has_object"].all()  # words with and without objects
    assert 0 < len(np.unique(real["pairs"][0])) < len(real["maps"])  # words with and without other objects
    assert_metrics_equal(device, **real)


@pytest.mark.parametrize("device", DEVICES)
def test_metrics_of_real_maps_without_covers_equal_numpy(real, device):
    assert_metrics_equal(device, real["maps"])  # no instances file: no object, no union cover


@pytest.mark.parametrize("device", DEVICES)
def test_quantised_maps_with_many_ties_equal_numpy(real, device):
    # Maps of a few levels tie at the top-60% threshold and at the peak; covers stay real.
    peak = real["maps"].max(axis=(1, 2), keepdims=True)
    levels = np.floor(4 * real["maps"] / np.where(peak > 0, peak, 1))
    assert_metrics_equal(device, levels, real["category_cover"], real["box_cover"], None, real["has_object"])


def edge_maps(g: int) -> np.ndarray:
    zero, constant, two_peaks = np.zeros((g, g)), np.full((g, g), 0.3), np.ones((g, g))
    two_peaks.flat[[g * g - 1, g * g // 2]] = 5.0  # equal peaks: the first in row-major order wins
    return np.stack([zero, constant, two_peaks, RNG.random((g, g)) ** 6])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("g", [1, 2, 6, 24])
def test_edge_cases_equal_numpy(device, g):
    maps = edge_maps(g)
    n = len(maps)
    cover = RNG.random((n, g, g)) * (RNG.random((n, g, g)) > 0.5)
    box = np.maximum(cover, RNG.random((n, g, g)))
    has_object = np.array([True, False, True, False])
    with np.errstate(invalid="ignore"):  # a single cell's entropy is 0/0 = NaN in both
        assert_metrics_equal(device, maps, cover, box, cover.max(0, keepdims=True).repeat(n, 0), has_object)
        assert_metrics_equal(device, maps, cover, box)
        assert_metrics_equal(device, maps)
        assert_metrics_equal(device, maps, encoder_cls=maps[::-1].copy(), cls_row=maps)  # a map against itself


@pytest.mark.parametrize("device", DEVICES)
def test_peak_ties_go_to_the_first_cell_in_row_major_order(device):
    maps = torch.zeros(2, 36, device=device)
    maps[0, [7, 30]] = maps[1, :] = 1.0
    out = device_metrics.word_metrics(maps)
    assert out["peak_row"].tolist() == [1, 0] and out["peak_col"].tolist() == [1, 0]


@pytest.mark.parametrize("device", DEVICES)
def test_union_cover_may_be_one_grid_for_all_words(real, device):
    maps = flat(real["maps"], device)
    union = flat(real["union_cover"], device)
    shared_union = device_metrics.word_metrics(maps[:10], union_cover=union[0])
    torch.testing.assert_close(
        shared_union["background_mass"],
        device_metrics.word_metrics(maps[:10], union_cover=union[:10])["background_mass"],
    )


@pytest.mark.parametrize("device", DEVICES)
def test_negative_maps_and_non_square_grids_are_rejected(device):
    with pytest.raises(ValueError, match="non-negative"):
        device_metrics.word_metrics(-torch.ones(1, 16, device=device))
    with pytest.raises(ValueError, match="square"):
        device_metrics.word_metrics(torch.ones(1, 15, device=device))
    with pytest.raises(ValueError, match="non-negative"):
        device_metrics.encode(-torch.ones(1, 16, device=device))


@pytest.mark.parametrize("device", DEVICES)
def test_encode_equals_the_codec(real, device):
    maps = np.concatenate([edge_maps(real["maps"].shape[-1]), real["maps"]])  # an all-zero map first
    blobs, expected_maxes = encode_maps(maps)
    codes, maxes = device_metrics.encode(flat(maps, device))
    assert codes.dtype == torch.uint8 and maxes.dtype == torch.float32 and codes.device.type == device
    expected = np.stack([np.frombuffer(blob, np.uint8) for blob in blobs]).astype(int)
    assert np.abs(codes.cpu().numpy().astype(int) - expected).max() <= 1
    np.testing.assert_allclose(maxes.cpu().numpy(), expected_maxes, rtol=1e-7, atol=0)
    assert not codes[0].any() and maxes[0] == 0
