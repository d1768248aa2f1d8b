"""Object covers on the patch grid, computed once per (dataset, grid) and cached beside the output.

Covers do not depend on the model, so a second run, or a run of another checkpoint, reads them from the
cache instead of decoding every mask again. The cache is a folder of blocks (`.npz`, one per block of
images), each written under a temporary name and renamed into place like the parts.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from extractor.coco import CocoFormatError, ImageError, image_size
from extractor.dataset import CocoDataset, ErrorRow
from extractor.digest import current_sha256
from extractor.suspects import record_attempt

BLOCK_IMAGES = 1024


@dataclass
class GridCovers:
    """An image's objects on the g x g grid, cells flattened: one row per category it has.

    Covers stay float64, as the reference metrics read them: in float32 a cover near 0.5 can round onto
    the other side of OBJECT_CELL_COVERAGE.
    """

    category_ids: np.ndarray  # (K,) int32
    masks: np.ndarray  # (K, g*g) cover of the category's masks
    boxes: np.ndarray  # (K, g*g) cover of its boxes
    union: np.ndarray  # (g*g,) cover of all the image's masks
    errors: list[ErrorRow]  # skipped annotations, size warnings
    failure: str = ""  # why the image cannot be run, if it cannot


def grid_covers(dataset: CocoDataset, images_dir: Path, record: dict, g: int) -> GridCovers:
    """The covers of one image, its masks laid on the size of its file (the COCO record's when unreadable).

    An image whose masks cannot be laid out (too large) gets no objects and a `failure`: it is not run.
    """
    try:
        size = image_size(images_dir / record["file_name"])
    except ImageError:
        size = None  # decoding fails on it too, and says why
    try:
        covers, errors = dataset.covers_of(record, g, size=size)
    except CocoFormatError as e:
        return GridCovers(*_no_objects(g), errors=[], failure=str(e))
    except Exception as e:  # pycocotools' or numpy's own failure (MemoryError included): this image only
        return GridCovers(*_no_objects(g), errors=[], failure=f"cannot lay out its masks ({type(e).__name__}: {e})")
    ids = sorted(covers.by_category)
    stack = [covers.by_category[cid] for cid in ids]
    return GridCovers(
        np.array(ids, np.int32),
        np.array([m.ravel() for m, _ in stack], np.float64).reshape(len(ids), g * g),
        np.array([b.ravel() for _, b in stack], np.float64).reshape(len(ids), g * g),
        covers.union.ravel().astype(np.float64),
        errors,
    )


def _no_objects(g: int) -> tuple[np.ndarray, ...]:
    """(category_ids, masks, boxes, union) of an image without objects."""
    cells = np.zeros((0, g * g))
    return np.zeros(0, np.int32), cells, cells, np.zeros(g * g)


def cache_dir(parts: Path, instances: Path, images_dir: Path, g: int) -> Path:
    """The cache of one instances file on one grid (the images folder counts: masks follow the files)."""
    digest = current_sha256(instances)  # once per file version (a Ray actor asks for every chunk it runs)
    key = hashlib.sha256(f"{digest}|{images_dir.resolve()}|{g}".encode()).hexdigest()
    return parts / "covers" / f"g{g}-{key[:16]}"


def cached_locations(folder: Path) -> dict[int, tuple[str, int]]:
    """image id -> (block file, row) for every image in the cache (a block a killed process left half
    written is a hidden temporary file, never read)."""
    out = {}
    for path in sorted(folder.glob("[!.]*.npz")):
        with np.load(path) as block:
            out.update({int(i): (str(path), row) for row, i in enumerate(block["image_ids"])})
    return out


@lru_cache(maxsize=4)
def load_block(path: str) -> dict[int, GridCovers]:
    """A cache block as image id -> covers (kept per process: a loader reads each block a few times)."""
    with np.load(path) as npz:
        b = dict(npz)  # each b[name] on the npz itself would decompress the whole array again
    ids, offsets = b["image_ids"], b["offsets"]
    errors, failures = json.loads(str(b["errors"])), json.loads(str(b["failures"]))
    out = {}
    for row, image_id in enumerate(ids):
        k = slice(offsets[row], offsets[row + 1])
        rows = [tuple(e) for e in errors[row]]
        out[int(image_id)] = GridCovers(
            b["category_ids"][k], b["masks"][k], b["boxes"][k], b["unions"][row], rows, failures[row]
        )
    return out


def save_block(folder: Path, covers: dict[int, GridCovers]) -> Path:
    """Write one block of covers (rows in image id order); returns its file."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = sorted(covers)
    items = [covers[i] for i in ids]
    path = folder / f"{ids[0]:012d}-{os.getpid()}.npz"
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(
        tmp,
        image_ids=np.array(ids, np.int64),
        offsets=np.cumsum([0, *(len(c.category_ids) for c in items)]),
        category_ids=np.concatenate([c.category_ids for c in items]),
        masks=np.concatenate([c.masks for c in items]),
        boxes=np.concatenate([c.boxes for c in items]),
        unions=np.stack([c.union for c in items]),
        errors=np.array(json.dumps([c.errors for c in items])),
        failures=np.array(json.dumps([c.failure for c in items])),
    )
    os.replace(tmp, path)
    return path


def one_thread(*_: object) -> None:
    """In a worker process: one BLAS and one torch thread (OpenBLAS starts one per core in every process,
    and workers are many)."""
    threadpool_limits(1)
    torch.set_num_threads(1)


def cover_worker_init() -> None:
    """A covers worker: one thread, and Ctrl-C left to the main process (which then stops the pool)."""
    one_thread()
    signal.signal(signal.SIGINT, signal.SIG_IGN)


_job: tuple[CocoDataset, Path, int, tuple[Path, str]] | None = None  # what forked workers compute covers from


def _covers_of(record: dict) -> GridCovers:
    dataset, images_dir, g, journal = _job
    record_attempt(*journal, record["id"])
    return grid_covers(dataset, images_dir, record, g)


def fill_cache(
    folder: Path,
    records: list[dict],
    dataset: CocoDataset,
    images_dir: Path,
    g: int,
    workers: int,
    journal: tuple[Path, str],
) -> dict[int, tuple[str, int]]:
    """Compute the covers of `records` missing from the cache, in blocks, with a progress bar.

    Returns the cache's locations (see `cached_locations`). Workers are forked and inherit the dataset,
    so it is never pickled; each journals the images it starts (`extractor.suspects`).
    """
    global _job
    locations = cached_locations(folder)
    missing = [r for r in records if r["id"] not in locations]
    if not missing:
        return locations
    _job = (dataset, images_dir, g, journal)
    context = multiprocessing.get_context("fork")
    pool = ProcessPoolExecutor(workers, context, initializer=cover_worker_init) if workers else None
    try:
        # A worker that dies (a crash, the OOM killer) breaks the pool: BrokenProcessPool, never a hang.
        results = pool.map(_covers_of, missing, chunksize=16) if pool else map(_covers_of, missing)
        with tqdm(total=len(missing), unit="img", desc="object covers", dynamic_ncols=True) as bar:
            for block in _blocks(_counted(zip((r["id"] for r in missing), results, strict=True), bar), BLOCK_IMAGES):
                path = save_block(folder, dict(block))
                locations.update({image_id: (str(path), row) for row, (image_id, _) in enumerate(sorted(block))})
    finally:
        _job = None
        if pool:
            # Waiting lets the pool's manager thread close its wake-up pipe before the interpreter exits;
            # otherwise, after a worker died, the exit hook can write to the pipe as it closes (a traceback).
            pool.shutdown(wait=True, cancel_futures=True)
    return locations


def _counted(items: Iterable, bar: tqdm) -> Iterator:
    for item in items:
        bar.update(1)
        yield item


def _blocks(items: Iterable, n: int) -> Iterator[list]:
    it = iter(items)
    while block := list(islice(it, n)):
        yield block
