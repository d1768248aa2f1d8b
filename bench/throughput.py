"""Sustained throughput of `python -m extractor run` at the real ALBEF-base size, start-up excluded.

The extractor command runs as it would for a user, as a subprocess, on real COCO images, captions and
masks repeated under new ids, ALBEF base at 384 px, both methods, every fusion layer. Start-up (imports,
model load, worker start, the object-covers pass starting) is cancelled out by running it twice with the
same settings, on the first W images and on W + N, and dividing the difference by N. That is done twice:

- first run: a fresh output folder, so the object covers of every image are computed;
- covers cached: output folders given a copy of the first runs' cover cache (`X.parts/covers`), as a
  second run or a second checkpoint on the same dataset finds it; the difference is the covers pass.

CPU time per role comes from the session file each process writes (X.parts/runs/<id>/sessions/):
"main" is the extractor's main process during extraction, "loaders" its finished child processes (loader
workers and the covers pool; zero with --workers 0, the CPU default, where the main process does all).
On CPU the model (or the stand-in's random maps) and the per-word metrics run in the main process too;
the session's stage clock tells that "device" work apart, and the closing line leaves it out of the host
figures there (on a GPU it is the device's, and the main thread's part in queuing it is host work).
The main process runs torch on one thread unless --threads says otherwise: idle torch
threads spin, which counts as CPU time (four times the work on a busy 2-core machine). `--model null`
swaps ALBEF for the stand-in (extractor/standin.py) to measure the pipeline alone.

    python -m bench.throughput                                 # stand-in on this machine, 2,000 images
    python -m bench.throughput --device cuda --model albef     # the real model on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import astuple, dataclass
from itertools import cycle, islice
from pathlib import Path

import torch

from bench.coco_args import add_coco_arguments, extract_command
from db import parts as partsdir
from db import queries
from extractor.config import ALBEFConfig
from extractor.model import ALBEF

COCO_IMAGES = 123_287  # train2017 + val2017
ROOT = Path(__file__).resolve().parents[1]


def random_checkpoint(out: Path, image_res: int) -> Path:
    """An ALBEF-base checkpoint (fine-tuned format) with random weights, and its config.json beside it."""
    torch.manual_seed(0)
    cfg = ALBEFConfig(image_res=image_res)
    torch.save(ALBEF(cfg).state_dict(), out / "checkpoint.pth")
    cfg.to_json(out / "config.json")
    return out / "checkpoint.pth"


def stand_in_checkpoint(out: Path, image_res: int) -> Path:
    """ALBEF base's config.json beside a tiny file: with --model null the weights are hashed, never loaded."""
    ALBEFConfig(image_res=image_res).to_json(out / "config.json")
    (out / "checkpoint.pth").write_bytes(b"stand-in: weights never loaded\n")
    return out / "checkpoint.pth"


def repeated_coco(coco: Path, n_images: int, out: Path) -> tuple[Path, Path]:
    """captions and instances JSON for n_images entries cycling over `coco`'s images (new ids, same files)."""
    ann = coco / "annotations"
    captions = json.loads(next(ann.glob("captions_*.json")).read_text())
    instances = json.loads(next(ann.glob("instances_*.json")).read_text())
    by_image: dict[str, dict[int, list[dict]]] = {"captions": {}, "instances": {}}
    for kind, data in (("captions", captions), ("instances", instances)):
        for a in data["annotations"]:
            by_image[kind].setdefault(a["image_id"], []).append(a)
    images = sorted(captions["images"], key=lambda im: im["id"])
    new_images, new_anns = [], {"captions": [], "instances": []}
    for new_id, im in enumerate(islice(cycle(images), n_images), start=1):
        new_images.append({**im, "id": new_id})
        for kind, anns in new_anns.items():
            for a in by_image[kind].get(im["id"], []):
                anns.append({**a, "image_id": new_id, "id": len(anns) + 1})
    paths = out / "captions.json", out / "instances.json"
    for path, data, kind in zip(paths, (captions, instances), new_anns, strict=True):
        path.write_text(json.dumps({**data, "images": new_images, "annotations": new_anns[kind]}))
    return paths


