"""Seeded sample extraction databases: real COCO annotations, synthetic maps and metrics.

The dataset tables hold real COCO rows (ids, captions, instances); each word gets a random but
self-consistent map (peak, peak_value and entropy computed from it) and random object metrics where it
names a category labelled in its image, NULL otherwise. Written through db.writer like a real run, so
tests and dashboard demos exercise the production path without running the model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from db import writer
from db.codec import encode_map

DEFAULT_SLICES = (("gradcam", 8), ("attention", 8), ("attention", 11))
_WORD = re.compile(r"[a-z0-9]+")


def caption_words(caption: str) -> list[str]:
    """Lower-case alphanumeric words: a close stand-in for ALBEF's pre_caption + split."""
    return _WORD.findall(caption.lower())


def category_lookup(categories: pd.DataFrame) -> dict[str, int]:
    """Word -> category_id for one-word category names and their plurals (a simple stand-in matcher)."""
    lookup = {}
    for cid, name in zip(categories["category_id"], categories["name"], strict=True):
        if " " not in name:
            lookup[name] = int(cid)
            lookup[name + "s"] = int(cid)
    return lookup


def coco_frames(captions_json: str | Path, instances_json: str | Path | None = None) -> dict[str, pd.DataFrame]:
    """The dataset tables (categories, images, instances, captions) as frames for writer.upsert_dataset."""
    caps = json.loads(Path(captions_json).read_text())
    inst = json.loads(Path(instances_json).read_text()) if instances_json else {"categories": [], "annotations": []}
    images = pd.DataFrame(caps["images"]).rename(columns={"id": "image_id"})
    captions = pd.DataFrame(caps["annotations"]).rename(columns={"id": "caption_id", "caption": "raw"})
    captions["text"] = [" ".join(caption_words(c)) for c in captions["raw"]]
    captions["n_words"] = [len(t.split()) for t in captions["text"]]
    categories = pd.DataFrame(inst["categories"], columns=["id", "name", "supercategory"])
    instances = pd.DataFrame(
        [
            {
                "annotation_id": a["id"], "image_id": a["image_id"], "category_id": a["category_id"],
                "bbox_x": a["bbox"][0], "bbox_y": a["bbox"][1], "bbox_w": a["bbox"][2], "bbox_h": a["bbox"][3],
                "area": a["area"], "iscrowd": bool(a["iscrowd"]), "segmentation": json.dumps(a["segmentation"]),
            }  # fmt: skip
            for a in inst["annotations"]
        ],
        columns=["annotation_id", "image_id", "category_id", "bbox_x", "bbox_y", "bbox_w", "bbox_h", "area",
                 "iscrowd", "segmentation"],
    )  # fmt: skip
    return {
        "categories": categories.rename(columns={"id": "category_id"}),
        "images": images[["image_id", "file_name", "width", "height", "coco_url"]],
        "instances": instances,
        "captions": captions[["caption_id", "image_id", "raw", "text", "n_words"]],
    }


def image_results(
    dataset: dict[str, pd.DataFrame],
    image_id: int,
    seed: int = 0,
    slices: Sequence[tuple[str, int]] = DEFAULT_SLICES,
    grid: int = 6,
) -> dict[str, pd.DataFrame]:
    """Synthetic result frames (caption_results, caption_maps, words) of one image, for writer.write_images.

    Seeded per image: the same image gets the same rows whichever file or batch it is written in.
    """
    rng = np.random.default_rng([seed, image_id])
    lookup = category_lookup(dataset["categories"])
    instances = dataset["instances"]
    labelled = set(instances.loc[instances["image_id"] == image_id, "category_id"])
    captions = dataset["captions"][dataset["captions"]["image_id"] == image_id]
    results, cap_maps, words = [], [], []
    for caption_id, text in zip(captions["caption_id"], captions["text"], strict=True):
        itm = float(rng.uniform())
        results.append({"caption_id": caption_id, "image_id": image_id, "itm_score": itm,
                        "itc_score": float(rng.uniform(-1, 1))})  # fmt: skip
        for method, layer in slices:
            maps = []
            for index, word in enumerate(text.split()):
                m = _random_map(rng, grid)
                maps.append(m)
                category = lookup.get(word)
                row = _map_fields(m) | _object_metrics(rng, category in labelled)
                words.append(row | {"image_id": image_id, "caption_id": caption_id, "word_index": index,
                                    "word": word, "n_pieces": 1, "category_id": category, "method": method,
                                    "layer": layer, "itm_score": itm})  # fmt: skip
            blob, peak = encode_map(np.mean(maps, axis=0))
            cls_blob, cls_peak = encode_map(_random_map(rng, grid))
            cap_maps.append({"caption_id": caption_id, "image_id": image_id, "method": method, "layer": layer,
                             "map": blob, "map_max": peak, "cls_map": cls_blob, "cls_map_max": cls_peak})  # fmt: skip
    return {
        "caption_results": pd.DataFrame(results),
        "caption_maps": pd.DataFrame(cap_maps),
        "words": pd.DataFrame(words).astype({"category_id": "Int64"}),
    }


