"""Pieces the pages share: metric names, overlay controls, metric badges, overlay cards."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import data, paths, state
from dashboard.markup import code, marked_caption
from dashboard.overlay import COLORMAPS, OverlayStyle
from db.schema import METRICS

# Short badge label and the explanation shown as help, per metric of db.schema.METRICS.
METRIC_INFO = {
    "mask_mass": ("mask", "Share of the map's mass on the named object's masks (higher = grounded)."),
    "box_mass": ("box", "Share of the map's mass inside the named object's boxes."),
    "background_mass": ("bg", "Share of the map's mass on no labelled object at all (higher = background)."),
    "entropy": ("H", "Normalised entropy of the map, 0 = one patch, 1 = uniform (higher = noisier)."),
    "peak_value": ("peak", "Share of the mass in the single strongest patch."),
    "iou_top60": ("IoU", "IoU of the smallest patch set holding 60% of the mass with the object's patches."),
    "itm_score": ("ITM", "ALBEF's image-text match probability for the whole caption."),
    "pointing_hit": ("hit", "Whether the strongest patch touches the named object."),
}
RANGE_METRICS = tuple(m for m in METRICS if m != "pointing_hit")  # all in [0, 1]
PAGE_SIZE = 24
GRID_COLUMNS = 4
THUMBNAIL_SIDE = 360


def metric_label(metric: str) -> str:
    """The human name of a metric, e.g. "mask mass"."""
    return metric.replace("_", " ")


def overlay_controls() -> tuple[OverlayStyle, bool, bool]:
    """Colour map, opacity, value range and mask/box toggles (bound to the URL); the style and toggles."""
    left, right = st.columns(2)
    cmap = left.selectbox("Colour map", COLORMAPS, key="cmap", bind=state.BIND)
    opacity = right.slider("Opacity", 0.0, 1.0, 1.0, 0.05, key="opacity", bind=state.BIND,
                           help="1 = ALBEF's blend (weight = value^0.7); 0 = the bare image.")
    scale = left.radio("Range", ["per map", "fixed"], key="scale", bind=state.BIND, horizontal=True,
                       help="per map: each map stretched to its own min..max (ALBEF). fixed: one scale "
                            "for all maps, in multiples of a uniform map, so maps compare.")
    vmax = right.slider("Fixed range max (x uniform)", 2.0, 50.0, 10.0, 1.0, key="vmax", bind=state.BIND,
                        disabled=scale != "fixed")
    mask = left.toggle("Object mask", key="mask", bind=state.BIND,
                       help="Outline and tint the masks of the object the word names.")
    box = right.toggle("Object box", key="box", bind=state.BIND)
    style = OverlayStyle(cmap=cmap, opacity=opacity, value_range=(0.0, vmax) if scale == "fixed" else None,
                         max_side=THUMBNAIL_SIDE)
    return style, mask, box


def badges(row: Mapping[str, Any], highlight: str | None = None) -> str:
    """Markdown badges of a word row's metrics (the ranked metric in the primary colour)."""
    parts = []
    for metric in METRICS:
        value = row.get(metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        short = METRIC_INFO.get(metric, (metric,))[0]
        text = ("yes" if value else "no") if metric == "pointing_hit" else f"{value:.2f}"
        colour = "primary" if metric == highlight else "gray"
        parts.append(f":{colour}-badge[{short} {text}]")
    return " ".join(parts)


def image_missing_note(ctx: data.Context) -> None:
    """Explain once per page why images are grey."""
    where = f"under {code(str(ctx.images_dir))}" if ctx.images_dir else "(the run records no image folder)"
    st.warning(f"Some image files were not found {where}; maps are drawn on grey. Point the dashboard at "
               "the images with `streamlit run dashboard/app.py -- --db PATH --images DIR`.")


def word_card(ctx: data.Context, row: Mapping[str, Any], style: OverlayStyle,
              instances: pd.DataFrame, show_mask: bool, show_box: bool, highlight: str | None) -> bool:
    """One result: overlay (links to the Image page), caption with the word marked, badges, link.

    Returns whether the image file was found.
    """
    path = paths.image_path(ctx.images_dir, row["file_name"])
    picture, found = data.render_overlay(
        str(path) if path else None, int(row["width"]), int(row["height"]), row["map"], float(row["map_max"]),
        style, data.instance_tuples(instances), show_mask, show_box,
    )
    st.image(picture, width="stretch")
    st.markdown(marked_caption(row["caption"], int(row["word_index"])))
    st.markdown(badges(row, highlight))
    label = f"Image {row['image_id']}" + ("" if found else " (file missing)")
    st.page_link("views/image.py", label=label, icon=":material/open_in_new:", query_params=state.link_params(
        image=row["image_id"], caption=row["caption_id"], w=row["word_index"]))
    return found
