"""Grounding quality of the demo ALBEF on held-out synthetic scenes, beside chance and word-blind controls.

Rows: colour words and shape nouns, each measured by pointing (all scenes and multi-object scenes),
binding and mass over chance (see `extractor/demo/evaluate.py`). Columns: the levels without a model
(chance, a detector that points at a random object), the word-blind [CLS] row of each fusion layer,
raw attention of each fusion layer, and Grad-CAM. Then ITM accuracy on true and swapped captions.

Then specificity (extractor/metrics.py): in captions naming several objects, does a word map's divergence
from a reference tell a map on the word's own object (more mass there than on any other named object) from
one on another named object? The AUC of each specificity over those two sets of maps: against the two
word-blind references, and against the mean map of the caption's words naming other categories; with the
[CLS] rows themselves as controls (a word-blind map: its specificity says nothing of the word).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from extractor.binding import tag_words
from extractor.checkpoint import frozen_albef
from extractor.config import ALBEFConfig
from extractor.demo.captions import ground_caption
from extractor.demo.evaluate import ValScene, evaluate, kind_word_maps, object_covers, val_scenes
from extractor.demo.prepare import CHECKPOINT_DIR
from extractor.demo.scene import COLOURS
from extractor.demo.world import match_demo_words, write_split
from extractor.maps import TokenMaps, caption_maps
from extractor.metrics import distribution, other_object_pairs, others_reference, specificity
from extractor.model import ALBEF
from extractor.text import Tokenizer, pre_caption

GOALS = {
    ("colour", "pointing single"): 0.85, ("shape", "pointing single"): 0.85,
    ("colour", "binding"): 0.75, ("shape", "binding"): 0.65, ("colour", "pointing multi"): 0.55,
    ("shape", "pointing multi"): 0.55, ("colour", "mass/chance"): 4.0, ("shape", "mass/chance"): 4.0,
}  # fmt: skip


SPECIFICITY_GOAL = 0.8
REFERENCES = ("specificity_cls", "specificity_row", "specificity_others")


def auc(positives: list[float], negatives: list[float]) -> float:
    """P(a positive scores above a negative), a tie counting half (Mann-Whitney); NaN without both."""
    if not positives or not negatives:
        return float("nan")
    pos, neg = np.asarray(positives)[:, None], np.asarray(negatives)[None, :]
    return float(((pos > neg) + 0.5 * (pos == neg)).mean())


def _references(maps: TokenMaps, layers: list[int]) -> dict[str, dict[str, np.ndarray]]:
    """Per map kind of `kind_word_maps` its two word-blind references: the encoder's [CLS] map, the [CLS] row."""
    rows = {f"attn L{la}": maps.attention_grid(la)[0] for la in layers} | {"gradcam": maps.gradcam[0].clip(0)}
    rows |= {f"[CLS] L{la}": rows[f"attn L{la}"] for la in layers}
    encoder = maps.encoder_cls.mean(0)
    return {kind: {"specificity_cls": encoder, "specificity_row": row} for kind, row in rows.items()}


def specificity_auc(model: ALBEF, items: list[ValScene], tokenizer: Tokenizer) -> dict[str, float]:
    """AUC of each specificity, per map kind: maps on the word's own object against maps on another one.

    Colour words and shape nouns of captions naming at least two objects; a map is on its own object
    when it puts more mass there than on each other named object. Keys: "<map kind> <metric>" (AUC),
    "<map kind> <metric> on own" and "... on other" (how many maps: `specificity_others` is defined for
    the words whose caption names another category), and "word maps <metric>" over the maps of every
    fusion layer and Grad-CAM together.
    """
    cfg = model.cfg
    scores: dict[tuple[str, str, bool], list[float]] = defaultdict(list)
    for item in items:
        tokens = tokenizer([pre_caption(c, cfg.max_words) for c in item.captions])
        results = caption_maps(model, item.pixels, tokens, [0] * len(tokens), cfg.fusion_layers, gradcam=True)
        covers = object_covers(item.scene, cfg.grid_size)
        for text, tok, maps in zip(item.captions, tokens, results, strict=True):
            grounded, shapes = ground_caption(text, item.scene), match_demo_words(tok.words)
            word_maps, references = kind_word_maps(maps, tok.words, tok.word_of_token, cfg.fusion_layers), None
            contrasts = None
            tags = tag_words(tok.words, shapes)
            named, scored = (np.array([c or 0 for c in cats]) for cats in (tags.category, tags.scored_category))
            pairs = other_object_pairs(named, scored, np.zeros(len(named), int))
            for w, obj in grounded.items():
                others = sorted(set(grounded.values()) - {obj})
                if not others or (tok.words[w] not in COLOURS and shapes[w] is None):
                    continue
                references = references or _references(maps, cfg.fusion_layers)
                contrasts = contrasts or {kind: others_reference(m, pairs) for kind, m in word_maps.items()}
                for kind, m in word_maps.items():
                    mass = (distribution(m[w]) * covers).sum(axis=(1, 2))
                    on_own = bool(mass[obj] > mass[others].max())
                    contrast = contrasts[kind][w]
                    for name, reference in {**references[kind], "specificity_others": contrast}.items():
                        if np.isfinite(reference).all():
                            scores[kind, name, on_own].append(float(specificity(m[w], reference)))
    kinds = sorted({kind for kind, _, _ in scores})
    out = {f"{kind} {name} on {side}": float(len(scores[kind, name, side == "own"])) for kind in kinds
           for name in REFERENCES for side in ("own", "other")}  # fmt: skip
    for name in REFERENCES:
        out |= {f"{kind} {name}": auc(scores[kind, name, True], scores[kind, name, False]) for kind in kinds}
        pooled = [[v for kind in kinds if not kind.startswith("[CLS]") for v in scores[kind, name, side]]
                  for side in (True, False)]  # fmt: skip
        out[f"word maps {name}"] = auc(*pooled)
    return out


