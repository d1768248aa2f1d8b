"""Every metric of a word's attention map, defined once.

A word map ``m`` is a g x g non-negative grid over the image resized to a square, so cell (r, c) covers
image rows ``r*H/g .. (r+1)*H/g`` and columns ``c*W/g .. (c+1)*W/g`` (fractional bounds when g does not
divide H or W). ``p = m / m.sum()`` is the map as a distribution over cells. Objects are brought to the
grid as coverage fractions in [0, 1]: the share of each cell's area that the object covers.

Per image the pipeline calls :func:`image_covers` once, then :func:`covers_for_words` and
:func:`word_metrics_batch` for all the word maps of a caption at once. The metric functions take maps
of any leading shape (..., g, g), a single (g, g) map included.

The columns the metrics are stored in (name, SQL type, dashboard label, one-line definition, which need
the object) are declared once in db/metrics.py; a metric added here is declared there too.
"""

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from extractor.coco import ImageObject

TOP_MASS_FRACTION = 0.6
"""DINO's rule: a map's salient cells are the fewest that hold this share of its mass."""
OBJECT_CELL_COVERAGE = 0.5
"""A cell belongs to the object for iou_top60 when the object covers at least this share of it."""


def _axis_weights(edges: np.ndarray, size: float, g: int) -> np.ndarray:
    """(g, len(edges)-1) share of each grid interval [i*size/g, (i+1)*size/g) covered by each span.

    Spans are the consecutive intervals of ``edges``; the fractional grid bounds make this exact
    when g does not divide ``size``.
    """
    bounds = np.arange(g + 1) * size / g
    lo = np.maximum(bounds[:-1, None], edges[None, :-1])
    hi = np.minimum(bounds[1:, None], edges[None, 1:])
    return np.clip(hi - lo, 0.0, None) / (size / g)


def grid_coverage(mask: np.ndarray, g: int) -> np.ndarray:
    """Area-weighted downsampling of a full-resolution mask to the g x g grid.

    cover[r, c] = (area of the mask inside cell (r, c)) / (area of the cell), each pixel being a unit
    square, so a pixel straddling a fractional cell bound counts in both cells by its overlap.

    Args:
        mask: (H, W) bool.
        g: grid size.

    Returns:
        (g, g) float64 in [0, 1].
    """
    H, W = mask.shape
    rows = _axis_weights(np.arange(H + 1, dtype=np.float64), H, g)  # (g, H)
    cols = _axis_weights(np.arange(W + 1, dtype=np.float64), W, g)  # (g, W)
    return np.clip(rows @ mask.astype(np.float64) @ cols.T, 0.0, 1.0)


def box_coverage(boxes: Sequence[Sequence[float]], H: int, W: int, g: int) -> np.ndarray:
    """Exact coverage of each grid cell by the union of boxes (COCO ``[x, y, w, h]`` pixels).

    The plane is cut along every box edge into rectangles each wholly inside or outside the union
    (so overlapping boxes count once), then their areas are summed per cell like :func:`grid_coverage`.

    Returns:
        (g, g) float64 in [0, 1]; zeros for no boxes.
    """
    if len(boxes) == 0:
        return np.zeros((g, g))
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x0, y0 = np.clip(b[:, 0], 0, W), np.clip(b[:, 1], 0, H)
    x1, y1 = np.clip(b[:, 0] + b[:, 2], 0, W), np.clip(b[:, 1] + b[:, 3], 0, H)
    xs = np.unique(np.concatenate([[0.0, W], x0, x1]))
    ys = np.unique(np.concatenate([[0.0, H], y0, y1]))
    xm, ym = (xs[:-1] + xs[1:]) / 2, (ys[:-1] + ys[1:]) / 2
    inside_x = (xm[None, :] > x0[:, None]) & (xm[None, :] < x1[:, None])  # (boxes, nx)
    inside_y = (ym[None, :] > y0[:, None]) & (ym[None, :] < y1[:, None])  # (boxes, ny)
    union = (inside_y[:, :, None] & inside_x[:, None, :]).any(axis=0)  # (ny, nx)
    return np.clip(_axis_weights(ys, H, g) @ union @ _axis_weights(xs, W, g).T, 0.0, 1.0)


class ImageCovers(NamedTuple):
    """An image's objects on the grid: per category (mask cover, box cover), and all masks' union."""

    by_category: dict[int, tuple[np.ndarray, np.ndarray]]
    union: np.ndarray


