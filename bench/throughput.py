"""End-to-end speed of `python -m extractor run` at the real ALBEF-base size, and what all of COCO would take.

Everything a real run does is timed: JPEG decoding in the loader, one image encode per image, its
captions fused together, raw attention of every fusion layer and Grad-CAM, the metrics, and the
DuckDB commits. The weights are random (speed does not depend on them); images, captions and masks
are real COCO, repeated to make --images images.

    python -m bench.throughput                                   # CPU, a few images
    python -m bench.throughput --device cuda --images 2000       # a GPU; try --batch-size and the workers
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from itertools import cycle, islice
from pathlib import Path

import torch

from bench.coco_args import add_coco_arguments
from db import queries
from extractor import run
from extractor.config import ALBEFConfig
from extractor.model import ALBEF

COCO_IMAGES = 123_287  # train2017 + val2017
COCO_CAPTIONS = 616_767


def random_checkpoint(out: Path, image_res: int) -> Path:
    """An ALBEF-base checkpoint (fine-tuned format) with random weights, and its config.json beside it."""
    torch.manual_seed(0)
    cfg = ALBEFConfig(image_res=image_res)
    torch.save(ALBEF(cfg).state_dict(), out / "checkpoint.pth")
    cfg.to_json(out / "config.json")
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_coco_arguments(parser)
    parser.add_argument("--images", type=int, default=8, help="images to extract")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--batch-size", type=int, help="images per model call (default: the extractor's)")
    parser.add_argument("--workers", type=int, help="image decoding processes (default: the extractor's)")
    parser.add_argument("--summary-workers", type=int, help="word-row processes (default: the extractor's)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        captions, instances = repeated_coco(args.coco, args.images, tmp)
        opts = run.Options(
            images=args.coco / "val2017",
            captions=captions,
            instances=instances,
            checkpoint=random_checkpoint(tmp, args.image_res),
            config=None,
            vocab=args.vocab,
            db=tmp / "bench.duckdb",
            device=args.device,
            batch_size=args.batch_size,
            workers=args.workers,
            summary_workers=args.summary_workers,
        )
        start = time.perf_counter()
        run_id = run.extract(opts)
        total = time.perf_counter() - start
        with queries.connect_readonly(opts.db) as con:
            summary = queries.run_summary(con, run_id)
    seconds, n = summary["seconds"], summary["images_done"]
    per_image = seconds / n
    print(f"ALBEF base at {args.image_res} px on {summary['device']}: {n} images, {summary['captions']} captions "
          f"in {seconds:.1f} s of extraction ({total:.1f} s with model loading and finalizing)")
    print(f"  {n / seconds:.2f} images/s, {summary['captions'] / seconds:.1f} captions/s")
    print(f"  all of COCO ({COCO_IMAGES:,} images, {COCO_CAPTIONS:,} captions) at this rate: "
          f"{COCO_IMAGES * per_image / 3600:.1f} h on one such device")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
