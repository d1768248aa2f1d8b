"""Render attention maps over images the way ALBEF's visualisation notebook does (no Streamlit here).

ALBEF's ``getAttMap``: normalise the grid map, upsample it bicubically to the image size, blur it with a
gaussian of sigma = 2% of the longer side, normalise again, colour it with a colour map and blend it over
the image with a per-pixel weight ``v ** 0.7``. Both the upsampling and the blur are linear and separable,
so here they are folded into two small matrices per image size: the map is ``A @ m @ B.T`` with ``A``
(H x g) and ``B`` (W x g), which costs a few milliseconds even for 24 overlays on a page.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pycocotools import mask as mask_utils

# ALBEF's notebook: sigma = 0.02 * max(H, W); the blend weight is v ** 0.7.
BLUR_FRACTION = 0.02
BLEND_GAMMA = 0.7
# scipy.ndimage.gaussian_filter's default truncation (ALBEF uses it), in sigmas.
BLUR_TRUNCATE = 4.0
MISSING_IMAGE_GREY = 96

COLORMAPS = ("jet", "viridis", "inferno", "magma", "plasma", "turbo", "hot", "gray")
# The default shared scale: 0 .. 8x the mass of a uniform map's cell. A flat map (about 1x everywhere)
# stays cool and faint; a map that piles its mass on a few cells reaches the top.
SHARED_TOP = 8.0


@dataclass(frozen=True)
class OverlayStyle:
    """How a map is drawn over its image.

    Args:
        cmap: a matplotlib colour map name (ALBEF uses ``jet``).
        opacity: multiplies ALBEF's per-pixel blend weight; 1.0 is ALBEF's look, 0 shows the bare image.
        value_range: a pair ``(lo, hi)`` is a fixed scale shared by every map, in multiples of the uniform
            map (a cell holding 1/g² of the mass is 1.0), so maps of different words, layers and methods
            compare and a flat map looks flat (the default, 0 .. ``SHARED_TOP``). ``None`` stretches each map
            to its own min..max (ALBEF), which paints even a uniform map's slight bumps at full heat.
        blur: apply ALBEF's gaussian blur after upsampling.
        max_side: render at most this many pixels on the longer side (thumbnails); ``None`` = full size.
    """

    cmap: str = "jet"
    opacity: float = 1.0
    value_range: tuple[float, float] | None = (0.0, SHARED_TOP)
    blur: bool = True
    max_side: int | None = 480


def display_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """The (width, height) an image of this size is drawn at, keeping its aspect ratio."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


@lru_cache(maxsize=64)
def _bicubic_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in): column j is PIL's bicubic upsampling of the unit vector e_j."""
    eye = Image.fromarray(np.eye(n_in, dtype=np.float32), mode="F")
    # Width unchanged, so PIL only resamples along the height: one 1-D operator per column.
    return np.asarray(eye.resize((n_in, n_out), Image.Resampling.BICUBIC), dtype=np.float64)


