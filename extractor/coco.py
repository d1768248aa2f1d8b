"""Reading a COCO dataset for the extractor: caption and instance files, object masks, images.

Every problem with an input file raises :class:`CocoFormatError` (a file) or :class:`ImageError` (an
image) whose message names the path and what is wrong, so a run can record it and go on. A file whose
structure is sound but one of whose annotations has bad geometry (too few points, coordinates that are
not finite or far outside the image, an RLE of another size, a mask covering no pixel) keeps its other
annotations: :func:`decode_objects` skips that one and says why. Nothing is rasterized before its
coordinates are checked, and no image or mask beyond :data:`MAX_PIXELS` is allocated.
"""

import contextlib
import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

log = logging.getLogger(__name__)

MAX_PIXELS = 2**26
"""The largest image decoded, and so the largest mask: 64 Mpx (8192 x 8192). A mask takes a byte per
pixel and its grid coverage briefly eight more (512 MiB at the bound); beyond it an image is an error."""
MAX_POLYGON_OUTLINE = 2**20
"""The longest polygon outline rasterized, in pixels: pycocotools holds every fifth of a pixel of it
(about 80 bytes per pixel, 80 MiB at the bound). Real COCO outlines are a few thousand pixels."""


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


class SkippedAnnotation(NamedTuple):
    """An annotation left out of its image's objects, and why."""

    annotation_id: int
    reason: str


_INT = (int,)
_NUMBER = (int, float)
_IMAGE_KEYS = {"id": _INT, "file_name": (str,), "width": _INT, "height": _INT}
_CAPTION_KEYS = {"id": _INT, "image_id": _INT, "caption": (str,)}
_CATEGORY_KEYS = {"id": _INT, "name": (str,), "supercategory": (str,)}
_INSTANCE_KEYS = {
    "id": _INT,
    "image_id": _INT,
    "category_id": _INT,
    "bbox": (list,),
    "segmentation": (list, dict),
    "iscrowd": _INT,
    "area": _NUMBER,
}


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
                raise CocoFormatError(
                    f"{where} (id {record.get('id')}): '{key}' must be "
                    f"{' or '.join(t.__name__ for t in types)}, found {value!r:.60}"
                )
        if record["id"] in seen:
            raise CocoFormatError(f"{where}: duplicate id {record['id']}")
        seen.add(record["id"])


def _check_references(path: Path, records: list[dict], key: str, known: set[int], what: str) -> None:
    for record in records:
        if record[key] not in known:
            raise CocoFormatError(
                f"{path}: annotation {record['id']} refers to {what} {record[key]}, which the file does not list"
            )


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
            raise CocoFormatError(f"{path}: annotation {ann['id']}: bbox must be 4 numbers, found {bbox!r:.60}")
        polygons = isinstance(segmentation, list) and all(isinstance(p, list) for p in segmentation)
        rle = isinstance(segmentation, dict) and {"counts", "size"} <= segmentation.keys()
        if not (polygons or rle):
            raise CocoFormatError(
                f"{path}: annotation {ann['id']}: segmentation must be a list of polygons "
                f"or an RLE object with 'counts' and 'size', found {segmentation!r:.60}"
            )


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


def _finite_number(value: object) -> bool:
    """A JSON number that fits a float: not a bool, NaN, an infinity or an integer beyond float range."""
    return isinstance(value, int | float) and not isinstance(value, bool) and abs(value) <= sys.float_info.max


class _BadAnnotation(ValueError):
    """Why one annotation cannot be laid on its image."""


def _check_bbox(bbox: list, height: int, width: int) -> None:
    if not all(_finite_number(v) for v in bbox):
        raise _BadAnnotation(f"bbox {bbox!r:.60} is not 4 finite numbers")
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        raise _BadAnnotation(f"bbox {bbox!r:.60} has no area")
    if x >= width or y >= height or x + w <= 0 or y + h <= 0:
        raise _BadAnnotation(f"bbox {bbox!r:.60} lies outside the {width}x{height} image")


def _check_polygons(polygons: list[list], height: int, width: int) -> None:
    if not polygons:
        raise _BadAnnotation("its segmentation holds no polygon")
    for i, polygon in enumerate(polygons):
        _check_polygon(i, polygon, height, width)


