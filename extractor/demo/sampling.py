"""What each demo training step learns from: caption truth, ITM negatives, swapped captions, masked words."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from extractor.demo.captions import SWAP_KINDS, assignments, parse_caption, swap_caption
from extractor.demo.scene import Scene

if TYPE_CHECKING:
    from extractor.demo.train import TrainConfig

MASK_ID = 103  # bert-base-uncased [MASK]


def truth_matrix(captions: list[str], scenes: list[Scene]) -> np.ndarray:
    """(images, captions) bool: whether caption j is true of scene i."""
    parsed = [parse_caption(c) for c in captions]
    return np.array([[bool(assignments(p, s)) for p in parsed] for s in scenes])


def words_to_mask(caption: str, n_words: int, cfg: TrainConfig, rng: np.random.Generator) -> np.ndarray:
    """Which words of a caption MLM predicts, (n_words,) bool.

    In a phrase that states both colour and shape, one of the two (the shape with probability
    `shape_share`) is masked with probability `attribute_mask_prob` and the other never, so the
    phrase still points at its object: "a [MASK] circle" is answered by looking at the circle, "a red
    [MASK]" by looking at the red object. Relation words are masked at the same high rate, every other
    word at BERT's rate; at least one word always.
    """
    rate = np.full(n_words, cfg.other_mask_prob)
    parsed = parse_caption(caption)
    for phrase in parsed.phrases:
        if "colour" in phrase.words and "shape" in phrase.words:
            target, keep = ("shape", "colour") if rng.random() < cfg.shape_share else ("colour", "shape")
            rate[phrase.words[target]], rate[phrase.words[keep]] = cfg.attribute_mask_prob, 0.0
    for *_, word in parsed.relations:
        rate[word] = cfg.attribute_mask_prob
    chosen = rng.random(n_words) < rate
    if not chosen.any():
        chosen[rng.choice(n_words, p=rate / rate.sum())] = True
    return chosen


def mask_tokens(
    ids: Tensor,
    captions: list[str],
    word_of_token: list[list[int]],
    cfg: TrainConfig,
    rng: np.random.Generator,
    random_pool: Tensor,
) -> tuple[Tensor, Tensor]:
    """BERT masking of whole words (`words_to_mask`): (masked ids, labels with -100 where not masked).

    Masked tokens become [MASK] (80%), a random token of `random_pool` (10%) or stay (10%), as BERT.
    """
    B, T = ids.shape
    masked = torch.zeros(B, T, dtype=torch.bool)
    for b, (caption, owners) in enumerate(zip(captions, word_of_token, strict=True)):
        words = np.array(owners[1:])  # token 0 is [CLS]
        chosen = words_to_mask(caption, int(words.max()) + 1, cfg, rng)
        masked[b, 1 : len(owners)] = torch.from_numpy(chosen[words])
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    labels = torch.where(masked, ids, -100)
    roll = torch.rand(B, T, generator=gen)
    out = torch.where(masked & (roll < 0.8), MASK_ID, ids)
    random_ids = random_pool[torch.randint(len(random_pool), (B, T), generator=gen)]
    out = torch.where(masked & (roll >= 0.8) & (roll < 0.9), random_ids, out)
    return out, labels


def sample_negatives(scores: Tensor, allowed: np.ndarray, hard: bool, rng: np.random.Generator) -> np.ndarray:
    """Per row, one column where `allowed`: uniformly, or with probability softmax(scores) if hard.

    A row with no allowed column (its caption is true of every image) falls back to any other column.
    """
    allowed = allowed.copy()
    empty = ~allowed.any(1)
    allowed[empty] = ~np.eye(*allowed.shape, dtype=bool)[empty]
    logits = scores.detach().double().numpy() if hard else np.zeros(allowed.shape)
    weights = np.where(allowed, np.exp(logits - logits.max(1, keepdims=True)), 0.0)
    weights /= weights.sum(1, keepdims=True)
    return np.array([rng.choice(len(w), p=w) for w in weights])


def swapped_captions(captions: list[str], scenes: list[Scene], rng: np.random.Generator) -> list[str | None]:
    """Per caption a false twin with one colour, shape or relation word swapped (None if it has none)."""
    out = []
    for caption, scene in zip(captions, scenes, strict=True):
        swap = None
        for kind in rng.permutation(SWAP_KINDS):
            swap = swap_caption(caption, str(kind), rng, scene)
            if swap is not None:
                break
        out.append(swap.text if swap else None)
    return out
