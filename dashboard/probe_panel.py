"""The live probe panel: type any caption over an image and see every word's maps and metrics.

The maps come from the run's checkpoint through the extractor's own code (`extractor.probe`), which is
imported here only when someone probes: the app starts without torch. A probe is shown, saved as a
comment on the image in the review store, or exported; it never becomes one of the run's rows.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from dashboard import components as ui
from dashboard import data, paths
from dashboard.markup import literal, marked_caption
from dashboard.overlay import OverlayStyle, attention_overlay, encode
from dashboard.review import session as review_session
from db.codec import decode_map
from db.metrics import BY_NAME, METRICS
from db.review import Item, add_comment

THUMBS_PER_ROW = 8
WORD_SIDE = 320
THUMB_SIDE = 200
MEAN = -1  # the `head` of the mean over heads (extractor.probe.MEAN; not imported: it brings torch)


@st.cache_data(show_spinner=False, max_entries=32)
def probed(
    run: dict[str, Any], image: str | bytes, caption: str, heads: bool, image_id: int | None, images_dir: str | None
) -> Any:
    """The probe of `caption` over `image` (a file path, or an upload's bytes) with the run's checkpoint;
    an image of the run (`image_id`, in `images_dir`) also gets its object metrics.

    Raises extractor.probe.ProbeError (one sentence) when it cannot run.
    """
    from extractor import probe  # torch: only once someone probes

    source = image if isinstance(image, bytes) else Path(image)
    folder = Path(images_dir) if images_dir else None
    return probe.probe(probe.ProbeSettings.from_run(run), source, caption, heads=heads, image_id=image_id,
                       images_dir=folder)  # fmt: skip


@st.cache_data(show_spinner=False, max_entries=1024)
def overlay_jpeg(picture: bytes, blob: bytes, map_max: float, style: OverlayStyle) -> bytes:
    """JPEG of a probed map over the image's bytes."""
    with Image.open(io.BytesIO(picture)) as image:
        return encode(attention_overlay(image.convert("RGB"), decode_map(blob, map_max), style), "JPEG")


def image_bytes(image: str | bytes) -> bytes | None:
    """An upload's bytes as given; an image file's, or a WebDataset shard member's (`paths.open_image_file`), as
    read; None when it is not on this machine."""
    if isinstance(image, bytes):
        return image
    try:
        with paths.open_image_file(Path(image)) as f:
            return f.read()
    except OSError:
        return None


def probe_source(image: str | bytes | None) -> tuple[bytes | None, str | bytes | None]:
    """The image's bytes (None: not on this machine) and what the probe reads: a file's path, an upload's bytes,
    or a WebDataset shard member's bytes (no file to open)."""
    picture = None if image is None else image_bytes(image)
    if picture is None:
        return None, None
    return picture, image if isinstance(image, bytes) or Path(image).is_file() else picture


def probed_in(ctx: data.Context, source: str | bytes, caption: str, heads: bool, image_id: int | None) -> Any:
    """`probed` with the run of `ctx`, its images folder giving an image of the run its object metrics."""
    folder = str(ctx.images_dir) if ctx.images_dir else None
    return probed(dict(ctx.run), source, caption, heads, image_id, folder)


def word_labels(words: pd.DataFrame) -> dict[int, str]:
    """Word index -> its label as a pill: the word, numbered where the caption repeats it ("a", "a · 2")."""
    first = words.drop_duplicates("word_index").sort_values("word_index")
    seen = first.groupby("word").cumcount() + 1
    pairs = zip(first["word_index"], first["word"], seen, strict=True)
    return {int(i): word if n == 1 else f"{word} · {n}" for i, word, n in pairs}


def slice_label(method: str, layer: int, head: int = MEAN) -> str:
    return f"{method} · layer {layer}" + ("" if head == MEAN else f" · head {head}")


def note_text(result: Any) -> str:
    """A probe as a comment: the caption, ITM, and each word's metrics per map, as plain text."""
    lines = [f"Probe: “{result.caption}” (ITM {result.itm_score:.2f})"]
    for row in result.words[result.words["head"] == MEAN].itertuples():
        values = [f"{BY_NAME[m].label} {getattr(row, m):.2f}" for m in METRICS if not pd.isna(getattr(row, m))]
        lines.append(f"{row.word} · {slice_label(row.method, row.layer)}: " + ", ".join(values))
    return "\n".join(lines)


def export_json(result: Any) -> bytes:
    """The probe as JSON: caption, scores, and each word's metrics and map (a grid of floats) per map and head."""
    rows = result.words.drop(columns=["map", "map_max"]).astype(object).where(result.words.notna(), None)
    words = [
        {**row, "map": decode_map(blob, top).tolist()}
        for row, blob, top in zip(rows.to_dict("records"), result.words["map"], result.words["map_max"], strict=True)
    ]
    doc = {"caption": result.caption, "itm_score": result.itm_score, "itc_score": result.itc_score,
           "grid": result.grid, "words": words}  # fmt: skip
    return json.dumps(doc, default=lambda v: v.item() if isinstance(v, np.generic) else str(v)).encode("utf-8")


def metric_table(words: pd.DataFrame) -> None:
    """Every word's metrics per map (mean over heads), labelled as the badges are."""
    table = words[words["head"] == MEAN][["word", "method", "layer", *METRICS]]
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={m: st.column_config.NumberColumn(BY_NAME[m].label, help=ui.metric_help(m)) for m in METRICS},
    )


