"""The loop of a run: batches from the loader through the device into chunks of Parquet parts.

A batch's device work (decoding JPEGs left undecoded, the model, every per-word op) is queued before
the previous batch's results come back to the host and become Arrow rows, and background threads
write each chunk of images as one part per table. `StageClock` keeps the main process's CPU time per
stage, which `bench/throughput.py` reports.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Protocol

import pyarrow as pa
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from db import parts as partsdir
from extractor.batch import Batch
from extractor.image import decode_on_device, normalize
from extractor.maps import BatchMaps
from extractor.summarize import HostCopy, Slice, batch_failures, batch_tables, word_outputs


class Mapper(Protocol):
    """A model as the per-word pipeline sees it: everything after this call is model-independent.

    ALBEF (`extractor.maps.batch_maps` with the model bound) is the first implementation, the shape-true
    stand-in (`extractor.standin.StandIn`) the second; a model family with the same cross-attention design
    (BLIP's ITM model) would be a third, returning the same `BatchMaps`.
    """

    def __call__(self, pixels: Tensor, input_ids: Tensor, attention_mask: Tensor, image_index: Tensor) -> BatchMaps:
        """(I, 3, R, R) normalised images; (C, T) captions and their mask; (C,) each caption's image row."""
        ...


STAGES = ("device", "rows", "write", "loop")
# Parts are written by this many threads: one thread's encoding and writes could hold back a GPU (README,
# "On paper", estimates an H200 at 1,400 images/s; `bench/writer.py` measures the writer's ceiling).
WRITER_THREADS = 2


class StageClock:
    """CPU seconds of this process's threads per stage: `with clock("device"): ...`.

    Stages: device (work queued on the model's device: all of it when that is the CPU), rows (copies back
    and Arrow rows), write (Parquet parts, in the writer threads), loop (the main thread's whole loop,
    device and rows included: what bounds one process).
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.lock = threading.Lock()  # the writer threads add to "write" together

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.thread_time()
        try:
            yield
        finally:
            with self.lock:
                self.seconds[stage] += time.thread_time() - start


def batch_rows(
    batches: DataLoader,
    mapper: Mapper,
    slices: list[Slice],
    run_id: str,
    device: torch.device,
    stop: threading.Event,
    res: int,
    clock: StageClock,
) -> Iterator[tuple[int, dict[str, pa.Table]]]:
    """(images in the batch, its tables) per batch, in order.

    The JPEGs the workers left undecoded (`--decode device`) are decoded and resized to `res` on the
    device first. The device work of a batch is queued before the previous batch's results are copied
    back and laid out, so on CUDA the host's part overlaps the next batch's kernels. After `stop` is set
    no new batch is started; the one under way is finished.
    """

    def rows_of(batch: Batch, outputs: HostCopy | None) -> tuple[int, dict[str, pa.Table]]:
        with clock("rows"):
            return host_rows(batch, outputs, slices, run_id)

    previous = None
    for batch in batches:
        if stop.is_set():
            break
        with clock("device"):
            if batch.jpegs:
                batch = batch.with_jpegs_decoded(decode_on_device([j.data for j in batch.jpegs], res, device), res)
            current = (batch, device_outputs(batch.to(device), mapper, slices))
        if previous:
            yield rows_of(*previous)
        previous = current
    if previous:
        yield rows_of(*previous)


def device_outputs(batch: Batch, mapper: Mapper, slices: list[Slice]) -> HostCopy | None:
    """Queue a batch's model pass, per-word work and copies back on its device; None when it has no caption."""
    if not len(batch.caption_ids):
        return None
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=batch.pixels.is_cuda):
        maps = mapper(normalize(batch.pixels), batch.input_ids, batch.attention_mask, batch.image_index)
    return HostCopy(word_outputs(maps, batch, slices))


def host_rows(
    batch: Batch, outputs: HostCopy | None, slices: list[Slice], run_id: str
) -> tuple[int, dict[str, pa.Table]]:
    """(images, tables) of a batch, once its outputs are on the host."""
    if outputs is None:
        return batch.n_images, batch_failures(batch, run_id)
    return batch.n_images, batch_tables(batch, outputs.arrays(), slices, run_id)


class ChunkWriter:
    """Gathers batch tables into chunks of images and writes each chunk's parts in background threads,
    calling `on_saved(n_images)` when a chunk is on disk (one call at a time). Chunks are independent:
    they may land in any order, and a resume finds whichever are done."""

    def __init__(
        self,
        parts: partsdir.Store,
        run_id: str,
        chunk_images: int,
        on_saved: Callable[[int], object],
        clock: StageClock,
        threads: int = WRITER_THREADS,
    ):
        self.parts, self.run_id, self.chunk_images, self.on_saved = parts, run_id, chunk_images, on_saved
        self.clock, self.threads = clock, threads
        self.pending: list[dict[str, pa.Table]] = []
        self.n_images = 0
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="parts")
        self.writes: deque[Future] = deque()
        self.saving = threading.Lock()

    def add(self, tables: dict[str, pa.Table], n_images: int) -> None:
        self.pending.append(tables)
        self.n_images += n_images
        if self.n_images >= self.chunk_images:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        names = dict.fromkeys(name for tables in self.pending for name in tables)
        tables = {name: pa.concat_tables([t[name] for t in self.pending if name in t], promote_options="permissive")
                  for name in names}  # fmt: skip
        status = tables.pop(partsdir.DONE_TABLE)
        name = f"{min(status.column('image_id').to_pylist()):012d}-{partsdir.new_token()}.parquet"
        write = self.pool.submit(self._write, name, tables, status)
        write.add_done_callback(lambda done, n=self.n_images: self._saved(done, n))
        self.writes.append(write)
        self.pending, self.n_images = [], 0
        # At most one chunk waiting per thread beyond those being written: memory stays bounded.
        while len(self.writes) > 2 * self.threads or (self.writes and self.writes[0].done()):
            self.writes.popleft().result()

    def _saved(self, write: Future, n_images: int) -> None:
        if write.exception() is None:  # a failed write raises in the main thread, from `result`
            with self.saving:
                self.on_saved(n_images)

    def _write(self, name: str, tables: dict[str, pa.Table], status: pa.Table) -> None:
        with self.clock("write"):
            partsdir.write_chunk(self.parts, self.run_id, name, tables, status)

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        """Write what is gathered (also when stopping early: every finished batch is kept). On an error or a
        second interrupt while waiting, the chunks not yet started are dropped; those being written finish."""
        try:
            self.flush()
            while self.writes:
                self.writes.popleft().result()
        finally:
            self.pool.shutdown(cancel_futures=True)
