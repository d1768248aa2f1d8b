"""The word metrics of :mod:`extractor.metrics` and the map codec of :mod:`db.codec` as batched torch ops.

They run where the maps are (the GPU the model ran on), so only metric columns and uint8 maps go back
to the host. The numpy definitions stay the reference: every function here computes the same formula
on a batch. Maps are flattened to (n, N), N = g*g cells in row-major order, and g = isqrt(N); covers
likewise. Metrics are computed in float64: a batch is a few thousand maps of 576 cells, and in float32
the cumulative sums would move DINO's top-60% boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from extractor.metrics import OBJECT_CELL_COVERAGE, TOP_MASS_FRACTION
from extractor.word_picks import Others


def distribution(maps: Tensor, checked: bool = True) -> Tensor:
    """p = m / m.sum() per map of (n, N), as float64; a map without mass reads as uniform.

    `checked`: raise on a negative map, which waits for the device; False for maps non-negative by
    construction (attention rows).
    """
    if checked and (maps < 0).any():
        raise ValueError("attention maps must be non-negative")
    m = maps.double()
    total = m.sum(-1, keepdim=True)
    return torch.where(total > 0, m / total.where(total > 0, 1.0), 1.0 / m.shape[-1])


def _peak(p: Tensor, g: int) -> tuple[Tensor, Tensor, Tensor]:
    # torch.argmax returns the first maximal index, as numpy does: the first peak in row-major order.
    flat = p.argmax(-1)
    return flat // g, flat % g, p.gather(-1, flat[:, None])[:, 0]


def _nats(p: Tensor) -> Tensor:
    return -(p * torch.where(p > 0, p, 1.0).log()).sum(-1)


def _mass(p: Tensor, cover: Tensor) -> Tensor:
    return (p * cover).sum(-1)


def _hit(p: Tensor, cover: Tensor) -> Tensor:
    return (cover > 0).gather(-1, p.argmax(-1)[:, None])[:, 0]


def _top_mass(p: Tensor, fraction: float) -> Tensor:
    # extractor.metrics._top_mass: the cells above the smallest kept value, then ties taken row-major.
    ascending = p.sort(-1).values
    n_dropped = (ascending.cumsum(-1) <= 1.0 - fraction).sum(-1, keepdim=True)
    threshold = ascending.gather(-1, n_dropped)  # the smallest kept value
    above, tied = p > threshold, p == threshold
    n_tied_kept = p.shape[-1] - n_dropped - above.sum(-1, keepdim=True)
    return above | (tied & (tied.cumsum(-1) <= n_tied_kept))


def _object_cells(cover: Tensor) -> Tensor:
    cells = cover >= OBJECT_CELL_COVERAGE
    fallback = ~cells.any(-1) & (cover.amax(-1) > 0)
    best = torch.arange(cover.shape[-1], device=cover.device) == cover.argmax(-1)[:, None]
    return cells | (best & fallback[:, None])


def _iou_top60(p: Tensor, cover: Tensor) -> Tensor:
    top, obj = _top_mass(p, TOP_MASS_FRACTION), _object_cells(cover)
    return (top & obj).sum(-1).double() / (top | obj).sum(-1)


def _bits(p: Tensor) -> Tensor:
    return -(p * torch.where(p > 0, p, 1.0).log2()).sum(-1)


@dataclass(frozen=True)
class Reference:
    """Word-blind reference maps shared by many words: (R, N) maps, and per word (n,) the row of its own
    (its image's encoder [CLS] map, its caption's [CLS] row)."""

    maps: Tensor
    index: Tensor


def _specificity(p: Tensor, p_bits: Tensor, reference: Reference) -> Tensor:
    # Each reference's distribution and entropy once, then gathered per word: row-wise, so the same values.
    q = distribution(reference.maps, checked=False)  # softmax rows and clamped maps: no wait on the device
    q_bits = _bits(q)
    return _jsd(p, p_bits, q[reference.index], q_bits[reference.index])


def _jsd(p: Tensor, p_bits: Tensor, q: Tensor, q_bits: Tensor) -> Tensor:
    return (_bits((p + q) / 2) - (p_bits + q_bits) / 2).clamp(0.0, 1.0)


def word_metrics(
    maps: Tensor,
    category_cover: Tensor | None = None,
    box_cover: Tensor | None = None,
    union_cover: Tensor | None = None,
    object_rows: Tensor | None = None,
    encoder_cls: Reference | None = None,
    cls_row: Reference | None = None,
    others: Others | None = None,
    checked: bool = True,
) -> dict[str, Tensor]:
    """:func:`extractor.metrics.word_metrics_batch` on flattened maps, on their device.

    Args:
        maps: (n, N) non-negative, N = g*g; any float dtype.
        category_cover: (n, N) grid cover of each word's category masks, or None when no word has an
            object. Covers are read in float64; pass them as image_covers made them (float64), since
            a float32 cover near 0.5 can round onto the other side of OBJECT_CELL_COVERAGE.
        box_cover: (n, N) grid cover of the same category's boxes; given with category_cover.
        union_cover: (N,) or (n, N) cover of the union of all the image's masks; None when no
            instances file was given.
        object_rows: (k,) int64, the rows whose covers are real, ascending; default all when category_cover
            is given. An index, not a mask, so that the device never waits to count them.
        encoder_cls, cls_row: each word's word-blind reference (see word_metrics_batch), or None.
        others: each word's reference of `specificity_others` (`Others.of_pairs`), or None.
        checked: raise on a negative map, which waits for the device; False for maps non-negative by
            construction.

    Returns:
        Tensors of length n on the maps' device: peak_row, peak_col (int64), peak_value, entropy,
        mask_mass, box_mass, background_mass, iou_top60, specificity_cls, specificity_row,
        specificity_others (float64) and
        pointing_hit, has_object (bool), NaN (pointing_hit False) where word_metrics_batch has them NULL.

    Raises:
        ValueError: a negative map, when checked.
    """
    n, N = maps.shape
    g = math.isqrt(N)
    if g * g != N:
        raise ValueError(f"maps must be flattened square grids (n, g*g), got {N} cells")
    if (category_cover is None) != (box_cover is None):
        raise ValueError("category_cover and box_cover go together")
    p = distribution(maps, checked)
    row, col, value = _peak(p, g)
    nats = _nats(p)  # the entropy, and in bits each specificity's H(p)
    out = {"peak_row": row, "peak_col": col, "peak_value": value, "entropy": nats / math.log(N)}
    if category_cover is None:
        object_rows = torch.zeros(0, dtype=torch.long, device=p.device)
        category_cover = box_cover = torch.zeros_like(p)
    elif object_rows is None:
        object_rows = torch.arange(n, device=p.device)
    has_object = torch.zeros(n, dtype=torch.bool, device=p.device).index_fill_(0, object_rows, True)
    cover, no_object = category_cover.double(), ~has_object
    out["mask_mass"] = _mass(p, cover).masked_fill(no_object, math.nan)
    out["box_mass"] = _mass(p, box_cover.double()).masked_fill(no_object, math.nan)
    # Only rows with an object have an IoU: the sort behind it is most of the metrics' cost.
    out["iou_top60"] = torch.full((n,), math.nan, dtype=p.dtype, device=p.device)
    out["iou_top60"][object_rows] = _iou_top60(p[object_rows], cover[object_rows])
    out["pointing_hit"] = _hit(p, cover) & has_object
    out["has_object"] = has_object
    if union_cover is None:
        out["background_mass"] = torch.full((n,), math.nan, dtype=p.dtype, device=p.device)
    else:
        out["background_mass"] = _mass(p, 1.0 - union_cover.double())
    p_bits = nats / math.log(2)
    nan = torch.full((n,), math.nan, dtype=p.dtype, device=p.device)
    for name, reference in (("specificity_cls", encoder_cls), ("specificity_row", cls_row)):
        out[name] = nan if reference is None else _specificity(p, p_bits, reference)
    out["specificity_others"] = nan if others is None else specificity_others(p, others, p_bits)
    return out


def specificity_others(p: Tensor, others: Others, p_bits: Tensor | None = None) -> Tensor:
    """(n, ...) float64: `extractor.metrics` specificity of each distribution of p (n, ..., N) from the mean of
    its pair rows, NaN for a row without pairs; `p_bits`: p's entropies in bits, when already known."""
    q = torch.zeros(len(others.rows), *p.shape[1:], dtype=p.dtype, device=p.device)
    q = q.index_add_(0, others.position, p[others.other]) / others.count.view(-1, *(1,) * (p.dim() - 1))
    own = p[others.rows]
    own_bits = _bits(own) if p_bits is None else p_bits[others.rows]
    out = torch.full(p.shape[:-1], math.nan, dtype=p.dtype, device=p.device)
    out[others.rows] = _jsd(own, own_bits, q, _bits(q))
    return out


