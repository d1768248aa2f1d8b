"""The demo's own vocab file: bert-base-uncased ids, keeping only the word pieces demo captions use.

The demo checkpoint is committed, but the 30,522-line bert-base-uncased vocab cannot ship with it.
The tiny model only ever sees the few hundred pieces of the demo grammar, so its vocab file keeps
those at their original ids (and the special tokens) and fills every other line with a placeholder:
WordPiece then tokenizes every demo caption exactly as the full vocab does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import BertWordPieceTokenizer

from extractor.demo.captions import SWAP_KINDS, make_captions, swap_caption
from extractor.demo.scene import sample_scene
from extractor.text import pre_caption

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def demo_captions(n_scenes: int, seed: int = 0) -> list[str]:
    """Captions of n random scenes with every kind of swapped hard negative: the demo's whole language."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_scenes):
        scene = sample_scene(rng, 96)
        for caption in make_captions(scene, rng):
            out.append(caption)
            out += [s.text for kind in SWAP_KINDS if (s := swap_caption(caption, kind, rng)) is not None]
    return out


def demo_vocab(full_vocab: Path, n_scenes: int = 3000) -> list[str]:
    """The lines of the demo vocab: same length and ids as `full_vocab`, unused pieces as placeholders."""
    lines = Path(full_vocab).read_text(encoding="utf-8").splitlines()
    tokenizer = BertWordPieceTokenizer(str(full_vocab), lowercase=True)
    texts = [pre_caption(c, 30) for c in demo_captions(n_scenes)]
    used = {i for enc in tokenizer.encode_batch(texts, add_special_tokens=False) for i in enc.ids}
    used |= {i for i, tok in enumerate(lines) if tok in SPECIAL}
    return [tok if i in used else f"[unused_demo_{i}]" for i, tok in enumerate(lines)]


def write_demo_vocab(full_vocab: Path, out: Path) -> Path:
    out.write_text("\n".join(demo_vocab(full_vocab)) + "\n", encoding="utf-8")
    return out
