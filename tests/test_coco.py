import collections
import json
import math
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from extractor.coco import (
    MAX_PIXELS,
    MAX_POLYGON_OUTLINE,
    CocoFormatError,
    ImageError,
    decode_objects,
    image_objects,
    image_size,
    load_captions,
    load_image,
    load_instances,
)
from tests.conftest import REPO


@pytest.fixture(scope="module")
def small(shared) -> Path:
    return shared / "coco/val2017-small"


@pytest.fixture(scope="module")
def a_jpeg(small) -> Path:
    return small / "val2017/000000037777.jpg"


def test_load_captions_of_the_small_set(small):
    images, captions = load_captions(small / "annotations/captions_val2017_small.json")
    assert len(images) == 10 and len(captions) == 50
    files = {p.name for p in (small / "val2017").iterdir()}
    assert {im["file_name"] for im in images} == files
    assert {c["image_id"] for c in captions} == {im["id"] for im in images}
    assert all(c["caption"].strip() for c in captions)


def test_load_instances_of_the_small_set(small):
    coco = load_instances(small / "annotations/instances_val2017_small.json")
    assert len(coco.imgs) == 10 and len(coco.anns) == 44 and len(coco.cats) == 80


def test_masks_are_pycocotools_masks_with_the_annotated_area(small):
    coco = load_instances(small / "annotations/instances_val2017_small.json")
    n = 0
    for image_id, info in coco.imgs.items():
        for obj in image_objects(coco, image_id, info["height"], info["width"]):
            ann = coco.anns[obj.annotation_id]
            assert obj.mask.dtype == bool and obj.mask.shape == (info["height"], info["width"])
            np.testing.assert_array_equal(obj.mask, coco.annToMask(ann).astype(bool))
            assert obj.category_id == ann["category_id"] and obj.bbox == tuple(ann["bbox"])
            # COCO's area is the polygon's; the raster differs by edge pixels only.
            assert obj.mask.sum() == pytest.approx(ann["area"], rel=0.05, abs=30)
            n += 1
    assert n == 44


def test_crowd_rle_masks(shared):
    coco = load_instances(shared / "coco/val2017-subset/annotations/instances_val2017_subset.json")
    crowd = [a for a in coco.anns.values() if a["iscrowd"]]
    assert len(crowd) == 21
    for ann in crowd[:5]:
        info = coco.imgs[ann["image_id"]]
        (obj,) = [
            o for o in image_objects(coco, info["id"], info["height"], info["width"]) if o.annotation_id == ann["id"]
        ]
        rle = mask_utils.frPyObjects(ann["segmentation"], info["height"], info["width"])
        assert obj.mask.sum() == mask_utils.area(rle) > 0
        np.testing.assert_array_equal(obj.mask, coco.annToMask(ann).astype(bool))


def test_an_image_without_annotations_has_no_objects(small):
    coco = load_instances(small / "annotations/instances_val2017_small.json")
    assert image_objects(coco, 1, 480, 640) == []


def test_real_images_load_as_rgb_at_their_annotated_size(small):
    images, _ = load_captions(small / "annotations/captions_val2017_small.json")
    for im in images:
        image = load_image(small / "val2017" / im["file_name"])
        assert image.mode == "RGB" and image.size == (im["width"], im["height"])


def test_load_image_is_albefs_open_and_convert(a_jpeg):
    expected = np.asarray(Image.open(a_jpeg).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(load_image(a_jpeg)), expected)


