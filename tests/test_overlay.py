import json
from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from dashboard.overlay import (
    OverlayStyle,
    _gaussian_matrix,
    attention_overlay,
    blank_image,
    colour_strip,
    decode_segmentation,
    display_size,
    draw_instances,
    encode,
    scale_ticks,
    smooth_map,
)

G = 24


@pytest.fixture(scope="module")
def coco(shared):
    root = shared / "coco" / "val2017-subset"
    instances = json.loads((root / "annotations" / "instances_val2017_subset.json").read_text())
    images = {img["id"]: img for img in instances["images"]}
    return root, images, instances["annotations"]


@pytest.fixture(scope="module")
def photo(coco) -> Image.Image:
    root, _, _ = coco
    return Image.open(root / "val2017" / "000000000139.jpg").convert("RGB")  # 640 x 426


def peaked_map(row: int, col: int, background: float = 0.02) -> np.ndarray:
    m = np.full((G, G), background, np.float32)
    m[row, col] = 1.0
    return m


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [
        ((640, 426), 320, (320, 213)),
        ((424, 640), 320, (212, 320)),
        ((300, 200), 480, (300, 200)),
        ((640, 426), None, (640, 426)),
    ],
)
def test_overlay_keeps_aspect_ratio_and_limits_size(size, max_side, expected):
    image = Image.new("RGB", size, (10, 20, 30))
    out = attention_overlay(image, peaked_map(3, 3), OverlayStyle(max_side=max_side))
    assert out.size == expected == display_size(*size, max_side)
    assert out.mode == "RGB"


