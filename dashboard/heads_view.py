"""Grounding heads: which head of which fusion layer attends to the named object.

The Statistics view draws a layer x head heatmap of the mean of a per-head metric (db.heads.HEAD_METRICS)
over the run, of one category on request; clicking a cell opens the Search ranked by that head
(``head=LAYER.HEAD`` and ``head_metric`` in the URL). Per-head maps are not stored: a Search card shows the
layer's map with the head's value beside the layer's, and computes the head's own map with the live probe
on request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import components as ui
from dashboard import data, paths, probe_panel, questions, state
from dashboard.markup import literal
from dashboard.overlay import OverlayStyle
from db.heads import ATTENTION, HEAD_METRICS, Head
from db.queries import WordFilter

ALL = "all categories"
CELL_PX = 36
HEAD_PARAMS = ("head", "head_metric")
COMPUTED = "head_maps_computed"  # session: the cards whose head map was asked for
NOT_WITH_HEAD = (
    "Not while a head ranks the Search (its ranking reads the head's values only): clear the head to use it."
)


def heatmap(grid: pd.DataFrame, metric: str, title: str) -> go.Figure:
    """Layers as rows, heads as columns, the metric's mean as colour; hover names the word count.

    Square markers rather than a plotly heatmap, whose cells report no click selection.
    """
    label = f"mean {ui.metric_label(metric)}"
    hover = f"layer %{{y}} · head %{{x}}<br>{label} %{{marker.color:.3f}}<br>%{{customdata}} words<extra></extra>"
    fig = go.Figure(go.Scatter(
        x=grid["head"].tolist(), y=grid["layer"].tolist(), customdata=grid["n"].tolist(), mode="markers",
        marker={"symbol": "square", "size": CELL_PX, "color": grid["mean"].tolist(), "colorscale": "Viridis",
                "colorbar": {"title": label}},
        hovertemplate=hover,
    ))  # fmt: skip
    height = 160 + (CELL_PX + 6) * grid["layer"].nunique()
    fig.update_layout(title=title, clickmode="event+select", margin={"t": 40}, height=height)
    fig.update_xaxes(title="head", dtick=1)
    fig.update_yaxes(title="fusion layer", dtick=1, autorange="reversed")
    return fig


def clicked_cell(event: dict | None) -> tuple[int, int] | None:
    """(layer, head) of the clicked cell, if one was."""
    points = (event or {}).get("selection", {}).get("points", [])
    return (int(points[0]["y"]), int(points[0]["x"])) if points else None


def head_param(head: Head) -> dict[str, str]:
    """The query parameters naming a head ranking: ``head=LAYER.HEAD`` and its metric."""
    return {"head": f"{head.layer}.{head.head}", "head_metric": head.metric}


def url_ranking() -> HeadRanking | None:
    """The head ranking the URL asks for (``head=3.7``: layer 3, head 7), None when absent; a malformed one is
    said."""
    raw, metric = st.query_params.get("head"), st.query_params.get("head_metric", HEAD_METRICS[0])
    if raw is None:
        return None
    if metric not in HEAD_METRICS:
        known = ", ".join(HEAD_METRICS)
        st.warning(f"The per-head metric “{literal(metric)}” from the link is not one: expected one of {known}.")
        return None
    try:
        layer, head = (int(part) for part in raw.split("."))
    except ValueError:
        st.warning(f"Head “{literal(raw)}” from the link is not one: expected LAYER.HEAD.")
        return None
    return HeadRanking(Head(layer, head, metric))


def clear_head() -> None:
    """Drop the head ranking (a callback)."""
    state.forget(*HEAD_PARAMS)
    state.first_page("p")


@dataclass(frozen=True)
class HeadRanking:
    """The Search ranked by one head's own metric instead of a layer metric: everything the page does
    differently then. Its rows are the head's layer's, so the cards show that layer's (mean) map; Rank by,
    the review filters and one card per image do not apply (NOT_WITH_HEAD); there are no exports."""

    head: Head

    def count(self, db: data.Database, where: WordFilter) -> int:
        """How many word rows the head ranks."""
        return questions.count_by_head(db, where, self.head)

    def page(
        self, ctx: data.Context, where: WordFilter, descending: bool, style: OverlayStyle, offset: int
    ) -> tuple[pd.DataFrame, Callable[[Mapping[str, Any]], None]]:
        """One page of the word rows ranked by the head's value (`head_value`), and what goes below each card."""
        rows = questions.search_by_head(ctx.db, where, self.head, descending, ui.PAGE_SIZE, offset)
        return rows, lambda row: self.card(ctx, row, style)

    def context(self, ctx: data.Context) -> data.Context:
        """The page's context for the cards' maps and links: the head's attention layer."""
        return replace(ctx, method=ATTENTION, layer=self.head.layer)

    def header(self, total: int, order: str) -> None:
        """What the Search ranks by, with the way back to ranking by the layer's metrics (shown before any stop:
        its button is the way out of a link's bad head)."""
        head = self.head
        left, right = st.columns([3, 1], vertical_alignment="center")
        left.markdown(
            f"**{total:,}** occurrences · Ranked by head {head.head} of layer {head.layer} "
            f"(its {ui.metric_label(head.metric)}) · {order}"
        )
        right.button("Clear head ranking", key="clear_head", icon=":material/close:", on_click=clear_head)
        st.caption(
            f"The cards show layer {head.layer}'s map (the mean over its heads), as stored; "
            "“Compute this head's map” draws the head's own with the live probe."
        )

    def nothing_found(self) -> str:
        """Why a search ranked by the head finds nothing."""
        return (
            f"No occurrence here has a value of head {self.head.head} of layer {self.head.layer}: only words naming "
            "an object have per-head values, and the head must be one of the run's fusion layers and heads."
        )

    def card(self, ctx: data.Context, row: Mapping[str, Any], style: OverlayStyle) -> None:
        """Below a Search card: the head's value badges, and its own map computed by the live probe on request."""
        st.markdown(value_badges(row, self.head))
        key = (row["caption_id"], row["word_index"], self.head)
        computed = st.session_state.setdefault(COMPUTED, set())
        if key not in computed and not st.button("Compute this head's map", key=f"head_map_{key[0]}_{key[1]}"):
            return
        computed.add(key)
        head_map(ctx, row, self.head, style)


