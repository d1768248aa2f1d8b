"""Bootstrap confidence intervals over images, from per-image aggregates (pure numpy: no SQL, no pandas).

The unit resampled is the image, not the word row: the words of one image (its five captions, repeated
words) are not independent, and a per-(group, image) table is a few rows per image where the word rows
are tens of millions. Each resample weighs every image by a Poisson(1) count (the Poisson bootstrap: the
same images for every group of one resample, and no multinomial draw over all images needed). An image's
weight in resample r is a hash of (seed, image id, r), so a group's interval is the same whichever other
groups (or images) are bootstrapped beside it: a key ranked into the first rows has the interval it has
in the whole table.

The weights of one (seed, resamples) are kept in the server process for the next call (one table of images x
resamples bytes: 123 MB at COCO's 123,287 images and 1,000 resamples), over the union of the images asked so far,
so a call on other keys, another metric or order gathers its images' rows instead of hashing them again.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

# Elements of one weight block, images x resamples: bounds a chunk of resamples to ~64 MB of float32 weights.
_BLOCK = 1 << 24
# P(Poisson(1) <= k) for k = 0..9: a weight is the number of these a uniform draw exceeds (it is never above
# 10, which Poisson(1) exceeds with probability 1e-8).
_POISSON_CDF = np.cumsum([math.exp(-1) / math.factorial(k) for k in range(10)])
_POISSON_EDGES = (_POISSON_CDF * 2.0**32).astype(np.uint32)  # the same on a uniform 32-bit hash
_CACHE_BLOCK = 1 << 16  # hash elements computed at once (256 kB of uint32)
_KEPT_BYTES = 1 << 28  # the kept weight table grows to the union of images asked only up to 256 MB


@dataclass(frozen=True)
class _Kept:
    """Every resample's weights of the images `ids` (sorted): table[i, r] is image ids[i]'s in resample r."""

    seed: int
    resamples: int
    ids: np.ndarray
    table: np.ndarray


_kept: _Kept | None = None
_kept_lock = threading.Lock()


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
        image: the image's id (shared by the groups: one resample weighs an image once).
        total: the image's sum of the quantity (e.g. of a metric's change) in that group.
        count: the image's number of occurrences in that group (> 0).
        resamples: bootstrap resamples; `seed` chooses them.
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
    ids, image = np.unique(image, return_inverse=True)
    n_images = len(ids)
    kept = _weights(ids, resamples, seed)
    image = np.searchsorted(kept.ids, ids)[image]  # each row's image's row of the kept table
    # float32 resample sums (half the memory traffic): 1e-7 relative error per term, far below any interval's
    # width. Weights stay uint8 until a group's rows gather theirs (a quarter of the bytes moved). einsum, not `@`:
    # OpenBLAS's sgemm of a (2, rows) by (rows, n) product is 10-40x slower here.
    sums = np.stack([total, count]).astype(np.float32)  # (2, rows)
    bounds = np.r_[starts, len(group)]
    draws = np.empty((resamples, len(starts)))
    chunk = max(1, min(resamples, _BLOCK // n_images))
    for first in range(0, resamples, chunk):
        n = min(chunk, resamples - first)
        for g, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            rows = kept.table[image[lo:hi], first : first + n].astype(np.float32)  # (rows of g, n): their weights
            num, den = np.einsum("kr,rn->kn", sums[:, lo:hi], rows).astype(np.float64)  # (2, n)
            with np.errstate(invalid="ignore", divide="ignore"):
                draws[first : first + n, g] = num / den
    low, high = np.nanquantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return estimate, low, high


def clear_weights() -> None:
    """Forget the kept weights (the next call hashes its images' weights again)."""
    global _kept
    with _kept_lock:
        _kept = None


def _weights(ids: np.ndarray, resamples: int, seed: int) -> _Kept:
    """Weights of at least the sorted images `ids` in every resample: the kept table when it has them all, else
    a new one over them and the kept images (while that stays under _KEPT_BYTES), kept in its place; one over
    _KEPT_BYTES even for `ids` alone is returned without being kept."""
    global _kept
    with _kept_lock:
        kept = _kept
    if kept is not None and (kept.seed, kept.resamples) == (seed, resamples):
        at = np.minimum(np.searchsorted(kept.ids, ids), len(kept.ids) - 1)
        if np.array_equal(kept.ids[at], ids):
            return kept
        union = np.union1d(kept.ids, ids)
        ids = union if union.size * resamples <= _KEPT_BYTES else ids
    table = _poisson_weights(ids, resamples, seed)
    table.flags.writeable = False  # shared by concurrent sessions
    kept = _Kept(seed, resamples, ids, table)
    if table.nbytes > _KEPT_BYTES:
        return kept
    with _kept_lock:
        _kept = kept
    return kept


def _poisson_weights(ids: np.ndarray, n: int, seed: int) -> np.ndarray:
    """(images, n) Poisson(1) weights as uint8 of the images `ids` in resamples 0..n-1: a 32-bit
    hash of the image's and the resample's own hashes (murmur3's finalizer), through the Poisson CDF."""
    image = _splitmix64(ids.astype(np.uint64) ^ np.uint64(seed)).astype(np.uint32)  # the low 32 bits
    resample = _splitmix64(np.arange(n, dtype=np.uint64) + np.uint64(1 << 63)).astype(np.uint32)
    weights = np.empty((len(ids), n), dtype=np.uint8)
    step = max(1, _CACHE_BLOCK // n)
    for lo in range(0, len(ids), step):  # a block of images at a time: each pass below stays in cache
        x = image[lo : lo + step, None] + resample[None, :]  # wraps mod 2^32
        x ^= x >> np.uint32(16)
        x *= np.uint32(0x85EBCA6B)
        x ^= x >> np.uint32(13)
        x *= np.uint32(0xC2B2AE35)
        x ^= x >> np.uint32(16)
        # The number of CDF edges below x: the first three on every element, the rest only on the 8% above the third.
        tail = x > _POISSON_EDGES[2]
        w = (x > _POISSON_EDGES[0]).view(np.uint8) + (x > _POISSON_EDGES[1]).view(np.uint8) + tail.view(np.uint8)
        rare = np.flatnonzero(tail)
        w.ravel()[rare] += np.searchsorted(_POISSON_EDGES[3:], x.ravel()[rare]).astype(np.uint8)
        weights[lo : lo + step] = w
    return weights


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's output function: well-mixed 64-bit hashes of distinct inputs."""
    x = x * np.uint64(0x9E3779B97F4A7C15)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))
