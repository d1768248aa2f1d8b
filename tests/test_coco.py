import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from extractor.coco import (
    CocoFormatError,
    ImageError,
    image_objects,
    load_captions,
    load_image,
    load_instances,
)


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
        (obj,) = [o for o in image_objects(coco, info["id"], info["height"], info["width"])
                  if o.annotation_id == ann["id"]]
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
    "caption without text": (lambda d: drop(d["annotations"][3], "caption"),
                             r"annotations\[3\].*has no 'caption'"),
    "caption id a string": (lambda d: d["annotations"][0].update(id="x"), "'id' must be int, found 'x'"),
    "image without height": (lambda d: drop(d["images"][2], "height"), r"images\[2\].*has no 'height'"),
    "duplicate caption id": (lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"]),
                             "duplicate id"),
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
    "segmentation a string": (lambda d: d["annotations"][0].update(segmentation="x"),
                              "'segmentation' must be list or dict"),
    "polygon not a list": (lambda d: d["annotations"][0].update(segmentation=[1, 2, 3]),
                           "segmentation must be a list of polygons"),
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


def test_an_rle_of_another_size_is_reported(small, instances_json, tmp_path):
    coco = load_instances(small / "annotations/instances_val2017_small.json")
    ann = next(iter(coco.anns.values()))
    info = coco.imgs[ann["image_id"]]
    ann["segmentation"] = mask_utils.encode(np.asfortranarray(np.ones((5, 5), dtype=np.uint8)))
    with pytest.raises(CocoFormatError, match=f"annotation {ann['id']} .* 5x5"):
        image_objects(coco, info["id"], info["height"], info["width"])