@dataclass
class Run:
    """What one extractor process cost: the whole process as the OS saw it, and its extraction alone."""

    wall: float  # seconds, start-up and the database build included
    cpu: float  # CPU seconds of the process and its children, likewise
    seconds: float  # wall seconds of the extraction loop (the session file): covers pass and start-up excluded
    main: float  # CPU seconds of the main process (the whole process: covers pass included)
    device: float  # of which the main thread's work queued on the model's device (all of it on a CPU)
    loop: float  # the main thread's CPU in the extraction loop, device work included: what bounds one process
    loaders: float  # CPU seconds of its loader and covers workers
    images: int
    captions: int
    part_bytes: int  # size of the run's Parquet parts

    def __sub__(self, other: Run) -> Run:
        return Run(*(a - b for a, b in zip(astuple(self), astuple(other), strict=True)))


class GpuSampler:
    """Samples GPU utilisation in a thread, as (time, percent); empty where torch.cuda.utilization fails
    (no GPU, no pynvml)."""

    def __init__(self, enabled: bool):
        self.samples: list[tuple[float, int]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True) if enabled else None

    def _poll(self) -> None:
        while not self.done.wait(0.2):
            try:
                self.samples.append((time.time(), torch.cuda.utilization(0)))
            except Exception:  # no pynvml or no NVML: skip silently
                return

    def __enter__(self) -> GpuSampler:
        if self.thread:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        if self.thread:
            self.thread.join()

    def mean_between(self, start: float, end: float) -> float | None:
        inside = [u for t, u in self.samples if start <= t <= end]
        return sum(inside) / len(inside) if inside else None


