"""What the loader workers hand the model: decoded images, tokenized captions and object covers, batched.

Everything per image and per word that does not need the model is done here, in the DataLoader's
worker processes (`collate` runs there too): decoding, resizing, tokenizing, category matching, and
laying out the index tensors that let the per-word work run as a few batched ops on the device.
With `run --decode device` the workers leave the JPEGs the device decodes as they are, and the main
process decodes a batch's at once (`Batch.with_jpegs_decoded`).
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from extractor.binding import WordTags, tag_words
from extractor.coco import CocoFormatError, ImageError, load_image
from extractor.covers import GridCovers, load_block, one_thread
from extractor.dataset import CocoDataset, ErrorRow
from extractor.image import device_jpeg, resized_pixels
from extractor.pairs import image_source
from extractor.suspects import record_attempt
from extractor.tensors import Tensors
from extractor.text import TokenizedCaption, Tokenizer, batch_tensors, pre_caption
from extractor.word_picks import WordPicks, word_picks


def worker_init(*_: object) -> None:
    """In a loader worker: one thread, and Ctrl-C and SIGTERM left to the main process, which finishes the
    work under way and then stops its workers (both signals often reach the whole process group)."""
    one_thread()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def image_error(record: dict, path: Path, error: Exception) -> ErrorRow:
    """The `errors` row of an image that failed to load: ours (ImageError, CocoFormatError) say why;
    any other exception is a decoder's own bug (MemoryError included), which fails this image only."""
    why = str(error) if isinstance(error, ImageError | CocoFormatError) else \
        f"{path}: cannot decode ({type(error).__name__}: {error})"  # fmt: skip
    return "image", str(record["id"]), record["file_name"], why


@dataclass
class ImageItem:
    """One image as a loader worker prepares it: decoded (pixels), or its JPEG file's bytes left to the
    device (jpeg); both None when the image failed."""

    record: dict
    path: Path
    pixels: Tensor | None  # (3, R, R) uint8
    jpeg: Tensor | None  # (file size,) uint8
    covers: GridCovers | None  # None without an instances file
    captions: list[tuple[int, TokenizedCaption, WordTags]]  # (caption id, tokens, category and binding per word)
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
        device_decode: bool = False,
    ):
        """`device_decode`: leave the JPEGs that `device_jpeg` picks undecoded, as their file's bytes."""
        self.images_dir, self.dataset, self.records, self.tokenizer = images_dir, dataset, records, tokenizer
        self.res, self.max_words, self.covers_at, self.journal = res, max_words, covers_at, journal
        self.device_decode = device_decode

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> ImageItem:
        rec = self.records[i]
        record_attempt(*self.journal, rec["id"])
        covers = None if self.covers_at is None else load_block(self.covers_at[rec["id"]][0])[rec["id"]]
        errors = list(covers.errors) if covers else []
        path = image_source(self.images_dir, rec)
        try:
            if covers and covers.failure:
                raise CocoFormatError(covers.failure)
            jpeg = device_jpeg(path) if self.device_decode else None
            pixels = None if jpeg is not None else resized_pixels(load_image(path), self.res)
        except Exception as e:
            return ImageItem(rec, path, None, None, None, [], [*errors, image_error(rec, path, e)])
        captions = []
        for cap in self.dataset.captions_of(rec["id"]):
            (tok,) = self.tokenizer([pre_caption(cap["caption"], self.max_words)])
            if tok.words:
                captions.append((cap["id"], tok, tag_words(tok.words, self.dataset.match(tok.words))))
            else:
                errors.append(("caption", str(cap["id"]), rec["file_name"], "caption is empty after ALBEF's cleaning"))
        return ImageItem(rec, path, pixels, jpeg, covers, captions, errors)


@dataclass
class RawJpeg(Tensors):
    """A JPEG file of a batch left to decode where the model runs (its bytes cross processes by value when
    under `extractor.tensors.SHARED_MEMORY_BYTES`)."""

    row: int  # the image's row in the batch
    record: dict
    path: Path
    data: Tensor  # (file size,) uint8