def valid(maps: Tensor) -> Tensor:
    """A bool scalar on the maps' device: every value finite and non-negative. Left there, it can travel
    back with a batch's results and be checked on the host without waiting for the device."""
    return (maps.isfinite() & (maps >= 0)).all()


def encode(maps: Tensor, checked: bool = True) -> tuple[Tensor, Tensor]:
    """:func:`db.codec.encode_maps` on flattened maps: round(255 * m / max(m)) as uint8, and max(m).

    Args:
        maps: (n, N) finite, non-negative; computed in float32 as the codec does.
        checked: raise on maps that are not (`valid`), which waits for the device.

    Returns:
        (codes uint8 (n, N), maxes float32 (n,)) on the maps' device; an all-zero map encodes as
        zeros with max 0.

    Raises:
        ValueError: a negative or non-finite map, when checked.
    """
    maps = maps.float()
    if checked and not valid(maps):
        raise ValueError("maps must be finite and non-negative")
    maxes = maps.amax(-1)
    # A tensor numerator: torch computes `255.0 / maxes` as 255 * (1 / maxes), an ulp off numpy's division.
    scale = torch.where(maxes > 0, torch.full_like(maxes, 255.0) / maxes.where(maxes > 0, 1.0), 0.0)
    return (maps * scale[:, None]).round().to(torch.uint8), maxes
