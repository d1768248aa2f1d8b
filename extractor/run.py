"""`python -m extractor run`: ALBEF per-word maps and metrics over a COCO dataset, into Parquet parts and DuckDB.

The pairs come from COCO files (--captions, --instances), a table of image paths and captions (--pairs) or
WebDataset tar shards (--webdataset); see `extractor.pairs`.

Loader workers decode images, tokenize captions and read the cached object covers; the model and all
the per-word work (maps merged into words, metrics, uint8 encoding) run on the device, a batch at a
time; each chunk of images becomes one Parquet file per table in X.parts/, renamed into place when
complete. A crash or kill -9 loses at most the chunks in flight, and the same command resumes where it
stopped. Ctrl-C or SIGTERM (a scheduler's preemption) finishes and saves the batches under way; a second
one stops at once. When the run completes, X (the --db file) is built from the parts for the dashboard.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import pyarrow as pa
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

import extractor
from db import parts as partsdir
from db import writer
from extractor import suspects
from extractor.batch import ImageFiles, collate, worker_init
from extractor.checkpoint import default_vocab, frozen_albef
from extractor.coco import load_image
from extractor.config import ALBEFConfig
from extractor.covers import cache_dir, fill_cache, grid_covers
from extractor.dataset import CocoDataset
from extractor.digest import file_sha256
from extractor.image import resized_pixels
from extractor.maps import batch_maps
from extractor.pairs import add_input_arguments, fill_sizes, image_source, input_files, read_inputs
from extractor.pipeline import STAGES, ChunkWriter, Mapper, StageClock, batch_rows
from extractor.standin import StandIn
from extractor.summarize import Slice, failure_tables, run_slices
from extractor.text import Tokenizer

log = logging.getLogger(__name__)
METHODS = ("both", "gradcam", "attention")


@dataclass
class Options:
    """Everything `run` was asked for, resolved (the CLI's arguments as typed values)."""

    images: Path | None  # with --pairs, the root its paths are under; with --webdataset, set by `setup`
    captions: Path | None  # one of captions (COCO), pairs (a table) and webdataset (shards)
    instances: Path | None
    checkpoint: Path
    config: Path | None
    vocab: Path | None
    db: Path
    method: str = "both"
    layers: list[int] | None = None  # fusion layers with raw attention; None = all
    image_res: int | None = None
    device: str = "auto"
    decode: str | None = None  # "cpu" or "device"; None = device on CUDA, else cpu
    batch_size: int | None = None
    workers: int | None = None
    limit: int | None = None
    shard: tuple[int, int] = (0, 1)
    chunk_images: int = 256
    model: str = "albef"
    wait_db: float = 60.0
    pairs: Path | None = None
    webdataset: str | None = None
    image_column: str = "image"
    caption_column: str = "caption"
    parts: str | None = None  # the parts folder: a path or a URI (s3://...); None = X.parts beside --db


def resolve_config(opts: Options) -> ALBEFConfig:
    """--config, else a config.json beside the checkpoint, else the ALBEF base default."""
    path = opts.config or opts.checkpoint.with_name("config.json")
    cfg = ALBEFConfig.from_json(path) if path.is_file() else ALBEFConfig()
    if opts.image_res:
        cfg = ALBEFConfig.from_dict({**cfg.to_dict(), "image_res": opts.image_res})
    return cfg


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but no CUDA device is available")
    return torch.device(name)


def run_identity(cfg: ALBEFConfig, checkpoint_sha: str, vocab_sha: str, method: str, layers: list[int]) -> str:
    """The run id: a hash of everything that changes the rows, so the same command resumes the same run."""
    key = json.dumps([checkpoint_sha, cfg.to_dict(), method, layers, vocab_sha, extractor.__version__], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def load_mapper(opts: Options, device: torch.device, layers: list[int], gradcam: bool) -> tuple[Mapper, str]:
    """The model as a function of a batch (pixels, ids, mask, image_index) -> BatchMaps, and its checkpoint's
    sha256. ALBEF frozen in eval mode on `device`, or with --model null the shape-true stand-in."""
    cfg = resolve_config(opts)
    if opts.model == "null":
        return StandIn(cfg, layers, gradcam), file_sha256(opts.checkpoint)
    model, checkpoint_sha = frozen_albef(cfg, opts.checkpoint)
    return partial(batch_maps, model.to(device), layers=layers, gradcam=gradcam), checkpoint_sha


def resolve_vocab(opts: Options) -> Path:
    """--vocab, else a vocab.txt beside the checkpoint (the demo's), else the shared bert-base-uncased one."""
    return opts.vocab or default_vocab(opts.checkpoint)


def parallelism(opts: Options, device: torch.device) -> tuple[int, int]:
    """(images per batch, loader workers): as asked, else 32 and 6 on CUDA, 1 and 0 on CPU.

    On CPU the model already keeps every core busy.
    """
    defaults = (32, 6) if device.type == "cuda" else (1, 0)
    return tuple(n if n is not None else d for n, d in zip((opts.batch_size, opts.workers), defaults, strict=True))


def dataset_key(opts: Options) -> str:
    """Names the dataset rows a run read in the parts folder: its files, by path and size."""
    files = input_files(opts)
    return hashlib.sha256(json.dumps([[str(f.resolve()), f.stat().st_size] for f in files]).encode()).hexdigest()[:16]


@dataclass
class Setup:
    """What every process of a run builds once: the dataset, the model, the tokenizer and the run's identity."""

    opts: Options
    device: torch.device
    dataset: CocoDataset
    cfg: ALBEFConfig
    tokenizer: Tokenizer
    mapper: Mapper | None  # None where only the run's identity is needed (a Ray driver)
    checkpoint_sha: str
    vocab: dict[str, str]  # {"path", "sha256"} of the vocab read, as the run records it
    run_id: str
    attention_layers: list[int]
    gradcam: bool
    parts: partsdir.Store  # the run's output, maybe remote
    scratch: Path  # this machine's own: the covers cache and the suspects journal (X.parts beside --db)

    @property
    def slices(self) -> list[Slice]:
        return run_slices(self.attention_layers, self.cfg.gradcam_block if self.gradcam else None)


def setup(opts: Options, device: torch.device, with_model: bool = True, dataset: CocoDataset | None = None) -> Setup:
    """Read the dataset (unless given, with `opts.images` resolved), load the model (unless `with_model` is
    False) and work out the run id."""
    if dataset is None:
        dataset, images = read_inputs(opts)
        opts = replace(opts, images=images)
    cfg = resolve_config(opts)
    layers = sorted(opts.layers) if opts.layers else cfg.fusion_layers
    if bad := [la for la in layers if la not in cfg.fusion_layers]:
        raise ValueError(f"--layers {bad} are not fusion layers of this model ({cfg.fusion_layers})")
    attention_layers = layers if opts.method in ("both", "attention") else []
    gradcam = opts.method in ("both", "gradcam")
    mapper, checkpoint_sha = (
        load_mapper(opts, device, attention_layers, gradcam) if with_model else (None, file_sha256(opts.checkpoint))
    )
    vocab = resolve_vocab(opts)
    vocab_record = {"path": str(vocab.resolve()), "sha256": file_sha256(vocab)}
    tokenizer = Tokenizer(vocab, cfg.bert.max_position_embeddings)
    run_id = run_identity(cfg, checkpoint_sha, vocab_record["sha256"], opts.method, attention_layers)
    scratch = partsdir.parts_dir(opts.db)
    return Setup(opts, device, dataset, cfg, tokenizer, mapper, checkpoint_sha, vocab_record, run_id,
                 attention_layers, gradcam, partsdir.open_store(opts.parts or scratch), scratch)  # fmt: skip


def record_run(s: Setup) -> bool:
    """Write the run's settings and the dataset's rows into the parts folder; True when the run resumes."""
    opts, cfg = s.opts, s.cfg
    resuming = partsdir.write_run(s.parts, {
        "run_id": s.run_id, "checkpoint_path": str(opts.checkpoint.resolve()), "checkpoint_sha256": s.checkpoint_sha,
        "vocab": s.vocab, "config": json.dumps(cfg.to_dict()), "method": opts.method, "layers": s.attention_layers,
        "gradcam_layer": cfg.gradcam_block if s.gradcam else None, "image_res": cfg.image_res,
        "patch_size": cfg.patch_size, "grid_size": cfg.grid_size, "code_version": extractor.__version__,
        "images_dir": str(opts.images.resolve()),
        "captions_file": opts.webdataset or str((opts.captions or opts.pairs).resolve()),
        "instances_file": str(opts.instances.resolve()) if opts.instances else None, "device": str(s.device),
    })  # fmt: skip
    key = dataset_key(opts)
    if not any(f"/{key}/" in p for p in partsdir.dataset_files(s.parts, partsdir.DATASET_TABLES[-1])):
        fill_sizes(s.dataset, opts.images)  # a pairs input's images without sizes: read once per dataset
        partsdir.write_dataset(s.parts, key, dict(zip(partsdir.DATASET_TABLES, s.dataset.frames(cfg.max_words),
                                                      strict=True)))  # fmt: skip
    return resuming


def start_images(s: Setup, todo: list[dict]) -> tuple[list[dict], tuple[Path, str]]:
    """Settle the images an earlier process died on (`set_aside_poisoned`), then start this process's
    journal; returns the images left to run and the journal (folder, token)."""
    todo = set_aside_poisoned(s, todo, partial(prepare_image, s.opts, s.dataset, s.cfg))
    return todo, (suspects.clear_attempts(s.scratch, s.run_id), partsdir.new_token())


def extract(opts: Options) -> str:
    """Run (or resume) an extraction into X.parts, then build X from the parts; returns the run id."""
    started_at = time.time()
    s = setup(opts, resolve_device(opts.device))
    resuming = record_run(s)
    todo = pending_images(s.dataset, partsdir.done_image_ids(s.parts, s.run_id), opts.limit, opts.shard)
    log.info("run %s: %s, %d images to do", s.run_id, "resuming" if resuming else "new", len(todo))
    todo, journal = start_images(s, todo)
    rows = image_rows(s, todo, journal)
    session = write_parts(s, journal[1], rows, len(todo), started_at)
    n, cpu, stages = max(1, len(todo)), session["cpu"], session["stages"]
    log.info("host CPU per image: main %.1f ms (device work %.1f, rows %.1f, parquet %.1f, main thread %.1f), "
             "loaders %.1f ms; "
             "%d images, %.1f images/s", 1e3 * cpu["main"] / n, *(1e3 * stages[k] / n for k in STAGES),
             1e3 * cpu["loaders"] / n, len(todo), len(todo) / session["seconds"])  # fmt: skip
    writer.build(opts.db, wait=opts.wait_db, parts=s.parts)
    return s.run_id


Rows = Callable[..., Iterator[tuple[int, dict[str, pa.Table]]]]


def image_rows(s: Setup, records: list[dict], journal: tuple[Path, str]) -> Rows:
    """The pipeline over `records`: their object covers filled into the cache, then the loader, the model and
    the per-word work as `rows(stop=..., clock=...)`, an iterator of (images, tables) per batch."""
    batch_size, workers = parallelism(s.opts, s.device)
    device_decode = (s.opts.decode or ("device" if s.device.type == "cuda" else "cpu")) == "device"
    covers_at = None
    if s.opts.instances:
        folder = cache_dir(s.scratch, s.opts.instances, s.opts.images, s.cfg.grid_size)
        try:
            covers_at = fill_cache(folder, records, s.dataset, s.opts.images, s.cfg.grid_size, workers, journal)
        except BrokenProcessPool as e:
            raise SystemExit(worker_died(e, s.parts)) from None
    loader = DataLoader(
        ImageFiles(
            s.opts.images,
            s.dataset,
            records,
            s.tokenizer,
            s.cfg.image_res,
            s.cfg.max_words,
            covers_at,
            journal,
            device_decode,
        ),  # fmt: skip
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=s.device.type == "cuda",
        worker_init_fn=worker_init,
        prefetch_factor=4 if workers else None,
    )
    return partial(batch_rows, loader, s.mapper, s.slices, s.run_id, s.device, res=s.cfg.image_res)


def save_rows(s: Setup, rows: Rows, stop: threading.Event, clock: StageClock, on_saved: Callable[[int], object]) -> int:
    """Write the batches of `rows` as chunks of parts, calling `on_saved(n_images)` as each is on disk;
    returns how many of the images failed."""
    failed = 0
    with ChunkWriter(s.parts, s.run_id, s.opts.chunk_images, on_saved, clock) as chunks:
        for n, tables in rows(stop=stop, clock=clock):
            failed += tables[partsdir.DONE_TABLE].column("status").to_pylist().count("error")
            chunks.add(tables, n)
    return failed


def write_parts(s: Setup, token: str, rows: Rows, n_images: int, started_at: float) -> dict:
    """Run the batches into chunks of parts, with a progress bar of the images saved; returns the session
    record (also written to the parts folder, before and after). Raises SystemExit when stopped early."""
    session = {"shard": list(s.opts.shard), "started_at": started_at, "images": n_images}
    partsdir.write_session(s.parts, s.run_id, token, {**session, "complete": False})
    clock, started = StageClock(), time.perf_counter()
    with stop_requests() as stop:
        try:
            with tqdm(total=n_images, unit="img", desc="extracting", dynamic_ncols=True) as bar, clock("loop"):
                save_rows(s, rows, stop, clock, bar.update)
        except KeyboardInterrupt:
            stop.set()
        except RuntimeError as e:
            if "DataLoader worker" not in str(e):
                raise
            raise SystemExit(worker_died(e, s.parts)) from None
        finally:
            session.update(finished_at=time.time(), seconds=time.perf_counter() - started, cpu=host_cpu_seconds(),
                           stages={k: clock.seconds[k] for k in STAGES},
                           complete=not stop.is_set() and sys.exc_info()[0] is None)  # fmt: skip
            partsdir.write_session(s.parts, s.run_id, token, session)
    if not session["complete"]:
        raise SystemExit(f"interrupted: {s.parts} keeps every finished chunk; run the same command to resume")
    return session


def worker_died(error: Exception, parts: partsdir.Store) -> str:
    return (
        f"a worker process died ({error}); {parts} keeps every finished chunk: run the same command to "
        "resume, and the images in hand are tried alone first"
    )


def prepare_image(opts: Options, dataset: CocoDataset, cfg: ALBEFConfig, record: dict) -> None:
    """What the loader does with an image before the model: decode and resize it, lay out its masks.

    Run alone on a suspect image (`extractor.suspects`); its ordinary errors are reported by the run itself.
    """
    with suppress(Exception):
        if opts.instances:
            grid_covers(dataset, opts.images, record, cfg.grid_size)
        resized_pixels(load_image(image_source(opts.images, record)), cfg.image_res)


def set_aside_poisoned(s: Setup, todo: list[dict], prepare: Callable[[dict], None]) -> list[dict]:
    """The images to run: `todo` less those that crashed a process (by this machine's journal) and fail
    again alone, which are written as failed (one chunk) so that no later run tries them."""
    found = suspects.poisoned(s.scratch, s.run_id, todo, prepare)
    if not found:
        return todo
    bad = [r for r in todo if r["id"] in found]
    for r in bad:
        log.warning("image %d (%s) set aside: %s", r["id"], r["file_name"], found[r["id"]])
    write_failed(s.parts, s.run_id, bad, found)
    return [r for r in todo if r["id"] not in found]


def write_failed(parts: partsdir.Store, run_id: str, records: list[dict], why: dict[int, str]) -> None:
    """Record `records` as failed, each with an `image` error row saying why, in one chunk: no run tries them
    again."""
    tables = failure_tables(run_id, [], [r["id"] for r in records],
                            [("image", str(r["id"]), r["file_name"], why[r["id"]]) for r in records])  # fmt: skip
    status = tables.pop(partsdir.DONE_TABLE)
    partsdir.write_chunk(parts, run_id, f"{records[0]['id']:012d}-{partsdir.new_token()}.parquet", tables, status)


def host_cpu_seconds() -> dict[str, float]:
    """CPU seconds of this process (main) and of its finished child processes (loader and cover workers)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"main": me.ru_utime + me.ru_stime, "loaders": children.ru_utime + children.ru_stime}


@contextmanager
def stop_requests() -> Iterator[threading.Event]:
    """An event set by the first SIGINT or SIGTERM; a second one raises KeyboardInterrupt at once.

    Only the main thread can take signals: elsewhere the event is never set and signals act as usual.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def request_stop(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        name = signal.Signals(signum).name
        log.warning("%s: saving the batches under way, then stopping (send it again to stop at once)", name)

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def pending_images(dataset: CocoDataset, done: set[int], limit: int | None, shard: tuple[int, int]) -> list[dict]:
    """Images with captions in the dataset's order (COCO's: by id), this shard's share, the first `limit`,
    minus those done."""
    k, n = shard
    images = [im for i, im in enumerate(dataset.images_with_captions()) if i % n == k][:limit]
    return [im for im in images if im["id"] not in done]


def parse_shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard must look like K/N, got {text!r}") from None
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"--shard K/N needs 0 <= K < N, got {text!r}")
    return k, n


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "run",
        help="extract per-word maps and metrics from COCO files, a pairs table or WebDataset shards into DuckDB",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_input_arguments(p)
    p.add_argument("--checkpoint", type=Path, required=True, help="ALBEF checkpoint (.pth), either release format")
    p.add_argument(
        "--config",
        type=Path,
        help="model config JSON (default: config.json beside the checkpoint, "
        "else ALBEF base: ViT-B/16, BERT-base, fusion from layer 6, 384 px)",
    )
    p.add_argument("--image-res", type=int, help="run resolution (default: the config's; pos_embed is resampled)")
    p.add_argument(
        "--vocab",
        type=Path,
        help="bert-base-uncased vocab.txt (default: vocab.txt beside the "
        "checkpoint, else ../shared/bert-base-uncased/vocab.txt)",
    )
    p.add_argument(
        "--db",
        type=Path,
        required=True,
        help="output DuckDB file X, built when the run completes; "
        "the run's Parquet parts (unless --parts) and the object-cover cache go to X.parts/ beside it",
    )
    p.add_argument("--parts", metavar="URI", help="the Parquet parts' folder (default X.parts beside --db): "
                   "a path or a URI pyarrow opens (s3://bucket/prefix, gs://..., file:///...)")  # fmt: skip
    p.add_argument("--method", choices=METHODS, default="both", help="Grad-CAM, raw attention, or both")
    p.add_argument("--layers", type=int, nargs="+", help="fusion layers whose raw attention to store (default: all)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the model runs")
    p.add_argument(
        "--decode",
        choices=("cpu", "device"),
        help="where images are decoded and resized: cpu (PIL "
        "in the loader workers, as ALBEF) or device (JPEGs decoded in batches where the model runs, "
        "nvJPEG on CUDA; CMYK, PNG, truncated and other files still by PIL); default device on CUDA, "
        "else cpu. Device pixels differ from PIL's by a few levels (see README)",
    )
    p.add_argument("--batch-size", type=int, help="images per forward pass (default 32 on CUDA, 1 on CPU)")
    p.add_argument(
        "--workers",
        type=int,
        help="loader processes: decoding, tokenizing, object covers (default 6 on CUDA, 0 on CPU)",
    )
    p.add_argument("--limit", type=int, help="only the first N images (COCO: by id; pairs: in input order)")
    p.add_argument(
        "--shard",
        type=parse_shard,
        default=(0, 1),
        help="K/N: this process takes every N-th image "
        "from K; give every shard the same --db: they write parts into one folder, and the last to "
        "finish builds the database",
    )
    p.add_argument(
        "--chunk-images",
        "--commit-every",
        type=int,
        default=256,
        help="images per Parquet part: the most a crash can lose (default 256)",
    )
    p.add_argument(
        "--wait-db",
        type=float,
        default=60.0,
        help="seconds to wait for the --db file while another "
        "process holds it (a dashboard, another shard's build) before saying so (default 60)",
    )
    p.add_argument(
        "--model",
        choices=("albef", "null"),
        default="albef",
        help="null: a stand-in returning random maps of ALBEF's shapes, to measure the pipeline alone",
    )
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS", help="run the chunks of images on a Ray "
                   "cluster: the one at ADDRESS (host:port of a `ray start --head`; auto: the one this node is part "
                   "of, as in `ray job submit`), else a local one started for the run. Every actor loads the model "
                   "once and writes the parts of the chunks it runs; chunks already done are skipped, so the same "
                   "command resumes. Needs `pip install -r requirements-ray.txt`")  # fmt: skip
    p.add_argument("--ray-actors", type=int, help="with --ray: model actors (default: one per GPU of the cluster "
                   "on CUDA, else one per CPU)")  # fmt: skip
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    opts = Options(**{k: v for k, v in vars(args).items() if k in Options.__dataclass_fields__})
    if args.ray is None:
        run_id = extract(opts)
    else:
        from extractor import ray_backend  # Ray is optional: imported only when asked for

        run_id = ray_backend.extract(opts, args.ray or None, args.ray_actors)
    print(f"run {run_id} written to {opts.db}")
    return 0
