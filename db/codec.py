"""Map codec: a non-negative g x g float map <-> (uint8 row-major blob, max value).

Each map is scaled by its own max, so the blob keeps the map's shape at 1/255 relative precision in
g*g bytes (576 for a 24 x 24 grid), and `map_max` restores the absolute scale.
"""

from __future__ import annotations

import math

import numpy as np


def encode_map(m: np.ndarray) -> tuple[bytes, float]:
    """Encode a square non-negative map as (round(255 * m / max(m)) as uint8 bytes, max(m)).

    An all-zero map encodes as zero bytes with max 0.0.
    """
    m = np.asarray(m)
    if m.ndim != 2:
        raise ValueError(f"map must be a square 2-D grid, got shape {m.shape}")
    blobs, peaks = encode_maps(m[None])
    return blobs[0], float(peaks[0])


def decode_map(blob: bytes, map_max: float) -> np.ndarray:
    """Decode a blob written by encode_map into a float32 g x g map, g = isqrt(len(blob))."""
    g = math.isqrt(len(blob))
    if g * g != len(blob) or g == 0:
        raise ValueError(f"map blob of {len(blob)} bytes is not a non-empty square grid")
    q = np.frombuffer(blob, dtype=np.uint8).reshape(g, g)
    return q.astype(np.float32) * np.float32(map_max / 255.0)


def encode_maps(maps: np.ndarray) -> tuple[list[bytes], np.ndarray]:
    """encode_map over a stack of maps (n, g, g) at once: (blobs, maxes as float32 (n,))."""
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3 or maps.shape[1] != maps.shape[2]:
        raise ValueError(f"maps must be a stack of square grids (n, g, g), got shape {maps.shape}")
    if not np.isfinite(maps).all() or (maps < 0).any():
        raise ValueError("maps must be finite and non-negative")
    peaks = maps.reshape(len(maps), -1).max(axis=1)
    scale = np.where(peaks > 0, 255.0 / np.where(peaks > 0, peaks, 1.0), 0.0).astype(np.float32)
    q = np.rint(maps * scale[:, None, None]).astype(np.uint8)
    return [row.tobytes() for row in q], peaks
