"""Pieces the pages share: metric names, overlay controls, metric badges, overlay cards."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import data, paths, questions, state
from dashboard.markup import code, literal, marked_caption
from dashboard.overlay import COLORMAPS, SHARED_TOP, OverlayStyle, colour_strip, scale_ticks
from db.metrics import BY_NAME, METRICS, SCORES

RANGE_METRICS = SCORES  # the metrics a range slider filters: all in [0, 1]
PAGE_SIZE = 24
GRID_COLUMNS = 4
THUMBNAIL_SIDE = 360
COLOUR_BAR_WIDTH = 480
# The colour-scale choices: their names go into the URL, captions say what the numbers are.
SCALES = {"shared": "× uniform", "per map": "stretched"}


# Metric names in words where the column name is not one.
_NAMES = {
    "peak_value": "peak share",
    "iou_top60": "IoU top-60%",
    "itm_score": "caption match (ITM)",
    "pointing_hit": "pointing hit",
    "specificity_cls": "specificity vs the image",
    "specificity_row": "specificity vs the caption",
    "specificity_others": "specificity vs other objects",
}
MORE_MATCHES = 4


def metric_label(metric: str) -> str:
    """The human name of a metric, e.g. "mask mass"."""
    return _NAMES.get(metric, metric.replace("_", " "))


def metric_help(metric: str) -> str:
    """A metric's help text: its one-line definition from db.metrics, as a sentence."""
    definition = BY_NAME[metric].definition
    return definition[0].upper() + definition[1:] + "."


def metrics_help(metrics: Sequence[str] = METRICS) -> str:
    """The help text of a choice of metric: each ranked metric's definition, one a paragraph."""
    return "\n\n".join(f"**{metric_label(m)}**: {metric_help(m)}" for m in metrics)


def run_metrics(ctx: data.Context) -> tuple[str, ...]:
    """The ranked metrics the context's run has values of (every one for a run without word rows yet)."""
    return questions.present_metrics(ctx.db, ctx.run["run_id"]) or METRICS


def absent_metrics_note(metrics: Sequence[str]) -> None:
    """Name the ranked metrics missing from `metrics` (the run's), which the page does not offer."""
    absent = [m for m in METRICS if m not in metrics]
    if not absent:
        return
    why = (
        " Object metrics and background mass need labelled objects (COCO with `--instances`); a pairs table or "
        "WebDataset shards have none."
        if any(BY_NAME[m].needs_object or m == "background_mass" for m in absent)
        else ""
    )
    st.caption(f"Not measured in this run: {', '.join(metric_label(m) for m in absent)}.{why}")


def preferred(metrics: Sequence[str], *choices: str) -> str:
    """The first of `choices` the run has, else its first metric."""
    return next((m for m in choices if m in metrics), metrics[0])


def overlay_controls() -> tuple[OverlayStyle, bool, bool]:
    """Colour map, opacity, colour scale and mask/box toggles (bound to the URL); the style and toggles."""
    left, right = st.columns(2)
    cmap = left.selectbox("Colour map", COLORMAPS, key="cmap", bind=state.BIND)
    opacity = right.slider(
        "Opacity",
        0.0,
        1.0,
        1.0,
        0.05,
        key="opacity",
        bind=state.BIND,
        help="1 = ALBEF's blend (weight = value^0.7); 0 = the bare image.",
    )
    scale = left.radio(
        "Colour scale",
        list(SCALES),
        key="scale",
        bind=state.BIND,
        horizontal=True,
        captions=list(SCALES.values()),
        help="shared: one scale for every map on the page, in multiples of a uniform map (1 = "
        "uniform), so a flat map looks flat and maps compare. per map: each map stretched to "
        "its own min..max (ALBEF's look), so even a flat map shows a hot spot.",
    )
    top = right.slider(
        "Shared scale top (× uniform)",
        2.0,
        50.0,
        SHARED_TOP,
        1.0,
        key="vmax",
        bind=state.BIND,
        disabled=scale != "shared",
        help="Values above it are drawn in the top colour.",
    )
    mask = left.toggle(
        "Object mask", key="mask", bind=state.BIND, help="Outline and tint the masks of the object the word names."
    )
    box = right.toggle("Object box", key="box", bind=state.BIND)
    style = OverlayStyle(
        cmap=cmap, opacity=opacity, value_range=(0.0, top) if scale == "shared" else None, max_side=THUMBNAIL_SIDE
    )
    return style, mask, box


