"""What the loader workers hand the model: decoded images, tokenized captions and object covers, batched.

Everything per image and per word that does not need the model is done here, in the DataLoader's
worker processes (`collate` runs there too): decoding, resizing, tokenizing, category matching, and
laying out the index tensors that let the per-word work run as a few batched ops on the device.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from extractor.coco import CocoFormatError, ImageError, load_image
from extractor.covers import GridCovers, load_block, one_thread
from extractor.dataset import CocoDataset, ErrorRow
from extractor.image import resized_pixels
from extractor.suspects import record_attempt
from extractor.text import TokenizedCaption, Tokenizer, batch_tensors, pre_caption


def worker_init(*_: object) -> None:
    """In a loader worker: one thread, and Ctrl-C and SIGTERM left to the main process, which finishes the
    work under way and then stops its workers (both signals often reach the whole process group)."""
    one_thread()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@dataclass
class ImageItem:
    """One image as a loader worker prepares it; pixels is None when the image failed."""

    record: dict
    pixels: Tensor | None  # (3, R, R) uint8
    covers: GridCovers | None  # None without an instances file
    captions: list[tuple[int, TokenizedCaption, list[int | None]]]  # (caption id, tokens, category per word)
    errors: list[ErrorRow]


class ImageFiles(Dataset):
    """The images of a run, decoded and resized, with their captions tokenized and their cached covers."""

    def __init__(
        self,
        images_dir: Path,
        dataset: CocoDataset,
        records: list[dict],
        tokenizer: Tokenizer,
        res: int,
        max_words: int,
        covers_at: dict[int, tuple[str, int]] | None,
        journal: tuple[Path, str],
    ):
        self.images_dir, self.dataset, self.records, self.tokenizer = images_dir, dataset, records, tokenizer
        self.res, self.max_words, self.covers_at, self.journal = res, max_words, covers_at, journal

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> ImageItem:
        rec = self.records[i]
        record_attempt(*self.journal, rec["id"])
        covers = None if self.covers_at is None else load_block(self.covers_at[rec["id"]][0])[rec["id"]]
        errors = list(covers.errors) if covers else []
        try:
            if covers and covers.failure:
                raise CocoFormatError(covers.failure)
            pixels = resized_pixels(load_image(self.images_dir / rec["file_name"]), self.res)
        except (ImageError, CocoFormatError) as e:
            return ImageItem(rec, None, None, [], [*errors, ("image", str(rec["id"]), rec["file_name"], str(e))])
        except Exception as e:  # a decoder's own bug (MemoryError included) fails this image, not the run
            why = f"{self.images_dir / rec['file_name']}: cannot decode ({type(e).__name__}: {e})"
            return ImageItem(rec, None, None, [], [*errors, ("image", str(rec["id"]), rec["file_name"], why)])
        captions = []
        for cap in self.dataset.captions_of(rec["id"]):
            (tok,) = self.tokenizer([pre_caption(cap["caption"], self.max_words)])
            if tok.words:
                captions.append((cap["id"], tok, self.dataset.match(tok.words)))
            else:
                errors.append(("caption", str(cap["id"]), rec["file_name"], "caption is empty after ALBEF's cleaning"))
        return ImageItem(rec, pixels, covers, captions, errors)


@dataclass
class Batch:
    """A batch of images with all their captions (C) and words (W in all), ready for the device.

    Tensors are moved to the device with `to`; the numpy columns stay on the host for the rows.
    """

    pixels: Tensor  # (I, 3, R, R) uint8
    input_ids: Tensor  # (C, T)
    attention_mask: Tensor  # (C, T)
    image_index: Tensor  # (C,) row in pixels
    piece_weights: Tensor  # (C, Wmax, T) 1/n_pieces where a token belongs to a word, else 0
    word_slots: Tensor  # (W,) flat index into (C, Wmax) of each word
    word_caption: Tensor  # (W,) caption row of each word
    cover_index: Tensor  # (W,) row in masks/boxes, 0 (a zero row) for words naming no object here
    masks: Tensor | None  # (1 + K, N) float32 category covers of the batch's images; None without instances
    boxes: Tensor | None
    unions: Tensor | None  # (I, N)
    # host columns
    image_ids: np.ndarray  # (I,) the images that decoded
    caption_ids: np.ndarray  # (C,)
    words: list[str]  # (W,)
    word_index: np.ndarray  # (W,) int16
    n_pieces: np.ndarray  # (W,) int8
    category_id: np.ndarray  # (W,) int32, 0 where none
    no_category: np.ndarray  # (W,) bool
    failed_ids: list[int] = field(default_factory=list)
    errors: list[ErrorRow] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return len(self.image_ids) + len(self.failed_ids)

    def to(self, device: torch.device) -> Batch:
        """The batch with its tensors on `device` (non-blocking from pinned memory)."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, Tensor):
                moved[name] = value.to(device, non_blocking=True)
        return Batch(**moved)

    def pin_memory(self) -> Batch:
        """Called by the DataLoader's pinning thread on CUDA."""
        pinned = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in pinned.items():
            if isinstance(value, Tensor):
                pinned[name] = value.pin_memory()
        return Batch(**pinned)


