"""Ray's scaling and overhead: images/s with 1 and 2 actors, against single-process runs at the same parallelism.

Every variant runs the real `python -m extractor run` command, as a user would, on real COCO images and
captions repeated under new ids (no instances: the covers pass is the same work either way and is left
out), with the shape-true stand-in (`--model null`) at ALBEF base's size, so that what is measured is the
pipeline and the way it is spread, not a model. At parallelism P:

- single process: P processes `--shard k/P` at once into one output (the last builds the database);
- Ray: one command `--ray --ray-actors P`, a local cluster started for the run, P actors.

Each runs twice, on the first W images and on W + N, and the difference of the wall times divided by N
is the cost per image with start-up (imports, the cluster, model load, the database build of W) cancelled
out. Images/s is N over that difference; Ray's overhead is its cost per image over the single process's
at the same P. Every process's torch runs on one thread, as a Ray actor's does.

    python -m bench.ray_scaling                     # 2,000 images beyond a 200-image warm-up
    python -m bench.ray_scaling --images 400 --image-res 128
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.coco_args import add_coco_arguments
from bench.throughput import repeated_coco, stand_in_checkpoint

ROOT = Path(__file__).resolve().parents[1]
COCO_IMAGES = 123_287  # train2017 + val2017


def timed_run(commands: list[list[str]], log: Path) -> float:
    """Wall seconds until every command (started together) has finished; exits when one fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    with log.open("w") as out:
        procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=out, stderr=out) for c in commands]
        codes = [p.wait() for p in procs]
    if any(codes):
        sys.exit(f"extractor failed ({codes}); its output ends:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - start


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
    args = parser.parse_args(argv)

    results: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        total = args.warmup + args.images
        captions, _ = repeated_coco(args.coco, total, tmp)
        checkpoint = stand_in_checkpoint(tmp, args.image_res)
        base = [sys.executable, "-m", "extractor", "run", "--images", str(args.coco / "val2017"), "--captions",
                str(captions), "--checkpoint", str(checkpoint), "--vocab", str(args.vocab), "--model", "null",
                "--device", "cpu", "--workers", "0", "--batch-size", "1",
                "--chunk-images", str(args.chunk_images)]  # fmt: skip
        for p in args.parallelism:
            for name in ("single", "ray"):
                walls = []
                for limit in (args.warmup, total):
                    db = tmp / f"{name}-{p}-{limit}.duckdb"
                    walls.append(timed_run(variant_commands(base, db, limit, name == "ray", p), tmp / f"{db.stem}.log"))
                    print(f"  {name}, {p} process(es)/actor(s), {limit} images: {walls[-1]:.1f} s", flush=True)
                results[name, p] = (walls[1] - walls[0]) / args.images

    print(f"stand-in (--model null) at {args.image_res} px on CPU, both methods, all fusion layers, torch on one "
          f"thread per process; runs of {args.warmup} and {total} images, the difference divided by "
          f"{args.images}")  # fmt: skip
    for p in args.parallelism:
        single, ray = results["single", p], results["ray", p]
        print(f"parallelism {p}: single-process {1 / single:.2f} images/s ({1e3 * single:.1f} ms/image), Ray "
              f"{1 / ray:.2f} images/s ({1e3 * ray:.1f} ms/image); Ray / single-process = {ray / single:.3f} "
              f"(overhead {100 * (ray / single - 1):+.1f}%)")  # fmt: skip
    if len(args.parallelism) > 1:
        lo, hi = min(args.parallelism), max(args.parallelism)
        for name in ("single", "ray"):
            print(f"{name}: {hi} vs {lo}: {results[name, lo] / results[name, hi]:.2f}x the images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
