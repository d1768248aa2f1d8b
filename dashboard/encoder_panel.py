"""The image encoder's own attention (DINO's view) on the Image page, and a word's map beside its references.

The encoder's last block's [CLS] self-attention over the patches (`image_maps`): the heads' mean and each head
as a small multiple, optionally cut to the fewest cells holding 60% of the mass as DINO shows them. Beside the
chosen word's map, its two word-blind references, the encoder's mean [CLS] map and the caption's [CLS] row of
the same slice, and the mean map of the caption's words naming other categories, each with the word's
specificity against it (db/metrics.py).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import components as ui
from dashboard import data, questions, state
from dashboard.markup import literal
from dashboard.overlay import OverlayStyle
from dashboard.probe_panel import MEAN
from db.codec import decode_map, encode_map
from extractor.metrics import TOP_MASS_FRACTION, other_object_pairs, others_reference, top_mass_cells

REFERENCE_SIDE = 360
HEAD_SIDE = 200
HEADS_PER_ROW = 6
Blob = tuple[bytes, float]


def top_mass_only(blob: bytes, map_max: float) -> Blob:
    """The map with every cell outside the fewest holding 60% of its mass set to 0 (DINO's threshold)."""
    m = decode_map(blob, map_max)
    return encode_map(np.where(top_mass_cells(m), m, 0.0))


def cls_row_of(caption_maps: pd.DataFrame, caption_id: int, method: str, layer: int) -> Blob | None:
    """The caption's [CLS] row of one slice as (blob, max), None when not extracted."""
    hit = caption_maps[
        (caption_maps["caption_id"] == caption_id)
        & (caption_maps["method"] == method)
        & (caption_maps["layer"] == layer)
    ]
    return None if hit.empty else (hit["cls_map"].iloc[0], float(hit["cls_map_max"].iloc[0]))


def others_map(words: pd.DataFrame, word: pd.Series, method: str, layer: int) -> Blob | None:
    """The mean map of the words of the word's caption naming another category than the one it is scored
    against (the reference of `specificity_others`), from their stored maps; None where there are none."""
    caption = words[
        (words["caption_id"] == word["caption_id"]) & (words["method"] == method) & (words["layer"] == layer)
    ].sort_values("word_index")
    named = caption["category_id"].fillna(0).to_numpy(np.int64)
    scored = caption["bound_category_id"].fillna(caption["category_id"]).fillna(0).to_numpy(np.int64)
    maps = np.stack([decode_map(b, float(m)) for b, m in zip(caption["map"], caption["map_max"], strict=True)])
    pairs = other_object_pairs(named, scored, np.zeros(len(caption), np.int64))
    reference = others_reference(maps, pairs)[caption["word_index"].to_numpy() == word["word_index"]][0]
    return None if np.isnan(reference).any() else encode_map(reference)


def _show(path: str | None, size: tuple[int, int], blob: Blob, style: OverlayStyle, top: bool, title: str) -> None:
    shown = top_mass_only(*blob) if top else blob
    jpeg, _ = data.render_overlay(path, *size, *shown, style)
    st.markdown(title)
    st.image(jpeg, width="stretch")


def encoder_panel(
    ctx: data.Context,
    detail: dict[str, pd.DataFrame],
    path: str | None,
    style: OverlayStyle,
    caption_id: int,
    word: pd.Series | None,
    word_map: Blob | None,
) -> None:
    """The chosen word's map (the whole caption's for None) beside its references, then every encoder head."""
    image = detail["image"].iloc[0]
    size = (int(image["width"]), int(image["height"]))
    maps = questions.image_encoder_maps(ctx.db, int(image["image_id"]), ctx.run["run_id"])
    st.subheader("Does the word matter? The image encoder's own attention")
    if maps.empty:
        st.info("This run stored no image encoder maps (it was extracted before they were): extract it again.")
        return
    top = st.toggle(
        f"Top {TOP_MASS_FRACTION:.0%} of the mass only",
        key="encoder_top",
        bind=state.BIND,
        help="DINO's view: only the fewest cells holding 60% of each map's mass.",
    )
    encoder = {int(h): (b, float(m)) for h, b, m in maps[["head", "map", "map_max"]].itertuples(index=False)}
    what = "whole caption" if word is None else f"“{literal(word['word'])}”"
    references = [
        (word_map, f"**{what}** · {ctx.method} · layer {ctx.layer}", None),
        (encoder[MEAN], "**image encoder [CLS]**, mean of heads · word-blind", "specificity_cls"),
        (cls_row_of(detail["caption_maps"], caption_id, ctx.method, ctx.layer), "**caption [CLS] row** · word-blind",
         "specificity_row"),
    ]  # fmt: skip
    contrast = None if word is None else others_map(detail["words"], word, ctx.method, ctx.layer)
    if contrast is not None:
        references.append((contrast, "**the caption's other objects**, mean of their maps", "specificity_others"))
    large = replace(style, max_side=REFERENCE_SIDE)
    for column, (blob, title, metric) in zip(st.columns(len(references)), references, strict=True):
        with column:
            if blob is not None:
                _show(path, size, blob, large, top, title)
            if metric and word is not None and pd.notna(word[metric]):
                st.markdown(ui.badges({metric: word[metric]}))
    st.caption(
        "A word's specificity is the Jensen-Shannon divergence of its map from a reference map of the same "
        "image: near 0, the map repeats the image's generic saliency, or sits where the caption's other "
        "objects' maps sit, and says little about the word."
    )
    heads = sorted(h for h in encoder if h != MEAN)
    small = replace(style, max_side=HEAD_SIDE)
    for start in range(0, len(heads), HEADS_PER_ROW):
        for column, head in zip(st.columns(HEADS_PER_ROW), heads[start : start + HEADS_PER_ROW], strict=False):
            with column:
                _show(path, size, encoder[head], small, top, f"head {head}")
