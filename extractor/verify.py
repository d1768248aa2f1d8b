"""`python -m extractor verify-reference DIR`: reproduce an ALBEF reference fixture and report differences.

DIR holds `config.json`, `checkpoint.pth`, `cases.json`, `images/` and `expected.npz` (the layout of
`shared/fixtures/albef-reference/*`). Every expected array is recomputed with our code and the max
absolute difference is printed; the exit status is 1 when any exceeds the tolerance.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from extractor.checkpoint import DEFAULT_VOCAB, load_checkpoint
from extractor.coco import load_image
from extractor.config import ALBEFConfig
from extractor.image import eval_transform
from extractor.maps import caption_maps
from extractor.model import ALBEF
from extractor.text import Tokenizer, pre_caption


def reference_outputs(ref_dir: Path, vocab: Path, batched: bool, device: str = "cpu") -> dict[str, np.ndarray]:
    """Our outputs under the fixture's key names (`pixels_i`, `itm_i_j`, `attn_i_j_Ll`, `gradcam_i_j`, `itc_i_j`).

    The model is fed the fixture's stored pixels, so image decoding (checked by `pixels_i`) does not
    mix with model differences. batched=False runs one caption at a time, like ALBEF's reference;
    batched=True fuses all captions of an image together with padding. The model runs in float32 on
    `device`.
    """
    cfg = ALBEFConfig.from_json(ref_dir / "config.json")
    model = ALBEF(cfg).eval()
    load_checkpoint(model, ref_dir / "checkpoint.pth")
    model.to(device)
    expected = np.load(ref_dir / "expected.npz")
    tokenizer = Tokenizer(vocab, cfg.bert.max_position_embeddings)
    out: dict[str, np.ndarray] = {}
    # cuDNN convolutions default to TF32 on Ampere and later; the reference is float32.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        for i, case in enumerate(json.loads((ref_dir / "cases.json").read_text())):
            out[f"pixels_{i}"] = eval_transform(load_image(ref_dir / case["image"]), cfg.image_res)[None].numpy()
            pixels = torch.from_numpy(expected[f"pixels_{i}"]).to(device)
            captions = tokenizer([pre_caption(c, cfg.max_words) for c in case["captions"]])
            groups = [captions] if batched else [[c] for c in captions]
            maps = [
                m
                for group in groups
                for m in caption_maps(model, pixels, group, [0] * len(group), cfg.fusion_layers, True, keep_heads=True)
            ]
            for j, m in enumerate(maps):
                out[f"itm_{i}_{j}"] = m.itm_logits
                out[f"itc_{i}_{j}"] = np.float32(m.itc_score)
                out[f"gradcam_{i}_{j}"] = m.gradcam
                for layer in cfg.fusion_layers:
                    out[f"attn_{i}_{j}_L{layer}"] = m.attention[layer]
    return out


def max_differences(ref_dir: Path, vocab: Path, batched: bool = False, device: str = "cpu") -> dict[str, float]:
    """Max absolute difference per expected array (inf for a missing array or a shape mismatch)."""
    ours = reference_outputs(ref_dir, vocab, batched, device)
    expected = np.load(ref_dir / "expected.npz")
    diffs = {}
    for key in expected.files:
        a, b = ours.get(key), expected[key]
        diffs[key] = float(np.abs(a - b).max()) if a is not None and np.shape(a) == b.shape else float("inf")
    return diffs


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "verify-reference",
        help="check our ALBEF against a reference fixture folder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", type=Path, help="fixture folder (config.json, checkpoint.pth, cases.json, expected.npz)")
    p.add_argument("--vocab", type=Path, default=DEFAULT_VOCAB, help="bert-base-uncased vocab.txt")
    p.add_argument("--tolerance", type=float, default=1e-4, help="max allowed absolute difference per array")
    p.add_argument("--batched", action="store_true", help="fuse all captions of an image together (padded)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs (float32 either way)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    diffs = max_differences(args.dir, args.vocab, args.batched, args.device)
    width = max(map(len, diffs))
    for key, d in diffs.items():
        print(f"{key:<{width}}  {d:.3e}{'  FAIL' if d > args.tolerance else ''}")
    worst = max(diffs.values())
    failed = sum(d > args.tolerance for d in diffs.values())
    print(f"{len(diffs)} arrays, max abs difference {worst:.3e}, {failed} above tolerance {args.tolerance:g}")
    return 1 if failed else 0