def colour_bar(style: OverlayStyle) -> go.Figure:
    """The colour bar of ``style``: ticks in multiples of uniform (shared scale), or min..max (per map)."""
    strip = colour_strip(style)
    if style.value_range is None:
        low, high = 0.0, 1.0
        ticks, labels = [low, high], ["min", "max"]
        title = "per map (stretched): each map from its own min to its own max; colours do not compare"
    else:
        low, high = style.value_range
        ticks = scale_ticks(high)
        # Values above the top are drawn in the top colour, so its tick reads "8+".
        labels = [f"{t:g}+" if t == high else f"{t:g}" for t in ticks]
        title = "× uniform, one scale shared by every map on this page (1 = a uniform map)"
    step = (high - low) / len(strip)
    figure = go.Figure(go.Image(z=strip[None], x0=low + step / 2, dx=step, hoverinfo="skip"))
    figure.update_xaxes(tickvals=list(ticks), ticktext=labels, title=title, range=[low, high])
    figure.update_yaxes(visible=False)
    figure.update_layout(height=90, width=COLOUR_BAR_WIDTH, margin={"l": 10, "r": 10, "t": 5, "b": 50}, title=None)
    return figure


def colour_key(style: OverlayStyle) -> None:
    """The page's colour bar: what the overlays' colours mean under ``style``. Draw it once per page."""
    st.plotly_chart(colour_bar(style), key="colour_bar", width="content", config={"staticPlot": True})


def badges(row: Mapping[str, Any], highlight: str | None = None) -> str:
    """Markdown badges of a word row's metrics (the ranked metric in the primary colour)."""
    parts = []
    for metric in METRICS:
        value = row.get(metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        text = ("yes" if value else "no") if BY_NAME[metric].is_flag else f"{value:.2f}"
        colour = "primary" if metric == highlight else "gray"
        parts.append(f":{colour}-badge[{BY_NAME[metric].label} {text}]")
    return " ".join(parts)


def badge_legend(metrics: Sequence[str] = METRICS) -> None:
    """What the badges of the cards stand for (their definitions on hover)."""
    names = ", ".join(f"**{BY_NAME[m].label}** = {metric_label(m)}" for m in metrics)
    st.caption(f"Badges: {names}. Hover the ? for their definitions.", help=metrics_help(metrics))


def more_matches(rows: pd.DataFrame, sort: str) -> None:
    """The other matching words of a card's image, each in its caption with its `sort` value."""
    if rows.empty:
        return
    lines = [
        f"- {marked_caption(row['caption'], int(row['word_index']))} :small[{two_decimals(row.get(sort))}]"
        for row in rows.head(MORE_MATCHES).to_dict("records")
    ]
    more = len(rows) - MORE_MATCHES
    if more > 0:
        lines.append(f"- … and {more} more")
    st.markdown(f"Also in this image ({len(rows)}):\n" + "\n".join(lines))


def two_decimals(value: Any) -> str:
    """A value to two decimals; a dash where there is none (NULL)."""
    return "–" if value is None or pd.isna(value) else f"{float(value):.2f}"


def image_missing_note(ctx: data.Context) -> None:
    """Explain once per page why images are grey."""
    where = f"under {code(str(ctx.images_dir))}" if ctx.images_dir else "(the run records no image folder)"
    st.warning(
        f"Some image files were not found {where}; maps are drawn on grey. Point the dashboard at "
        "the images with `streamlit run dashboard/app.py -- --db PATH --images DIR`."
    )


def bound_noun(row: Mapping[str, Any]) -> str | None:
    """The noun an attribute word is bound to (extractor.binding), from its caption; None when unbound."""
    index = row.get("bound_index")
    return None if index is None or pd.isna(index) else row["caption"].split(" ")[int(index)]


def named_objects(instances: pd.DataFrame, row: Mapping[str, Any]) -> pd.DataFrame:
    """The instances of a word row's image of the category it names (what its card outlines)."""
    return instances[(instances["image_id"] == row["image_id"]) & (instances["category_id"] == row["category_id"])]


def word_card(
    ctx: data.Context,
    row: Mapping[str, Any],
    style: OverlayStyle,
    instances: pd.DataFrame,
    show_mask: bool,
    show_box: bool,
    highlight: str | None,
) -> bool:
    """One result: overlay (links to the Image page), caption with the word marked, badges, link.

    Returns whether the image file was found.
    """
    path = paths.image_path(ctx.images_dir, row["file_name"])
    picture, found = data.render_overlay(
        str(path) if path else None,
        int(row["width"]),
        int(row["height"]),
        row["map"],
        float(row["map_max"]),
        style,
        data.instance_tuples(instances),
        show_mask,
        show_box,
    )
    st.image(picture, width="stretch")
    st.markdown(marked_caption(row["caption"], int(row["word_index"])))
    if noun := bound_noun(row):
        st.caption(f"{literal(row['word'])} → {literal(noun)}: scored against the objects of its noun")
    st.markdown(badges(row, highlight))
    label = f"Image {row['image_id']}" + ("" if found else " (file missing)")
    st.page_link(
        "views/image.py",
        label=label,
        icon=":material/open_in_new:",
        # The card's own run and slice, not the sidebar's: a Compare runs card may show run B.
        query_params=state.link_params(
            run=ctx.run["run_id"],
            method=ctx.method,
            layer=ctx.layer,
            image=row["image_id"],
            caption=row["caption_id"],
            w=row["word_index"],
        ),
    )
    return found
