import json

from extractor.dataset import load_coco
from extractor.demo.world import CATEGORY_ID, write_split


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
    covers = ds.covers_of(with_objects, 24)
    assert covers.union.shape == (24, 24) and covers.union.max() > 0
    assert set(covers.by_category) == {a["category_id"] for a in ds.instances.imgToAnns[with_objects["id"]]}
    assert ds.match(["a", "hot", "dog", "and", "a", "dog"]) == [None, 58, 58, None, None, 18]


def test_without_instances_there_are_no_covers(shared):
    ann = shared / "coco" / "val2017-small" / "annotations"
    ds = load_coco(ann / "captions_val2017_small.json", None)
    assert ds.covers_of(ds.images_with_captions()[0], 4) is None
    assert ds.frames(30)[3].empty


def test_categories_with_synonyms_bring_their_own_vocabulary(tmp_path):
    _, captions, instances = write_split(tmp_path, "val", 3, seed=0, res=64)
    ds = load_coco(captions, instances)
    assert ds.match(["two", "red", "discs", "and", "a", "box"]) == [
        None, None, CATEGORY_ID["circle"], None, None, CATEGORY_ID["square"]
    ]
    assert ds.match(["a", "dog"]) == [None, None]  # COCO's words do not apply to the demo shapes