@dataclass
class Batch(Tensors):
    """A batch of images with all their captions (C) and words (W in all), ready for the device.

    Tensors are moved to the device with `to`; the numpy columns stay on the host for the rows. With
    jpegs, pixels holds the other images only, until `with_jpegs_decoded`.
    """

    pixels: Tensor  # (I, 3, R, R) uint8
    input_ids: Tensor  # (C, T)
    attention_mask: Tensor  # (C, T)
    image_index: Tensor  # (C,) row in pixels
    piece_weights: Tensor  # (C, Wmax, T) 1/n_pieces where a token belongs to a word, else 0
    word_slots: Tensor  # (W,) flat index into (C, Wmax) of each word
    word_caption: Tensor  # (W,) caption row of each word
    cover_index: Tensor  # (W,) row in masks/boxes, 0 (a zero row) for words naming no object here
    masks: Tensor | None  # (1 + K, N) float64 category covers of the batch's images; None without instances
    boxes: Tensor | None
    unions: Tensor | None  # (I, N)
    picks: WordPicks  # which words the per-word device work picks, worked out here on the host
    # host columns
    image_ids: np.ndarray  # (I,) the images that decoded
    caption_ids: np.ndarray  # (C,)
    words: list[str]  # (W,)
    word_index: np.ndarray  # (W,) int16
    n_pieces: np.ndarray  # (W,) int8
    category_id: np.ndarray  # (W,) int32, 0 where none
    no_category: np.ndarray  # (W,) bool
    word_class: np.ndarray  # (W,) str (extractor.binding)
    bound_index: np.ndarray  # (W,) int16, the bound noun's word index, -1 where none
    bound_category: np.ndarray  # (W,) int32, the bound noun's category, 0 where none
    failed_ids: list[int] = field(default_factory=list)
    errors: list[ErrorRow] = field(default_factory=list)
    jpegs: list[RawJpeg] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return len(self.image_ids) + len(self.failed_ids)

    def with_jpegs_decoded(self, decoded: list[Tensor | None], res: int) -> Batch:
        """The batch with all its pixels in order: `decoded` holds one per jpeg, (3, res, res) uint8 on the
        model's device, or None where the device's decoder rejected the file.

        A rejected file is decoded as the loader workers do; one that fails there too leaves the batch,
        with the same `errors` row as in the workers.
        """
        device = next((image.device for image in decoded if image is not None), self.pixels.device)
        pixels = torch.empty(len(self.image_ids), 3, res, res, dtype=torch.uint8, device=device)
        from_jpeg = {jpeg.row for jpeg in self.jpegs}
        decoded_here = [row for row in range(len(pixels)) if row not in from_jpeg]
        for row, image in zip(decoded_here, self.pixels, strict=True):  # by row: a list index would wait
            pixels[row] = image.to(device, non_blocking=True)
        failed: dict[int, ErrorRow] = {}
        for jpeg, image in zip(self.jpegs, decoded, strict=True):
            if image is None:
                try:
                    image = resized_pixels(load_image(jpeg.path), res)
                except Exception as e:
                    failed[jpeg.row] = image_error(jpeg.record, jpeg.path, e)
                    continue
            pixels[jpeg.row] = image.to(device, non_blocking=True)
        return replace(self, pixels=pixels, jpegs=[])._without(failed)

    def _without(self, failed: dict[int, ErrorRow]) -> Batch:
        """The batch less the images at rows `failed` (with their error rows instead of their captions')."""
        if not failed:
            return self
        keep = torch.ones(len(self.image_ids), dtype=torch.bool)
        keep[list(failed)] = False
        keep_caption = keep[self.image_index]  # (C,)
        keep_word = keep_caption[self.word_caption]  # (W,)
        image_row, caption_row = keep.cumsum(0) - 1, keep_caption.cumsum(0) - 1
        dropped_before = self.word_caption - caption_row[self.word_caption]  # (W,) captions dropped before a word's
        word_slots = self.word_slots - dropped_before * self.piece_weights.shape[1]  # slots in (C, Wmax) move up
        gone_files = {error[2] for error in failed.values()}
        words = keep_word.numpy()
        kept = replace(
            self,
            pixels=self.pixels[keep.nonzero()[:, 0].to(self.pixels.device, non_blocking=True)],  # rows: no mask
            input_ids=self.input_ids[keep_caption],
            attention_mask=self.attention_mask[keep_caption],
            image_index=image_row[self.image_index[keep_caption]],
            piece_weights=self.piece_weights[keep_caption],
            word_slots=word_slots[keep_word],
            word_caption=caption_row[self.word_caption[keep_word]],
            cover_index=self.cover_index[keep_word],
            unions=None if self.unions is None else self.unions[keep],
            image_ids=self.image_ids[keep.numpy()],
            caption_ids=self.caption_ids[keep_caption.numpy()],
            words=[w for w, k in zip(self.words, words, strict=True) if k],
            word_index=self.word_index[words],
            n_pieces=self.n_pieces[words],
            category_id=self.category_id[words],
            no_category=self.no_category[words],
            word_class=self.word_class[words],
            bound_index=self.bound_index[words],
            bound_category=self.bound_category[words],
            failed_ids=[*self.failed_ids, *(int(self.image_ids[row]) for row in failed)],
            errors=[*(e for e in self.errors if not (e[0] == "caption" and e[2] in gone_files)), *failed.values()],
        )
        return replace(kept, picks=picks_of(kept))