def build_sample_db(
    path: str | Path,
    captions_json: str | Path,
    instances_json: str | Path | None,
    *,
    run_id: str = "5a3b1e0000000001",
    seed: int = 0,
    slices: Sequence[tuple[str, int]] = DEFAULT_SLICES,
    grid: int = 6,
    image_ids: Sequence[int] | None = None,
    finish: str | None = "complete",
    finalize: bool = True,
) -> str:
    """Write a sample run over the COCO files into the database at `path`; returns the run_id.

    Args:
        image_ids: the images to write (default all with captions), each in its own transaction.
        finish: finish_run status, or None to leave the run 'running' and unfinished.
        finalize: let finish_run finalize a 'complete' run (cluster words, write word_summary).
    """
    dataset = coco_frames(captions_json, instances_json)
    ids = sorted(set(dataset["captions"]["image_id"])) if image_ids is None else list(image_ids)
    con = writer.connect(path)
    try:
        writer.start_run(con, sample_run(run_id, slices, grid))
        writer.upsert_dataset(con, *(dataset[t] for t in ("categories", "images", "captions", "instances")))
        for image_id in ids:
            writer.write_images(con, run_id, image_results(dataset, image_id, seed, slices, grid), [image_id])
        if finish:
            writer.finish_run(con, run_id, float(len(ids)), finish, finalize_run=finalize)
    finally:
        con.close()
    return run_id


def sample_run(run_id: str, slices: Sequence[tuple[str, int]], grid: int) -> dict:
    """The runs row of a sample run."""
    methods = {m for m, _ in slices}
    return {
        "run_id": run_id,
        "checkpoint_path": "sample (synthetic maps)",
        "config": {"sample": True},
        "method": methods.pop() if len(methods) == 1 else "both",
        "layers": sorted({la for m, la in slices if m == "attention"}),
        "gradcam_layer": next((la for m, la in slices if m == "gradcam"), None),
        "image_res": grid * 16,
        "patch_size": 16,
        "grid_size": grid,
        "code_version": "sample",
    }


def _random_map(rng: np.random.Generator, grid: int) -> np.ndarray:
    """A smooth bump at a random cell plus noise: shaped like an attention map."""
    r, c = rng.uniform(0, grid, size=2)
    rows, cols = np.mgrid[0:grid, 0:grid]
    bump = np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / (2 * rng.uniform(0.5, grid / 2) ** 2))
    return (bump + 0.1 * rng.uniform(size=(grid, grid))).astype(np.float32)


def _map_fields(m: np.ndarray) -> dict:
    """Map blob and the map-only metrics, by the contract's formulas."""
    blob, peak = encode_map(m)
    p = m / m.sum()
    row, col = np.unravel_index(int(np.argmax(m)), m.shape)
    entropy = float(-(p * np.log(p)).sum() / np.log(m.size))
    return {"map": blob, "map_max": peak, "peak_row": int(row), "peak_col": int(col),
            "peak_value": float(p.max()), "entropy": entropy}  # fmt: skip


def _object_metrics(rng: np.random.Generator, labelled: bool) -> dict:
    """Random object metrics when the named object is labelled in the image, else NULL."""
    background = float(rng.uniform(0, 0.8))
    if not labelled:
        return {"mask_mass": None, "box_mass": None, "background_mass": background, "pointing_hit": None,
                "iou_top60": None}  # fmt: skip
    mask = float(rng.uniform(0, 1 - background))
    return {"mask_mass": mask, "box_mass": min(1.0, mask + float(rng.uniform(0, 0.2))),
            "background_mass": background, "pointing_hit": bool(rng.uniform() < 0.5 + mask / 2),
            "iou_top60": float(rng.uniform(0, 1))}  # fmt: skip