def _check_polygon(i: int, polygon: list, height: int, width: int) -> None:
    """Checked before pycocotools rasterizes it, which allocates by the outline's length in pixels."""
    if bad := [v for v in polygon if not _finite_number(v)]:
        raise _BadAnnotation(f"polygon {i} has a coordinate that is not a finite number ({bad[0]!r:.30})")
    if len(polygon) % 2:
        raise _BadAnnotation(f"polygon {i} has an odd number of coordinates ({len(polygon)})")
    if len(polygon) < 6:
        raise _BadAnnotation(f"polygon {i} has {len(polygon) // 2} points; a polygon needs at least 3")
    points = np.array(polygon, dtype=np.float64).reshape(-1, 2)  # (k, 2) x, y
    size = np.array([width, height])
    far = ((points < -size) | (points > 2 * size)).any(axis=1)
    if far.any():
        x, y = points[far.argmax()]
        raise _BadAnnotation(
            f"polygon {i} reaches ({x:g}, {y:g}), more than the image's own size outside the {width}x{height} image"
        )
    outline = np.abs(points - np.roll(points, 1, axis=0)).max(axis=1).sum()
    if outline > MAX_POLYGON_OUTLINE:
        raise _BadAnnotation(
            f"polygon {i} has an outline of {outline:.0f} pixels, more than the "
            f"{MAX_POLYGON_OUTLINE} that are rasterized"
        )


def _compressed_run_lengths(text: str) -> list[int] | None:
    """COCO's compressed RLE string as run lengths (pycocotools' rleFrString in Python).

    None where rleFrString would read past the string's end or wrap a negative run into a huge one.
    """
    counts: list[int] = []
    value, shift = 0, 0
    for char in text:
        c = ord(char) - 48  # 6 bits: 5 of value, then a "more" flag
        if not 0 <= c < 64:
            return None
        value |= (c & 0x1F) << shift
        shift += 5
        if c & 0x20:
            continue
        if c & 0x10:  # sign bit of the last group
            value -= 1 << shift
        if len(counts) > 2:  # runs after the third are stored as differences
            value += counts[-2]
        if value < 0:
            return None
        counts.append(value)
        value, shift = 0, 0
    return counts if shift == 0 else None


def _run_lengths(counts: object) -> list[int] | None:
    """An RLE's run lengths, uncompressed (a list) or compressed (a string); None when they are not."""
    if isinstance(counts, bytes):
        counts = counts.decode("latin-1")
    if isinstance(counts, str):
        return _compressed_run_lengths(counts)
    if isinstance(counts, list) and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        return counts
    return None


def _check_rle(rle: dict, height: int, width: int) -> None:
    """Checked before pycocotools decodes it, which writes every run into an image-sized buffer unchecked."""
    if rle["size"] != [height, width]:
        raise _BadAnnotation(f"its RLE has size {rle['size']!r:.40} (height, width), the image {height}x{width}")
    runs = _run_lengths(rle["counts"])
    if runs is None:
        raise _BadAnnotation("its RLE counts are not run lengths (a list of counts or COCO's compressed string)")
    if sum(runs) != height * width:
        raise _BadAnnotation(f"its RLE runs cover {sum(runs)} pixels, the {height}x{width} image {height * width}")


def _decode(segmentation: list | dict, height: int, width: int) -> np.ndarray:
    """A segmentation as a (height, width) bool mask, exactly as ``COCO.annToMask`` decodes it."""
    if isinstance(segmentation, list):  # polygons, merged into one RLE
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):  # uncompressed RLE (iscrowd)
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle).astype(bool)


def _image_object(ann: dict, height: int, width: int) -> ImageObject:
    """One annotation with its mask; raises _BadAnnotation, before any rasterizing, where it cannot be laid."""
    _check_bbox(ann["bbox"], height, width)
    segmentation = ann["segmentation"]
    if isinstance(segmentation, dict):
        _check_rle(segmentation, height, width)
    else:
        _check_polygons(segmentation, height, width)
    mask = _decode(segmentation, height, width)
    if not mask.any():
        raise _BadAnnotation(f"its mask covers no pixel of the {width}x{height} image (no area, or outside it)")
    return ImageObject(ann["id"], ann["category_id"], tuple(ann["bbox"]), mask)


