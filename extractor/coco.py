"""Reading a COCO dataset for the extractor: caption and instance files, object masks, images.

Every problem with an input file raises :class:`CocoFormatError` (a file) or :class:`ImageError` (an
image) whose message names the path and what is wrong, so a run can record it and go on.
"""

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

log = logging.getLogger(__name__)


class CocoFormatError(ValueError):
    """A COCO annotation file is missing, not JSON, truncated, or lacks what the format requires."""


class ImageError(OSError):
    """An image file is missing, empty, truncated, or not an image."""


class ImageObject(NamedTuple):
    """One instance of an image with its mask decoded at the image's size."""
    annotation_id: int
    category_id: int
    bbox: tuple[float, float, float, float]  # COCO [x, y, width, height] in pixels
    mask: np.ndarray  # (H, W) bool


_INT = (int,)
_NUMBER = (int, float)
_IMAGE_KEYS = {"id": _INT, "file_name": (str,), "width": _INT, "height": _INT}
_CAPTION_KEYS = {"id": _INT, "image_id": _INT, "caption": (str,)}
_CATEGORY_KEYS = {"id": _INT, "name": (str,), "supercategory": (str,)}
_INSTANCE_KEYS = {"id": _INT, "image_id": _INT, "category_id": _INT, "bbox": (list,),
                  "segmentation": (list, dict), "iscrowd": _INT, "area": _NUMBER}


