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
from extractor.coco import SkippedAnnotation, decode_objects, load_captions, load_instances
from extractor.metrics import ImageCovers, image_covers
from extractor.text import pre_caption

ErrorRow = tuple[str, str, str | None, str]
"""(item_kind, item_id, path, message): a row of the `errors` table."""
SIZE_WARNING_KIND = "image"
"""The errors table's kind for an image whose file is not the size its COCO record gives (the schema
has no kind for warnings: the message says it is one, and the image's status stays 'done')."""


def _size_warning(image: dict, height: int, width: int) -> ErrorRow:
    message = (f"warning: the file is {width}x{height}, its COCO record says {image['width']}x{image['height']}; "
               "masks are laid on the file's size, coordinates as they are")  # fmt: skip
    return SIZE_WARNING_KIND, str(image["id"]), image["file_name"], message


def _skipped_row(image: dict, skipped: SkippedAnnotation) -> ErrorRow:
    message = f"annotation {skipped.annotation_id} of image {image['id']} skipped: {skipped.reason}"
    return "annotation", str(skipped.annotation_id), image["file_name"], message


INSTANCE_COLUMNS = {"annotation_id": "int64", "image_id": "int64", "category_id": "int32", "bbox_x": "float64",
                    "bbox_y": "float64", "bbox_w": "float64", "bbox_h": "float64", "area": "float64",
                    "iscrowd": "bool", "segmentation": "object"}  # fmt: skip


@dataclass
class CocoDataset:
    images: dict[int, dict]  # image id -> COCO image record
    captions: dict[int, list[dict]]  # image id -> its caption annotations, in file order
    categories: dict[int, dict]  # category id -> {name, supercategory}
    instances: COCO | None = None
    match: Callable[[list[str]], list[int | None]] = match_words
    order: list[int] | None = None  # the images' run order (a pairs input's); None: by id (COCO)

    def images_with_captions(self) -> list[dict]:
        ids = sorted(self.captions) if self.order is None else [i for i in self.order if i in self.captions]
        return [self.images[i] for i in ids]

    def captions_of(self, image_id: int) -> list[dict]:
        return self.captions.get(image_id, [])

    def covers_of(
        self, image: dict, g: int, size: tuple[int, int] | None = None
    ) -> tuple[ImageCovers | None, list[ErrorRow]]:
        """The image's objects on the g x g grid (None without an instances file), and its error rows.

        Args:
            image: the COCO image record.
            g: grid size.
            size: (height, width) of the image file, at which masks are laid (their coordinates are
                pixels of the file, never rescaled); default the record's. Where it differs from the
                record, a warning row says so.

        Returns:
            (covers, rows): one 'annotation' row per annotation left out (see `decode_objects`) and the
            size warning, each naming the image's file.

        Raises:
            CocoFormatError: an image too large for its masks to be decoded.
        """
        height, width = size or (image["height"], image["width"])
        rows = [] if (height, width) == (image["height"], image["width"]) else [_size_warning(image, height, width)]
        if self.instances is None:
            return None, rows
        objects, skipped = decode_objects(self.instances, image["id"], height, width)
        rows += [_skipped_row(image, s) for s in skipped]
        return image_covers(objects, height, width, g), rows

    def frames(self, max_words: int) -> tuple[pd.DataFrame, ...]:
        """(categories, images, captions, instances) rows for `db.writer.upsert_dataset`."""
        categories = pd.DataFrame(
            [{"category_id": cid, **c} for cid, c in self.categories.items()],
            columns=["category_id", "name", "supercategory"],
        )
        images = pd.DataFrame(
            [
                {
                    "image_id": im["id"],
                    "file_name": im["file_name"],
                    "width": im["width"],
                    "height": im["height"],
                    "coco_url": im.get("coco_url"),
                }
                for im in self.images.values()
            ]
        )
        captions = pd.DataFrame(
            [
                {
                    "caption_id": c["id"],
                    "image_id": c["image_id"],
                    "raw": c["caption"],
                    "text": (text := pre_caption(c["caption"], max_words)),
                    "n_words": len(text.split()),
                }
                for caps in self.captions.values()
                for c in caps
            ]
        )
        anns = self.instances.dataset["annotations"] if self.instances else []
        instances = pd.DataFrame(
            [
                {
                    "annotation_id": a["id"],
                    "image_id": a["image_id"],
                    "category_id": a["category_id"],
                    "bbox_x": a["bbox"][0],
                    "bbox_y": a["bbox"][1],
                    "bbox_w": a["bbox"][2],
                    "bbox_h": a["bbox"][3],
                    "area": a["area"],
                    "iscrowd": bool(a["iscrowd"]),
                    "segmentation": json.dumps(a["segmentation"]),
                }
                for a in anns
            ],
            columns=list(INSTANCE_COLUMNS),
        ).astype(INSTANCE_COLUMNS)  # typed even when empty: a run without instances writes none
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
