"""`python -m extractor make-demo-world`: write the synthetic demo world as a COCO-format dataset.

Layout under OUT (COCO's own): `<split>/<image_id:012d>.jpg` and `annotations/captions_<split>.json`,
`annotations/instances_<split>.json` for the splits `train` and `val`. Instances carry polygon
segmentations; the categories are the eight shapes (ids 101-108, supercategory "shape", clear of
COCO's 1-90 so both can share one database). Besides COCO's keys, each image entry has a `scene`
dict (background recipe) and each instance its `colour`, `size` and drawn `rgb`, from which
`load_scenes` rebuilds the exact scenes: tests and benchmarks check captions against them.

Every image is drawn from its own generator seeded by (seed, split, index), so a world is identical
for the same arguments and a split's first images do not depend on how many are requested.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from extractor.demo.captions import SHAPE_NOUNS, make_captions, plural
from extractor.demo.scene import SHAPES, Obj, Scene, render_scene, sample_scene

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
# Demo ids stay clear of COCO's (image ids < 600,000; category ids 1-90).
IMAGE_ID_BASE = {"train": 1_000_000, "val": 2_000_000}
CATEGORY_ID_BASE = 101
JPEG_QUALITY = 90

CATEGORY_ID = {shape: CATEGORY_ID_BASE + k for k, shape in enumerate(SHAPES)}
DEMO_CATEGORY_WORDS: dict[int, tuple[str, ...]] = {
    CATEGORY_ID[shape]: nouns + tuple(plural(n) for n in nouns) for shape, nouns in SHAPE_NOUNS.items()
}
"""Category id -> every word that names it in demo captions (nouns, synonyms, plurals); single words."""
# `synonyms` (an extra key COCO readers ignore) tells the extractor which words name each shape.
DEMO_CATEGORIES: list[dict[str, Any]] = [
    {"id": cid, "name": shape, "supercategory": "shape", "synonyms": list(DEMO_CATEGORY_WORDS[cid])}
    for shape, cid in CATEGORY_ID.items()
]
_WORD_CATEGORY = {w: cid for cid, words in DEMO_CATEGORY_WORDS.items() for w in words}
_INFO = {"description": "Synthetic shapes world for the ALBEF attention demo", "version": "1.0"}
_LICENSES = [{"id": 1, "name": "CC0 1.0 (synthetic data)", "url": "https://creativecommons.org/publicdomain/zero/1.0/"}]


def match_demo_words(words: Sequence[str]) -> list[int | None]:
    """Demo category id named by each word of a cleaned caption, None where it names none.

    Same contract as `extractor.categories.match_words`, with the shape table instead of COCO's.
    """
    return [_WORD_CATEGORY.get(w.lower()) for w in words]


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image: independent of every other image and of the split sizes."""
    return np.random.default_rng([seed, SPLITS.index(split), index])


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "jpg":
        Image.fromarray(pixels).save(buffer, "JPEG", quality=JPEG_QUALITY)
    else:
        Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _annotation(obj: Obj, ann_id: int, image_id: int) -> dict[str, Any]:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": CATEGORY_ID[obj.shape],
        "segmentation": [[float(v) for v in obj.polygon.ravel()]],
        "area": round(obj.area, 2),
        "bbox": [round(v, 2) for v in obj.bbox],
        "iscrowd": 0,
        "colour": obj.colour,
        "size": obj.size,
        "rgb": list(obj.rgb or ()),
    }


def write_split(out: Path, split: str, n: int, seed: int, res: int, fmt: str = "jpg") -> list[Path]:
    """Generate one split; returns [image folder, captions file, instances file]."""
    image_dir, ann_dir = out / split, out / "annotations"
    image_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    images, captions, instances = [], [], []
    for index in range(n):
        rng = scene_rng(seed, split, index)
        scene = sample_scene(rng, res)
        image_id = IMAGE_ID_BASE[split] + index
        file_name = f"{image_id:012d}.{fmt}"
        (image_dir / file_name).write_bytes(_encode(render_scene(scene), fmt))
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "width": res,
                "height": res,
                "license": 1,
                "scene": {"background": scene.background, "distractors": scene.distractors, "seed": scene.seed},
            }
        )
        # Ids: image_id * 10 + position, unique because a scene has <= 4 objects and 5 captions.
        instances += [_annotation(o, image_id * 10 + k, image_id) for k, o in enumerate(scene.objects)]
        captions += [
            {"id": image_id * 10 + j, "image_id": image_id, "caption": c}
            for j, c in enumerate(make_captions(scene, rng))
        ]
    head = {"info": _INFO, "licenses": _LICENSES, "images": images}
    captions_path = ann_dir / f"captions_{split}.json"
    instances_path = ann_dir / f"instances_{split}.json"
    captions_path.write_text(json.dumps({**head, "annotations": captions}))
    instances_path.write_text(json.dumps({**head, "annotations": instances, "categories": DEMO_CATEGORIES}))
    return [image_dir, captions_path, instances_path]


def write_world(out: Path, n_train: int, n_val: int, seed: int = 0, res: int = 128, fmt: str = "jpg") -> list[Path]:
    """Generate both splits under `out`; returns every folder and file written."""
    sizes = {"train": n_train, "val": n_val}
    return [path for split in SPLITS for path in write_split(out, split, sizes[split], seed, res, fmt)]


def load_scenes(instances_path: Path) -> dict[int, Scene]:
    """Image id -> the scene it was drawn from, rebuilt from a demo instances file."""
    data = json.loads(Path(instances_path).read_text())
    shape_of = {c["id"]: c["name"] for c in data["categories"]}
    objects: dict[int, list[Obj]] = {img["id"]: [] for img in data["images"]}
    for ann in sorted(data["annotations"], key=lambda a: a["id"]):
        polygon = np.array(ann["segmentation"][0], np.float64).reshape(-1, 2)
        objects[ann["image_id"]].append(
            Obj(shape_of[ann["category_id"]], ann["colour"], ann["size"], polygon, tuple(ann["rgb"]) or None)
        )
    return {
        img["id"]: Scene(
            img["width"],
            img["scene"]["background"],
            img["scene"]["distractors"],
            img["scene"]["seed"],
            tuple(objects[img["id"]]),
        )
        for img in data["images"]
    }


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "make-demo-world",
        help="write the synthetic demo world (COCO format)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, required=True, help="output folder (created; files are overwritten)")
    p.add_argument("--n-train", type=int, default=1000, help="number of training images")
    p.add_argument("--n-val", type=int, default=500, help="number of held-out validation images")
    p.add_argument("--seed", type=int, default=0, help="world seed; the same seed gives identical files")
    p.add_argument("--res", type=int, default=128, help="image side in pixels (images are square)")
    p.add_argument(
        "--format",
        choices=("jpg", "png"),
        default="jpg",
        dest="fmt",
        help="image file format (jpg: quality 90; png: lossless)",
    )
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    paths = write_world(args.out, args.n_train, args.n_val, args.seed, args.res, args.fmt)
    log.info("%d images in %.1f s", args.n_train + args.n_val, time.perf_counter() - start)
    for path in paths:
        print(path)
    return 0