def _read_json(path: Path, sections: tuple[str, ...]) -> dict[str, Any]:
    """Parse a COCO JSON file and check that it is an object holding each section as a list."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CocoFormatError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise CocoFormatError(f"{path}: not a JSON text file ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise CocoFormatError(f"{path}: cannot read ({e.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        hint = "; the file ends early (truncated?)" if e.pos >= len(text.rstrip()) else ""
        where = f"line {e.lineno} col {e.colno}"
        raise CocoFormatError(f"{path}: not valid JSON: {e.msg} at {where}{hint}") from None
    if not isinstance(data, dict):
        raise CocoFormatError(f"{path}: expected a JSON object at the top, found {type(data).__name__}")
    for section in sections:
        if section not in data:
            raise CocoFormatError(f"{path}: missing the '{section}' list")
        if not isinstance(data[section], list):
            raise CocoFormatError(f"{path}: '{section}' must be a list, found {type(data[section]).__name__}")
    return data


def _check_records(path: Path, data: dict[str, Any], section: str, keys: dict[str, tuple[type, ...]]) -> None:
    """Each entry of data[section] is an object with the keys and value types given; ids are unique."""
    seen: set[int] = set()
    for i, record in enumerate(data[section]):
        where = f"{path}: {section}[{i}]"
        if not isinstance(record, dict):
            raise CocoFormatError(f"{where} must be an object, found {type(record).__name__}")
        for key, types in keys.items():
            if key not in record:
                raise CocoFormatError(f"{where} (id {record.get('id')}) has no '{key}'")
            value = record[key]
            # bool is an int in Python, never a valid COCO id or size.
            if not isinstance(value, types) or isinstance(value, bool):
                raise CocoFormatError(f"{where} (id {record.get('id')}): '{key}' must be "
                                      f"{' or '.join(t.__name__ for t in types)}, found {value!r:.60}")
        if record["id"] in seen:
            raise CocoFormatError(f"{where}: duplicate id {record['id']}")
        seen.add(record["id"])


def _check_references(path: Path, records: list[dict], key: str, known: set[int], what: str) -> None:
    for record in records:
        if record[key] not in known:
            raise CocoFormatError(f"{path}: annotation {record['id']} refers to {what} {record[key]}, "
                                  f"which the file does not list")


def load_captions(path: str | Path) -> tuple[list[dict], list[dict]]:
    """Read and validate a COCO captions file (``captions_*.json``).

    Returns:
        (images, captions): the 'images' entries (id, file_name, width, height, ...) and the
        'annotations' entries (id, image_id, caption), as in the file.

    Raises:
        CocoFormatError: naming the file and the problem (missing, not JSON, truncated, a missing key,
            a wrong type, a duplicate id, a caption of an unlisted image).
    """
    path = Path(path)
    data = _read_json(path, ("images", "annotations"))
    _check_records(path, data, "images", _IMAGE_KEYS)
    _check_records(path, data, "annotations", _CAPTION_KEYS)
    _check_references(path, data["annotations"], "image_id", {im["id"] for im in data["images"]}, "image")
    return data["images"], data["annotations"]


def _check_instances(path: Path, data: dict[str, Any]) -> None:
    _check_records(path, data, "images", _IMAGE_KEYS)
    _check_records(path, data, "categories", _CATEGORY_KEYS)
    _check_records(path, data, "annotations", _INSTANCE_KEYS)
    anns = data["annotations"]
    _check_references(path, anns, "image_id", {im["id"] for im in data["images"]}, "image")
    _check_references(path, anns, "category_id", {c["id"] for c in data["categories"]}, "category")
    for ann in anns:
        segmentation, bbox = ann["segmentation"], ann["bbox"]
        if len(bbox) != 4 or not all(isinstance(v, _NUMBER) for v in bbox):
            raise CocoFormatError(f"{path}: annotation {ann['id']}: bbox must be 4 numbers, "
                                  f"found {bbox!r:.60}")
        polygons = isinstance(segmentation, list) and all(isinstance(p, list) for p in segmentation)
        rle = isinstance(segmentation, dict) and {"counts", "size"} <= segmentation.keys()
        if not (polygons or rle):
            raise CocoFormatError(f"{path}: annotation {ann['id']}: segmentation must be a list of polygons "
                                  f"or an RLE object with 'counts' and 'size', found {segmentation!r:.60}")


def load_instances(path: str | Path) -> COCO:
    """Read and validate a COCO instances file (``instances_*.json``) into a pycocotools ``COCO``.

    Raises:
        CocoFormatError: naming the file and the problem, as :func:`load_captions`; also a bbox that is
            not 4 numbers, a segmentation that is neither polygons nor RLE, an unlisted category.
    """
    path = Path(path)
    data = _read_json(path, ("images", "annotations", "categories"))
    _check_instances(path, data)
    coco = COCO()
    coco.dataset = data
    # createIndex prints progress to stdout; the CLI's output is ours to keep clean.
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    log.info("%s: %d images, %d instances", path, len(coco.imgs), len(coco.anns))
    return coco


def _decode(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """A segmentation as a (height, width) bool mask, exactly as ``COCO.annToMask`` decodes it."""
    if isinstance(segmentation, list):  # polygons, merged into one RLE
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):  # uncompressed RLE (iscrowd)
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


def image_objects(coco: COCO, image_id: int, height: int, width: int) -> list[ImageObject]:
    """The instances of an image with their masks, polygons and RLE (crowd) alike.

    Args:
        coco: from :func:`load_instances`.
        image_id: a COCO image id; an image without annotations has no objects.
        height, width: the image's size, at which masks are decoded.

    Raises:
        CocoFormatError: an annotation whose segmentation cannot be decoded at this size.
    """
    objects = []
    for ann in coco.imgToAnns.get(image_id, []):
        try:
            mask = _decode(ann["segmentation"], height, width)
        except (TypeError, ValueError, KeyError, IndexError) as e:
            raise CocoFormatError(f"annotation {ann['id']} of image {image_id}: cannot decode its "
                                  f"segmentation ({e})") from e
        if mask.shape != (height, width):
            raise CocoFormatError(f"annotation {ann['id']} of image {image_id}: its RLE mask is "
                                  f"{mask.shape[0]}x{mask.shape[1]}, the image {height}x{width}")
        objects.append(ImageObject(ann["id"], ann["category_id"], tuple(ann["bbox"]), mask))
    return objects


def load_image(path: str | Path) -> Image.Image:
    """Open an image as ALBEF does, ``Image.open(path).convert('RGB')``, fully decoded.

    EXIF orientation is not applied (ALBEF does not), so boxes and masks keep COCO's pixel frame.
    The file format is read from its content, so a PNG named .jpg loads; grayscale, CMYK, palette
    and alpha images are converted by PIL's ``convert('RGB')`` as in ALBEF.

    Raises:
        ImageError: the path and why: missing, a directory, empty, not an image, truncated or
            corrupt (PIL decodes lazily, so the whole image is decoded here to catch it now).
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: image file not found")
    if not path.is_file():
        raise ImageError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: too large to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        # PIL reports truncated data as OSError and broken headers as SyntaxError or ValueError.
        raise ImageError(f"{path}: truncated or corrupt image ({e})") from None