def image_covers(objects: Sequence[ImageObject], H: int, W: int, g: int) -> ImageCovers:
    """Grid covers of an image's instances; crowd regions count as the category's area too."""
    by_category = {}
    for cid in sorted({o.category_id for o in objects}):
        mine = [o for o in objects if o.category_id == cid]
        mask = np.logical_or.reduce([o.mask for o in mine])
        by_category[cid] = (grid_coverage(mask, g), box_coverage([o.bbox for o in mine], H, W, g))
    union = np.logical_or.reduce([o.mask for o in objects]) if objects else np.zeros((H, W), bool)
    return ImageCovers(by_category, grid_coverage(union, g))


def covers_for_words(
    category_ids: Sequence[int | None], covers: ImageCovers, g: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stack the covers of each word's category for :func:`word_metrics_batch`.

    Args:
        category_ids: the category each word is scored against: the one it names, or for an attribute
            word the one its noun names (``extractor.binding.WordTags.scored_category``).

    Returns:
        (category_cover (n, g, g), box_cover (n, g, g), has_object (n,) bool): rows are zeros and
        has_object False where the word is scored against no category or the image has none of it.
    """
    n = len(category_ids)
    category_cover, box_cover = np.zeros((n, g, g)), np.zeros((n, g, g))
    has_object = np.zeros(n, dtype=bool)
    for i, cid in enumerate(category_ids):
        if cid in covers.by_category:
            category_cover[i], box_cover[i] = covers.by_category[cid]
            has_object[i] = True
    return category_cover, box_cover, has_object


# Each metric is a public function of maps m (..., g, g) stating its formula, computed by a private
# one on p = distribution(m) flattened to (..., g*g), which word_metrics_batch calls with one shared p.


def distribution(m: np.ndarray) -> np.ndarray:
    """p = m / m.sum() over each (g, g) map of m (..., g, g), as float64.

    A map with no mass (all zeros, as a clamped Grad-CAM can be) carries no preference and is read
    as uniform, so every metric stays defined.
    """
    if (m < 0).any():
        raise ValueError("attention maps must be non-negative")
    m = m.astype(np.float64)
    total = m.sum(axis=(-2, -1), keepdims=True)
    return np.where(total > 0, m / np.where(total > 0, total, 1.0), 1.0 / (m.shape[-1] * m.shape[-2]))


def _cells(a: np.ndarray) -> np.ndarray:
    """(..., g, g) -> (..., g*g)."""
    return a.reshape(*a.shape[:-2], -1)


def _p(m: np.ndarray) -> np.ndarray:
    return _cells(distribution(m))


def peak(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, col) = argmax of m (the first in row-major order on ties); peak_value = m.max() / m.sum().

    Returns:
        (peak_row, peak_col, peak_value), each of shape m.shape[:-2].
    """
    return _peak(_p(m), m.shape[-1])


def _peak(p: np.ndarray, g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    flat = p.argmax(axis=-1)
    return flat // g, flat % g, np.take_along_axis(p, flat[..., None], axis=-1)[..., 0]


def normalized_entropy(m: np.ndarray) -> np.ndarray:
    """entropy = -sum p log p / log(g*g), with 0 log 0 = 0: 0 for a single cell, 1 for a uniform map."""
    return _entropy(_p(m))


def _entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(axis=-1) / np.log(p.shape[-1])


def mass_inside(m: np.ndarray, cover: np.ndarray) -> np.ndarray:
    """sum(p * cover): the share of the map's mass on the object; mask_mass with the category's mask
    cover, box_mass with its box cover."""
    return _mass(_p(m), _cells(cover))


def _mass(p: np.ndarray, cover: np.ndarray) -> np.ndarray:
    return (p * cover).sum(axis=-1)


def background_mass(m: np.ndarray, union_cover: np.ndarray) -> np.ndarray:
    """sum(p * (1 - union_cover)): the share of mass off every labelled object of the image."""
    return mass_inside(m, 1.0 - union_cover)


def pointing_hit(m: np.ndarray, cover: np.ndarray) -> np.ndarray:
    """cover[peak] > 0: whether the peak cell touches the object."""
    return _hit(_p(m), _cells(cover))


def _hit(p: np.ndarray, cover: np.ndarray) -> np.ndarray:
    touched = np.broadcast_to(cover > 0, p.shape)
    return np.take_along_axis(touched, p.argmax(axis=-1)[..., None], axis=-1)[..., 0]


def top_mass_cells(m: np.ndarray, fraction: float = TOP_MASS_FRACTION) -> np.ndarray:
    """DINO's rule: the fewest cells holding >= fraction of the mass, as a bool mask like m.

    As in DINO's visualize_attention.py: sort p ascending and keep the cells whose ascending
    cumulative mass exceeds 1 - fraction. Cells tied at the threshold value are taken row-major.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return _top_mass(_p(m), fraction).reshape(m.shape)


def _top_mass(p: np.ndarray, fraction: float) -> np.ndarray:
    # A value sort and a threshold instead of DINO's argsort: same set, several times faster.
    ascending = np.sort(p, axis=-1)
    n_dropped = (np.cumsum(ascending, axis=-1) <= 1.0 - fraction).sum(axis=-1, keepdims=True)
    threshold = np.take_along_axis(ascending, n_dropped, axis=-1)  # the smallest kept value
    above, tied = p > threshold, p == threshold
    n_tied_kept = p.shape[-1] - n_dropped - above.sum(axis=-1, keepdims=True)
    return above | (tied & (np.cumsum(tied, axis=-1) <= n_tied_kept))


def object_cells(cover: np.ndarray) -> np.ndarray:
    """The object's cells for IoU: cover >= 0.5, else the single most-covered cell (no cell when the
    object covers none)."""
    return _object_cells(_cells(cover)).reshape(cover.shape)


def _object_cells(cover: np.ndarray) -> np.ndarray:
    cells = cover >= OBJECT_CELL_COVERAGE
    fallback = ~cells.any(axis=-1) & (cover.max(axis=-1) > 0)
    best = np.arange(cover.shape[-1]) == cover.argmax(axis=-1)[..., None]
    return cells | (best & fallback[..., None])


def iou_top60(m: np.ndarray, cover: np.ndarray) -> np.ndarray:
    """|top & obj| / |top | obj| of top_mass_cells(m, 0.6) and object_cells(cover); never 0/0 since
    the top set holds at least one cell."""
    return _iou_top60(_p(m), _cells(cover))


def _iou_top60(p: np.ndarray, cover: np.ndarray) -> np.ndarray:
    top, obj = _top_mass(p, TOP_MASS_FRACTION), _object_cells(cover)
    return (top & obj).sum(axis=-1) / (top | obj).sum(axis=-1)


def specificity(m: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Does the word matter: the Jensen-Shannon divergence, in bits, between the map and a word-blind map of
    the same image, JSD(p, q) = H((p + q) / 2) - (H(p) + H(q)) / 2 with p, q = distribution(m), distribution(
    reference) and H(p) = -sum p log2 p: 0 = the word's map is the reference, 1 = they share no cell.

    A word map that merely repeats the image's generic saliency points at objects without being about the
    word; its specificity is near 0. The references: the image encoder's own [CLS] self-attention (mean of
    the last ViT block's heads: `specificity_cls`) and the caption's [CLS] row of the same map kind
    (`specificity_row`). JSD rather than one minus the cosine: it is bounded in [0, 1], symmetric, defined
    where either map has empty cells (a clamped Grad-CAM), and it weighs every cell's mass as the other
    metrics do, where the cosine is dominated by the few largest cells of peaked maps.

    Both word-blind references treat every object of the image alike, so a map on the wrong object
    diverges from them as much as one on the right object (on the demo world their AUC for "on its own
    object vs on another named object" is 0.50-0.70). The third reference contrasts the word with the
    other things its caption names: the mean distribution of the same kind of map over the caption's words
    that name another category (`others_reference`; `specificity_others`). A map that sits where the other
    nouns' maps sit is not about its word: near 0. It needs no object labels, and it is NULL for a word
    without a category or in a caption that names no other one.
    """
    return _specificity(_p(m), _p(reference))


def other_object_pairs(named: np.ndarray, scored: np.ndarray, caption: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(word, other) index pairs behind `specificity_others`: every word scored against a category (an
    object word: the one it names; a bound attribute: its noun's) with each word of its caption that names
    another category.

    Args:
        named: (n,) the category each word names, 0 where none.
        scored: (n,) the category each word is scored against, 0 where none.
        caption: (n,) each word's caption, non-decreasing (a caption's words are consecutive).
    """
    objects = np.flatnonzero(named > 0)
    start = np.searchsorted(caption[objects], caption, "left")
    counts = np.where(scored > 0, np.searchsorted(caption[objects], caption, "right") - start, 0)
    word = np.repeat(np.arange(len(named)), counts)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    other = objects[np.repeat(start, counts) + within]
    keep = named[other] != scored[word]
    return word[keep], other[keep]


def others_reference(maps: np.ndarray, pairs: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(n, g, g): per word the mean distribution of the maps of its caption's words naming other categories
    (`other_object_pairs`), NaN where there are none."""
    word, other = pairs
    total = np.zeros(maps.shape)
    np.add.at(total, word, distribution(maps[other]))
    count = np.bincount(word, minlength=len(maps))[:, None, None]
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _specificity(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.clip(_bits((p + q) / 2) - (_bits(p) + _bits(q)) / 2, 0.0, 1.0)


def _bits(p: np.ndarray) -> np.ndarray:
    return -(p * np.log2(np.where(p > 0, p, 1.0))).sum(axis=-1)


def word_metrics_batch(
    maps: np.ndarray,
    category_cover: np.ndarray | None = None,
    box_cover: np.ndarray | None = None,
    union_cover: np.ndarray | None = None,
    has_object: np.ndarray | None = None,
    encoder_cls: np.ndarray | None = None,
    cls_row: np.ndarray | None = None,
    others: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """All metrics of n word maps at once, as the functions above define them.

    Args:
        maps: (n, g, g) non-negative.
        category_cover: (n, g, g) grid cover of each word's category masks, or None when no word has
            an object (see :func:`covers_for_words`).
        box_cover: (n, g, g) grid cover of the same category's boxes; given with category_cover.
        union_cover: (g, g) or (n, g, g) cover of the union of all the image's masks; None when no
            instances file was given.
        has_object: (n,) bool, which rows' covers are real; default all when category_cover is given.
        encoder_cls: (n, g, g) the image encoder's [CLS] attention of each word's image; None: not known.
        cls_row: (n, g, g) each word's caption's [CLS] row of the same map kind; None: not known.
        others: (n, g, g) each word's `others_reference`, NaN rows where it has none; None: not known.

    Returns:
        Arrays of length n: peak_row, peak_col (int64), peak_value, entropy, mask_mass, box_mass,
        background_mass, iou_top60, specificity_cls, specificity_row, specificity_others (float64) and pointing_hit,
        has_object (bool). The object metrics are NaN (pointing_hit False) where has_object is False:
        they are NULL there, as is background_mass (all NaN) without union_cover and a specificity
        without its reference.
    """
    n, g, _ = maps.shape
    if (category_cover is None) != (box_cover is None):
        raise ValueError("category_cover and box_cover go together")
    p = _p(maps)  # (n, g*g)
    row, col, value = _peak(p, g)
    out = {"peak_row": row, "peak_col": col, "peak_value": value, "entropy": _entropy(p)}
    if category_cover is None:
        has_object = np.zeros(n, dtype=bool)
        category_cover = box_cover = np.zeros((n, g, g))
    elif has_object is None:
        has_object = np.ones(n, dtype=bool)
    cover = _cells(category_cover)
    null = np.where(has_object, 0.0, np.nan)  # adding it turns the rows without an object to NaN
    out["mask_mass"] = _mass(p, cover) + null
    out["box_mass"] = _mass(p, _cells(box_cover)) + null
    out["iou_top60"] = _iou_top60(p, cover) + null
    out["pointing_hit"] = _hit(p, cover) & has_object
    out["has_object"] = has_object
    if union_cover is None:
        out["background_mass"] = np.full(n, np.nan)
    else:
        out["background_mass"] = _mass(p, 1.0 - _cells(union_cover))
    for name, reference in (("specificity_cls", encoder_cls), ("specificity_row", cls_row),
                            ("specificity_others", others)):  # fmt: skip
        out[name] = np.full(n, np.nan) if reference is None else _specificity_or_nan(p, reference)
    return out


def _specificity_or_nan(p: np.ndarray, reference: np.ndarray) -> np.ndarray:
    known = np.isfinite(reference).all(axis=(-2, -1))
    return np.where(known, _specificity(p, _p(np.where(known[:, None, None], reference, 1.0))), np.nan)


def word_metrics(
    m: np.ndarray,
    category_cover: np.ndarray | None,
    box_cover: np.ndarray | None,
    union_cover: np.ndarray | None,
    encoder_cls: np.ndarray | None = None,
    cls_row: np.ndarray | None = None,
    others: np.ndarray | None = None,
) -> dict[str, float | int | bool | None]:
    """The metrics of one word map, None where the contract says NULL (see word_metrics_batch)."""
    out = word_metrics_batch(
        m[None],
        *(None if a is None else a[None] for a in (category_cover, box_cover)),
        union_cover,
        encoder_cls=None if encoder_cls is None else encoder_cls[None],
        cls_row=None if cls_row is None else cls_row[None],
        others=None if others is None else others[None],
    )
    has_object = bool(out.pop("has_object")[0])
    row = {key: value[0].item() for key, value in out.items()}
    absent = {"mask_mass", "box_mass", "iou_top60", "pointing_hit"} if not has_object else set()
    absent |= {"background_mass"} if union_cover is None else set()
    references = {"specificity_cls": encoder_cls, "specificity_row": cls_row, "specificity_others": others}
    absent |= {name for name, ref in references.items() if ref is None or not np.isfinite(ref).all()}
    return {key: None if key in absent else value for key, value in row.items()}