def picks_of(batch: Batch) -> WordPicks:
    """`extractor.word_picks.word_picks` of a batch still on the host."""
    return word_picks(batch.cover_index.numpy(), batch.category_id, batch.bound_index, batch.bound_category,
                      batch.word_caption.numpy(), batch.piece_weights, batch.word_slots)  # fmt: skip


def collate(items: list[ImageItem]) -> Batch:
    """One Batch from a loader worker's images (runs in the worker)."""
    good = [it for it in items if it.pixels is not None or it.jpeg is not None]
    decoded = [it.pixels for it in good if it.pixels is not None]
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
    in_caption = np.concatenate([np.arange(n) for n in n_words]) if tokens else np.zeros(0, np.int64)
    word_slots = torch.from_numpy(word_caption * w_max + in_caption)
    tags = [t for _, (_, _, t) in caps]
    categories = [cid for t in tags for cid in t.category]
    category_id = np.array([c or 0 for c in categories], np.int32)
    bound_index = np.array([-1 if b is None else b for t in tags for b in t.bound_index], np.int16)
    bound_category = np.array([c or 0 for t in tags for c in t.bound_category], np.int32)
    masks, boxes, unions, cover_index = _stack_covers(good, caps)
    return Batch(
        pixels=torch.stack(decoded) if decoded else torch.zeros(0, dtype=torch.uint8),
        input_ids=ids,
        attention_mask=mask,
        image_index=torch.tensor([i for i, _ in caps], dtype=torch.long),
        piece_weights=weights,
        word_slots=word_slots,
        word_caption=torch.from_numpy(word_caption),
        cover_index=cover_index,
        masks=masks,
        boxes=boxes,
        unions=unions,
        picks=word_picks(
            cover_index.numpy(), category_id, bound_index, bound_category, word_caption, weights, word_slots
        ),
        image_ids=np.array([it.record["id"] for it in good], np.int64),
        caption_ids=np.array([cap_id for _, (cap_id, _, _) in caps], np.int64),
        words=[w for tok in tokens for w in tok.words],
        word_index=in_caption.astype(np.int16),
        n_pieces=np.array([n for tok in tokens for n in tok.n_pieces], np.int8),
        category_id=category_id,
        no_category=np.array([c is None for c in categories], bool),
        word_class=np.array([c for t in tags for c in t.word_class], str),
        bound_index=bound_index,
        bound_category=bound_category,
        failed_ids=[it.record["id"] for it in items if it.pixels is None and it.jpeg is None],
        errors=[e for it in items for e in it.errors],
        jpegs=[RawJpeg(row, it.record, it.path, it.jpeg) for row, it in enumerate(good) if it.jpeg is not None],
    )


def _stack_covers(good: list[ImageItem], caps: list) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor]:
    """The batch's category covers stacked after a zero row, and each word's row in them (0: no object),
    the row of the category it is scored against (its own, or its bound noun's)."""
    rows = [cid for it in good if it.covers for cid in it.covers.category_ids]
    if not good or good[0].covers is None:
        n_words = sum(len(tags.category) for _, (_, _, tags) in caps)
        return None, None, None, torch.zeros(n_words, dtype=torch.long)
    offsets = np.cumsum([1, *(len(it.covers.category_ids) for it in good)])
    index = []
    for i, (_, _, tags) in caps:
        row_of = {int(cid): offsets[i] + k for k, cid in enumerate(good[i].covers.category_ids)}
        index.extend(row_of.get(cid, 0) if cid is not None else 0 for cid in tags.scored_category)
    n_cells = good[0].covers.union.shape[0]
    zero = np.zeros((1, n_cells))
    masks = np.concatenate([zero, *(it.covers.masks for it in good)]) if rows else zero
    boxes = np.concatenate([zero, *(it.covers.boxes for it in good)]) if rows else zero
    unions = np.stack([it.covers.union for it in good])
    return (torch.from_numpy(masks), torch.from_numpy(boxes), torch.from_numpy(unions),
            torch.tensor(index, dtype=torch.long))  # fmt: skip
