"""Grounding quality of an ALBEF on held-out demo scenes: pointing, binding, mass and matching.

For every colour word and shape noun of the val captions, each map (raw attention of every fusion
layer, Grad-CAM, and the word-blind [CLS] row of each layer as a control) is scored on the patch
grid against the object the word describes, known exactly from the scene:
- pointing: the map's peak cell touches the object; over all scenes, single- and multi-object ones;
- binding: in captions naming several objects, the word's map puts more mass on its own object
  than on any other named one;
- mass/chance: the map's mass on the object's cells over the object's share of the grid.
Beside them, per word, the levels that need no model: `chance` (a uniformly random cell for
pointing, a random named object for binding, 1 for mass) and `random object` (a detector that
points at the most-covered cell of a random object of the scene).
Matching: the share of true captions the ITM head accepts, and of swapped captions it rejects.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from extractor.coco import load_image
from extractor.demo.captions import SWAP_KINDS, caption_words, ground_caption, swap_caption
from extractor.demo.scene import COLOURS, Scene, coverage
from extractor.demo.world import load_scenes, match_demo_words
from extractor.image import eval_transform
from extractor.maps import caption_maps, merge_pieces
from extractor.metrics import grid_coverage
from extractor.model import ALBEF
from extractor.text import Tokenizer, pre_caption


@dataclass
class Tally:
    """Per (method, word kind, measure) the values whose mean is reported (hits count as 1/0)."""

    hits: dict[tuple[str, str, str], list[float]] = field(default_factory=lambda: defaultdict(list))

    def add(self, method: str, kind: str, measure: str, value: float) -> None:
        self.hits[method, kind, measure].append(float(value))

    def rates(self) -> dict[str, float]:
        return {" ".join(k): float(np.mean(v)) for k, v in sorted(self.hits.items())}


def kind_word_maps(maps, words: list[str], word_of_token: list[int], layers: list[int]) -> dict[str, np.ndarray]:
    """Method name -> (n_words, g, g) maps of one caption; '[CLS] Ln' repeats the [CLS] row per word."""
    n = len(words)
    out = {}
    for layer in layers:
        grid = maps.attention_grid(layer)  # (T, g, g)
        out[f"attn L{layer}"] = merge_pieces(grid, word_of_token, n)
        out[f"[CLS] L{layer}"] = np.repeat(grid[:1], n, axis=0)
    out["gradcam"] = merge_pieces(maps.gradcam, word_of_token, n)
    return out


def object_covers(scene: Scene, g: int) -> np.ndarray:
    """(n_objects, g, g) grid coverage of each object's mask."""
    return np.stack([grid_coverage(coverage(o.polygon, scene.res) >= 0.5, g) for o in scene.objects])


def _score_caption(
    tally: Tally,
    maps: dict[str, np.ndarray],
    words: list[str],
    grounded: dict[int, int],
    covers: np.ndarray,
    n_objects: int,
) -> None:
    named = sorted(set(grounded.values()))
    shape_ids = match_demo_words(words)
    touches = covers.reshape(len(covers), -1) > 0  # (objects, cells)
    for w, obj in grounded.items():
        kind = "colour" if words[w] in COLOURS else "shape" if shape_ids[w] is not None else None
        if kind is None:
            continue
        others = [k for k in named if k != obj]
        # Levels without a model: a random cell, a random named object, a random object's centre cell.
        detector = np.mean([touches[obj, covers[o].argmax()] for o in range(n_objects)])
        share = covers[obj].mean()
        scope = "pointing multi" if n_objects > 1 else "pointing single"
        for method, value in (("chance", touches[obj].mean()), ("random object", detector)):
            tally.add(method, kind, "pointing", value)
            tally.add(method, kind, scope, value)
        tally.add("chance", kind, "mass/chance", 1.0)
        if others:
            tally.add("chance", kind, "binding", 1 / (len(others) + 1))
        for method, m in maps.items():
            p = m[w] / max(m[w].sum(), 1e-12)
            hit = touches[obj, p.argmax()]
            tally.add(method, kind, "pointing", hit)
            tally.add(method, kind, scope, hit)
            tally.add(method, kind, "mass/chance", (p * covers[obj]).sum() / share)
            if others:
                own = (p * covers[obj]).sum()
                tally.add(method, kind, "binding", own > max((p * covers[k]).sum() for k in others))


@dataclass
class ValScene:
    """One held-out image: its id, scene, preprocessed pixels (1, 3, R, R) and raw captions."""

    image_id: int
    scene: Scene
    pixels: torch.Tensor
    captions: list[str]


def val_scenes(world: Path, n_images: int, image_res: int) -> list[ValScene]:
    """The first `n_images` scenes of the world's val split, preprocessed as the extractor does."""
    ann_dir = world / "annotations"
    scenes = load_scenes(ann_dir / "instances_val.json")
    data = json.loads((ann_dir / "captions_val.json").read_text())
    files = {img["id"]: img["file_name"] for img in data["images"]}
    by_image: dict[int, list[str]] = defaultdict(list)
    for cap in data["annotations"]:
        by_image[cap["image_id"]].append(cap["caption"])
    return [
        ValScene(i, scenes[i], eval_transform(load_image(world / "val" / files[i]), image_res)[None], by_image[i])
        for i in sorted(scenes)[:n_images]
    ]


def evaluate(model: ALBEF, items: list[ValScene], tokenizer: Tokenizer, seed: int = 0) -> dict[str, float]:
    """Quality figures on held-out scenes (model in eval mode)."""
    cfg = model.cfg
    rng = np.random.default_rng(seed)
    tally = Tally()
    for item in items:
        scene, raw = item.scene, item.captions
        tokens = tokenizer([pre_caption(c, cfg.max_words) for c in raw])
        results = caption_maps(model, item.pixels, tokens, [0] * len(raw), cfg.fusion_layers, gradcam=True)
        covers = object_covers(scene, cfg.grid_size)
        for text, tok, maps in zip(raw, tokens, results, strict=True):
            tally.add("itm", "true", "accepted", maps.itm_score > 0.5)
            if tok.words != [w for *_, w in caption_words(text)]:
                raise ValueError(f"word indices of {text!r} differ from the cleaned caption {tok.text!r}")
            word_maps = kind_word_maps(maps, tok.words, tok.word_of_token, cfg.fusion_layers)
            _score_caption(tally, word_maps, tok.words, ground_caption(text, scene), covers, len(scene.objects))
        swaps = [s for kind in SWAP_KINDS for text in raw if (s := swap_caption(text, kind, rng, scene))]
        if swaps:
            swapped = tokenizer([pre_caption(s.text, cfg.max_words) for s in swaps])
            results = caption_maps(model, item.pixels, swapped, [0] * len(swaps), [], gradcam=False)
            for s, maps in zip(swaps, results, strict=True):
                tally.add("itm", s.kind, "rejected", maps.itm_score <= 0.5)
    return tally.rates()


def format_rates(rates: dict[str, float]) -> str:
    """Rates as aligned lines, one per method/kind/measure."""
    width = max(map(len, rates))
    return "\n".join(f"{k:<{width}}  {v:.3f}" for k, v in rates.items())
