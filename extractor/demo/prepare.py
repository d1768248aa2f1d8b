"""`python -m extractor demo`: prepare the embedded demo that `make run` browses.

Writes held-out scenes of the synthetic world (COCO format) and extracts them with the committed tiny
ALBEF (`extractor/demo/checkpoint/`: checkpoint, config.json and vocab.txt) into a DuckDB file, with
both Grad-CAM and raw attention. Whatever already exists is reused, so a second call returns at once:
`make run` makes this call on every start, so the readiness check imports neither torch nor the
extractor, which are imported only to build.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import pandas as pd

from db import parts, queries
from db.schema import SchemaMismatch
from extractor.digest import file_sha256

log = logging.getLogger(__name__)
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoint"
REPO = Path(__file__).resolve().parents[2]


def demo_runs(db: Path) -> pd.DataFrame:
    """The runs recorded in `db` (none if it does not exist), with `by_demo_model`: whether the
    committed demo model made each; a database of another schema version reads as one run by another model."""
    if not db.is_file():
        return pd.DataFrame(columns=["status", "checkpoint_sha256", "by_demo_model"])
    try:
        with queries.connect_readonly(db) as con:
            runs = queries.list_runs(con)
    except SchemaMismatch:
        return pd.DataFrame({"status": ["complete"], "checkpoint_sha256": [None], "by_demo_model": [False]})
    return runs.assign(by_demo_model=runs["checkpoint_sha256"] == file_sha256(CHECKPOINT_DIR / "checkpoint.pth"))


def demo_is_ready(db: Path) -> bool:
    """Whether `db` holds a completed extraction by the committed demo model."""
    return _has_complete_demo_run(demo_runs(db))


def _has_complete_demo_run(runs: pd.DataFrame) -> bool:
    return bool((runs["by_demo_model"] & (runs["status"] == "complete")).any())


def prepare(out: Path, n_images: int, seed: int, res: int, device: str = "auto") -> Path:
    """The demo database under `out`, built if missing or incomplete (an interrupted build resumes).

    A database made by another demo model (an older commit's) or with another schema version is rebuilt,
    so the demo shows the committed model.
    """
    db = out / "demo.duckdb"
    runs = demo_runs(db)
    if _has_complete_demo_run(runs):
        log.info("demo database %s is ready", db)
        return db
    if not runs["by_demo_model"].all():
        log.info("demo database %s was made by another demo model or schema: rebuilding it", db)
        db.unlink()
        db.with_name(db.name + ".wal").unlink(missing_ok=True)
        shutil.rmtree(parts.parts_dir(db), ignore_errors=True)
    from extractor import run  # torch: imported only to build (see the module docstring)
    from extractor.demo.world import write_split

    world = out / "world"
    captions, instances = world / "annotations" / "captions_val.json", world / "annotations" / "instances_val.json"
    if not instances.is_file():
        write_split(world, "val", n_images, seed, res)
    run.extract(
        run.Options(
            images=world / "val",
            captions=captions,
            instances=instances,
            checkpoint=CHECKPOINT_DIR / "checkpoint.pth",
            config=CHECKPOINT_DIR / "config.json",
            vocab=CHECKPOINT_DIR / "vocab.txt",
            db=db,
            device=device,
        )
    )
    return db


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="prepare the embedded demo database (make run)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=REPO / "data" / "demo", help="folder for the world and demo.duckdb")
    p.add_argument("--n-images", type=int, default=300, help="held-out scenes to generate and extract")
    p.add_argument("--seed", type=int, default=0, help="world seed (0: the world the demo model was trained on)")
    p.add_argument("--res", type=int, default=128, help="image side in pixels")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where the model runs")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    print(f"demo database: {prepare(args.out, args.n_images, args.seed, args.res, args.device)}")
    return 0
