import json
from collections import Counter, defaultdict

import pytest

from extractor.categories import COCO_CATEGORIES, match_words, matcher_from_synonyms
from extractor.text import pre_caption

ID = {category.name: cid for cid, category in COCO_CATEGORIES.items()}


def named(caption: str) -> dict[str, str]:
    """word -> category name for the words of a cleaned caption that name one."""
    words = pre_caption(caption, 100).split(" ")
    return {w: COCO_CATEGORIES[c].name for w, c in zip(words, match_words(words), strict=True) if c}


@pytest.mark.parametrize(
    "caption, expected",
    [
        # multi-word names take all their words
        ("A teddy bear on a bed.", {"teddy": "teddy bear", "bear": "teddy bear", "bed": "bed"}),
        ("Two hot-dogs with mustard", {"hot": "hot dog", "dogs": "hot dog"}),
        (
            "A stop sign at a traffic light near a fire hydrant",
            {
                "stop": "stop sign",
                "sign": "stop sign",
                "traffic": "traffic light",
                "light": "traffic light",
                "fire": "fire hydrant",
                "hydrant": "fire hydrant",
            },
        ),
        (
            "A man with a cell phone at a parking meter",
            {
                "man": "person",
                "cell": "cell phone",
                "phone": "cell phone",
                "parking": "parking meter",
                "meter": "parking meter",
            },
        ),
        (
            "Wine glasses on the dining table",
            {"wine": "wine glass", "glasses": "wine glass", "dining": "dining table", "table": "dining table"},
        ),
        (
            "A potted plant and a hair drier",
            {"potted": "potted plant", "plant": "potted plant", "hair": "hair drier", "drier": "hair drier"},
        ),
        (
            "A baseball player swings a baseball bat; the catcher holds a baseball glove.",
            {
                "baseball": "baseball glove",
                "player": "person",
                "bat": "baseball bat",
                "catcher": "person",
                "glove": "baseball glove",
            },
        ),
        (
            "A tennis racket and a sports ball",
            {"tennis": "tennis racket", "racket": "tennis racket", "sports": "sports ball", "ball": "sports ball"},
        ),
        # plurals, possessives and irregular forms
        (
            "Two men, three women and the children's dogs",
            {"men": "person", "women": "person", "childrens": "person", "dogs": "dog"},
        ),
        (
            "Buses and knives and mice and geese and oxen",
            {"buses": "bus", "knives": "knife", "mice": "mouse", "geese": "bird", "oxen": "cow"},
        ),
        ("A herd of sheep with a puppy", {"sheep": "sheep", "puppy": "dog"}),
        # synonyms
        (
            "A guy rides a bike past a motorbike and a plane",
            {"guy": "person", "bike": "bicycle", "motorbike": "motorcycle", "plane": "airplane"},
        ),
        ("A television above the sofa", {"television": "tv", "sofa": "couch"}),
        (
            "A girl on her cellphone by the fridge",
            {"girl": "person", "cellphone": "cell phone", "fridge": "refrigerator"},
        ),
        ("Skiers and a surfer and a lady", {"skiers": "person", "surfer": "person", "lady": "person"}),
        ("A doughnut and a hamburger", {"doughnut": "donut", "hamburger": "sandwich"}),
        (
            "A baby elephant with a passenger jet",
            {"baby": "elephant", "elephant": "elephant", "passenger": "airplane", "jet": "airplane"},
        ),
        ("A baby in a crib", {"baby": "person"}),
        # colour or fruit
        ("An orange cat next to an orange.", {"cat": "cat", "orange": "orange"}),
        ("An orange and white cat", {"cat": "cat"}),
        ("Oranges and an orange on the table", {"oranges": "orange", "orange": "orange", "table": "dining table"}),
        # no false hits
        ("A hot day on the beach", {}),
        ("A glass of water and a pair of glasses", {}),
        ("A ski slope and a tennis court", {}),
        ("People wait at the bus stop", {"people": "person"}),
        ("A bus stops for passengers", {"bus": "bus", "passengers": "person"}),
        ("A train station with train tracks", {}),
        ("A roll of toilet paper", {}),
        ("A fire hydrant in a bed of flowers", {"fire": "fire hydrant", "hydrant": "fire hydrant"}),
    ],
)
def test_match_words(caption, expected):
    assert named(caption) == expected


