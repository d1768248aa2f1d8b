"""Statistics view "grounding heads": which head of which fusion layer attends to the named object.

A layer x head heatmap of the mean mask mass over the run (of one category on request); clicking a cell
lists the word occurrences that head grounds best (db.heads). Ranking the Search by one head's map needs
the per-head maps, which are not stored.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import questions, state
from dashboard.data import Context

ALL = "all categories"
TOP_WORDS = 20


def heatmap(grid: pd.DataFrame, title: str) -> go.Figure:
    """Layers as rows, heads as columns, the mean mask mass as colour; hover names the word count."""
    mean = grid.pivot(index="layer", columns="head", values="mean_mask_mass")
    n = grid.pivot(index="layer", columns="head", values="n").reindex_like(mean)
    fig = go.Figure(go.Heatmap(
        z=mean.to_numpy().tolist(), x=mean.columns.tolist(), y=mean.index.tolist(),
        customdata=n.to_numpy().tolist(), colorscale="Viridis",
        colorbar={"title": "mean mask mass"},
        hovertemplate="layer %{y} · head %{x}<br>mean mask mass %{z:.3f}<br>%{customdata} words<extra></extra>",
    ))  # fmt: skip
    fig.update_layout(title=title, clickmode="event+select", margin={"t": 40}, height=120 + 40 * len(mean))
    fig.update_xaxes(title="head", dtick=1)
    fig.update_yaxes(title="fusion layer", dtick=1, autorange="reversed")
    return fig


def clicked_cell(event: dict | None) -> tuple[int, int] | None:
    """(layer, head) of the clicked cell, if one was."""
    points = (event or {}).get("selection", {}).get("points", [])
    return (int(points[0]["y"]), int(points[0]["x"])) if points else None


def render(ctx: Context) -> None:
    run_id = ctx.run["run_id"]
    categories = questions.list_categories(ctx.db, run_id)
    named = categories[categories["n_words"] > 0]
    choice = st.selectbox("Category", [ALL, *named["name"]], key="heads_category", bind=state.BIND)
    category = None if choice == ALL else int(named.loc[named["name"] == choice, "category_id"].iloc[0])
    grid = questions.head_mask_mass(ctx.db, run_id, category)
    if grid.empty:
        st.info("This run has no per-head mask masses (extracted before they were stored, or without object labels).")
        return
    title = f"Mean mask mass of each head's word map ({choice}); click a head for the words it grounds best"
    event = st.plotly_chart(heatmap(grid, title), key="heads", on_select="rerun", selection_mode="points")
    cell = clicked_cell(event)
    if cell:
        layer, head = cell
        st.subheader(f"Layer {layer}, head {head}: the words it grounds best")
        st.dataframe(questions.head_top_words(ctx.db, run_id, layer, head, TOP_WORDS), hide_index=True)
