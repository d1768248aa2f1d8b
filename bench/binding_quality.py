"""How well `extractor/binding.py` binds attribute words to their nouns, and what it buys on the demo.

1. Binding precision and recall on the demo world's val captions, whose grammar knows the truth (every size
   and colour word with the shape noun of its phrase), and on the 100 hand-checked captions of
   coco/val2017-subset in tests/data/binding_val2017.json.
2. With --demo-db: for "red" in the last fusion layer's attention, how many of the first 10 cards have their
   heat on the red object (more map mass on it than on any other object of the scene, from the world's own
   masks), ranked by mask_mass and in image order (what ranking gave before attributes had object metrics).

    python -m bench.binding_quality [--demo-db data/demo/demo.duckdb]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import duckdb
import numpy as np

from db.codec import decode_map
from extractor.binding import bound_pairs, precision_recall, tag_words
from extractor.categories import match_words
from extractor.demo.captions import attribute_bindings, make_captions
from extractor.demo.scene import Scene, coverage, sample_scene
from extractor.demo.world import load_scenes, match_demo_words, scene_rng
from extractor.metrics import grid_coverage
from extractor.text import pre_caption

REPO = Path(__file__).resolve().parents[1]
HAND_CHECKED = REPO / "tests" / "data" / "binding_val2017.json"
SUBSET_CAPTIONS = REPO.parent / "shared" / "coco" / "val2017-subset" / "annotations" / "captions_val2017_subset.json"
Pairs = list[set[tuple[int, int]]]


def demo_pairs(n_scenes: int, seed: int = 0) -> tuple[Pairs, Pairs]:
    """(found, true) binding pairs per caption of the first n val scenes of the demo world."""
    found, truth = [], []
    for index in range(n_scenes):
        rng = scene_rng(seed, "val", index)
        for caption in make_captions(sample_scene(rng, 128), rng):
            words = pre_caption(caption, 30).split(" ")
            found.append(bound_pairs(tag_words(words, match_demo_words(words))))
            truth.append(attribute_bindings(caption))
    return found, truth


def hand_checked_pairs(path: Path, captions_path: Path) -> tuple[Pairs, Pairs]:
    """(found, true) binding pairs per caption of the hand-checked file, its captions read afresh from COCO's."""
    caption_of = {a["id"]: a["caption"] for a in json.loads(captions_path.read_text())["annotations"]}
    found, truth = [], []
    for item in json.loads(path.read_text())["captions"]:
        words = pre_caption(caption_of[item["caption_id"]], 30).split(" ")
        if " ".join(words) != item["text"]:
            raise ValueError(f"caption {item['caption_id']} reads {' '.join(words)!r}, the file has {item['text']!r}")
        found.append(bound_pairs(tag_words(words, match_words(words))))
        truth.append({(b["attribute"], b["noun"]) for b in item["bindings"]})
    return found, truth


def heat_on_red(scene: Scene, blob: bytes, map_max: float) -> bool:
    """Whether a map holds more mass on the scene's red object than on any other of its objects."""
    m = decode_map(blob, map_max)
    masses = [(m * grid_coverage(coverage(o.polygon, scene.res) >= 0.5, m.shape[0])).sum() for o in scene.objects]
    return scene.objects[int(np.argmax(masses))].colour == "red"


def red_cards(db: Path, world: Path, top: int = 10) -> tuple[int, int, int]:
    """(bound "red" rows, of the first `top` by mask_mass those with heat on red, the same in image order)."""
    scenes = load_scenes(world / "annotations" / "instances_val.json")
    with duckdb.connect(str(db), read_only=True) as con:
        layer = con.execute("SELECT max(layer) FROM words WHERE method = 'attention'").fetchone()[0]
        rows = con.execute(
            "SELECT image_id, map, map_max, mask_mass FROM words WHERE word = 'red' AND method = 'attention' "
            "AND layer = ? AND bound_index IS NOT NULL ORDER BY image_id, caption_id, word_index",
            [layer],
        ).fetchall()
    by_mass = sorted(rows, key=lambda r: -r[3])
    on_red = [sum(heat_on_red(scenes[r[0]], r[1], r[2]) for r in order[:top]) for order in (by_mass, rows)]
    return len(rows), *on_red


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", type=int, default=300, help="demo val scenes (5 captions each)")
    parser.add_argument("--demo-db", type=Path, help="a demo database (python -m extractor demo), for part 2")
    args = parser.parse_args()
    print("| captions | n | pairs true | pairs found | precision | recall |\n|---|---|---|---|---|---|")
    sets = {"demo world (grammar truth)": demo_pairs(args.scenes)}
    if SUBSET_CAPTIONS.is_file():
        sets["val2017-subset, hand-checked"] = hand_checked_pairs(HAND_CHECKED, SUBSET_CAPTIONS)
    for name, (found, truth) in sets.items():
        precision, recall = precision_recall(found, truth)
        n_true, n_found = sum(map(len, truth)), sum(map(len, found))
        print(f"| {name} | {len(truth)} | {n_true} | {n_found} | {precision:.3f} | {recall:.3f} |")
    if args.demo_db:
        n, by_mass, in_order = red_cards(args.demo_db, args.demo_db.parent / "world")
        print(f'\n"red" bound rows: {n}; first 10 with heat on the red object: ranked by mask_mass {by_mass}, '
              f"in image order {in_order}")  # fmt: skip


if __name__ == "__main__":
    main()