def test_multi_word_names_are_matched_first():
    words = ["a", "hot", "dog", "next", "to", "a", "dog", "and", "a", "teddy", "bear", "by", "a", "bear"]
    hot_dog, dog, teddy_bear, bear = ID["hot dog"], ID["dog"], ID["teddy bear"], ID["bear"]
    assert [c for c in match_words(words) if c] == [hot_dog, hot_dog, dog, teddy_bear, teddy_bear, bear]


def test_matcher_for_a_dataset_with_its_own_categories():
    match = matcher_from_synonyms({1: ["Red Square", "box"], 2: ["circle", "ring"], 3: ["square"]})
    words = ["two", "red", "squares", "and", "a", "square", "by", "the", "boxes", "and", "rings"]
    assert match(words) == [None, 1, 1, None, None, 3, None, None, 1, None, 2]
    with pytest.raises(ValueError, match="'rings?' is listed under two categories"):
        matcher_from_synonyms({1: ["ring"], 2: ["ring"]})


def test_every_official_name_matches_its_own_category():
    for cid, category in COCO_CATEGORIES.items():
        words = category.name.split()
        assert match_words(words) == [cid] * len(words), category.name


def test_categories_are_cocos_official_80(shared):
    path = shared / "coco/val2017-subset/annotations/instances_val2017_subset.json"
    official = {c["id"]: (c["name"], c["supercategory"]) for c in json.loads(path.read_text())["categories"]}
    assert {cid: tuple(c) for cid, c in COCO_CATEGORIES.items()} == official


@pytest.fixture(scope="module")
def val_captions(shared) -> dict[int, list[list[str]]]:
    """All 25,014 val2017 captions as ALBEF cleans them, by image."""
    data = json.loads((shared / "coco/captions-full/captions_val2017.json").read_text())
    by_image = defaultdict(list)
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append(pre_caption(ann["caption"], 100).split(" "))
    return by_image


@pytest.fixture(scope="module")
def labelled(shared) -> dict[int, set[int]]:
    """Category ids present in each val2017 image that the subset's instances label."""
    data = json.loads((shared / "coco/val2017-subset/annotations/instances_val2017_subset.json").read_text())
    present = defaultdict(set)
    for ann in data["annotations"]:
        present[ann["image_id"]].add(ann["category_id"])
    return present


def test_most_val2017_captions_name_an_object(val_captions):
    captions = [c for caps in val_captions.values() for c in caps]
    assert len(captions) == 25014
    share = sum(any(match_words(c)) for c in captions) / len(captions)
    assert share > 0.85


@pytest.mark.parametrize("name, recall", [("dog", 0.8), ("person", 0.7), ("cat", 0.9), ("pizza", 0.9)])
def test_captions_of_images_with_an_object_name_it(val_captions, labelled, name, recall):
    images = [i for i, cats in labelled.items() if ID[name] in cats]
    captions = [c for i in images for c in val_captions[i]]
    hits = sum(ID[name] in match_words(c) for c in captions)
    assert len(images) >= 3 and hits / len(captions) >= recall


def test_matched_categories_are_in_the_image(val_captions, labelled):
    """Precision on the labelled images: a matched word's category is among the image's instances
    (the misses left are mostly objects the annotators skipped, or paintings of fruit)."""
    found = Counter()
    for image_id, cats in labelled.items():
        for caption in val_captions[image_id]:
            found.update(cid in cats for cid in match_words(caption) if cid is not None)
    assert found[True] / found.total() > 0.93