def decode_objects(
    coco: COCO, image_id: int, height: int, width: int
) -> tuple[list[ImageObject], list[SkippedAnnotation]]:
    """The instances of an image with their masks, polygons and RLE (crowd) alike, and those left out.

    An annotation is left out, with the reason, when its bbox is not finite, has no area or lies
    outside the image; when a polygon has fewer than 3 points, a coordinate that is not finite or more
    than the image's own size outside it, or an outline over :data:`MAX_POLYGON_OUTLINE`; when its RLE
    is of another size or its runs do not cover the image; or when its mask covers no pixel.

    Args:
        coco: from :func:`load_instances`.
        image_id: a COCO image id; an image without annotations has no objects.
        height, width: the image's size, at which masks are decoded (the file's, where it is known).

    Raises:
        CocoFormatError: a size without pixels or over :data:`MAX_PIXELS`: no mask of it is allocated.
    """
    if height <= 0 or width <= 0 or height * width > MAX_PIXELS:
        raise CocoFormatError(
            f"image {image_id}: masks of {width}x{height} pixels are not decoded (at most {MAX_PIXELS} pixels)"
        )
    objects, skipped = [], []
    for ann in coco.imgToAnns.get(image_id, []):
        try:
            objects.append(_image_object(ann, height, width))
        except _BadAnnotation as e:
            skipped.append(SkippedAnnotation(ann["id"], str(e)))
    return objects, skipped


def image_objects(coco: COCO, image_id: int, height: int, width: int) -> list[ImageObject]:
    """The instances of an image with their masks: :func:`decode_objects` without the skipped ones."""
    return decode_objects(coco, image_id, height, width)[0]


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[Image.Image]:
    """The image file opened (only its header read); any failure, then or while decoding, an ImageError.

    `path` may also be an image inside a WebDataset shard (`extractor.pairs.TarMember`), read as bytes."""
    if not path.exists():
        raise ImageError(f"{path}: image file not found")
    if not path.is_file():
        raise ImageError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path if isinstance(path, Path) else path.open()) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ImageError(
                    f"{path}: {image.width}x{image.height} is more than the {MAX_PIXELS} pixels an image may have"
                )
            yield image
    except ImageError:  # ours (the size bound): an OSError too, it must not pass for a corrupt file
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: too large to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        # PIL reports truncated data as OSError and broken headers as SyntaxError or ValueError.
        raise ImageError(f"{path}: truncated or corrupt image ({e})") from None


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file, from its header alone; raises ImageError as :func:`load_image`."""
    with _opened(Path(path) if isinstance(path, str) else path) as image:
        return image.height, image.width


def _gray_in_unit_range(values: np.ndarray, full_scale: float) -> np.ndarray:
    """Gray values scaled to [0, 1] by `full_scale`; a range beyond [0, full_scale] is stretched from its
    minimum to its maximum instead, and values that are not finite are 0."""
    values = np.where(np.isfinite(values), values, 0.0)
    lo, hi = values.min(), values.max()
    if lo >= 0 and hi <= full_scale:
        return values / full_scale
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)


def _rgb(image: Image.Image) -> Image.Image:
    """``convert('RGB')`` as ALBEF does, except for the modes it clips at 255 (16-bit, 32-bit, float).

    Those are gray images: 16-bit ones are scaled by 65535, 32-bit integer ones (mode I, the file's
    depth unknown) by 65535 when every value fits 16 bits, float ones as they are when in [0, 1];
    anything else is stretched from its minimum to its maximum.
    """
    if image.mode.startswith("I;16") or image.mode == "I":
        full_scale = 65535.0
    elif image.mode == "F":
        full_scale = 1.0
    else:
        return image.convert("RGB")
    gray = _gray_in_unit_range(np.asarray(image, dtype=np.float64), full_scale)
    return Image.fromarray(np.round(gray * 255).astype(np.uint8)).convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Open an image as ALBEF does, ``Image.open(path).convert('RGB')``, fully decoded.

    EXIF orientation is not applied (ALBEF does not), so boxes and masks keep COCO's pixel frame.
    The file format is read from its content, so a PNG named .jpg loads; grayscale, CMYK, palette
    and alpha images are converted by PIL's ``convert('RGB')`` as in ALBEF, 16-bit, 32-bit and float
    images by their own range (see :func:`_rgb`).

    Raises:
        ImageError: the path and why: missing, a directory, empty, not an image, more than
            :data:`MAX_PIXELS` pixels, truncated or corrupt (PIL decodes lazily, so the whole image is
            decoded here to catch it now).
    """
    with _opened(Path(path) if isinstance(path, str) else path) as image:
        image.load()
        return _rgb(image)
