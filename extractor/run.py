"""`python -m extractor run`: ALBEF per-word maps and metrics over a COCO dataset, into DuckDB.

Each image's rows and its 'done' mark are committed together (in chunks of images), so a crash or
kill -9 loses at most the chunk in flight, and the same command resumes where it stopped. Ctrl-C or
SIGTERM (a scheduler's preemption) finishes and saves the batches under way; a second one stops at once.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import extractor
from db import writer
from extractor.checkpoint import file_sha256, load_checkpoint
from extractor.coco import CocoFormatError, ImageError, load_image
from extractor.config import ALBEFConfig
from extractor.dataset import CocoDataset, ErrorRow, load_coco
from extractor.image import eval_transform
from extractor.maps import caption_maps
from extractor.metrics import ImageCovers
from extractor.model import ALBEF
from extractor.summarize import CaptionInput, ImageRows, MappedImage, summarize_images
from extractor.text import Tokenizer, pre_caption

log = logging.getLogger(__name__)
DEFAULT_VOCAB = Path(__file__).resolve().parents[2] / "shared" / "bert-base-uncased" / "vocab.txt"
METHODS = ("both", "gradcam", "attention")


@dataclass
class Options:
    """Everything `run` was asked for, resolved (the CLI's arguments as typed values)."""

    images: Path
    captions: Path
    instances: Path | None
    checkpoint: Path
    config: Path | None
    vocab: Path | None
    db: Path
    method: str = "both"
    layers: list[int] | None = None  # fusion layers with raw attention; None = all
    image_res: int | None = None
    device: str = "auto"
    batch_size: int | None = None
    workers: int | None = None
    summary_workers: int | None = None
    limit: int | None = None
    shard: tuple[int, int] = (0, 1)
    commit_every: int = 32


class ImageFiles(Dataset):
    """Decoded, transformed images and their objects on the patch grid (in DataLoader workers on CUDA).

    An item is (image record, pixels, covers, error, error rows): a bad file comes back as an error, a
    skipped annotation or a size warning of an image that goes on as error rows (`CocoDataset.covers_of`).
    """

    def __init__(self, images_dir: Path, dataset: CocoDataset, records: list[dict], res: int, grid: int):
        self.images_dir, self.dataset, self.records, self.res, self.grid = images_dir, dataset, records, res, grid

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[dict, torch.Tensor | None, ImageCovers | None, str | None, list[ErrorRow]]:
        rec = self.records[i]
        try:
            img = load_image(self.images_dir / rec["file_name"])
            covers, error_rows = self.dataset.covers_of(rec, self.grid, size=(img.height, img.width))
        except (ImageError, CocoFormatError) as e:
            return rec, None, None, str(e), []
        return rec, eval_transform(img, self.res), covers, None, error_rows


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


def load_model(opts: Options, device: torch.device) -> tuple[ALBEF, str]:
    """The frozen model in eval mode on `device`, and its checkpoint's sha256."""
    model = ALBEF(resolve_config(opts)).eval()
    checkpoint_sha = load_checkpoint(model, opts.checkpoint)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device), checkpoint_sha


def resolve_vocab(opts: Options) -> Path:
    """--vocab, else a vocab.txt beside the checkpoint (the demo's), else the shared bert-base-uncased one."""
    beside = opts.checkpoint.with_name("vocab.txt")
    return opts.vocab or (beside if beside.is_file() else DEFAULT_VOCAB)


def parallelism(opts: Options, device: torch.device) -> tuple[int, int, int]:
    """(images per batch, decoding workers, summary workers): as asked, else 8, 4, 4 on CUDA and 1, 0, 0 on CPU.

    On CPU the model already keeps every core busy.
    """
    asked = (opts.batch_size, opts.workers, opts.summary_workers)
    defaults = (8, 4, 4) if device.type == "cuda" else (1, 0, 0)
    return tuple(n if n is not None else default for n, default in zip(asked, defaults, strict=True))


