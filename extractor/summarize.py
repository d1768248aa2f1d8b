"""A batch's maps -> table rows: whole-word maps, their metrics and uint8 codes, caption-level maps.

The per-word work runs where the model ran, as a few batched tensor ops over every word of every
caption and every map kind (`word_outputs`); only metric columns and uint8 maps come back to the host,
one copy per array (`HostCopy`), where `batch_tables` lays them out as Arrow columns without a Python
loop over words.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from extractor import device_metrics
from extractor.batch import Batch
from extractor.dataset import ErrorRow
from extractor.device_metrics import Reference
from extractor.maps import ATTENTION, GRADCAM, BatchMaps
from extractor.word_picks import tiled

Slice = tuple[str, int]  # (method, layer): one kind of map a run keeps


def run_slices(attention_layers: Sequence[int], gradcam_layer: int | None) -> list[Slice]:
    """Every (method, layer) a run keeps, in row order."""
    gradcam = [(GRADCAM, gradcam_layer)] if gradcam_layer is not None else []
    return [(ATTENTION, layer) for layer in attention_layers] + gradcam


def attention_layers(slices: Sequence[Slice]) -> list[int]:
    """The fusion layers whose raw attention a run keeps, in row order."""
    return [layer for method, layer in slices if method == ATTENTION]


def token_maps(maps: BatchMaps, method: str, layer: int) -> Tensor:
    """(C, T, N) per-token maps of one slice."""
    return maps.gradcam if method == GRADCAM else maps.attention_grid(layer)


def word_outputs(maps: BatchMaps, batch: Batch, slices: Sequence[Slice]) -> dict[str, Tensor]:
    """Every word's metrics and uint8 map, every caption's maps for all slices, and every image's encoder
    maps, on the maps' device.

    Word rows come slice by slice (all W words of the batch for the first slice, then the next);
    caption rows likewise (all C captions per slice). A word's specificities are against its image's
    encoder [CLS] map (the heads' mean) and its caption's [CLS] row of the same slice.
    """
    word_maps, caption_means, cls_rows = [], [], []
    for method, layer in slices:
        tokens = token_maps(maps, method, layer)
        merged = torch.bmm(batch.piece_weights, tokens)  # (C, Wmax, N): each word the mean of its pieces
        word_maps.append(merged.flatten(0, 1)[batch.word_slots])
        words_in_caption = batch.piece_weights.any(-1).sum(-1, keepdim=True).clamp(min=1)  # (C, 1)
        caption_means.append(merged.sum(1) / words_in_caption)
        cls_rows.append(tokens[:, 0])
    words, cls_all = torch.cat(word_maps).clamp(min=0), torch.cat(cls_rows).clamp(min=0)
    n_slices, n_captions = len(slices), len(batch.caption_ids)
    encoder_mean = maps.encoder_cls.mean(1)  # (I, N)
    slice_offsets = torch.arange(n_slices, device=batch.word_caption.device).repeat_interleave(len(batch.word_caption))
    references = {
        "encoder_cls": Reference(encoder_mean, batch.image_index[batch.word_caption].repeat(n_slices)),
        "cls_row": Reference(cls_all, batch.word_caption.repeat(n_slices) + n_captions * slice_offsets),
    }  # fmt: skip
    n_words = len(batch.words)
    covers = {}
    if batch.masks is not None:
        index = batch.cover_index.repeat(n_slices)
        covers = {
            "category_cover": batch.masks[index],
            "box_cover": batch.boxes[index],
            "union_cover": batch.unions[batch.image_index[batch.word_caption]].repeat(n_slices, 1),
            "object_rows": tiled(batch.picks.object_rows, n_slices, n_words),
        }
    others = batch.picks.others.tiled(n_slices, n_words)
    out = device_metrics.word_metrics(words, **covers, **references, others=others, checked=False)
    caption_maps = torch.cat(caption_means).clamp(min=0)
    # Per image its heads in order, then their mean (head -1 in image_maps).
    encoder = torch.cat([maps.encoder_cls, encoder_mean[:, None]], 1).flatten(0, 1)
    encoded = {"map": words, "caption_map": caption_maps, "cls_map": cls_all, "encoder_map": encoder}
    for name, kept in encoded.items():
        out[name], out[f"{name}_max"] = device_metrics.encode(kept, checked=False)
    # Checked on the host once the batch is back (`batch_tables`): here it would wait for the device.
    out["valid"] = torch.stack([device_metrics.valid(kept) for kept in encoded.values()]).all()
    if maps.head_attention is not None and batch.masks is not None:
        heads = head_metrics(maps.head_attention, batch, attention_layers(slices))
        out |= {f"head_{name}": value for name, value in heads.items()}
    out["itm_score"] = maps.itm_logits.softmax(-1)[:, 1]
    out["itc_score"] = maps.itc
    return out


def head_metrics(head_attention: dict[int, Tensor], batch: Batch, layers: Sequence[int]) -> dict[str, Tensor]:
    """(L, Wo, H) float32 each: the mask mass and specificity_others of each head's whole-word map, per layer,
    for the Wo words with an object (mask_mass not NULL), in word order.

    A head's map is its patch columns as a distribution, merged over the word's pieces as word maps are; it
    is built only for those words and the words their `specificity_others` is against (`batch.picks.heads`),
    never for every word and head.
    """
    heads = batch.picks.heads
    if not layers:
        return {name: torch.zeros(0, len(heads.object_at), 0) for name in ("mask_mass", "specificity_others")}
    covers = batch.masks[batch.cover_index[batch.picks.object_rows]][:, None]
    weight = heads.piece_weight[:, None, None]
    masses, specificities = [], []
    for layer in layers:
        a = head_attention[layer][heads.piece_caption, :, heads.piece_token, 1:].double()  # (P, H, N)
        merged = torch.zeros(len(heads.rows), *a.shape[1:], dtype=a.dtype, device=a.device)
        merged.index_add_(0, heads.piece_word, weight * a)
        p = device_metrics.distribution(merged.flatten(0, 1), checked=False).view_as(merged)
        masses.append((p[heads.object_at] * covers).sum(-1))
        specificities.append(device_metrics.specificity_others(p, heads.others)[heads.object_at])
    return {"mask_mass": torch.stack(masses).float(), "specificity_others": torch.stack(specificities).float()}


class HostCopy:
    """A batch's outputs on their way to the host: one copy per array, queued on the device's stream
    behind the batch's own work, so waiting for them does not wait for the batches queued after it."""

    def __init__(self, outputs: dict[str, Tensor]):
        on_cuda = any(v.is_cuda for v in outputs.values())
        # From CUDA, a non-blocking copy lands in pinned memory; the event marks when it has.
        self.copies = {k: v.to("cpu", non_blocking=on_cuda) for k, v in outputs.items()}
        self.done = torch.cuda.Event() if on_cuda else None
        if self.done:
            self.done.record()

    def arrays(self) -> dict[str, np.ndarray]:
        if self.done:
            self.done.synchronize()
        return {k: v.numpy() for k, v in self.copies.items()}


def _dictionary(value: str, n: int) -> pa.DictionaryArray:
    """A column of n times the same string, stored once."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([value]))


def _blobs(codes: np.ndarray) -> pa.Array:
    """(n, N) uint8 -> n binary values of N bytes, without copying per row."""
    n, width = codes.shape
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, pa.py_buffer(np.ascontiguousarray(codes))])


def _f32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32)


def batch_tables(batch: Batch, out: dict[str, np.ndarray], slices: Sequence[Slice], run_id: str) -> dict[str, pa.Table]:
    """The rows of one batch: words, caption_results, caption_maps, image_maps, errors and image_status, as Arrow
    tables."""
    if not out["valid"]:
        ids = batch.image_ids.tolist()
        raise ValueError(f"the model gave maps that are not finite and non-negative for images {ids}")
    W, C, S = len(batch.words), len(batch.caption_ids), len(slices)
    image_of_caption = batch.image_ids[batch.image_index.numpy()] if C else np.zeros(0, np.int64)
    word_caption = batch.word_caption.numpy()
    methods = np.repeat([m for m, _ in slices], W)
    layers = np.repeat(np.array([la for _, la in slices], np.int16), W)
    no_object = ~out["has_object"]
    unbound = batch.bound_index < 0
    words = pa.table({
        "run_id": _dictionary(run_id, W * S),
        "image_id": np.tile(image_of_caption[word_caption], S),
        "caption_id": np.tile(batch.caption_ids[word_caption], S),
        "word_index": np.tile(batch.word_index, S),
        "word": pa.DictionaryArray.from_arrays(pa.array(np.tile(np.arange(W, dtype=np.int32), S)),
                                               pa.array(batch.words, pa.string())),
        "n_pieces": np.tile(batch.n_pieces, S),
        "category_id": pa.array(np.tile(batch.category_id, S), mask=np.tile(batch.no_category, S)),
        "word_class": pa.array(np.tile(batch.word_class, S), pa.string()).dictionary_encode(),
        "bound_index": pa.array(np.tile(batch.bound_index, S), mask=np.tile(unbound, S)),
        "bound_category_id": pa.array(np.tile(batch.bound_category, S), mask=np.tile(unbound, S)),
        "method": pa.array(methods, pa.string()).dictionary_encode(),
        "layer": layers,
        "peak_row": out["peak_row"].astype(np.int16),
        "peak_col": out["peak_col"].astype(np.int16),
        "peak_value": _f32(out["peak_value"]),
        "entropy": _f32(out["entropy"]),
        "mask_mass": pa.array(_f32(out["mask_mass"]), from_pandas=True),
        "box_mass": pa.array(_f32(out["box_mass"]), from_pandas=True),
        "background_mass": pa.array(_f32(out["background_mass"]), from_pandas=True),
        "pointing_hit": pa.array(out["pointing_hit"], mask=no_object),
        "iou_top60": pa.array(_f32(out["iou_top60"]), from_pandas=True),
        "specificity_cls": pa.array(_f32(out["specificity_cls"]), from_pandas=True),
        "specificity_row": pa.array(_f32(out["specificity_row"]), from_pandas=True),
        "specificity_others": pa.array(_f32(out["specificity_others"]), from_pandas=True),
        "itm_score": np.tile(_f32(out["itm_score"])[word_caption], S),
        "map": _blobs(out["map"]),
        "map_max": out["map_max"],
    })  # fmt: skip
    caption_maps = pa.table({
        "run_id": _dictionary(run_id, C * S),
        "caption_id": np.tile(batch.caption_ids, S),
        "image_id": np.tile(image_of_caption, S),
        "method": pa.array(np.repeat([m for m, _ in slices], C), pa.string()).dictionary_encode(),
        "layer": np.repeat(np.array([la for _, la in slices], np.int16), C),
        "map": _blobs(out["caption_map"]),
        "map_max": out["caption_map_max"],
        "cls_map": _blobs(out["cls_map"]),
        "cls_map_max": out["cls_map_max"],
    })  # fmt: skip
    caption_results = pa.table({
        "run_id": _dictionary(run_id, C),
        "caption_id": batch.caption_ids,
        "image_id": image_of_caption,
        "itm_score": out["itm_score"].astype(np.float64),
        "itc_score": out["itc_score"].astype(np.float64),
    })  # fmt: skip
    return {"words": words, "caption_maps": caption_maps, "caption_results": caption_results,
            "image_maps": image_maps(batch, out, run_id), "word_heads": word_heads(batch, out, slices, run_id),
            **batch_failures(batch, run_id)}  # fmt: skip


def image_maps(batch: Batch, out: dict[str, np.ndarray], run_id: str) -> pa.Table:
    """Per image of the batch its encoder [CLS] maps: each head (0, 1, ...), then their mean (head -1)."""
    n_images = len(batch.image_ids)
    per_image = len(out["encoder_map"]) // n_images if n_images else 0
    return pa.table({
        "run_id": _dictionary(run_id, n_images * per_image),
        "image_id": np.repeat(batch.image_ids, per_image),
        "head": np.tile(np.r_[np.arange(per_image - 1), -1].astype(np.int16), n_images),
        "map": _blobs(out["encoder_map"]),
        "map_max": out["encoder_map_max"],
    })  # fmt: skip


def word_heads(batch: Batch, out: dict[str, np.ndarray], slices: Sequence[Slice], run_id: str) -> pa.Table:
    """Per attention layer, per word with an object, per head: that head's mask mass and specificity_others (none
    without heads or covers)."""
    masses = out.get("head_mask_mass", np.zeros((0, 0, 0), np.float32))  # (L, Wo, H)
    specificities = out.get("head_specificity_others", np.full_like(masses, np.nan))
    L, Wo, H = masses.shape
    rows = batch.picks.object_rows.numpy() if Wo else np.zeros(0, np.int64)
    caption = batch.word_caption.numpy()[rows]
    image_of_caption = batch.image_ids[batch.image_index.numpy()] if len(batch.caption_ids) else np.zeros(0, np.int64)
    per_word = L * H
    return pa.table({
        "run_id": _dictionary(run_id, Wo * per_word),
        "image_id": np.tile(np.repeat(image_of_caption[caption], H), L),
        "caption_id": np.tile(np.repeat(batch.caption_ids[caption], H), L),
        "word_index": np.tile(np.repeat(batch.word_index[rows], H), L).astype(np.int16),
        "layer": np.repeat(np.array(attention_layers(slices), np.int16)[:L], Wo * H),
        "head": np.tile(np.arange(H, dtype=np.int16), L * Wo),
        "mask_mass": masses.reshape(-1),
        "specificity_others": pa.array(specificities.reshape(-1), from_pandas=True),
    })  # fmt: skip


def batch_failures(batch: Batch, run_id: str) -> dict[str, pa.Table]:
    """A batch's errors and image_status rows."""
    return failure_tables(run_id, batch.image_ids.tolist(), batch.failed_ids, batch.errors)


def failure_tables(
    run_id: str, done_ids: Sequence[int], failed_ids: Sequence[int], errors: Sequence[ErrorRow]
) -> dict[str, pa.Table]:
    """errors and image_status rows (the only rows of a batch whose images all failed)."""
    kind, item, path, message = (list(col) for col in zip(*errors, strict=True)) if errors else ([],) * 4
    ids = [*done_ids, *failed_ids]
    return {
        "errors": pa.table({
            "run_id": pa.array([run_id] * len(kind), pa.string()),
            "item_kind": pa.array(kind, pa.string()), "item_id": pa.array(item, pa.string()),
            "path": pa.array(path, pa.string()), "message": pa.array(message, pa.string()),
            "created_at": pa.array([np.datetime64("now", "us")] * len(kind), pa.timestamp("us")),
        }),
        "image_status": pa.table({
            "run_id": pa.array([run_id] * len(ids), pa.string()),
            "image_id": pa.array(ids, pa.int64()),
            "status": pa.array(["done"] * len(done_ids) + ["error"] * len(failed_ids), pa.string()),
        }),
    }  # fmt: skip