@pytest.mark.parametrize(("row", "col"), [(2, 20), (12, 12), (21, 3)])
def test_hot_spot_lands_on_the_peak_cell(photo, row, col):
    """The hottest rendered pixel lies in the grid cell the map peaks at (square-resize geometry)."""
    width, height = display_size(*photo.size, 480)
    smoothed = smooth_map(peaked_map(row, col), width, height)
    y, x = np.unravel_index(np.argmax(smoothed), smoothed.shape)
    assert int(y * G / height) == row
    assert int(x * G / width) == col
    # And the overlay actually changed pixels there, while a far corner keeps the photo's colours.
    # Per-map stretching (ALBEF) puts the near-zero background at zero weight.
    out = np.asarray(attention_overlay(photo, peaked_map(row, col), OverlayStyle(value_range=None)), np.int16)
    base = np.asarray(photo.resize((width, height), Image.Resampling.BILINEAR), np.int16)
    assert np.abs(out[y, x] - base[y, x]).sum() > 100
    far_y, far_x = (height - 1 if row < G // 2 else 0), (width - 1 if col < G // 2 else 0)
    assert np.abs(out[far_y, far_x] - base[far_y, far_x]).sum() < 30


def test_zero_opacity_shows_the_bare_image(photo):
    out = attention_overlay(photo, peaked_map(5, 5), OverlayStyle(opacity=0.0, max_side=200))
    base = photo.resize(out.size, Image.Resampling.BILINEAR)
    assert np.array_equal(np.asarray(out), np.asarray(base))


def test_fixed_range_compares_maps_while_per_map_range_stretches_each(photo):
    sharp = peaked_map(10, 10, background=0.01)
    flat = peaked_map(10, 10, background=0.5)
    width, height = display_size(*photo.size, 160)
    y, x = np.unravel_index(np.argmax(smooth_map(sharp, width, height)), (height, width))
    base = np.asarray(photo.resize((width, height), Image.Resampling.BILINEAR), np.int16)

    def change_at_peak(m: np.ndarray, value_range: tuple[float, float] | None) -> int:
        out = attention_overlay(photo, m, OverlayStyle(max_side=160, value_range=value_range))
        return int(np.abs(np.asarray(out, np.int16)[y, x] - base[y, x]).sum())

    # Per-map stretching paints both peaks at full heat; a fixed scale keeps the flat map's peak cool.
    assert change_at_peak(sharp, None) == change_at_peak(flat, None)
    assert change_at_peak(sharp, (0, 20)) > 3 * change_at_peak(flat, (0, 20))
    # The fixed scale does not depend on the map's units: 10x the map renders the same.
    style = OverlayStyle(max_side=160, value_range=(0, 20))
    assert np.array_equal(
        np.asarray(attention_overlay(photo, sharp * 10, style)), np.asarray(attention_overlay(photo, sharp, style))
    )


def near_uniform_map(wobble: float = 0.05) -> np.ndarray:
    """A uniform map with +-5% noise: per-map stretching turns the noise into hot spots."""
    return 1 + wobble * np.random.default_rng(0).uniform(-1, 1, (G, G))


def colour_spread(m: np.ndarray, style: OverlayStyle) -> float:
    """Range (max - min, worst channel, 0..255) of the pixels of ``m`` rendered over a flat grey image."""
    out = attention_overlay(blank_image(320, 240), m, style)
    return float(np.ptp(np.asarray(out, np.float64).reshape(-1, 3), axis=0).max())


@pytest.mark.parametrize(
    ("kind", "scale", "flat"),
    [
        ("near uniform", "shared", True),
        ("near uniform", "per map", False),
        ("sharp", "shared", False),
        ("sharp", "per map", False),
    ],
)
def test_only_the_shared_scale_draws_a_flat_map_flat(kind, scale, flat):
    m = near_uniform_map() if kind == "near uniform" else peaked_map(12, 7, background=0.01)
    style = OverlayStyle(max_side=320) if scale == "shared" else OverlayStyle(max_side=320, value_range=None)
    spread = colour_spread(m, style)
    # Measured: near uniform 2 (shared) and 212 (per map); sharp 212 under both.
    assert spread < 5 if flat else spread > 150


def test_shared_scale_is_the_default_and_its_colour_strip_fades_in_like_an_overlay():
    assert OverlayStyle().value_range == (0.0, 8.0)
    strip = colour_strip(OverlayStyle(cmap="jet"))
    grey = np.full(3, 96)
    # The bottom of the scale is drawn at zero weight (bare grey), the top at full jet red.
    assert np.array_equal(strip[0], grey) and strip[-1, 0] > 100 and strip[-1, 2] < 10
    assert not colour_strip(OverlayStyle(opacity=0.0)).astype(int).std(axis=0).any()


@pytest.mark.parametrize(
    ("top", "expected"),
    [
        (8.0, [0, 1, 2, 3, 4, 5, 6, 7, 8]),
        (10.0, [0, 2, 4, 6, 8, 10]),
        (50.0, [0, 10, 20, 30, 40, 50]),
        (3.0, [0, 0.5, 1, 1.5, 2, 2.5, 3]),
    ],
)
def test_scale_ticks_are_round_and_end_at_the_top(top, expected):
    assert scale_ticks(top).tolist() == expected


def test_gaussian_matrix_matches_reflect_padded_convolution():
    rng = np.random.default_rng(0)
    signal = rng.random(50)
    sigma = 3.0
    radius = int(4 * sigma + 0.5)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    # scipy.ndimage 'reflect' (what ALBEF's gaussian_filter uses) is numpy's 'symmetric' padding.
    expected = np.convolve(np.pad(signal, radius, mode="symmetric"), kernel, mode="valid")
    assert np.allclose(_gaussian_matrix(50, sigma) @ signal, expected)


def test_uniform_map_renders_flat(photo):
    """Upsampling and blur keep a constant map constant, so nothing is highlighted."""
    smoothed = smooth_map(np.ones((G, G)), 300, 200)
    assert np.allclose(smoothed, 1.0)


@pytest.mark.parametrize("kind", ["polygon", "rle"])
def test_decode_segmentation_matches_coco_area(coco, kind):
    _, images, annotations = coco
    ann = next(a for a in annotations if a["iscrowd"] == (kind == "rle"))
    img = images[ann["image_id"]]
    mask = decode_segmentation(json.dumps(ann["segmentation"]), img["height"], img["width"])
    assert mask.shape == (img["height"], img["width"]) and mask.dtype == bool
    assert mask.sum() == pytest.approx(ann["area"], rel=0.05)
    x, y, w, h = ann["bbox"]
    rows, cols = np.nonzero(mask)
    assert cols.min() >= int(x) - 1 and cols.max() <= x + w + 1
    assert rows.min() >= int(y) - 1 and rows.max() <= y + h + 1


def test_draw_instances_outlines_the_box_and_fills_the_mask(coco, photo):
    _, images, annotations = coco
    ann = max((a for a in annotations if a["image_id"] == 139), key=lambda a: a["area"])
    x, y, w, h = ann["bbox"]
    row = {"segmentation": json.dumps(ann["segmentation"]), "bbox_x": x, "bbox_y": y, "bbox_w": w, "bbox_h": h}
    box_only = np.asarray(draw_instances(photo, [row], photo.size, show_mask=False), np.int16)
    base = np.asarray(photo, np.int16)
    assert (box_only[int(y) + 1, int(x + w / 2)] == 255).all()  # top edge, drawn white
    assert np.array_equal(box_only[int(y + h / 2), int(x + w / 2)], base[int(y + h / 2), int(x + w / 2)])
    with_mask = np.asarray(draw_instances(photo, [row], photo.size, show_box=False), np.int16)
    mask = decode_segmentation(row["segmentation"], photo.height, photo.width)
    changed = np.abs(with_mask - base).sum(axis=2) > 0
    assert changed[mask].mean() > 0.9
    assert changed[~mask].mean() < 0.01


def test_png_round_trips_and_jpeg_stays_close(photo):
    out = attention_overlay(photo, peaked_map(1, 1), OverlayStyle(max_side=64))
    assert np.array_equal(np.asarray(Image.open(BytesIO(encode(out)))), np.asarray(out))
    thumbnail = attention_overlay(photo, peaked_map(1, 1), OverlayStyle(max_side=360))
    jpeg = np.asarray(Image.open(BytesIO(encode(thumbnail, "JPEG"))), np.int16)
    assert jpeg.shape == (240, 360, 3)
    assert np.abs(jpeg - np.asarray(thumbnail, np.int16)).mean() < 4
    with pytest.raises(ValueError, match="format"):
        encode(out, "BMP")


def test_bad_inputs_are_rejected(photo):
    with pytest.raises(ValueError, match="colour map"):
        attention_overlay(photo, peaked_map(0, 0), OverlayStyle(cmap="nope"))
    with pytest.raises(ValueError, match="2-D"):
        attention_overlay(photo, np.ones(G * G), OverlayStyle())
