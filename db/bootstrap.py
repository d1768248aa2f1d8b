"""Bootstrap confidence intervals over images, from per-image aggregates (pure numpy: no SQL, no pandas).

The unit resampled is the image, not the word row: the words of one image (its five captions, repeated
words) are not independent, and a per-(group, image) table is a few rows per image where the word rows
are tens of millions. Each resample weighs every image by a Poisson(1) count (the Poisson bootstrap: the
same images for every group of one resample, and no multinomial draw over all images needed).
"""

from __future__ import annotations

import numpy as np

# Elements of one (resamples x rows) weight block: bounds the memory of a chunk of resamples (~128 MB).
_BLOCK = 1 << 24


def ratio_ci(
    group: np.ndarray,
    image: np.ndarray,
    total: np.ndarray,
    count: np.ndarray,
    *,
    resamples: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group, the ratio sum(total) / sum(count) and its percentile bootstrap interval over images.

    Args:
        group: one row per (group, image): the group's code, 0..G-1, every code present.
        image: the image's code, 0..I-1 (shared by the groups: one resample weighs an image once).
        total: the image's sum of the quantity (e.g. of a metric's change) in that group.
        count: the image's number of occurrences in that group (> 0).
        resamples: bootstrap resamples, drawn with `seed`.
        level: the interval's coverage, e.g. 0.95 for the 2.5% and 97.5% percentiles.

    Returns (estimate, low, high), one value per group code. A group whose images all have weight 0 in a
    resample skips that resample.
    """
    group, image = np.asarray(group, dtype=np.int64), np.asarray(image, dtype=np.int64)
    order = np.argsort(group, kind="stable")
    group, image = group[order], image[order]
    total, count = np.asarray(total, dtype=np.float64)[order], np.asarray(count, dtype=np.float64)[order]
    if not len(group):
        empty = np.empty(0)
        return empty, empty, empty
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    estimate = np.add.reduceat(total, starts) / np.add.reduceat(count, starts)
    rng = np.random.default_rng(seed)
    draws = np.empty((resamples, len(starts)))
    chunk = max(1, min(resamples, _BLOCK // len(group)))
    for first in range(0, resamples, chunk):
        n = min(chunk, resamples - first)
        weights = rng.poisson(1.0, size=(n, int(image.max()) + 1)).astype(np.float64)[:, image]  # (n, rows)
        with np.errstate(invalid="ignore", divide="ignore"):
            draws[first : first + n] = np.add.reduceat(weights * total, starts, axis=1) / np.add.reduceat(
                weights * count, starts, axis=1
            )
    low, high = np.nanquantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return estimate, low, high
