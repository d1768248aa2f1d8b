"""`python -m extractor run ... --ray [ADDRESS]`: the same run, its chunks of images spread over a Ray cluster.

The driver does what a single-process run does before the model (the run's identity, its settings and the
dataset's rows in the parts folder, the images an earlier process died on) and splits the images still to
do into chunks of --chunk-images, leaving out the chunks already done, so the same command resumes after
any stop, the head node's included. Ray Data streams the chunks into a pool of actors, each of which loads
the model once (`run.setup`) and runs every chunk it is given through the single-process pipeline
(`run.image_rows`, `run.save_rows`): covers, loader, model, per-word work, one Parquet part per table.
Ray restarts an actor that dies and retries its chunk; a chunk that fails `CHUNK_TRIES` times is recorded
as failed, an `image` error row per image, and the run goes on. The driver then builds the database.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import warnings
from types import ModuleType

import numpy as np
import torch
from tqdm import tqdm

from db import parts as partsdir
from db import writer
from extractor import run
from extractor.pairs import chunk_dataset, chunk_json
from extractor.pipeline import StageClock
from extractor.suspects import journal_dir

log = logging.getLogger(__name__)
CHUNK_TRIES = 3  # runs of a chunk (an actor that dies or raises on it) before its images are recorded as failed
CONNECT_TIMEOUT_S = 5.0


class ClusterUnreachable(Exception):
    """--ray ADDRESS names no running Ray cluster, or Ray is not installed."""


def import_ray() -> ModuleType:
    try:
        import ray
        import ray.data  # noqa: F401  (the submodule, used as ray.data)
    except ImportError:
        raise ClusterUnreachable("--ray needs Ray: pip install -r requirements-ray.txt") from None
    return ray


def connect(ray: ModuleType, address: str | None) -> None:
    """Join the cluster at `address` ("auto": the one this node belongs to), or start a local one when None.

    Ray itself retries an address where nothing listens for minutes: a plain TCP connection says it first.
    """
    if address is None:
        ray.init(include_dashboard=False)
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        if address != "auto":
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
        ray.init(address=address)
    except (OSError, ValueError) as e:
        raise ClusterUnreachable(f"no Ray cluster at --ray {address} ({e}); start one with `ray start --head`, "
                                 "or give --ray without an address for a local one") from None  # fmt: skip


def actor_device(ray: ModuleType, asked: str) -> torch.device:
    """Where the actors run the model: --device, and for auto CUDA when the cluster has GPUs."""
    if asked == "auto":
        asked = "cuda" if ray.cluster_resources().get("GPU", 0) >= 1 else "cpu"
    return torch.device(asked)


def chunks_to_do(s: run.Setup) -> list[list[dict]]:
    """This shard's images in chunks of --chunk-images, as a single-process run cuts them, each less its
    images already done; chunks with nothing left are left out."""
    images = run.pending_images(s.dataset, set(), s.opts.limit, s.opts.shard)
    done = partsdir.done_image_ids(s.parts, s.run_id)
    n = s.opts.chunk_images
    chunks = ([r for r in images[i : i + n] if r["id"] not in done] for i in range(0, len(images), n))
    return [c for c in chunks if c]


class ChunkActor:
    """A Ray Data actor: the model loaded once, then each chunk of images through the pipeline into parts.

    With COCO files it reads the dataset once (it needs the instances for the object covers); a pairs
    table's or shards' chunks come with their records and captions, so that no actor reads the inputs,
    which for millions of pairs would cost each actor minutes and gigabytes.
    """

    def __init__(self, opts: run.Options, device: str) -> None:
        pairs = opts.captions is None
        self.setup = run.setup(opts, torch.device(device), dataset=chunk_dataset("[]")[0] if pairs else None)
        self.records = {} if pairs else {r["id"]: r for r in self.setup.dataset.images_with_captions()}
        self.journal = (journal_dir(self.setup.scratch, self.setup.run_id), partsdir.new_token())

    def saved(self, records: list[dict]) -> bool:
        """Whether an earlier try of this chunk wrote its parts (it died before Ray heard back): a chunk's
        parts are named by its smallest image id."""
        return partsdir.chunk_done(self.setup.parts, self.setup.run_id, min(r["id"] for r in records))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[float]]:
        """{chunk, image_ids, pairs} rows -> {chunk, images, failed, cpu} rows, once each chunk's parts are
        written (cpu: this process's CPU seconds on the chunk, all its threads)."""
        out: dict[str, list[float]] = {"chunk": [], "images": [], "failed": [], "cpu": []}
        for chunk, ids, pairs in zip(batch["chunk"], batch["image_ids"], batch["pairs"], strict=True):
            started = time.process_time()
            if pairs:
                self.setup.dataset, records = chunk_dataset(str(pairs))
            else:
                records = [self.records[int(i)] for i in ids]
            failed = 0
            if not self.saved(records):
                rows = run.image_rows(self.setup, records, self.journal)
                failed = run.save_rows(self.setup, rows, threading.Event(), StageClock(), lambda _: None)
            out["chunk"].append(int(chunk))
            out["images"].append(len(records))
            out["failed"].append(failed)
            out["cpu"].append(time.process_time() - started)
        return out


def extract(opts: run.Options, address: str | None, actors: int | None) -> str:
    """Run (or resume) an extraction on a Ray cluster into X.parts, then build X; returns the run id."""
    ray = import_ray()
    connect(ray, address)
    try:
        return run_on_cluster(ray, opts, actors)
    finally:
        ray.shutdown()


def run_on_cluster(ray: ModuleType, opts: run.Options, actors: int | None) -> str:
    started_at, started = time.time(), time.perf_counter()
    device = actor_device(ray, opts.device)
    s = run.setup(opts, device, with_model=False)
    resuming = run.record_run(s)
    chunks = chunks_to_do(s)
    n_images = sum(map(len, chunks))
    log.info("run %s on Ray: %s, %d images to do in %d chunks", s.run_id, "resuming" if resuming else "new",
             n_images, len(chunks))  # fmt: skip
    todo, journal = run.start_images(s, [r for c in chunks for r in c])
    kept = {r["id"] for r in todo}
    chunks = [c for c in ([r for r in c if r["id"] in kept] for c in chunks) if c]
    session = {"shard": list(opts.shard), "started_at": started_at, "images": len(todo)}
    partsdir.write_session(s.parts, s.run_id, journal[1], {**session, "complete": False})
    complete, cpu = False, 0.0
    try:
        finished, cpu = run_chunks(ray, s, device, chunks, actors) if chunks else (set(), 0.0)
        if lost := [c for i, c in enumerate(chunks) if i not in finished]:
            record_lost(s, lost)
        complete = True
    except KeyboardInterrupt:
        raise SystemExit(f"interrupted: {s.parts} keeps every finished chunk; run the same command to resume") from None
    finally:
        seconds = time.perf_counter() - started
        partsdir.write_session(s.parts, s.run_id, journal[1], {
            **session, "finished_at": time.time(), "seconds": seconds, "complete": complete,
            "cpu": {"driver": time.process_time(), "actors": cpu}})  # fmt: skip
    log.info("%d images on Ray in %.1f s, %.2f images/s", len(todo), seconds, len(todo) / max(seconds, 1e-9))
    writer.build(opts.db, wait=opts.wait_db, parts=s.parts)
    return s.run_id


def run_chunks(ray: ModuleType, s: run.Setup, device: torch.device, chunks: list[list[dict]],
               actors: int | None) -> tuple[set[int], float]:  # fmt: skip
    """Stream the chunks through a pool of `ChunkActor`s with a progress bar; returns the chunks finished and
    the actors' CPU seconds on them."""
    opts = s.opts  # its images folder resolved: a WebDataset's actors read no inputs to find it
    context = ray.data.DataContext.get_current()
    context.max_errored_blocks = -1  # a chunk that keeps failing is dropped here, and recorded by the caller
    context.actor_task_retry_on_errors = True  # an exception is retried too, up to CHUNK_TRIES runs in all
    context.enable_progress_bars = False  # ours counts images
    cuda = device.type == "cuda"
    resources = ray.cluster_resources()
    pool = actors or max(1, int(resources.get("GPU" if cuda else "CPU", 1)))
    pairs = (lambda c: chunk_json(s.dataset, c)) if opts.captions is None else (lambda c: "")
    items = [{"chunk": i, "image_ids": [r["id"] for r in c], "pairs": pairs(c)} for i, c in enumerate(chunks)]
    with warnings.catch_warnings():  # max_task_retries has no named parameter in Ray 2.60 yet
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated")
        results = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
            ChunkActor,
            fn_constructor_args=(opts, device.type),
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(pool, len(chunks))),
            max_task_retries=CHUNK_TRIES - 1,
            **({"num_gpus": 1} if cuda else {"num_cpus": 1}),
        )
    finished, failed, cpu = set(), 0, 0.0
    with tqdm(total=sum(map(len, chunks)), unit="img", desc="extracting", dynamic_ncols=True) as bar:
        for row in results.iter_rows():
            finished.add(int(row["chunk"]))
            failed += int(row["failed"])
            cpu += float(row["cpu"])
            bar.update(int(row["images"]))
    log.info("%d chunks finished on %d actors, %d images failed", len(finished), min(pool, len(chunks)), failed)
    return finished, cpu


def record_lost(s: run.Setup, lost: list[list[dict]]) -> None:
    """The chunks Ray gave up on: their images not done meanwhile are recorded as failed, with why."""
    done = partsdir.done_image_ids(s.parts, s.run_id)
    why = (f"its chunk of images failed {CHUNK_TRIES} times on Ray (a worker died or raised each time; "
           "see the Ray logs)")  # fmt: skip
    for chunk in lost:
        if records := [r for r in chunk if r["id"] not in done]:
            log.warning("chunk of images %d..%d failed %d times: recorded as failed", chunk[0]["id"],
                        chunk[-1]["id"], CHUNK_TRIES)  # fmt: skip
            run.write_failed(s.parts, s.run_id, records, dict.fromkeys((r["id"] for r in records), why))
