"""Image: one image with all its captions, every word's map, two maps side by side, and region to words."""

from __future__ import annotations

import base64
from dataclasses import replace

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import components as ui
from dashboard import data, paths, questions, state
from dashboard.encoder_panel import encoder_panel
from dashboard.markup import literal, marked_caption, plotly_literal
from dashboard.overlay import display_size
from dashboard.probe_panel import probe_panel
from dashboard.review.panel import review_panel
from db.review import Item

MAIN_SIDE = 720
THUMB_SIDE = 200
THUMBS_PER_ROW = 8
REGION_WORDS = 10
WHOLE = -1  # the "word index" of a caption's whole-caption map in the small multiples


def select(caption_id: int, word_index: int) -> None:
    """Thumbnail click: show this caption's word (or WHOLE caption) large."""
    state.set_query(caption=caption_id, w=word_index)


def slice_label(method: str, layer: int) -> str:
    return f"{method} · layer {layer}"


def map_of(
    rows: pd.DataFrame, caption_id: int, word_index: int, method: str, layer: int, caption_maps: pd.DataFrame
) -> tuple[bytes, float] | None:
    """(blob, max) of a word's map, or of the whole-caption map for WHOLE; None when not extracted."""
    if word_index == WHOLE:
        hit = caption_maps[
            (caption_maps["caption_id"] == caption_id)
            & (caption_maps["method"] == method)
            & (caption_maps["layer"] == layer)
        ]
    else:
        hit = rows[
            (rows["caption_id"] == caption_id)
            & (rows["word_index"] == word_index)
            & (rows["method"] == method)
            & (rows["layer"] == layer)
        ]
    if hit.empty:
        return None
    return hit["map"].iloc[0], float(hit["map_max"].iloc[0])


