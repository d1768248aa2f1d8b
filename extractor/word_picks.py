"""Which of a batch's words the per-word work on the device picks, worked out on the host.

A `nonzero` or `unique` on a CUDA tensor has to copy its count back before the next step can be queued,
so the host waits there for the model's whole pass, and the device then idles while the host lays out
the previous batch. These indices depend only on the captions and the object labels, so the loader
workers compute them with the batch; the device's per-word work is then fixed-size operations only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from extractor.metrics import other_object_pairs
from extractor.tensors import Tensors


@dataclass(frozen=True)
class Others(Tensors):
    """The references of `specificity_others`, indexed on the host so that the device never waits to learn a
    size: the k rows with pairs (ascending) and how many pairs each has (each one's reference is the mean of
    its pairs' maps); per pair, its row's place among them and its other row."""

    rows: Tensor
    count: Tensor  # float64
    position: Tensor
    other: Tensor

    @classmethod
    def of_pairs(cls, word: np.ndarray, other: np.ndarray) -> Others:
        """CPU tensors from (row, other row) pairs (`extractor.metrics.other_object_pairs`)."""
        rows, position, count = np.unique(word, return_inverse=True, return_counts=True)
        rows, position, other = (torch.from_numpy(a.astype(np.int64)) for a in (rows, position, other))
        return cls(rows, torch.from_numpy(count.astype(np.float64)), position, other)

    def tiled(self, times: int, n: int) -> Others:
        """The same pairs in each of `times` consecutive blocks of n rows (one per slice of a batch)."""
        k = len(self.rows)
        return Others(tiled(self.rows, times, n), self.count.repeat(times), tiled(self.position, times, k),
                      tiled(self.other, times, n))  # fmt: skip


def tiled(index: Tensor, times: int, n: int) -> Tensor:
    """(times * k,): an index (k,) into a block of n rows, for each of `times` consecutive blocks."""
    return (index + n * torch.arange(times, device=index.device)[:, None]).flatten()


@dataclass(frozen=True)
class HeadWords(Tensors):
    """The words whose per-head maps are built: the U words with an object and those they are contrasted
    with (ascending), and their P (word, token) pieces."""

    rows: Tensor  # (U,) rows of the batch's words
    object_at: Tensor  # (Wo,) each word with an object: its place in `rows`
    piece_word: Tensor  # (P,) place in `rows`
    piece_caption: Tensor  # (P,) caption row
    piece_token: Tensor  # (P,) token of the caption
    piece_weight: Tensor  # (P,) float64, 1 / the word's pieces
    others: Others  # the words with an object against their contrasts, as places in `rows`


@dataclass(frozen=True)
class WordPicks(Tensors):
    """A batch's picks (module docstring): rows of its W words, as in `Batch`."""

    object_rows: Tensor  # (Wo,) the words with an object in their image, ascending
    others: Others  # each word scored against a category, with the caption's words naming another
    heads: HeadWords


def word_picks(
    cover_index: np.ndarray,
    category_id: np.ndarray,
    bound_index: np.ndarray,
    bound_category: np.ndarray,
    word_caption: np.ndarray,
    piece_weights: Tensor,
    word_slots: Tensor,
) -> WordPicks:
    """The picks among a batch's W words, from its host columns (see `extractor.batch.Batch`)."""
    scored = np.where(bound_index >= 0, bound_category, category_id)
    word, other = other_object_pairs(category_id, scored, word_caption)
    object_rows = np.flatnonzero(cover_index > 0)
    keep = cover_index[word] > 0
    words = np.union1d(object_rows, other[keep])
    at = np.full(len(cover_index), -1)
    at[words] = np.arange(len(words))
    slots = word_slots.numpy()[words]
    weights = piece_weights.flatten(0, 1)[torch.from_numpy(slots)].numpy()  # (U, T)
    piece_word, token = np.nonzero(weights)
    heads = HeadWords(
        *(torch.from_numpy(a.astype(np.int64)) for a in (words, at[object_rows], piece_word)),
        torch.from_numpy(slots[piece_word] // max(piece_weights.shape[1], 1)),
        torch.from_numpy(token.astype(np.int64)),
        torch.from_numpy(weights[piece_word, token].astype(np.float64)),
        Others.of_pairs(at[word[keep]], at[other[keep]]),
    )
    return WordPicks(torch.from_numpy(object_rows.astype(np.int64)), Others.of_pairs(word, other), heads)
