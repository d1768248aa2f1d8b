"""The demo world: deterministic COCO files whose masks, captions and hard negatives match the pixels."""

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from extractor.categories import matcher_from_synonyms
from extractor.demo import world
from extractor.demo.captions import (
    BACKGROUND_WORDS,
    SHAPE_NOUNS,
    assignments,
    caption_is_true,
    caption_words,
    ground_caption,
    make_captions,
    parse_caption,
    swap_caption,
)
from extractor.demo.scene import BACKGROUNDS, COLOURS, SHAPES, Obj, Scene, render_scene, sample_scene
from extractor.demo.world import (
    DEMO_CATEGORIES,
    DEMO_CATEGORY_WORDS,
    load_scenes,
    match_demo_words,
    write_world,
)
from extractor.text import pre_caption

N = 40  # images per split: enough for every template and shape, fast on a shared CPU


@pytest.fixture(scope="module")
def png_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("png")
    write_world(out, N, N, seed=3, res=128, fmt="png")
    return out


@pytest.fixture(scope="module")
def val(png_world: Path) -> tuple[COCO, dict[int, Scene], list[dict]]:
    instances = png_world / "annotations" / "instances_val.json"
    captions = json.loads((png_world / "annotations" / "captions_val.json").read_text())["annotations"]
    return COCO(str(instances)), load_scenes(instances), captions


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_files_and_prefix_stable(tmp_path: Path) -> None:
    write_world(tmp_path / "a", 6, 6, seed=7, res=96)
    write_world(tmp_path / "b", 6, 6, seed=7, res=96)
    write_world(tmp_path / "c", 6, 6, seed=8, res=96)
    write_world(tmp_path / "d", 3, 3, seed=7, res=96)
    a, b, c, d = (_files(tmp_path / x) for x in "abcd")
    assert a == b
    images = [k for k in a if k.endswith(".jpg")]
    assert len(images) == 12
    assert all(a[k] != c[k] for k in images)  # another seed draws other scenes
    # The first images of a split do not depend on how many are requested.
    assert all(a[k] == d[k] for k in d if k.endswith(".jpg"))