def region_figure(
    picture: bytes,
    width: int,
    height: int,
    grid: int,
    instances: pd.DataFrame,
    show_box: bool,
    region: tuple[int, int, int, int] | None,
) -> go.Figure:
    """The image as a plotly figure with one invisible point per grid cell, for click and box selection.

    Selected cells are drawn as white squares; a slider `region` (row0, col0, row1, col1) as a dashed frame.
    """
    scale = width / display_size(width, height, MAIN_SIDE)[0]  # the PNG is drawn at most MAIN_SIDE wide
    fig = go.Figure(
        go.Image(
            source="data:image/jpeg;base64," + base64.b64encode(picture).decode("ascii"),
            dx=scale,
            dy=scale,
            hoverinfo="skip",
        )
    )
    rows, cols = np.mgrid[0:grid, 0:grid]
    fig.add_trace(
        go.Scatter(
            x=((cols + 0.5) * width / grid).ravel(),
            y=((rows + 0.5) * height / grid).ravel(),
            mode="markers",
            marker={"size": max(6, 600 // grid), "opacity": 0.0, "symbol": "square", "color": "white"},
            selected={"marker": {"opacity": 0.35}},
            unselected={"marker": {"opacity": 0.0}},
            customdata=np.stack([rows.ravel(), cols.ravel()], axis=1),
            hovertemplate="grid cell (%{customdata[0]}, %{customdata[1]})<extra></extra>",
            showlegend=False,
        )
    )
    if show_box:
        for inst in instances.itertuples():
            fig.add_shape(
                type="rect",
                x0=inst.bbox_x,
                y0=inst.bbox_y,
                x1=inst.bbox_x + inst.bbox_w,
                y1=inst.bbox_y + inst.bbox_h,
                line={"color": "white", "width": 2},
            )
            fig.add_annotation(
                x=inst.bbox_x,
                y=inst.bbox_y,
                text=plotly_literal(inst.category),
                showarrow=False,
                xanchor="left",
                yanchor="bottom",
                font={"color": "white", "size": 11},
                bgcolor="rgba(0,0,0,0.55)",
            )
    if region is not None:
        row0, col0, row1, col1 = region
        fig.add_shape(
            type="rect",
            x0=col0 * width / grid,
            y0=row0 * height / grid,
            x1=col1 * width / grid,
            y1=row1 * height / grid,
            line={"color": "white", "width": 3, "dash": "dash"},
        )
    fig.update_xaxes(visible=False, range=[0, width])
    fig.update_yaxes(visible=False, range=[height, 0], scaleanchor="x")
    # hoverdistance -1: a click anywhere picks the nearest cell centre, whatever the grid size. Dragging
    # pans (plotly ignores clicks while the box tool is active); the toolbar's box tool selects a region.
    fig.update_layout(
        margin={"l": 0, "r": 0, "t": 0, "b": 0},
        dragmode="pan",
        clickmode="event+select",
        hovermode="closest",
        hoverdistance=-1,
        height=int(MAIN_SIDE * height / max(width, height)),
    )
    return fig


def slider_span(param: str, grid: int) -> tuple[int, int]:
    """A grid slider's (low, high) before it is drawn: its last value, or the link's, or the whole grid."""
    span = st.session_state.get(param) or [int(x) for x in st.query_params.get_all(param) if x.isdigit()]
    return tuple(span) if len(span) == 2 else (0, grid)


def sliders_region(rows: tuple[int, int], cols: tuple[int, int], grid: int) -> tuple[int, int, int, int] | None:
    """The sliders' region, or None while they cover the whole grid (which holds all of every map's mass)."""
    (r0, r1), (c0, c1) = rows, cols
    return (r0, c0, r1, c1) if 0 < (r1 - r0) * (c1 - c0) < grid * grid else None


def selected_region(event: dict | None, grid: int) -> tuple[int, int, int, int] | None:
    """Half-open grid region [row0:row1, col0:col1] covering the clicked or box-selected cells."""
    points = (event or {}).get("selection", {}).get("points", [])
    # The cell points are trace 1, in row-major order: point i is cell divmod(i, grid).
    cells = [divmod(int(p["point_index"]), grid) for p in points if p.get("curve_number") == 1]
    if not cells:
        return None
    rows, cols = zip(*cells, strict=True)
    return min(rows), min(cols), max(rows) + 1, max(cols) + 1


ctx = data.context()
run_id = ctx.run["run_id"]
grid = int(ctx.run["grid_size"])
st.title("Image")

image_id = st.number_input(
    "COCO image id",
    value=None,
    step=1,
    min_value=0,
    key="image",
    bind=state.BIND,
    placeholder="Open an image from Search, or type its id",
)
if image_id is None:
    st.info("Choose an image: open one from the Search page, or type a COCO image id above.")
    st.page_link(
        "views/search.py",
        label="Browse every image, ranked by any metric",
        icon=":material/grid_view:",
        query_params=state.link_params(rank="images"),
    )
    st.stop()
detail = questions.image_detail(ctx.db, int(image_id), run_id)
if detail["image"].empty:
    st.error(f"Image {image_id} is not in this database.")
    st.stop()
image = detail["image"].iloc[0]
width, height = int(image["width"]), int(image["height"])
captions = detail["captions"]
words = detail["words"]
instances = detail["instances"]
here = words[(words["method"] == ctx.method) & (words["layer"] == ctx.layer)]
if here.empty:
    st.warning(
        f"Run {run_id} has no {slice_label(ctx.method, ctx.layer)} maps for image {image_id} "
        "(not extracted yet, or it failed: see the Runs page)."
    )
    st.stop()

caption_id = state.query_int("caption")
word_index = state.query_int("w")
if caption_id not in set(captions["caption_id"]):  # no caption chosen yet, or one of another image
    caption_id, word_index = int(here["caption_id"].iloc[0]), WHOLE
    state.set_query(caption=None, w=None)
chosen_rows = here[(here["caption_id"] == caption_id) & (here["word_index"] == word_index)]
if chosen_rows.empty:
    word_index = WHOLE
path = paths.image_path(ctx.images_dir, image["file_name"])
path_text = str(path) if path else None

with st.expander("Display", icon=":material/palette:"):
    style, show_mask, show_box = ui.overlay_controls()
    show_all = st.toggle(
        "All labelled objects",
        key="objects",
        bind=state.BIND,
        help="Masks and boxes of every labelled object, not only the one the word names.",
    )

selected_word = None if word_index == WHOLE else chosen_rows.iloc[0]
if show_all:
    shown = instances
elif selected_word is None or pd.isna(selected_word["category_id"]):
    shown = instances.iloc[0:0]
else:
    shown = instances[instances["category_id"] == selected_word["category_id"]]

st.subheader(f"{literal(image['file_name'])} · {width} x {height}")
ui.colour_key(style)
main_map = map_of(words, caption_id, word_index, ctx.method, ctx.layer, detail["caption_maps"])
big_style = replace(style, max_side=MAIN_SIDE)
picture, found = data.render_overlay(
    path_text, width, height, *(main_map or (None, 0.0)), big_style, data.instance_tuples(shown), show_mask, False
)
if not found:
    ui.image_missing_note(ctx)

left, right = st.columns([3, 2])
with left:
    what = "whole caption" if selected_word is None else f"“{literal(selected_word['word'])}”"
    st.markdown(
        f"**{what}** · {slice_label(ctx.method, ctx.layer)} · click a cell, or take the box tool in "
        "the chart's toolbar and drag a box, to see which words look there"
    )
    framed = sliders_region(slider_span("rows", grid), slider_span("cols", grid), grid)
    event = st.plotly_chart(
        region_figure(picture, width, height, grid, shown, show_box, framed),
        key="region",
        on_select="rerun",
        selection_mode=("points", "box"),
        config={"displayModeBar": True, "modeBarButtonsToRemove": ["lasso2d"]},
    )
with right:
    st.markdown("**Captions** (ITM = ALBEF's match probability)")
    for cap in captions.itertuples():
        chosen = cap.caption_id == caption_id
        marked = marked_caption(cap.text, word_index if chosen else None)
        itm = "" if pd.isna(cap.itm_score) else f" :small[ITM {cap.itm_score:.2f}]"
        st.markdown(f"**{marked}**{itm}" if chosen else f"{marked}{itm}")
    if selected_word is not None:
        st.markdown(ui.badges(selected_word.to_dict()))

    st.markdown("**Region to words**")
    region = selected_region(event, grid)
    if region is None:
        rows = st.slider("Grid rows", 0, grid, (0, grid), key="rows", bind=state.BIND)
        cols = st.slider("Grid columns", 0, grid, (0, grid), key="cols", bind=state.BIND)
        region = sliders_region(rows, cols, grid)
        if region is None:
            st.caption(
                "Click a cell or drag a box on the image, or narrow the sliders, to rank the words "
                "by the share of their map inside that region."
            )
    else:
        st.caption(
            f"Selected cells rows {region[0]}..{region[2] - 1}, columns {region[1]}..{region[3] - 1} "
            "(clear the selection to use the sliders)."
        )
    if region is not None:
        hits = questions.words_at_region(ctx.db, int(image_id), run_id, ctx.method, ctx.layer, region, REGION_WORDS)
        st.dataframe(
            hits[["word", "region_mass", "caption"]],
            hide_index=True,
            width="stretch",
            column_config={
                "region_mass": st.column_config.ProgressColumn(
                    "mass in region", min_value=0.0, max_value=1.0, format="%.2f"
                )
            },
        )

with st.expander("Review" + ("" if selected_word is None else f" · {what}"), icon=":material/rate_review:"):
    if selected_word is None:
        item = Item(run_id, int(image_id))
    else:
        item = Item(run_id, int(image_id), int(caption_id), int(word_index), ctx.method, int(ctx.layer))
    review_panel(item, key="image_review")

with st.expander("Live probe · type any caption", icon=":material/science:"):
    probe_panel(ctx, path_text, style, int(image_id))

st.subheader("Side by side")
slices = sorted({(m, int(la)) for m, la in zip(words["method"], words["layer"], strict=True)})
others = [s for s in slices if s != (ctx.method, ctx.layer)] or slices
labels = [slice_label(*s) for s in others]
versus = st.selectbox(
    "Compare with",
    labels,
    key="versus",
    bind=state.BIND,
    help="The same map from another layer, or raw attention against Grad-CAM.",
)
other = others[labels.index(versus)]
for column, (method, layer) in zip(st.columns(2), [(ctx.method, ctx.layer), other], strict=True):
    pair_map = map_of(words, caption_id, word_index, method, layer, detail["caption_maps"])
    with column:
        st.markdown(f"**{what}** · {slice_label(method, layer)}")
        if pair_map is None:
            st.info("Not extracted for this slice.")
        else:
            side_jpeg, _ = data.render_overlay(
                path_text, width, height, *pair_map, big_style, data.instance_tuples(shown), show_mask, show_box
            )
            st.image(side_jpeg, width="stretch")

encoder_panel(ctx, detail, path_text, style, caption_id, selected_word, main_map)

st.subheader("Every word")
st.caption(f"{slice_label(ctx.method, ctx.layer)}. Click a word to enlarge it above.")
small_style = replace(style, max_side=THUMB_SIDE)
for cap in captions.itertuples():
    cap_words = here[here["caption_id"] == cap.caption_id]
    if cap_words.empty:
        continue
    st.markdown(f"*{literal(cap.raw.strip())}*")
    entries = [(WHOLE, "whole caption")] + list(zip(cap_words["word_index"], cap_words["word"], strict=True))
    for start in range(0, len(entries), THUMBS_PER_ROW):
        for column, (index, label) in zip(
            st.columns(THUMBS_PER_ROW), entries[start : start + THUMBS_PER_ROW], strict=False
        ):
            thumb = map_of(words, cap.caption_id, int(index), ctx.method, ctx.layer, detail["caption_maps"])
            if thumb is None:
                continue
            with column:
                thumb_jpeg, _ = data.render_overlay(path_text, width, height, *thumb, small_style)
                st.image(thumb_jpeg, width="stretch")
                chosen = cap.caption_id == caption_id and index == word_index
                st.button(
                    literal(label),
                    key=f"pick_{cap.caption_id}_{index}",
                    on_click=select,
                    args=(int(cap.caption_id), int(index)),
                    type="primary" if chosen else "secondary",
                    width="stretch",
                )

st.subheader("Metrics")
table = here.drop(columns=["map", "map_max", "image_id", "method", "layer"]).merge(
    captions[["caption_id", "text"]], on="caption_id"
)
categories = questions.list_categories(ctx.db)
names = dict(zip(categories["category_id"], categories["name"], strict=True))
bound = {"bound_category_id": "describes", "category_id": "category"}
for column, label in bound.items():
    if column in table:  # names, not ids; blank, not "None", for a word naming no category
        table[label] = table[column].map(names).fillna("")
table = table.drop(columns=[c for c in (*bound, "bound_index") if c in table])
st.dataframe(
    table,
    hide_index=True,
    width="stretch",
    column_config={
        m: st.column_config.NumberColumn(ui.metric_label(m), format="%.3f", help=ui.metric_help(m))
        for m in ui.RANGE_METRICS
    }
    | {
        "category": st.column_config.TextColumn(help="The COCO category the word names."),
        "describes": st.column_config.TextColumn(help="The category of the noun an attribute word describes."),
    },
)
st.caption(
    f"{len(instances)} labelled objects: "
    + (literal(", ".join(sorted(set(instances["category"])))) if len(instances) else "none in this image")
)
