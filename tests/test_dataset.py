import json
import math
from collections import Counter

import numpy as np
import pytest

from extractor.coco import CocoFormatError, decode_objects, image_objects
from extractor.dataset import SIZE_WARNING_KIND, CocoDataset, load_coco
from extractor.demo.world import CATEGORY_ID, write_split
from extractor.metrics import image_covers


def test_coco_subset_is_read_with_its_objects(shared):
    ann = shared / "coco" / "val2017-subset" / "annotations"
    ds = load_coco(ann / "captions_val2017_subset.json", ann / "instances_val2017_subset.json")
    images = ds.images_with_captions()
    assert len(images) == 283 and [im["id"] for im in images] == sorted(im["id"] for im in images)
    assert all(len(ds.captions_of(im["id"])) >= 5 for im in images)
    categories, images_df, captions_df, instances_df = ds.frames(max_words=30)
    assert len(categories) == 80 and len(captions_df) == 1415 and len(instances_df) == 1786
    assert json.loads(instances_df.iloc[0]["segmentation"])  # stored as COCO JSON
    with_objects = next(im for im in images if ds.instances.imgToAnns.get(im["id"]))
    covers, rows = ds.covers_of(with_objects, 24)
    assert rows == []
    assert covers.union.shape == (24, 24) and covers.union.max() > 0
    assert set(covers.by_category) == {a["category_id"] for a in ds.instances.imgToAnns[with_objects["id"]]}
    assert ds.match(["a", "hot", "dog", "and", "a", "dog"]) == [None, 58, 58, None, None, 18]


def test_without_instances_there_are_no_covers(shared):
    ann = shared / "coco" / "val2017-small" / "annotations"
    ds = load_coco(ann / "captions_val2017_small.json", None)
    assert ds.covers_of(ds.images_with_captions()[0], 4) == (None, [])
    assert ds.frames(30)[3].empty


def test_categories_with_synonyms_bring_their_own_vocabulary(tmp_path):
    _, captions, instances = write_split(tmp_path, "val", 3, seed=0, res=64)
    ds = load_coco(captions, instances)
    assert ds.match(["two", "red", "discs", "and", "a", "box"]) == [
        None,
        None,
        CATEGORY_ID["circle"],
        None,
        None,
        CATEGORY_ID["square"],
    ]
    assert ds.match(["a", "dog"]) == [None, None]  # COCO's words do not apply to the demo shapes


@pytest.fixture
def poisoned(shared, tmp_path) -> tuple[CocoDataset, dict, list[dict]]:
    """The small set with three bad annotations on its most crowded image (a zero-area polygon, a 1e12
    coordinate, a NaN box), and that image's record and good annotations."""
    ann = shared / "coco" / "val2017-small" / "annotations"
    data = json.loads((ann / "instances_val2017_small.json").read_text())
    image_id = Counter(a["image_id"] for a in data["annotations"]).most_common(1)[0][0]
    mine = [a for a in data["annotations"] if a["image_id"] == image_id]
    mine[0]["segmentation"] = [[10, 10, 100, 10, 200, 10]]
    mine[1]["segmentation"] = [[10, 10, 100, 10, 1e12, 100]]
    mine[2]["bbox"] = [math.nan, 0, 10, 10]
    # The zero-area polygon's category must have no other instance on the image, to show it is absent.
    others = {a["category_id"] for a in mine[1:]}
    mine[0]["category_id"] = next(c["id"] for c in data["categories"] if c["id"] not in others)
    (tmp_path / "instances.json").write_text(json.dumps(data))
    ds = load_coco(ann / "captions_val2017_small.json", tmp_path / "instances.json")
    return ds, ds.images[image_id], mine


def test_bad_annotations_become_error_rows_and_the_rest_stays(poisoned):
    ds, image, anns = poisoned
    covers, rows = ds.covers_of(image, 16)
    kinds_ids = [(kind, item) for kind, item, _, _ in rows]
    assert kinds_ids == [("annotation", str(a["id"])) for a in anns[:3]]
    assert all(path == image["file_name"] for _, _, path, _ in rows)
    reasons = [message for *_, message in rows]
    for message, ann in zip(reasons, anns, strict=False):
        assert message.startswith(f"annotation {ann['id']} of image {image['id']} skipped: ")
    assert "covers no pixel" in reasons[0] and "1e+12" in reasons[1] and "bbox [nan" in reasons[2]
    # The zero-area polygon's category is not on the image (its words get no object metrics), the others are.
    assert set(covers.by_category) == {a["category_id"] for a in anns[3:]}
    good = image_objects(ds.instances, image["id"], image["height"], image["width"])
    assert [o.annotation_id for o in good] == [a["id"] for a in anns[3:]]
    expected = image_covers(good, image["height"], image["width"], 16)
    np.testing.assert_array_equal(covers.union, expected.union)
    for cid, (mask, box) in expected.by_category.items():
        np.testing.assert_array_equal(covers.by_category[cid][0], mask)
        np.testing.assert_array_equal(covers.by_category[cid][1], box)


def test_masks_follow_the_files_size_with_a_warning(poisoned):
    ds, image, anns = poisoned
    height, width = image["height"] + 40, image["width"] + 60  # the annotations' pixels, on a larger canvas
    covers, rows = ds.covers_of(image, 16, size=(height, width))
    kind, item, path, message = rows[0]
    assert (kind, item, path) == (SIZE_WARNING_KIND, str(image["id"]), image["file_name"])
    sizes = f"the file is {width}x{height}, its COCO record says {image['width']}x{image['height']}"
    assert message == f"warning: {sizes}; masks are laid on the file's size, coordinates as they are"
    objects, _ = decode_objects(ds.instances, image["id"], height, width)
    assert covers.union.sum() == image_covers(objects, height, width, 16).union.sum() > 0
    assert covers.union.sum() != ds.covers_of(image, 16)[0].union.sum()
    assert [r[0] for r in rows[1:]] == ["annotation"] * (len(rows) - 1)


def test_a_record_too_large_for_masks_is_an_error(poisoned):
    ds, image, _ = poisoned
    huge = {**image, "height": 100_000, "width": 100_000}
    with pytest.raises(CocoFormatError, match="at most"):
        ds.covers_of(huge, 16)
    covers, rows = ds.covers_of(huge, 16, size=(image["height"], image["width"]))  # the file's size wins
    assert covers.union.max() > 0 and rows[0][3].startswith("warning: the file is")