def test_cli_writes_coco_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    world.add_parser(parser.add_subparsers())
    out = tmp_path / "world"
    args = parser.parse_args(["make-demo-world", "--out", str(out), "--n-train", "2", "--n-val", "3"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out.split()
    for split, n in (("train", 2), ("val", 3)):
        assert str(out / split) in printed
        assert len(list((out / split).glob("*.jpg"))) == n
        for kind in ("captions", "instances"):
            assert str(out / "annotations" / f"{kind}_{split}.json") in printed
    with Image.open(next((out / "val").glob("*.jpg"))) as im:
        assert im.format == "JPEG" and im.size == (128, 128)


def test_pycocotools_loads_instances_and_captions(png_world: Path, val) -> None:
    coco, scenes, captions = val
    assert sorted(coco.getCatIds()) == [c["id"] for c in DEMO_CATEGORIES]
    assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == set(SHAPES)
    assert len(coco.getImgIds()) == N
    counts = [len(coco.getAnnIds(imgIds=i)) for i in coco.getImgIds()]
    assert min(counts) >= 1 and max(counts) <= 4 and len(set(counts)) == 4
    for ann in coco.loadAnns(coco.getAnnIds()):
        assert ann["iscrowd"] == 0 and len(ann["segmentation"]) == 1
        mask = coco.annToMask(ann)
        assert mask.shape == (128, 128)
        x, y, w, h = ann["bbox"]
        ys, xs = np.nonzero(mask)
        # The box is the polygon's; its rasterised mask fills it up to thin tips (stars, hearts).
        ys, xs = np.nonzero(mask)
        assert x - 1 <= xs.min() and xs.max() + 1 <= x + w + 1
        assert y - 1 <= ys.min() and ys.max() + 1 <= y + h + 1
        mask_box = (xs.max() + 1 - xs.min()) * (ys.max() + 1 - ys.min())
        assert mask_box > 0.85 * w * h
    caps = COCO(str(png_world / "annotations" / "captions_val.json"))
    assert all(len(caps.getAnnIds(imgIds=i)) == 5 for i in caps.getImgIds())
    assert len(captions) == 5 * N


def test_masks_match_drawn_pixels(png_world: Path, val) -> None:
    coco, scenes, _ = val
    for image_id, scene in scenes.items():
        pixels = np.asarray(Image.open(png_world / "val" / coco.imgs[image_id]["file_name"]), np.float32)
        assert np.array_equal(render_scene(scene), pixels)  # the files rebuild the exact scene
        # The same scene without its objects: the background each object was painted over.
        background = render_scene(dataclasses.replace(scene, objects=())).astype(np.float32)
        union = np.zeros(pixels.shape[:2], bool)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            mask = coco.annToMask(ann).astype(bool)
            union |= mask
            # Per-pixel coverage of the object, read back from the colours, near the object only.
            rgb = np.array(ann["rgb"], np.float32)
            towards = rgb - background
            alpha = ((pixels - background) * towards).sum(-1) / (towards**2).sum(-1)
            alpha *= _grow(mask)
            assert alpha.sum() == pytest.approx(ann["area"], rel=0.03)
            drawn = alpha > 0.5
            iou = (drawn & mask).sum() / (drawn | mask).sum()
            assert iou > 0.9, (image_id, ann["id"], iou)
        # Outside the objects no pixel looks like an object colour.
        outside = pixels[~_grow(union)]
        for rgb in COLOURS.values():
            assert np.linalg.norm(outside - np.array(rgb, np.float32), axis=-1).min() > 50


def _grow(mask: np.ndarray) -> np.ndarray:
    """The mask dilated by one pixel (4-neighbourhood)."""
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown


def test_objects_never_repeat_a_colour_or_shape(val) -> None:
    _, scenes, _ = val
    for scene in scenes.values():
        assert len({o.shape for o in scene.objects}) == len(scene.objects)
        assert len({o.colour for o in scene.objects}) == len(scene.objects)


def test_captions_true_and_relations_geometric(val) -> None:
    coco, scenes, captions = val
    kinds = {"relation": 0, "subset": 0}
    for cap in captions:
        scene, text = scenes[cap["image_id"]], cap["caption"]
        parsed = parse_caption(text)
        assert caption_is_true(text, scene), text
        grounded = ground_caption(text, scene)
        # Every phrase names exactly one object.
        assert len(grounded) == sum(len(p.words) for p in parsed.phrases), text
        anns = coco.loadAnns(coco.getAnnIds(imgIds=cap["image_id"]))
        anns.sort(key=lambda a: a["id"])
        # Each shape word names the category of the object it is grounded to, per the demo table.
        words = [w for *_, w in caption_words(text)]
        for i, cid in enumerate(match_demo_words(words)):
            if cid is not None:
                assert anns[grounded[i]]["category_id"] == cid, text
        (chosen,) = assignments(parsed, scene)
        for i, rel, j, _ in parsed.relations:
            a, b = anns[chosen[i]]["bbox"], anns[chosen[j]]["bbox"]
            da = (a[0] + a[2] / 2 - b[0] - b[2] / 2, a[1] + a[3] / 2 - b[1] - b[3] / 2)
            axis, sign = {"left": (0, -1), "right": (0, 1), "above": (1, -1), "below": (1, 1)}[rel]
            assert sign * da[axis] > 0.08 * 128 - 1e-6, text  # stated relations are clear, not marginal
            kinds["relation"] += 1
        kinds["subset"] += len(parsed.phrases) < len(scene.objects)
    assert kinds["relation"] > 30 and kinds["subset"] > 30


def test_captions_are_varied(val) -> None:
    _, _, captions = val
    texts = [c["caption"].lower().rstrip(".") for c in captions]
    assert all(len(set(texts[i : i + 5])) == 5 for i in range(0, len(texts), 5))  # 5 distinct per image
    assert len(set(texts)) > 0.9 * len(texts)
    words = {w for t in texts for *_, w in caption_words(t)}
    for expected in ("left", "right", "above", "below", "picture", "image", "small", "large", "box", "disc"):
        assert expected in words, expected


def _scene(*objs: tuple[str, str, str, float, float]) -> Scene:
    """A handmade scene: (shape, colour, size, centre x, centre y) squares of side 20 on a 128 image."""
    corners = np.array([(-10, -10), (10, -10), (10, 10), (-10, 10)], float)
    return Scene(
        128,
        "stripes",
        False,
        0,
        tuple(Obj(shape, colour, size, corners + (x, y)) for shape, colour, size, x, y in objs),
    )


HANDMADE = _scene(
    ("circle", "red", "small", 30, 60), ("square", "blue", "large", 90, 64), ("star", "green", "small", 60, 20)
)


@pytest.mark.parametrize(
    ("caption", "truth"),
    [
        ("A red circle left of a blue square.", True),
        ("a red circle to the right of a blue square", False),
        ("a blue circle left of a red square", False),
        ("a green star above a big blue box", True),
        ("a green star below the blue box", False),
        ("a tiny red disc and a large blue square", True),
        ("a large red circle", False),
        ("a red square", False),
        ("a red shape and a green object", True),
        ("three shapes", True),
        ("two objects", False),
        ("a red circle on a striped background", True),
        ("a red circle on a checkered background", False),
        ("a star, a circle and a square", True),
        ("a star, a circle and a heart", False),
    ],
)
def test_truth_of_handmade_captions(caption: str, truth: bool) -> None:
    assert caption_is_true(caption, HANDMADE) is truth


@pytest.mark.parametrize("kind", ["colour", "shape", "relation"])
def test_swaps_change_one_word_and_are_false(val, kind: str) -> None:
    _, scenes, captions = val
    rng = np.random.default_rng(0)
    n_swapped = 0
    for cap in captions:
        scene, text = scenes[cap["image_id"]], cap["caption"]
        parsed = parse_caption(text)
        has_kind = parsed.relations if kind == "relation" else [p for p in parsed.phrases if kind in p.words]
        for with_scene in (scene, None):
            swap = swap_caption(text, kind, rng, with_scene)
            assert (swap is None) == (not has_kind), text
            if swap is None:
                continue
            before = [w for *_, w in caption_words(text)]
            after = [w for *_, w in caption_words(swap.text)]
            changed = [i for i, (x, y) in enumerate(zip(before, after, strict=True)) if x != y]
            assert changed == [swap.word_index], (text, swap)
            assert (before[swap.word_index], after[swap.word_index]) == (swap.old, swap.new)
            assert swap.kind == kind
            if kind == "shape":
                assert match_demo_words([swap.old]) != match_demo_words([swap.new])
            if with_scene is not None:
                assert not caption_is_true(swap.text, scene), (text, swap.text)
                n_swapped += 1
    assert n_swapped > 50


def test_swap_without_that_kind_of_word_returns_none() -> None:
    rng = np.random.default_rng(0)
    assert swap_caption("a red circle and a blue square", "relation", rng) is None
    assert swap_caption("three shapes", "colour", rng) is None
    with pytest.raises(ValueError, match="kind"):
        swap_caption("a red circle", "size", rng)


def test_demo_category_table() -> None:
    assert set(SHAPE_NOUNS) == set(SHAPES) and set(BACKGROUND_WORDS) == set(BACKGROUNDS)
    by_name = {c["name"]: c["id"] for c in DEMO_CATEGORIES}
    assert match_demo_words(["a", "red", "box", "and", "two", "discs", "Hexagon"]) == [
        None,
        None,
        by_name["square"],
        None,
        None,
        by_name["circle"],
        by_name["hexagon"],
    ]
    words = [w for ws in DEMO_CATEGORY_WORDS.values() for w in ws]
    assert len(words) == len(set(words))  # no word names two shapes
    assert all(" " not in w for w in words)


def test_every_shape_colour_and_size_occurs() -> None:
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng, 128) for _ in range(100)]
    objs = [o for s in scenes for o in s.objects]
    assert {o.shape for o in objs} == set(SHAPES)
    assert {o.colour for o in objs} == set(COLOURS)
    assert {o.size for o in objs} == {"small", "large"}
    assert {s.background for s in scenes} == set(BACKGROUNDS)
    assert 0.15 < np.mean([s.distractors for s in scenes]) < 0.45
    assert all(len(make_captions(s, rng)) == 5 for s in scenes)


def test_extractor_matches_caption_words_like_the_demo_table(png_world: Path, val) -> None:
    """The extractor reads the shape words from the instances file's `synonyms`: same ids as our table."""
    categories = json.loads((png_world / "annotations" / "instances_val.json").read_text())["categories"]
    match = matcher_from_synonyms({c["id"]: [c["name"], *c["synonyms"]] for c in categories})
    _, _, captions = val
    words = [pre_caption(c["caption"], 30).split(" ") for c in captions]
    assert all(match(w) == match_demo_words(w) for w in words)
    assert sum(i is not None for w in words for i in match(w)) > len(captions)  # most name a shape