def extract(
    command: list[str], db: Path, limit: int, threads: int, log: Path, gpu: bool
) -> tuple[Run, str, float | None]:
    """Run `python -m extractor run ... --db db --limit limit`: its costs, its device, its mean GPU use."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    with log.open("w") as out, GpuSampler(gpu) as sampler:
        done = subprocess.run([*command, "--db", str(db), "--limit", str(limit)], cwd=ROOT, env=env, stdout=out,
                              stderr=out)  # fmt: skip
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        sys.exit(f"extractor failed ({done.returncode}); its output ends:\n{log.read_text()[-3000:]}")
    parts = partsdir.parts_dir(db)
    (run_id,) = partsdir.run_ids(parts)
    (session,) = partsdir.read_sessions(parts, run_id)
    with queries.connect_readonly(db) as con:
        captions = queries.run_summary(con, run_id)["captions"]
    cpu = sum(after[:2]) - sum(before[:2])
    part_bytes = sum(p.stat().st_size for p in partsdir.run_dir(parts, run_id).rglob("*.parquet"))
    stages = session["stages"]
    run = Run(wall, cpu, session["seconds"], session["cpu"]["main"], stages["device"], stages["loop"],
              session["cpu"]["loaders"], session["images"], int(captions), part_bytes)  # fmt: skip
    device = partsdir.read_run(parts, run_id)["device"]
    return run, device, sampler.mean_between(session["started_at"], session["finished_at"])


def ms(seconds: float, n: int) -> float:
    """Milliseconds per image, rounded to 0.1 (so that a rounding -0.0 prints as 0.0)."""
    return round(1e3 * seconds / n, 1) + 0.0


def report(name: str, d: Run, device: str) -> None:
    """One measured difference, per image."""
    n = d.images
    print(
        f"{name}: {n / d.seconds:.1f} images/s, {d.captions / d.seconds:.1f} captions/s in the extraction loop; "
        f"CPU per image: main {ms(d.main, n):.1f} ms (of which work on the {device} device {ms(d.device, n):.1f} "
        f"ms), loaders {ms(d.loaders, n):.1f} ms; whole process incl. covers pass and building X.duckdb: "
        f"{ms(d.wall, n):.1f} ms wall, {ms(d.cpu, n):.1f} ms CPU"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_coco_arguments(parser)
    parser.add_argument(
        "--model",
        choices=("albef", "null"),
        default="null",
        help="albef: random weights at ALBEF-base size; null: the shape-true stand-in",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the model runs")
    parser.add_argument("--images", type=int, default=2000, help="N: measured images (beyond the warm-up)")
    parser.add_argument("--warmup", type=int, default=200, help="W: warm-up images, subtracted")
    parser.add_argument("--batch-size", type=int, help="images per forward pass (default: the extractor's)")
    parser.add_argument("--workers", type=int, help="loader processes (default: the extractor's)")
    parser.add_argument("--chunk-images", type=int, help="images per Parquet part (default: the extractor's)")
    parser.add_argument(
        "--decode",
        choices=("cpu", "device"),
        help="where JPEGs are decoded (default: the "
        "extractor's); device on a CPU run shows the loaders' cost without decoding",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the extractor's main process (OMP_NUM_THREADS; 0: torch's default, "
        "every core). 1 keeps CPU time true to the work: idle torch threads spin, and count",
    )
    args = parser.parse_args(argv)
    on_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        total = args.warmup + args.images
        captions, instances = repeated_coco(args.coco, total, tmp)
        checkpoint = (random_checkpoint if args.model == "albef" else stand_in_checkpoint)(tmp, args.image_res)
        command = extract_command(args, captions, checkpoint, "--instances", str(instances), "--model", args.model,
                                  "--device", args.device)  # fmt: skip
        for flag, value in (("--batch-size", args.batch_size), ("--workers", args.workers),
                            ("--chunk-images", args.chunk_images), ("--decode", args.decode)):  # fmt: skip
            command += [flag, str(value)] if value is not None else []

        runs, gpu = {}, None
        covers = partsdir.parts_dir(tmp / f"first-{total}.duckdb") / "covers"
        for name, limit in (("first", args.warmup), ("first", total), ("cached", args.warmup), ("cached", total)):
            db = tmp / f"{name}-{limit}.duckdb"
            if name == "cached":  # the cover cache that the first full run filled
                shutil.copytree(covers, partsdir.parts_dir(db) / "covers")
            log = tmp / f"{name}-{limit}.log"
            runs[name, limit], device, util = extract(command, db, limit, args.threads, log, on_cuda)
            gpu = util if (name, limit) == ("first", total) else gpu
            print(f"  {name} run, {limit} images: {runs[name, limit].wall:.1f} s", flush=True)

    first, cached = (runs[name, total] - runs[name, args.warmup] for name in ("first", "cached"))
    n = first.images
    model = "stand-in, --model null" if args.model == "null" else "random weights"
    print(
        f"ALBEF base at {args.image_res} px ({model}) on {device}, both methods, all fusion layers; "
        f"batch size {args.batch_size or 'default'}, "
        f"workers {args.workers if args.workers is not None else 'default'}, main threads {args.threads or 'all'}"
    )
    print(
        f"figures: runs of {args.warmup} and {total} images with the same settings, the difference divided by "
        f"the {n} images ({first.captions} captions) between them"
    )
    report("first run (object covers computed)", first, device)
    report("covers cached (a copy of the first run's X.parts/covers)", cached, device)
    print(
        f"object covers pass (first run - covers cached): {ms(first.wall - cached.wall, n):.1f} ms wall, "
        f"{ms(first.cpu - cached.cpu, n):.1f} ms CPU per image"
    )
    print(f"Parquet parts: {first.part_bytes / n / 1e3:.1f} kB per image")
    if gpu is not None:
        print(f"GPU utilisation during the {total}-image first run's extraction: {gpu:.0f}%")
    print(
        f"all of COCO ({COCO_IMAGES:,} images): {COCO_IMAGES * first.wall / n / 3600:.2f} h for a first run "
        f"(covers and the database build included), {COCO_IMAGES * cached.wall / n / 3600:.2f} h with covers cached"
    )
    # On a CPU the model's and the per-word work run in the main process; on a GPU they run on the device,
    # and what the main thread spends queuing them is host work. Host CPU counts them accordingly.
    on_cpu = cached.device if device == "cpu" else 0.0
    host_main, main_thread = cached.main - on_cpu, cached.loop - on_cpu
    print(
        f"main thread's host work: {ms(main_thread, n):.1f} ms per image, so one process can feed a device at "
        f"most {n / max(main_thread, 1e-9):.0f} images/s"
    )
    print(
        f"host CPU per image: total {ms(host_main + cached.loaders, n):.1f} ms, main {ms(host_main, n):.1f} ms, "
        f"loaders {ms(cached.loaders, n):.1f} ms; {n / cached.seconds:.0f} images/s"
        + (" (covers cached; main without the device work, which runs on the CPU here)" if device == "cpu" else "")
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