@pytest.mark.parametrize(
    "mode, save_as",
    [("L", "JPEG"), ("CMYK", "JPEG"), ("P", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"), ("RGB", "PNG")],
)
def test_other_modes_and_png_bytes_in_a_jpg_file(a_jpeg, tmp_path, mode, save_as):
    path = tmp_path / "image.jpg"  # always .jpg: the content decides how it is read
    Image.open(a_jpeg).convert(mode).save(path, save_as)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == Image.open(a_jpeg).size
    np.testing.assert_array_equal(np.asarray(image), np.asarray(Image.open(path).convert("RGB")))
    if mode == "L":
        pixels = np.asarray(image)
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
    if mode == "RGB":  # lossless PNG: exactly the original pixels
        np.testing.assert_array_equal(np.asarray(image), np.asarray(Image.open(a_jpeg).convert("RGB")))


def test_exif_orientation_is_not_applied(a_jpeg, tmp_path):
    path = tmp_path / "rotated.jpg"
    original = Image.open(a_jpeg)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    original.save(path, exif=exif)
    assert load_image(path).size == original.size


def write_bytes(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "bad.jpg"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda tmp, jpg: tmp / "missing.jpg", "not found"),
        (lambda tmp, jpg: tmp, "not a file"),
        (lambda tmp, jpg: write_bytes(tmp, b""), "empty file"),
        (lambda tmp, jpg: write_bytes(tmp, np.random.default_rng(0).bytes(5000)), "not an image"),
        (lambda tmp, jpg: write_bytes(tmp, b"<html>404 Not Found</html>"), "not an image"),
        (lambda tmp, jpg: write_bytes(tmp, jpg.read_bytes()[: len(jpg.read_bytes()) // 2]), "truncated"),
        (lambda tmp, jpg: write_bytes(tmp, jpg.read_bytes()[:2000]), "truncated"),
        (lambda tmp, jpg: write_bytes(tmp, jpg.read_bytes()[:300]), "truncated"),
    ],
    ids=["missing", "directory", "zero-byte", "random-bytes", "html", "half-jpeg", "jpeg-2kb", "jpeg-header"],
)
def test_bad_images_raise_a_clear_error(a_jpeg, tmp_path, make, message):
    path = make(tmp_path, a_jpeg)
    with pytest.raises(ImageError, match=message) as error:
        load_image(path)
    assert str(path) in str(error.value)


def test_a_jpeg_with_a_corrupt_body_is_caught(a_jpeg, tmp_path):
    data = a_jpeg.read_bytes()
    body = data.find(b"\xff\xda") + 200  # past the start-of-scan header: keep every header intact
    noise = np.random.default_rng(0).bytes(len(data) - body)
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(write_bytes(tmp_path, data[:body] + noise))


@pytest.fixture(scope="module")
def captions_json(small) -> dict:
    return json.loads((small / "annotations/captions_val2017_small.json").read_text())


@pytest.fixture(scope="module")
def instances_json(small) -> dict:
    return json.loads((small / "annotations/instances_val2017_small.json").read_text())


def edited(data: dict, edit) -> dict:
    data = json.loads(json.dumps(data))
    edit(data)
    return data


def drop(record: dict, key: str) -> None:
    del record[key]


CAPTION_CASES = {
    "no images": (lambda d: drop(d, "images"), "missing the 'images' list"),
    "images not a list": (lambda d: d.update(images={}), "'images' must be a list, found dict"),
    "caption without text": (lambda d: drop(d["annotations"][3], "caption"), r"annotations\[3\].*has no 'caption'"),
    "caption id a string": (lambda d: d["annotations"][0].update(id="x"), "'id' must be int, found 'x'"),
    "image without height": (lambda d: drop(d["images"][2], "height"), r"images\[2\].*has no 'height'"),
    "duplicate caption id": (lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"]), "duplicate id"),
    "unknown image": (lambda d: d["annotations"][0].update(image_id=-7), "refers to image -7"),
}


@pytest.mark.parametrize("edit, message", CAPTION_CASES.values(), ids=CAPTION_CASES.keys())
def test_malformed_captions_files(tmp_path, captions_json, edit, message):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(edited(captions_json, edit)))
    with pytest.raises(CocoFormatError, match=message) as error:
        load_captions(path)
    assert str(path) in str(error.value)


INSTANCE_CASES = {
    "no categories": (lambda d: drop(d, "categories"), "missing the 'categories' list"),
    "no segmentation": (lambda d: drop(d["annotations"][5], "segmentation"), "has no 'segmentation'"),
    "bbox of 3": (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "bbox must be 4 numbers"),
    "segmentation a string": (
        lambda d: d["annotations"][0].update(segmentation="x"),
        "'segmentation' must be list or dict",
    ),
    "polygon not a list": (
        lambda d: d["annotations"][0].update(segmentation=[1, 2, 3]),
        "segmentation must be a list of polygons",
    ),
    "RLE without counts": (lambda d: d["annotations"][0].update(segmentation={"size": [2, 2]}), "'counts'"),
    "unknown category": (lambda d: d["annotations"][0].update(category_id=12), "refers to category 12"),
    "iscrowd a bool": (lambda d: d["annotations"][0].update(iscrowd=True), "'iscrowd' must be int"),
}


@pytest.mark.parametrize("edit, message", INSTANCE_CASES.values(), ids=INSTANCE_CASES.keys())
def test_malformed_instances_files(tmp_path, instances_json, edit, message):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(edited(instances_json, edit)))
    with pytest.raises(CocoFormatError, match=message) as error:
        load_instances(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("loader", [load_captions, load_instances])
@pytest.mark.parametrize(
    "content, message",
    [
        (None, "file not found"),
        ("", "not valid JSON.*truncated"),
        ("cut", "not valid JSON.*truncated"),
        ("not json at all", "not valid JSON: Expecting value at line 1 col 1"),
        ("[1, 2]", "expected a JSON object at the top, found list"),
        (b"\xff\xd8\xff\xe0 a JPEG", "not a JSON text file"),
    ],
    ids=["missing", "empty", "truncated", "text", "list", "binary"],
)
def test_unreadable_json_files(tmp_path, small, loader, content, message):
    path = tmp_path / "annotations.json"
    if content == "cut":
        real = (small / "annotations/instances_val2017_small.json").read_text()
        path.write_text(real[: len(real) // 2])
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(CocoFormatError, match=message) as error:
        loader(path)
    assert str(path) in str(error.value)


@pytest.fixture(scope="module")
def crowded(instances_json) -> tuple[dict, list[dict]]:
    """The small set's image with the most annotations (14), and its annotations in file order."""
    image_id = collections.Counter(a["image_id"] for a in instances_json["annotations"]).most_common(1)[0][0]
    info = next(im for im in instances_json["images"] if im["id"] == image_id)
    return info, [a for a in instances_json["annotations"] if a["image_id"] == image_id]


def instances_with(tmp_path: Path, instances_json: dict, changes: dict[int, dict]) -> Path:
    """A real instances file: the small set's, with the fields of some annotations (by id) replaced."""
    data = edited(instances_json, lambda d: [a.update(changes.get(a["id"], {})) for a in d["annotations"]])
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def compressed_rle(mask: np.ndarray) -> dict:
    """An RLE as COCO's JSON holds it: compressed counts as text."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def zigzag(width: int, height: int) -> list[float]:
    """A polygon inside the margin whose outline crosses the image back and forth beyond the bound."""
    n = MAX_POLYGON_OUTLINE // width
    return [v for i in range(n) for v in ((-width if i % 2 else 2 * width), i % height)]


def polygon(*coordinates) -> dict:
    return {"segmentation": [list(coordinates)]}


GEOMETRY_CASES = {
    "two-point polygon": (lambda w, h: polygon(10, 10, 50, 50), "polygon 0 has 2 points"),
    "empty polygon": (lambda w, h: polygon(), "polygon 0 has 0 points"),
    "no polygon": (lambda w, h: {"segmentation": []}, "holds no polygon"),
    "odd coordinates": (lambda w, h: polygon(10, 10, 50, 50, 60), r"odd number of coordinates \(5\)"),
    "text coordinate": (lambda w, h: polygon(10, 10, "50", 50, 60, 70), r"not a finite number \('50'\)"),
    "NaN coordinate": (lambda w, h: polygon(10, 10, math.nan, 50, 60, 70), r"not a finite number \(nan\)"),
    "infinite coordinate": (lambda w, h: polygon(10, 10, math.inf, 50, 60, 70), r"not a finite number \(inf\)"),
    "integer beyond float": (lambda w, h: polygon(10, 10, 10**400, 50, 60, 70), "not a finite number"),
    "coordinate 1e6": (lambda w, h: polygon(10, 10, 1e6, 50, 60, 70), r"reaches \(1e\+06, 50\), more than"),
    "coordinate -1e12": (lambda w, h: polygon(10, 10, 50, -1e12, 60, 70), r"reaches \(50, -1e\+12\), more than"),
    "second polygon bad": (
        lambda w, h: {"segmentation": [[10, 10, 90, 10, 90, 90], [1, 2, 3, 4]]},
        "polygon 1 has 2 points",
    ),
    "outline too long": (lambda w, h: polygon(*zigzag(w, h)), r"outline of \d+ pixels, more than"),
    "polygon outside the image": (lambda w, h: polygon(w + 10, 10, w + 90, 10, w + 90, 90), "covers no pixel"),
    "zero-area polygon": (lambda w, h: polygon(10, 10, 100, 10, 200, 10), "covers no pixel"),
    "RLE of another size": (lambda w, h: {"segmentation": compressed_rle(np.ones((5, 5)))}, r"RLE has size \[5, 5\]"),
    "RLE runs short": (lambda w, h: {"segmentation": {"size": [h, w], "counts": [1, 2]}}, "runs cover 3 pixels"),
    # pycocotools would write the extra runs past its buffer.
    "RLE runs past the image": (
        lambda w, h: {"segmentation": {**compressed_rle(np.ones((h + 5, w))), "size": [h, w]}},
        r"runs cover \d+ pixels, the \d+x\d+ image \d+",
    ),
    "RLE negative run": (lambda w, h: {"segmentation": {"size": [h, w], "counts": [-1, h * w + 1]}}, "not run lengths"),
    # A last character that announces more: pycocotools would read past the string's end.
    "RLE text cut mid-run": (lambda w, h: {"segmentation": {"size": [h, w], "counts": "P"}}, "not run lengths"),
    "empty RLE": (lambda w, h: {"segmentation": compressed_rle(np.zeros((h, w)))}, "covers no pixel"),
    "NaN bbox": (lambda w, h: {"bbox": [math.nan, 1, 20, 20]}, r"bbox \[nan, 1, 20, 20\] is not 4 finite numbers"),
    "infinite bbox": (lambda w, h: {"bbox": [1, 1, math.inf, 20]}, "is not 4 finite numbers"),
    "bbox without area": (lambda w, h: {"bbox": [10, 10, 0, 20]}, "has no area"),
    "bbox outside the image": (lambda w, h: {"bbox": [w + 5, 10, 20, 20]}, r"lies outside the \d+x\d+ image"),
}


@pytest.mark.parametrize("change, reason", GEOMETRY_CASES.values(), ids=GEOMETRY_CASES.keys())
def test_a_bad_annotation_is_skipped_alone_with_its_reason(tmp_path, instances_json, crowded, change, reason):
    info, anns = crowded
    bad = anns[3]["id"]
    coco = load_instances(instances_with(tmp_path, instances_json, {bad: change(info["width"], info["height"])}))
    objects, skipped = decode_objects(coco, info["id"], info["height"], info["width"])
    assert [s.annotation_id for s in skipped] == [bad]
    assert re.search(reason, skipped[0].reason), skipped[0].reason
    assert [o.annotation_id for o in objects] == [a["id"] for a in anns if a["id"] != bad]
    for obj in objects:
        np.testing.assert_array_equal(obj.mask, coco.annToMask(coco.anns[obj.annotation_id]).astype(bool))
    assert [o.annotation_id for o in image_objects(coco, info["id"], info["height"], info["width"])] == [
        o.annotation_id for o in objects
    ]


POISONED_COORDINATES = [1e6, 1e9, 1e12, math.inf, -math.inf, math.nan]
MEASURE = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
from extractor.coco import decode_objects, load_instances
coco = load_instances(sys.argv[1])
objects, skipped = decode_objects(coco, *map(int, sys.argv[2:]))
# This process's own peak (ru_maxrss would count the pytest process it was forked from).
peak_mib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) // 1024
print(json.dumps([[o.annotation_id for o in objects], [s.annotation_id for s in skipped], peak_mib]))
"""


def test_huge_coordinates_are_refused_before_pycocotools_allocates(tmp_path, instances_json, crowded):
    # Unchecked, pycocotools grew to 22 GB on such a polygon; under this 4 GiB limit it segfaulted.
    info, anns = crowded
    poisoned = {a["id"]: polygon(10, 10, 100, 10, v, 100) for a, v in zip(anns, POISONED_COORDINATES, strict=False)}
    path = instances_with(tmp_path, instances_json, poisoned)
    argv = [sys.executable, "-c", MEASURE, str(path), *(str(info[k]) for k in ("id", "height", "width"))]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    kept, skipped, peak_mib = json.loads(proc.stdout)
    assert skipped == list(poisoned) and kept == [a["id"] for a in anns[len(poisoned) :]]
    assert peak_mib < 1024


def test_compressed_crowd_rles_decode_as_pycocotools_does(shared, tmp_path):
    """COCO-compressed RLE text passes the run-length check unchanged, and decodes as pycocotools does."""
    src = shared / "coco/val2017-subset/annotations/instances_val2017_subset.json"
    data = json.loads(src.read_text())
    crowd = [a for a in data["annotations"] if a["iscrowd"]]
    for ann in crowd:
        rle = mask_utils.frPyObjects(ann["segmentation"], *ann["segmentation"]["size"])
        ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
    path = tmp_path / "compressed.json"
    path.write_text(json.dumps(data))
    coco = load_instances(path)
    for ann in crowd:
        info = coco.imgs[ann["image_id"]]
        objects, skipped = decode_objects(coco, info["id"], info["height"], info["width"])
        assert skipped == []
        (obj,) = [o for o in objects if o.annotation_id == ann["id"]]
        np.testing.assert_array_equal(obj.mask, coco.annToMask(ann).astype(bool))


def test_no_real_annotation_is_skipped(shared):
    coco = load_instances(shared / "coco/val2017-subset/annotations/instances_val2017_subset.json")
    n = 0
    for image_id in coco.imgToAnns:
        info = coco.imgs[image_id]
        objects, skipped = decode_objects(coco, image_id, info["height"], info["width"])
        assert skipped == []
        n += len(objects)
    assert n == 1786


@pytest.mark.parametrize("height, width", [(10**5, 10**5), (0, 640), (-480, -640)])
def test_masks_beyond_the_pixel_bound_are_an_error_not_an_allocation(small, crowded, height, width):
    coco = load_instances(small / "annotations/instances_val2017_small.json")
    with pytest.raises(CocoFormatError, match=f"image {crowded[0]['id']}: masks of {width}x{height} pixels"):
        decode_objects(coco, crowded[0]["id"], height, width)


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares width x height 8-bit gray pixels, with no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
                     + chunk(b"IEND", b""))  # fmt: skip
    return path


@pytest.mark.parametrize("read", [load_image, image_size])
def test_an_image_over_the_pixel_bound_is_an_error_not_an_allocation(tmp_path, read):
    side = math.isqrt(MAX_PIXELS) + 1  # under PIL's own decompression-bomb limit
    path = png_declaring(tmp_path / "huge.png", side, side)
    with pytest.raises(ImageError, match=f"{side}x{side} is more than the {MAX_PIXELS} pixels") as error:
        read(path)
    assert str(path) in str(error.value)


def test_image_size_reads_only_the_header(a_jpeg, tmp_path):
    data = a_jpeg.read_bytes()
    path = write_bytes(tmp_path, data[: data.find(b"\xff\xda") + 100])  # its pixels are cut, its header is whole
    width, height = Image.open(a_jpeg).size
    assert image_size(path) == (height, width)
    with pytest.raises(ImageError, match="truncated"):
        load_image(path)
    with pytest.raises(ImageError, match="not found"):
        image_size(tmp_path / "missing.png")


def gray_of(a_jpeg: Path) -> np.ndarray:
    return np.asarray(Image.open(a_jpeg).convert("L"))


# Each file's mode is one PIL's convert('RGB') clips at 255: a 16-bit PNG came out almost all white.
WIDE_GRAY = {
    "16-bit PNG": ("PNG", "I;16", lambda g: g.astype(np.uint16) * 257),
    "16-bit big-endian TIFF": ("TIFF", "I;16B", lambda g: (g.astype(np.uint16) * 257).astype(">u2")),
    "32-bit TIFF of 16-bit values": ("TIFF", "I", lambda g: g.astype(np.int32) * 257),
    "float TIFF in [0, 1]": ("TIFF", "F", lambda g: g.astype(np.float32) / 255),
}


@pytest.mark.parametrize("save_as, mode, values", WIDE_GRAY.values(), ids=WIDE_GRAY.keys())
def test_wide_gray_images_keep_their_gray_levels(a_jpeg, tmp_path, save_as, mode, values):
    gray = gray_of(a_jpeg)
    path = tmp_path / "wide.img"
    Image.fromarray(values(gray)).save(path, save_as)
    assert Image.open(path).mode == mode
    expected = np.asarray(Image.fromarray(gray).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(load_image(path)), expected)
    assert not np.array_equal(np.asarray(Image.open(path).convert("RGB")), expected)


@pytest.mark.parametrize("values", [
    lambda g: g.astype(np.int32) * 65537 - 2**24,  # 32-bit values beyond 16 bits, negative ones too
    lambda g: g.astype(np.float32) * 4 - 500,  # float values beyond [0, 1]
], ids=["32-bit", "float"])  # fmt: skip
def test_gray_beyond_its_modes_range_is_stretched(a_jpeg, tmp_path, values):
    gray = gray_of(a_jpeg).astype(np.float64)
    path = tmp_path / "wide.tif"
    Image.fromarray(values(gray_of(a_jpeg))).save(path, "TIFF")
    stretched = np.round((gray - gray.min()) / (gray.max() - gray.min()) * 255).astype(np.uint8)
    image = np.asarray(load_image(path))
    assert image.shape == (*gray.shape, 3)
    np.testing.assert_array_equal(image[..., 0], stretched)
    assert (image[..., 0] == image[..., 2]).all()