def extract(opts: Options) -> str:
    """Run (or resume) an extraction; returns the run id."""
    device = resolve_device(opts.device)
    dataset = load_coco(opts.captions, opts.instances)
    model, checkpoint_sha = load_model(opts, device)
    cfg = model.cfg
    layers = sorted(opts.layers) if opts.layers else cfg.fusion_layers
    if bad := [la for la in layers if la not in cfg.fusion_layers]:
        raise ValueError(f"--layers {bad} are not fusion layers of this model ({cfg.fusion_layers})")
    attention_layers = layers if opts.method in ("both", "attention") else []
    gradcam = opts.method in ("both", "gradcam")
    vocab = resolve_vocab(opts)
    tokenizer = Tokenizer(vocab, cfg.bert.max_position_embeddings)
    run_id = run_identity(cfg, checkpoint_sha, file_sha256(vocab), opts.method, attention_layers)

    con = writer.connect(opts.db)
    resuming = writer.start_run(
        con,
        {
            "run_id": run_id,
            "checkpoint_path": str(opts.checkpoint.resolve()),
            "checkpoint_sha256": checkpoint_sha,
            "config": json.dumps(cfg.to_dict()),
            "method": opts.method,
            "layers": attention_layers,
            "gradcam_layer": cfg.gradcam_block if gradcam else None,
            "image_res": cfg.image_res,
            "patch_size": cfg.patch_size,
            "grid_size": cfg.grid_size,
            "code_version": extractor.__version__,
            "images_dir": str(opts.images.resolve()),
            "captions_file": str(opts.captions.resolve()),
            "instances_file": str(opts.instances.resolve()) if opts.instances else None,
            "device": str(device),
        },
    )
    writer.upsert_dataset(con, *dataset.frames(cfg.max_words))
    todo = pending_images(dataset, writer.done_image_ids(con, run_id), opts.limit, opts.shard)
    log.info("run %s: %s, %d images to do", run_id, "resuming" if resuming else "new", len(todo))

    batch_size, workers, summary_workers = parallelism(opts, device)
    loader = DataLoader(
        ImageFiles(opts.images, dataset, todo, cfg.image_res, cfg.grid_size),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=list,
        pin_memory=device.type == "cuda",
        worker_init_fn=ignore_interrupts,
    )
    started = time.perf_counter()
    pending = ImageRows()
    interrupted = SystemExit(f"interrupted: {opts.db} keeps every finished image; run the same command to resume")
    try:
        with (
            stop_requests() as stop,
            summary_pool(summary_workers) as pool,
            tqdm(total=len(todo), unit="img", desc="extracting", dynamic_ncols=True) as bar,
        ):
            mapped = partial(map_batch, model, tokenizer, dataset, attention_layers=attention_layers,
                             gradcam=gradcam, device=device)  # fmt: skip
            summarize = partial(pool.submit, summarize_images, attention_layers=attention_layers,
                                gradcam_layer=cfg.gradcam_block if gradcam else None)  # fmt: skip
            for n, rows in rows_in_order(loader, mapped, summarize, 2 * max(1, summary_workers), stop):
                pending.extend(rows)
                if pending.n_images >= opts.commit_every:
                    flush(con, run_id, pending)
                    pending = ImageRows()
                bar.update(n)
            if pending.n_images:
                flush(con, run_id, pending)
    except KeyboardInterrupt:
        con.close()
        raise interrupted from None
    if stop.is_set():
        con.close()
        raise interrupted
    writer.finish_run(con, run_id, time.perf_counter() - started, "complete", finalize_run=opts.shard == (0, 1))
    con.close()
    return run_id


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


def ignore_interrupts(*_: object) -> None:
    """In a worker process: leave Ctrl-C and SIGTERM to the main process.

    Both often reach the whole process group; the main process finishes the work under way and then
    stops its workers.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class InProcess(Executor):
    """Runs each call at once, in this process: the summary pool when no workers are asked for."""

    def submit(self, fn: Callable, /, *args: object, **kwargs: object) -> Future:
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def summary_pool(n_workers: int) -> Executor:
    """Where word rows and metrics are computed: n worker processes, or this process when n is 0.

    Workers are forked, as DataLoader workers are: they never touch CUDA. Spawned workers would run the
    main module again (a notebook's or a Streamlit script's), and a forkserver dies of a SIGTERM sent
    to the process group.
    """
    if n_workers == 0:
        return InProcess()
    context = multiprocessing.get_context("fork")
    return ProcessPoolExecutor(n_workers, mp_context=context, initializer=ignore_interrupts)


def pending_images(dataset: CocoDataset, done: set[int], limit: int | None, shard: tuple[int, int]) -> list[dict]:
    """Images with captions, in id order, this shard's share, the first `limit`, minus those done."""
    k, n = shard
    images = [im for i, im in enumerate(dataset.images_with_captions()) if i % n == k][:limit]
    return [im for im in images if im["id"] not in done]