def word_maps(result: Any, picture: bytes, word_index: int, style: OverlayStyle) -> None:
    """One word: its map for each method and layer side by side, with its badges; then each head's, if probed."""
    rows = result.words[result.words["word_index"] == word_index]
    mean = rows[rows["head"] == MEAN]
    big = replace(style, max_side=WORD_SIDE)
    for column, row in zip(st.columns(len(mean)), mean.to_dict("records"), strict=True):
        with column:
            st.markdown(f"**{slice_label(row['method'], row['layer'])}**")
            st.image(overlay_jpeg(picture, row["map"], float(row["map_max"]), big), width="stretch")
            st.markdown(ui.badges(row))
    small = replace(style, max_side=THUMB_SIDE)
    for layer, per_head in rows[rows["head"] != MEAN].groupby("layer"):
        st.markdown(f"**Each head · attention · layer {layer}**")
        for column, row in zip(st.columns(len(per_head)), per_head.to_dict("records"), strict=True):
            with column:
                st.image(overlay_jpeg(picture, row["map"], float(row["map_max"]), small), width="stretch")
                st.caption(f"head {row['head']} · {BY_NAME['entropy'].label} {row['entropy']:.2f}")


def every_word(result: Any, picture: bytes, method: str, layer: int, style: OverlayStyle) -> None:
    """Thumbnails of every word's map for one method and layer."""
    rows = result.words[(result.words["head"] == MEAN) & (result.words["method"] == method)]
    rows = rows[rows["layer"] == layer] if layer in set(rows["layer"]) else rows[rows["layer"] == rows["layer"].max()]
    if rows.empty:
        return
    st.markdown(f"**Every word** · {slice_label(method, int(rows['layer'].iloc[0]))}")
    small = replace(style, max_side=THUMB_SIDE)
    records = rows.to_dict("records")
    for start in range(0, len(records), THUMBS_PER_ROW):
        for column, row in zip(st.columns(THUMBS_PER_ROW), records[start : start + THUMBS_PER_ROW], strict=False):
            with column:
                st.image(overlay_jpeg(picture, row["map"], float(row["map_max"]), small), width="stretch")
                st.caption(literal(row["word"]))


def save_and_export(result: Any, run_id: str, image_id: int | None, key: str) -> None:
    """Save the probe as a comment on the image (reviewers, images of the run) and download it."""
    left, middle, right = st.columns(3)
    actor = review_session.actor()
    if image_id is None:
        left.caption("An uploaded image is not in the review store: export the probe instead.")
    elif not actor.can_review:
        left.caption("Sign in as a reviewer to save the probe as a note on this image.")
    elif left.button("Save as a note on this image", key=f"{key}_save", icon=":material/note_add:"):
        add_comment(review_session.connection(), actor, Item(run_id, image_id), note_text(result))
        left.success("Saved as a comment on the image (Review › Reviews).")
    name = f"probe-{image_id if image_id is not None else 'upload'}"
    middle.download_button("Export JSON (maps as grids)", export_json(result), f"{name}.json", "application/json",
                           key=f"{key}_json", icon=":material/download:")  # fmt: skip
    right.download_button("Export CSV (metrics)", data.frame_bytes(result.words, "csv"), f"{name}.csv", "text/csv",
                          key=f"{key}_csv", icon=":material/download:")  # fmt: skip


def probe_panel(
    ctx: data.Context, image: str | bytes | None, style: OverlayStyle, image_id: int | None = None, key: str = "probe"
) -> None:
    """Caption box, then the probe's maps and metrics for `image` (a path, maybe of a WebDataset shard member, or
    an upload's bytes; None: the file is not on this machine)."""
    picture, source = probe_source(image)
    if picture is None:
        st.warning("The image file is not on this machine, so it cannot be probed.")
        return
    caption = st.text_input(
        "Caption to probe",
        key=f"{key}_caption",
        max_chars=500,
        placeholder="Type any caption, e.g. a dog on the grass, and press Enter",
        help="Computed now with the run's checkpoint, through the extractor's own code; nothing is stored.",
    )
    heads = st.toggle("Each head", key=f"{key}_heads", help="Also each attention head's map, not only their mean.")
    if not caption.strip():
        st.caption("The maps of every word of the caption appear here, for each fusion layer and Grad-CAM.")
        return
    from extractor.probe import ProbeError  # torch: only once someone probes

    try:
        with st.spinner("Probing (the first probe loads the model)…"):
            result = probed_in(ctx, source, caption, heads, image_id)
    except ProbeError as exc:
        st.error(literal(str(exc)))
        return
    st.markdown(f"**{marked_caption(result.caption, None)}** :small[ITM {result.itm_score:.2f} · "
                f"{1e3 * result.seconds:.0f} ms]")  # fmt: skip
    labels = word_labels(result.words)
    chosen = st.pills("Word", list(labels), key=f"{key}_word", default=0, format_func=labels.get)
    if chosen is not None:
        word_maps(result, picture, int(chosen), style)
    every_word(result, picture, ctx.method, int(ctx.layer), style)
    metric_table(result.words)
    save_and_export(result, ctx.run["run_id"], image_id, key)