def specificity_table(aucs: dict[str, float], layers: list[int]) -> str:
    columns = [*[f"[CLS] L{la}" for la in layers], *[f"attn L{la}" for la in layers], "gradcam", "word maps"]
    lines = [f"{'specificity AUC, own vs other':<30}" + "".join(f"{c:>12}" for c in columns) + f"{'goal':>8}"]
    for name in REFERENCES:
        values = "".join(f"{aucs.get(f'{c} {name}', float('nan')):>12.3f}" for c in columns)
        lines.append(f"{name:<30}{values}{SPECIFICITY_GOAL:>8.2f}")
    for name in REFERENCES:
        for side in ("own", "other"):
            counts = (aucs.get(f"{c} {name} on {side}") for c in columns)
            lines.append(f"{'  maps on ' + side + ', ' + name.removeprefix('specificity_'):<30}"
                         + "".join(f"{'':>12}" if n is None else f"{n:>12.0f}" for n in counts))  # fmt: skip
    return "\n".join(lines)


def table(rates: dict[str, float], layers: list[int]) -> str:
    columns = [
        "chance",
        "random object",
        *[f"[CLS] L{la}" for la in layers],
        *[f"attn L{la}" for la in layers],
        "gradcam",
    ]
    lines = [f"{'':<28}" + "".join(f"{c:>14}" for c in columns) + f"{'goal':>8}"]
    for kind in ("colour", "shape"):
        for measure in ("pointing", "pointing single", "pointing multi", "binding", "mass/chance"):
            cells = [rates.get(f"{c} {kind} {measure}") for c in columns]
            goal = GOALS.get((kind, measure))
            values = "".join(f"{'-':>14}" if v is None else f"{v:>14.3f}" for v in cells)
            lines.append(f"{kind + ' ' + measure:<28}{values}" + (f"{goal:>8.2f}" if goal else ""))
    lines.append("")
    lines += [f"ITM {k[4:]:<24}{v:>14.3f}" for k, v in rates.items() if k.startswith("itm ")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=CHECKPOINT_DIR,
        help="folder with checkpoint.pth, config.json and vocab.txt",
    )
    parser.add_argument("--n", type=int, default=400, help="held-out scenes to evaluate")
    parser.add_argument("--seed", type=int, default=0, help="world seed (0: the world the model was trained on)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    cfg = ALBEFConfig.from_json(args.checkpoint_dir / "config.json")
    model, _ = frozen_albef(cfg, args.checkpoint_dir / "checkpoint.pth")
    tokenizer = Tokenizer(args.checkpoint_dir / "vocab.txt", cfg.bert.max_position_embeddings)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp)
        write_split(world, "val", args.n, args.seed, res=128)  # held out: training uses the train split
        items = val_scenes(world, args.n, cfg.image_res)
        rates = evaluate(model, items, tokenizer)
        aucs = specificity_auc(model, items, tokenizer)
    print(
        f"demo ALBEF ({args.checkpoint_dir}) on {args.n} held-out scenes, patch grid "
        f"{cfg.grid_size}x{cfg.grid_size}, {time.perf_counter() - start:.0f} s"
    )
    print(table(rates, cfg.fusion_layers))
    print()
    print(specificity_table(aucs, cfg.fusion_layers))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
