"""Turn one image's token maps into table rows: whole-word maps, their metrics, caption-level maps.

Rows are gathered column-wise (numpy arrays per caption, concatenated once per chunk), because a
full COCO run produces tens of millions of word rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from db.codec import encode_maps
from extractor.maps import ATTENTION, GRADCAM, TokenMaps, merge_pieces
from extractor.metrics import ImageCovers, covers_for_words, word_metrics_batch
from extractor.text import TokenizedCaption


@dataclass
class CaptionInput:
    """One caption of an image with everything its rows need."""

    caption_id: int
    tokens: TokenizedCaption
    maps: TokenMaps
    category_ids: list[int | None]  # per word


@dataclass
class MappedImage:
    """An image's captions with their maps and its objects on the grid: what its rows are made from."""

    image_id: int
    captions: list[CaptionInput]
    covers: ImageCovers | None  # None when the run has no instances file


@dataclass
class ImageRows:
    """Rows of a chunk of images, ready for `db.writer.write_images`."""

    words: list[dict[str, np.ndarray]] = field(default_factory=list)  # columns of a (caption, method, layer)
    caption_results: list[dict] = field(default_factory=list)
    caption_maps: list[dict] = field(default_factory=list)
    done_ids: list[int] = field(default_factory=list)
    failed_ids: list[int] = field(default_factory=list)
    errors: list[tuple[str, str, str | None, str]] = field(default_factory=list)  # kind, item, path, message

    @property
    def n_images(self) -> int:
        return len(self.done_ids) + len(self.failed_ids)

    def fail_image(self, image_id: int, path: str, message: str) -> None:
        self.failed_ids.append(image_id)
        self.errors.append(("image", str(image_id), path, message))

    def extend(self, other: ImageRows) -> None:
        for name in ("words", "caption_results", "caption_maps", "done_ids", "failed_ids", "errors"):
            getattr(self, name).extend(getattr(other, name))

    def frames(self) -> dict[str, pd.DataFrame]:
        return {
            "caption_results": pd.DataFrame(self.caption_results),
            "caption_maps": pd.DataFrame(self.caption_maps),
            "words": words_frame(self.words),
            "errors": pd.DataFrame(self.errors, columns=["item_kind", "item_id", "path", "message"]),
        }


def method_grids(maps: TokenMaps, attention_layers: Sequence[int], gradcam_layer: int | None):
    """(method, layer, token maps (T, g, g)) for every map kind the run keeps."""
    for layer in attention_layers:
        yield ATTENTION, layer, maps.attention_grid(layer)
    if gradcam_layer is not None:
        yield GRADCAM, gradcam_layer, maps.gradcam


def summarize_image(
    image_id: int,
    captions: Sequence[CaptionInput],
    covers: ImageCovers | None,
    attention_layers: Sequence[int],
    gradcam_layer: int | None,
) -> ImageRows:
    """All result rows of one image (covers is None when the run has no instances file)."""
    rows = ImageRows(done_ids=[image_id])
    for cap in captions:
        words = cap.tokens.words
        n = len(words)
        rows.caption_results.append(
            {"caption_id": cap.caption_id, "image_id": image_id, "itm_score": cap.maps.itm_score,
             "itc_score": cap.maps.itc_score}
        )
        for method, layer, grid in method_grids(cap.maps, attention_layers, gradcam_layer):
            word_maps = merge_pieces(grid, cap.tokens.word_of_token, n)
            g = word_maps.shape[-1]
            if covers is None:
                metrics = word_metrics_batch(word_maps)
            else:
                cat_cover, box_cover, has_object = covers_for_words(cap.category_ids, covers, g)
                metrics = word_metrics_batch(word_maps, cat_cover, box_cover, covers.union, has_object)
            blobs, maxes = encode_maps(np.clip(word_maps, 0, None))
            rows.words.append(
                {
                    "image_id": np.full(n, image_id, np.int64),
                    "caption_id": np.full(n, cap.caption_id, np.int64),
                    "word_index": np.arange(n, dtype=np.int16),
                    "word": np.array(words, dtype=object),
                    "n_pieces": np.asarray(cap.tokens.n_pieces),
                    "category_id": np.array([c or 0 for c in cap.category_ids], np.int32),
                    "no_category": np.array([c is None for c in cap.category_ids]),
                    "method": np.full(n, method, dtype=object),
                    "layer": np.full(n, layer, np.int16),
                    **metrics,
                    "itm_score": np.full(n, cap.maps.itm_score, np.float64),
                    "map": np.array(blobs, dtype=object),
                    "map_max": np.asarray(maxes),
                }
            )
            (caption_blob,), (caption_max,) = encode_maps(word_maps.mean(0, keepdims=True).clip(0))
            (cls_blob,), (cls_max,) = encode_maps(grid[:1].clip(0))
            rows.caption_maps.append(
                {"caption_id": cap.caption_id, "image_id": image_id, "method": method, "layer": layer,
                 "map": caption_blob, "map_max": caption_max, "cls_map": cls_blob, "cls_map_max": cls_max}
            )
    return rows


def summarize_images(
    images: Sequence[MappedImage], attention_layers: Sequence[int], gradcam_layer: int | None
) -> ImageRows:
    """All result rows of a batch of images."""
    rows = ImageRows()
    for image in images:
        rows.extend(summarize_image(image.image_id, image.captions, image.covers, attention_layers, gradcam_layer))
    return rows


def words_frame(parts: list[dict[str, np.ndarray]]) -> pd.DataFrame:
    """The words table's rows from per-slice columns: one concatenation per column, nulls as masks."""
    if not parts:
        return pd.DataFrame()
    cols = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    cols["category_id"] = pd.arrays.IntegerArray(cols["category_id"], cols.pop("no_category"))
    cols["pointing_hit"] = pd.arrays.BooleanArray(cols["pointing_hit"], ~cols.pop("has_object"))
    return pd.DataFrame(cols)
