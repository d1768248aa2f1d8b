"""How fast the parts writer takes chunks: one writer thread against `WRITER_THREADS`, side by side.

On a GPU the extraction loop hands the writer a chunk of `--chunk-images` images as often as the model
finishes them; the writer encodes the chunk's tables as Parquet and writes them into the parts folder,
and the loop waits once the chunks in hand outnumber twice the writer threads. Here the writer is fed a real
chunk's tables (a stand-in extraction of the shared COCO subset at ALBEF base's size, 256 images) as fast
as it takes them, so images/s is the most it could take from any GPU on this machine: Parquet encoding and
writes into the page cache (the disk is synced before each measurement, not during it). The order of the
two alternates between rounds.

    python -m bench.writer
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench.coco_args import add_coco_arguments, extract_command
from bench.throughput import ROOT, stand_in_checkpoint
from db import parts as partsdir
from extractor.pipeline import WRITER_THREADS, ChunkWriter, StageClock

CHUNK_IMAGES = 256


def chunk_tables(args: argparse.Namespace, folder: Path) -> dict[str, pa.Table]:
    """The tables of one chunk of CHUNK_IMAGES images, extracted with the stand-in model."""
    ann = args.coco / "annotations"
    db = folder / "chunk.duckdb"
    captions, instances = (next(ann.glob(f"{kind}_*.json")) for kind in ("captions", "instances"))
    command = extract_command(args, captions, stand_in_checkpoint(folder, args.image_res), "--instances",
                              str(instances), "--model", "null", "--limit", str(CHUNK_IMAGES), "--chunk-images",
                              str(CHUNK_IMAGES), "--db", str(db))  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    parts = partsdir.parts_dir(db)
    (run_id,) = partsdir.run_ids(parts)
    files = sorted(partsdir.run_dir(parts, run_id).glob("*/*.parquet"))
    tables = {path.parent.name: pq.read_table(path) for path in files}
    assert len(tables) == len(files), "one chunk: one file per table"
    return tables


def images_per_second(tables: dict[str, pa.Table], threads: int, chunks: int, folder: Path) -> float:
    """Chunks written by a ChunkWriter of `threads` threads, fed as fast as it takes them."""
    n = tables[partsdir.DONE_TABLE].num_rows
    writer = ChunkWriter(partsdir.open_store(folder / "x.parts"), "bench", n, lambda _: None, StageClock(), threads)
    os.sync()  # the last measurement's files are on disk before this one starts
    started = time.perf_counter()
    with writer:
        for _ in range(chunks):
            writer.add(dict(tables), n)
    seconds = time.perf_counter() - started
    shutil.rmtree(folder)
    return chunks * n / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_coco_arguments(parser)
    parser.add_argument("--chunks", type=int, default=16, help="chunks written per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each, alternated")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tables = chunk_tables(args, Path(tmp))
        mb = sum(t.nbytes for t in tables.values()) / 1e6
        print(f"one chunk: {CHUNK_IMAGES} images, {mb:.0f} MB of tables in memory, written {args.chunks} times per run")
        rates: dict[int, list[float]] = {1: [], WRITER_THREADS: []}
        for i in range(args.rounds):
            for threads in sorted(rates, reverse=i % 2 == 1):
                rates[threads].append(images_per_second(tables, threads, args.chunks, Path(tmp) / f"w{i}-{threads}"))
    for threads, seen in rates.items():
        print(f"{threads} writer thread(s): " + ", ".join(f"{r:,.0f}" for r in seen) + " images/s")
    ratios = [b / a for a, b in zip(rates[1], rates[WRITER_THREADS], strict=True)]
    print(f"{WRITER_THREADS} threads / 1, per round: " + ", ".join(f"{r:.2f}" for r in ratios))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
