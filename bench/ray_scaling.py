"""Ray's scaling and overhead: images/s with 1 and 2 actors, against single-process runs at the same parallelism.

Every variant runs the real `python -m extractor run` command, as a user would, on real COCO images and
captions repeated under new ids (no instances: the covers pass is the same work either way and is left
out), with the shape-true stand-in (`--model null`) at ALBEF base's size, so that what is measured is the
pipeline and the way it is spread, not a model. At parallelism P:

- single process: P processes `--shard k/P` at once into one output (the last builds the database);
- Ray: one command `--ray --ray-actors P`, a local cluster started for the run, P actors.

Each runs on the first W images and on W + N; the time from the first process's extraction start to the
last one's end (their session files: imports, the local cluster's start and the database build left out),
differenced and divided by N, is the cost per image with the rest of start-up (the model load, the actors
starting) cancelled out. Images/s is N over that difference; Ray's overhead is its cost per image over the
single process's at the same P. The variants run interleaved, --repeats times, and the fastest of each
counts (the least disturbed by other work on the machine). Every process's torch runs on one thread, as a
Ray actor's does.

    python -m bench.ray_scaling                     # 2,000 images beyond a 200-image warm-up
    python -m bench.ray_scaling --images 400 --image-res 128
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from itertools import product
from pathlib import Path

import duckdb

from bench.coco_args import add_coco_arguments, extract_command
from bench.throughput import repeated_coco, stand_in_checkpoint
from db import parts as partsdir

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("single", "ray")


def extraction_costs(commands: list[list[str]], db: Path, limit: int, log: Path) -> tuple[float, float]:
    """Run a variant's processes together: (the wall seconds from the first process's extraction start to the
    last one's end, which leave out imports and the database build; the CPU seconds they record: each
    single process's, loaders included, or a Ray driver's and its actors' on their chunks, not Ray's own
    daemons'). Both from the session files. Exits when a process fails or an image was not extracted (a
    chunk that failed costs no time: no measurement)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("w") as out:
        procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=out, stderr=out) for c in commands]
        codes = [p.wait() for p in procs]
    if any(codes):
        sys.exit(f"extractor failed ({codes}); its output ends:\n{log.read_text()[-3000:]}")
    with duckdb.connect(str(db), read_only=True) as con:
        statuses = dict(con.execute("SELECT status, count(*) FROM image_status GROUP BY ALL").fetchall())
    if statuses != {"done": limit}:
        sys.exit(f"{db}: image status {statuses}, not {limit} done; its output ends:\n{log.read_text()[-3000:]}")
    parts = partsdir.parts_dir(db)
    (run_id,) = partsdir.run_ids(parts)
    sessions = partsdir.read_sessions(parts, run_id)
    span = max(s["finished_at"] for s in sessions) - min(s["started_at"] for s in sessions)
    return span, sum(sum(s["cpu"].values()) for s in sessions)


def per_image(costs: dict, name: str, p: int, limits: tuple[int, int], k: int) -> float:
    """Seconds per image (k = 0: wall, 1: CPU): the fastest W + N run less the fastest W run, over N."""
    fastest = [min(c[k] for c in costs[name, p, limit]) for limit in limits]
    return (fastest[1] - fastest[0]) / (limits[1] - limits[0])


def variant_commands(base: list[str], db: Path, limit: int, ray: bool, p: int) -> list[list[str]]:
    """The processes of one variant at parallelism `p` on the first `limit` images."""
    command = [*base, "--db", str(db), "--limit", str(limit)]
    if ray:
        return [[*command, "--ray", "--ray-actors", str(p)]]
    # --limit applies to each shard's share: the shards together take the first `limit` images.
    return [[*base, "--db", str(db), "--limit", str(limit // p), "--shard", f"{k}/{p}"] for k in range(p)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_coco_arguments(parser)
    parser.add_argument("--images", type=int, default=2000, help="N: measured images (beyond the warm-up)")
    parser.add_argument("--warmup", type=int, default=200, help="W: warm-up images, subtracted")
    parser.add_argument("--parallelism", type=int, nargs="+", default=[1, 2], help="actors / processes compared")
    parser.add_argument(
        "--chunk-images",
        type=int,
        default=50,
        help="images per chunk (Ray's unit of work): small enough for W to spread over the actors",
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs of each variant; the fastest counts")
    args = parser.parse_args(argv)

    costs: dict[tuple[str, int, int], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        total = args.warmup + args.images
        captions, _ = repeated_coco(args.coco, total, tmp)
        checkpoint = stand_in_checkpoint(tmp, args.image_res)
        base = extract_command(args, captions, checkpoint, "--model", "null", "--device", "cpu", "--workers", "0",
                               "--batch-size", "1", "--chunk-images", str(args.chunk_images))  # fmt: skip
        # Interleaved, so that other work on the machine falls on every variant alike; the fastest of the
        # repeats is the one least disturbed.
        for repeat, p, limit, name in product(range(args.repeats), args.parallelism, (args.warmup, total), VARIANTS):
            db = tmp / f"{name}-{p}-{limit}-{repeat}.duckdb"
            commands = variant_commands(base, db, limit, name == "ray", p)
            costs.setdefault((name, p, limit), []).append(extraction_costs(commands, db, limit, tmp / "run.log"))
            wall, used = costs[name, p, limit][-1]
            print(f"  {name}, parallelism {p}, {limit} images: {wall:.1f} s extracting, {used:.1f} s CPU", flush=True)
    results, cpu = ({(name, p): per_image(costs, name, p, (args.warmup, total), k) for name in VARIANTS
                     for p in args.parallelism} for k in (0, 1))  # fmt: skip

    print(f"stand-in (--model null) at {args.image_res} px on CPU, both methods, all fusion layers, torch on one "
          f"thread per process; runs of {args.warmup} and {total} images, the difference divided by "
          f"{args.images}")  # fmt: skip
    for p in args.parallelism:
        single, ray = results["single", p], results["ray", p]
        print(f"parallelism {p}: single-process {1 / single:.2f} images/s ({1e3 * single:.1f} ms/image), Ray "
              f"{1 / ray:.2f} images/s ({1e3 * ray:.1f} ms/image); Ray / single-process = {ray / single:.3f} "
              f"(overhead {100 * (ray / single - 1):+.1f}%); CPU per image: single-process "
              f"{1e3 * cpu['single', p]:.1f} ms, Ray {1e3 * cpu['ray', p]:.1f} ms "
              f"({100 * (cpu['ray', p] / cpu['single', p] - 1):+.1f}%)")  # fmt: skip
    if len(args.parallelism) > 1:
        lo, hi = min(args.parallelism), max(args.parallelism)
        for name in VARIANTS:
            print(f"{name}: {hi} vs {lo}: {results[name, lo] / results[name, hi]:.2f}x the images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