@lru_cache(maxsize=64)
def _gaussian_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) gaussian filter with scipy's default 'reflect' border (half-sample symmetric)."""
    radius = int(BLUR_TRUNCATE * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()
    rows = np.repeat(np.arange(n), offsets.size)
    cols = rows + np.tile(offsets, n)
    # Reflect indices into [0, n): -1 -> 0, n -> n - 1 (period 2n); kernels wider than the image fold again.
    cols = np.mod(cols, 2 * n)
    cols = np.where(cols >= n, 2 * n - 1 - cols, cols)
    matrix = np.zeros((n, n))
    np.add.at(matrix, (rows, cols), np.tile(weights, n))
    return matrix


@lru_cache(maxsize=64)
def _smoothing_matrix(n_out: int, n_in: int, sigma: float) -> np.ndarray:
    """Upsample n_in -> n_out then blur with ``sigma`` (0 = no blur), as one (n_out, n_in) matrix."""
    up = _bicubic_matrix(n_out, n_in)
    return _gaussian_matrix(n_out, sigma) @ up if sigma > 0 else up


def smooth_map(att_map: np.ndarray, width: int, height: int, blur: bool = True) -> np.ndarray:
    """Upsample a g x g map to (height, width) bicubically and blur it like ALBEF (no normalisation)."""
    att_map = np.asarray(att_map, dtype=np.float64)
    g_rows, g_cols = att_map.shape
    # ALBEF's sigma is 2% of the longer side of the image being drawn, so thumbnails look like the original.
    sigma = BLUR_FRACTION * max(width, height) if blur else 0.0
    rows = _smoothing_matrix(height, g_rows, sigma)
    cols = _smoothing_matrix(width, g_cols, sigma)
    return rows @ att_map @ cols.T


def normalise(smoothed: np.ndarray, att_map: np.ndarray, value_range: tuple[float, float] | None) -> np.ndarray:
    """Map smoothed values to [0, 1]: per-map min..max, or a fixed range in multiples of uniform."""
    if value_range is None:
        low, high = float(smoothed.min()), float(smoothed.max())
        if high - low <= 0:
            return np.zeros_like(smoothed)
        return (smoothed - low) / (high - low)
    mean = float(np.mean(att_map))
    if mean <= 0:
        return np.zeros_like(smoothed)
    low, high = value_range
    if high <= low:
        raise ValueError(f"value_range must have lo < hi, got {value_range}")
    return np.clip((smoothed / mean - low) / (high - low), 0.0, 1.0)


def blend_weight(values: np.ndarray, opacity: float) -> np.ndarray:
    """ALBEF's per-pixel blend weight of normalised values, scaled by ``opacity``."""
    return np.clip(opacity, 0.0, 1.0) * values**BLEND_GAMMA


def colour_strip(style: OverlayStyle, n: int = 256) -> np.ndarray:
    """The key to ``style``'s colours, (n, 3) uint8 from the scale's bottom to its top.

    Each colour is blended over mid-grey as an overlay paints it, so faint low values look faint here too.
    """
    values = np.linspace(0.0, 1.0, n)
    colours = matplotlib.colormaps[style.cmap](values)[:, :3]
    weight = blend_weight(values, style.opacity)[:, None]
    strip = (1 - weight) * (MISSING_IMAGE_GREY / 255) + weight * colours
    return np.round(strip * 255).astype(np.uint8)


def scale_ticks(top: float, most: int = 9) -> np.ndarray:
    """Tick values 0, step, 2 step, ... <= ``top``, with a step of 1, 2 or 5 times a power of ten."""
    for step in (m * 10**e for e in range(-1, 4) for m in (1, 2, 5)):
        if top / step < most:
            return np.arange(0.0, top + 1e-9, step)
    raise ValueError(f"scale top {top} too large")


def blank_image(width: int, height: int) -> Image.Image:
    """A neutral grey canvas that stands in for an image file that cannot be read."""
    return Image.new("RGB", (width, height), (MISSING_IMAGE_GREY,) * 3)


def attention_overlay(image: Image.Image, att_map: np.ndarray, style: OverlayStyle = OverlayStyle()) -> Image.Image:
    """Blend a g x g attention map over ``image`` (ALBEF's getAttMap) and return an RGB image.

    The result has the image's aspect ratio, scaled down to ``style.max_side``. The map covers the whole
    image: ALBEF resizes images to a square, so grid cell (r, c) covers rows r*H/g..(r+1)*H/g.
    """
    att_map = np.asarray(att_map, dtype=np.float32)
    if att_map.ndim != 2:
        raise ValueError(f"attention map must be 2-D, got shape {att_map.shape}")
    if style.cmap not in matplotlib.colormaps:
        raise ValueError(f"unknown colour map {style.cmap!r}")
    width, height = display_size(*image.size, style.max_side)
    resized = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    base = np.asarray(resized, np.float32) / 255
    values = normalise(smooth_map(att_map, width, height, style.blur), att_map, style.value_range)
    colours = matplotlib.colormaps[style.cmap](values)[..., :3]
    weight = blend_weight(values, style.opacity)[..., None]
    blended = (1 - weight) * base + weight * colours
    return Image.fromarray(np.round(blended * 255).astype(np.uint8), mode="RGB")


def decode_segmentation(segmentation: str | list | dict, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygon list, RLE dict, or their JSON text) as a bool (height, width) mask."""
    if isinstance(segmentation, str):
        segmentation = json.loads(segmentation)
    if isinstance(segmentation, list):
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation.get("counts"), list):
        # Uncompressed RLE (iscrowd annotations) must be compressed before decoding.
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    return mask_utils.decode(rle).astype(bool)


def draw_instances(
    image: Image.Image,
    instances: Iterable[Mapping],
    original_size: tuple[int, int],
    show_mask: bool = True,
    show_box: bool = True,
    colour: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Draw COCO instances (rows with ``segmentation`` and ``bbox_x/y/w/h`` in original pixels) on ``image``.

    Masks are a translucent fill with an opaque outline; boxes are rectangles. ``image`` may be a
    thumbnail: coordinates are scaled from ``original_size`` = (width, height) of the COCO image.
    """
    out = image.convert("RGB")
    orig_w, orig_h = original_size
    scale_x, scale_y = out.width / orig_w, out.height / orig_h
    line = max(2, round(max(out.size) / 200))
    draw = ImageDraw.Draw(out)
    for inst in instances:
        if show_mask and inst.get("segmentation"):
            full = decode_segmentation(inst["segmentation"], orig_h, orig_w)
            small = Image.fromarray(full.astype(np.uint8) * 255).resize(out.size, Image.Resampling.NEAREST)
            edge = np.asarray(small) ^ np.asarray(small.filter(ImageFilter.MinFilter(2 * line - 1)))
            fill = Image.new("RGB", out.size, colour)
            out.paste(fill, mask=small.point(lambda v: 90 if v else 0))
            out.paste(fill, mask=Image.fromarray(edge))
        if show_box:
            x0, y0 = inst["bbox_x"] * scale_x, inst["bbox_y"] * scale_y
            x1, y1 = x0 + inst["bbox_w"] * scale_x, y0 + inst["bbox_h"] * scale_y
            draw.rectangle((x0, y0, x1, y1), outline=colour, width=line)
    return out


def encode(image: Image.Image, fmt: str = "PNG", quality: int = 90) -> bytes:
    """The image as PNG (lossless, for export) or JPEG bytes.

    The dashboard sends JPEG: for a 360 px photo overlay it is ~7x smaller and ~100x faster to encode
    than PNG, which is what keeps a page of 24 overlays quick.
    """
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    elif fmt == "PNG":
        image.save(buffer, format="PNG")
    else:
        raise ValueError(f"unsupported image format {fmt!r}")
    return buffer.getvalue()
