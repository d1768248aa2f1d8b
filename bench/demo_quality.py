"""Grounding quality of the demo ALBEF on held-out synthetic scenes, beside chance and word-blind controls.

Rows: colour words and shape nouns, each measured by pointing (all scenes and multi-object scenes),
binding and mass over chance (see `extractor/demo/evaluate.py`). Columns: the levels without a model
(chance, a detector that points at a random object), the word-blind [CLS] row of each fusion layer,
raw attention of each fusion layer, and Grad-CAM. Then ITM accuracy on true and swapped captions.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from extractor.checkpoint import load_checkpoint
from extractor.config import ALBEFConfig
from extractor.demo.evaluate import evaluate, val_scenes
from extractor.demo.prepare import CHECKPOINT_DIR
from extractor.demo.world import write_split
from extractor.model import ALBEF
from extractor.text import Tokenizer

GOALS = {
    ("colour", "pointing single"): 0.85, ("shape", "pointing single"): 0.85,
    ("colour", "binding"): 0.75, ("shape", "binding"): 0.65, ("colour", "pointing multi"): 0.55,
    ("shape", "pointing multi"): 0.55, ("colour", "mass/chance"): 4.0, ("shape", "mass/chance"): 4.0,
}  # fmt: skip


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
    model = ALBEF(cfg).eval()
    load_checkpoint(model, args.checkpoint_dir / "checkpoint.pth")
    tokenizer = Tokenizer(args.checkpoint_dir / "vocab.txt", cfg.bert.max_position_embeddings)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp)
        write_split(world, "val", args.n, args.seed, res=128)  # held out: training uses the train split
        rates = evaluate(model, val_scenes(world, args.n, cfg.image_res), tokenizer)
    print(
        f"demo ALBEF ({args.checkpoint_dir}) on {args.n} held-out scenes, patch grid "
        f"{cfg.grid_size}x{cfg.grid_size}, {time.perf_counter() - start:.0f} s"
    )
    print(table(rates, cfg.fusion_layers))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