def map_batch(
    model: ALBEF,
    tokenizer: Tokenizer,
    dataset: CocoDataset,
    batch: list[tuple[dict, torch.Tensor | None, ImageCovers | None, str | None, list[ErrorRow]]],
    attention_layers: list[int],
    gradcam: bool,
    device: torch.device,
) -> tuple[ImageRows, list[MappedImage]]:
    """The model's pass over a batch of decoded images: one image encode each, all their captions together.

    Returns the rows of what failed (images, empty captions, skipped annotations) and each good image's
    captions with maps.
    """
    cfg = model.cfg
    failed = ImageRows()
    images = []
    for rec, pixels, covers, error, error_rows in batch:
        failed.errors.extend(error_rows)
        if error is None:
            images.append((rec, pixels, MappedImage(rec["id"], [], covers)))
        else:
            failed.fail_image(rec["id"], rec["file_name"], error)
    tokens, owners = [], []
    for i, (rec, _, image) in enumerate(images):
        for cap in dataset.captions_of(rec["id"]):
            tok = tokenizer([pre_caption(cap["caption"], cfg.max_words)])[0]
            if not tok.words:
                message = "caption is empty after ALBEF's cleaning"
                failed.errors.append(("caption", str(cap["id"]), rec["file_name"], message))
                continue
            image.captions.append(CaptionInput(cap["id"], tok, None, dataset.match(tok.words)))
            tokens.append(tok)
            owners.append(i)
    if tokens:
        # Each image goes to the device from the pinned memory the loader put it in; a stack on the host
        # would copy the batch into unpinned memory first.
        pixels = torch.stack([p.to(device, non_blocking=True) for _, p, _ in images])
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            maps = iter(caption_maps(model, pixels, tokens, owners, attention_layers, gradcam))
        for _, _, image in images:
            for cap in image.captions:
                cap.maps = next(maps)
    return failed, [image for _, _, image in images]


def rows_in_order(
    batches: Iterable[list],
    to_maps: Callable[[list], tuple[ImageRows, list[MappedImage]]],
    summarize: Callable[[list[MappedImage]], Future],
    depth: int,
    stop: threading.Event,
) -> Iterator[tuple[int, ImageRows]]:
    """(images in the batch, its rows) per batch, in order.

    Each batch's maps are summarized (`summarize` returns a future) while the next batches go through
    the model, with at most `depth` batches waiting. After `stop` is set no new batch is started, and
    those under way are finished.
    """
    waiting: deque[tuple[int, ImageRows, Future]] = deque()

    def oldest() -> tuple[int, ImageRows]:
        n, rows, future = waiting.popleft()
        rows.extend(future.result())
        return n, rows

    for batch in batches:
        if stop.is_set():
            break
        failed, images = to_maps(batch)
        waiting.append((len(batch), failed, summarize(images)))
        while waiting and (len(waiting) > depth or waiting[0][2].done()):
            yield oldest()
    while waiting:
        yield oldest()


def flush(con, run_id: str, rows: ImageRows) -> None:
    """Commit a chunk of images in one transaction: result rows, error log, done/error marks."""
    writer.write_images(con, run_id, rows.frames(), rows.done_ids + rows.failed_ids,
                        ["done"] * len(rows.done_ids) + ["error"] * len(rows.failed_ids))


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
        help="extract per-word maps and metrics from a COCO dataset into DuckDB",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--images", type=Path, required=True, help="folder with the COCO images (e.g. coco/val2017)")
    p.add_argument("--captions", type=Path, required=True, help="COCO captions JSON (captions_val2017.json)")
    p.add_argument("--instances", type=Path, help="COCO instances JSON; without it no object metrics")
    p.add_argument("--checkpoint", type=Path, required=True, help="ALBEF checkpoint (.pth), either release format")
    p.add_argument("--config", type=Path, help="model config JSON (default: config.json beside the checkpoint, "
                   "else ALBEF base: ViT-B/16, BERT-base, fusion from layer 6, 384 px)")
    p.add_argument("--image-res", type=int, help="run resolution (default: the config's; pos_embed is resampled)")
    p.add_argument("--vocab", type=Path, help="bert-base-uncased vocab.txt (default: vocab.txt beside the "
                   "checkpoint, else ../shared/bert-base-uncased/vocab.txt)")
    p.add_argument("--db", type=Path, required=True, help="output DuckDB file (created, or resumed)")
    p.add_argument("--method", choices=METHODS, default="both", help="Grad-CAM, raw attention, or both")
    p.add_argument("--layers", type=int, nargs="+", help="fusion layers whose raw attention to store (default: all)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the model runs")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default 8 on CUDA, 1 on CPU)")
    p.add_argument("--workers", type=int, help="image decoding workers (default 4 on CUDA, 0 on CPU)")
    p.add_argument("--summary-workers", type=int,
                   help="processes computing word rows and metrics while the model runs (default 4 on CUDA, 0 on CPU)")
    p.add_argument("--limit", type=int, help="only the first N images (by id)")
    p.add_argument("--shard", type=parse_shard, default=(0, 1), help="K/N: this process takes every N-th image "
                   "from K; merge the shard files with `python -m extractor merge`")
    p.add_argument("--commit-every", type=int, default=32, help="images per committed transaction")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    opts = Options(**{k: v for k, v in vars(args).items() if k in Options.__dataclass_fields__})
    run_id = extract(opts)
    print(f"run {run_id} written to {opts.db}")
    return 0