def collate(items: list[ImageItem]) -> Batch:
    """One Batch from a loader worker's images (runs in the worker)."""
    good = [it for it in items if it.pixels is not None]
    caps = [(i, cap) for i, it in enumerate(good) for cap in it.captions]
    tokens = [tok for _, (_, tok, _) in caps]
    ids, mask = batch_tensors(tokens) if tokens else (torch.zeros(0, 1, dtype=torch.long),) * 2
    n_words = [len(tok.words) for tok in tokens]
    w_max = max(n_words, default=0)
    weights = torch.zeros(len(tokens), w_max, ids.shape[1])
    for c, tok in enumerate(tokens):
        owner = torch.tensor(tok.word_of_token)
        pieces = (owner == torch.arange(len(tok.words))[:, None]).float()
        weights[c, : len(tok.words), : len(owner)] = pieces / pieces.sum(1, keepdim=True)
    word_caption = np.repeat(np.arange(len(tokens)), n_words)
    word_index = np.concatenate([np.arange(n) for n in n_words]) if tokens else np.zeros(0, np.int64)
    categories = [cid for _, (_, _, cats) in caps for cid in cats]
    masks, boxes, unions, cover_index = _stack_covers(good, caps)
    return Batch(
        pixels=torch.stack([it.pixels for it in good]) if good else torch.zeros(0, dtype=torch.uint8),
        input_ids=ids,
        attention_mask=mask,
        image_index=torch.tensor([i for i, _ in caps], dtype=torch.long),
        piece_weights=weights,
        word_slots=torch.from_numpy(word_caption * w_max + word_index),
        word_caption=torch.from_numpy(word_caption),
        cover_index=cover_index,
        masks=masks,
        boxes=boxes,
        unions=unions,
        image_ids=np.array([it.record["id"] for it in good], np.int64),
        caption_ids=np.array([cap_id for _, (cap_id, _, _) in caps], np.int64),
        words=[w for tok in tokens for w in tok.words],
        word_index=word_index.astype(np.int16),
        n_pieces=np.array([n for tok in tokens for n in tok.n_pieces], np.int8),
        category_id=np.array([c or 0 for c in categories], np.int32),
        no_category=np.array([c is None for c in categories], bool),
        failed_ids=[it.record["id"] for it in items if it.pixels is None],
        errors=[e for it in items for e in it.errors],
    )


def _stack_covers(good: list[ImageItem], caps: list) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor]:
    """The batch's category covers stacked after a zero row, and each word's row in them (0: no object)."""
    rows = [cid for it in good if it.covers for cid in it.covers.category_ids]
    if not good or good[0].covers is None:
        n_words = sum(len(cats) for _, (_, _, cats) in caps)
        return None, None, None, torch.zeros(n_words, dtype=torch.long)
    offsets = np.cumsum([1, *(len(it.covers.category_ids) for it in good)])
    index = []
    for i, (_, _, cats) in caps:
        row_of = {int(cid): offsets[i] + k for k, cid in enumerate(good[i].covers.category_ids)}
        index.extend(row_of.get(cid, 0) if cid is not None else 0 for cid in cats)
    n_cells = good[0].covers.union.shape[0]
    zero = np.zeros((1, n_cells), np.float32)
    masks = np.concatenate([zero, *(it.covers.masks for it in good)]) if rows else zero
    boxes = np.concatenate([zero, *(it.covers.boxes for it in good)]) if rows else zero
    unions = np.stack([it.covers.union for it in good])
    return (torch.from_numpy(masks), torch.from_numpy(boxes), torch.from_numpy(unions),
            torch.tensor(index, dtype=torch.long))  # fmt: skip
