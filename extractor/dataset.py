"""A COCO dataset as one extraction run sees it: images, their captions, objects and category words."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from pycocotools.coco import COCO

from extractor.categories import COCO_CATEGORIES, match_words, matcher_from_synonyms
from extractor.coco import image_objects, load_captions, load_instances
from extractor.metrics import ImageCovers, image_covers
from extractor.text import pre_caption


@dataclass
class CocoDataset:
    images: dict[int, dict]  # image id -> COCO image record
    captions: dict[int, list[dict]]  # image id -> its caption annotations, in file order
    categories: dict[int, dict]  # category id -> {name, supercategory}
    instances: COCO | None = None
    match: Callable[[list[str]], list[int | None]] = match_words

    def images_with_captions(self) -> list[dict]:
        return [self.images[i] for i in sorted(self.captions)]

    def captions_of(self, image_id: int) -> list[dict]:
        return self.captions.get(image_id, [])

    def covers_of(self, image: dict, g: int) -> ImageCovers | None:
        """The image's objects on the g x g grid; None without an instances file."""
        if self.instances is None:
            return None
        objects = image_objects(self.instances, image["id"], image["height"], image["width"])
        return image_covers(objects, image["height"], image["width"], g)

    def frames(self, max_words: int) -> tuple[pd.DataFrame, ...]:
        """(categories, images, captions, instances) rows for `db.writer.upsert_dataset`."""
        categories = pd.DataFrame(
            [{"category_id": cid, **c} for cid, c in self.categories.items()],
            columns=["category_id", "name", "supercategory"],
        )
        images = pd.DataFrame(
            [{"image_id": im["id"], "file_name": im["file_name"], "width": im["width"], "height": im["height"],
              "coco_url": im.get("coco_url")} for im in self.images.values()]
        )
        captions = pd.DataFrame(
            [{"caption_id": c["id"], "image_id": c["image_id"], "raw": c["caption"],
              "text": (text := pre_caption(c["caption"], max_words)), "n_words": len(text.split())}
             for caps in self.captions.values() for c in caps]
        )
        anns = self.instances.dataset["annotations"] if self.instances else []
        instances = pd.DataFrame(
            [{"annotation_id": a["id"], "image_id": a["image_id"], "category_id": a["category_id"],
              "bbox_x": a["bbox"][0], "bbox_y": a["bbox"][1], "bbox_w": a["bbox"][2], "bbox_h": a["bbox"][3],
              "area": a["area"], "iscrowd": bool(a["iscrowd"]), "segmentation": json.dumps(a["segmentation"])}
             for a in anns]
        )
        return categories, images, captions, instances


def load_coco(captions_path: Path, instances_path: Path | None) -> CocoDataset:
    """Read a captions file and, optionally, the matching instances file.

    Categories come from the instances file; when its categories carry a `synonyms` list (as the demo
    world's do) words are matched by those, else by the COCO vocabulary of `extractor.categories`.
    """
    images, annotations = load_captions(captions_path)
    captions: dict[int, list[dict]] = defaultdict(list)
    for ann in annotations:
        captions[ann["image_id"]].append(ann)
    dataset = CocoDataset(
        images={im["id"]: im for im in images},
        captions=dict(captions),
        categories={cid: {"name": c.name, "supercategory": c.supercategory} for cid, c in COCO_CATEGORIES.items()},
    )
    if instances_path is not None:
        coco = load_instances(instances_path)
        dataset.instances = coco
        cats = coco.dataset["categories"]
        dataset.categories = {c["id"]: {"name": c["name"], "supercategory": c["supercategory"]} for c in cats}
        if any("synonyms" in c for c in cats):
            dataset.match = matcher_from_synonyms({c["id"]: [c["name"], *c.get("synonyms", [])] for c in cats})
    return dataset