def value_badges(row: Mapping[str, Any], head: Head) -> str:
    """The head's value beside the layer mean map's, as badges."""
    value, mean = ui.two_decimals(row["head_value"]), ui.two_decimals(row[head.metric])
    return f":primary-badge[head {head.head} {ui.metric_label(head.metric)} {value}] :gray-badge[layer mean {mean}]"


def head_map(ctx: data.Context, row: Mapping[str, Any], head: Head, style: OverlayStyle) -> None:
    """The head's own map of the card's word, computed by the live probe, or why it cannot be."""
    from extractor.probe import ProbeError  # torch: only once someone probes

    path = paths.image_path(ctx.images_dir, row["file_name"])
    picture, source = probe_panel.probe_source(None if path is None else str(path))
    if picture is None:
        st.warning("The image file is not on this machine, so the head's map cannot be computed.")
        return
    try:
        with st.spinner("Computing the head's map (the first probe loads the model)…"):
            result = probe_panel.probed_in(ctx, source, row["caption_raw"], True, int(row["image_id"]))
    except ProbeError as exc:
        st.error(literal(str(exc)))
        return
    words = result.words
    mine = words[(words["method"] == ATTENTION) & (words["layer"] == head.layer) & (words["head"] == head.head)]
    mine = mine[mine["word_index"] == row["word_index"]].to_dict("records")
    if not mine:
        st.warning(f"The probe has no map of head {head.head} of layer {head.layer} for this word.")
        return
    st.image(probe_panel.overlay_jpeg(picture, mine[0]["map"], float(mine[0]["map_max"]), style), width="stretch")
    st.caption(f"Head {head.head} of layer {head.layer}, computed now: {ui.badges(mine[0], head.metric)}")


def render(ctx: data.Context) -> None:
    run_id = ctx.run["run_id"]
    categories = questions.list_categories(ctx.db, run_id)
    named = categories[categories["n_words"] > 0]
    left, right = st.columns(2)
    choice = left.selectbox("Category", [ALL, *named["name"]], key="heads_category", bind=state.BIND)
    metric = state.url_choice(
        "Per-head metric", HEAD_METRICS, param="head_metric", widget=right.selectbox, format_func=ui.metric_label
    )
    category = None if choice == ALL else int(named.loc[named["name"] == choice, "category_id"].iloc[0])
    grid = questions.head_means(ctx.db, run_id, metric, category)
    if grid.empty:
        st.info("This run has no per-head values (extracted before they were stored, or without object labels).")
        return
    title = f"Mean {ui.metric_label(metric)} of each head's word map ({choice}); click a head to rank the Search by it"
    event = st.plotly_chart(heatmap(grid, metric, title), key="heads", on_select="rerun", selection_mode="points")
    cell = clicked_cell(event)
    if cell:
        target = {} if category is None else {"by": "category", "category": choice}
        params = state.link_params(method=ATTENTION, layer=cell[0], **target, **head_param(Head(*cell, metric)))
        st.switch_page("views/search.py", query_params=params)
