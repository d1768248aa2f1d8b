"""Statistics: which words and categories ground well, which are noisy, which look at the background.

Every chart is interactive; clicking a word, category, bar or cell opens the matching search.
"""

from __future__ import annotations

import html

import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from dashboard import components as ui
from dashboard import data, heads_view, questions, state
from dashboard.markup import literal, plotly_labels
from dashboard.review import controls as review_controls

VIEWS = (
    "distributions",
    "frequency vs alignment",
    "word x category",
    "leaderboards",
    "layers and methods",
    "reviews",
    "grounding heads",
)
DISTRIBUTION_WORDS = 12
LEADERBOARD_SIZE = 15
MATRIX_WORDS = 40


def mean_column(metric: str) -> str:
    """The word_stats / category_stats column holding a metric's mean."""
    return "hit_rate" if metric == "pointing_hit" else f"mean_{metric}"


def open_search(event: dict | None, kind: str, **params: str) -> None:
    """Go to the Search page for the clicked word or category (its label is the point's customdata)."""
    points = (event or {}).get("selection", {}).get("points", [])
    names = [html.unescape(p["customdata"][0]) for p in points if p.get("customdata")]
    if names:
        # The sidebar's run, method and layer too: the search shows the slice that was clicked.
        st.switch_page("views/search.py", query_params=state.link_params(by=kind, **{kind: names[0]}, **params))


def chart(fig: go.Figure, key: str) -> dict:
    """Draw a plotly figure whose clicks select points (one point opens the search)."""
    fig.update_layout(clickmode="event+select", margin={"t": 40})
    return st.plotly_chart(fig, key=key, on_select="rerun", selection_mode="points")


ctx = data.context()
run_id = ctx.run["run_id"]
st.title("Statistics")
st.caption(
    f"Run {literal(data.run_label(ctx.run))} · {ctx.method} · layer {ctx.layer}. "
    "Click a word or category to open its search."
)

metrics = ui.run_metrics(ctx)  # the run's: a run without object labels has no object metrics to chart
left, middle, right = st.columns([2, 2, 1])
view = left.selectbox("View", VIEWS, key="view", bind=state.BIND)
metric = state.url_choice(
    "Metric",
    metrics,
    param="metric",
    widget=middle.selectbox,
    format_func=ui.metric_label,
    # Leaderboards rank by entropy and by background mass; the heads view has its own per-head metric.
    disabled=view in ("leaderboards", "grounding heads"),
    help=ui.metrics_help(metrics),
)
ui.absent_metrics_note(metrics)
min_count = right.number_input(
    "Min. occurrences",
    1,
    100_000,
    3,
    key="min_n",
    bind=state.BIND,
    disabled=view == "grounding heads",  # a head's mean is over every word with an object
    help="Words (or categories) seen fewer times are left out.",
)
words = questions.word_stats(ctx.db, run_id, ctx.method, ctx.layer, min_count)
if words.empty:
    st.info(f"No word occurs {min_count} times or more in this slice. Lower the minimum.")
    st.stop()
column = mean_column(metric)
search = {"sort": metric}

if view == "distributions":
    default = words.loc[words["category_id"].notna()].head(DISTRIBUTION_WORDS)["word"].tolist()
    chosen = st.multiselect(
        "Words",
        words["word"].tolist(),
        default=default or None,
        key="words",
        bind=state.BIND,
        help="Defaults to the most frequent words that name a COCO category.",
    )
    values = questions.metric_values(ctx.db, metric, run_id, ctx.method, ctx.layer, tuple(chosen))
    if values.empty:
        st.info(f"No {metric} values for these words (object metrics need a labelled object).")
    else:
        values = plotly_labels(values, "word")
        order = values.groupby("word")["value"].median().sort_values(ascending=False).index.tolist()
        fig = px.box(
            values,
            x="word",
            y="value",
            points="all",
            custom_data=["word"],
            category_orders={"word": order},
            labels={"value": ui.metric_label(metric)},
            title=f"{ui.metric_label(metric)} per occurrence",
        )
        fig.update_traces(marker={"size": 3, "opacity": 0.4}, jitter=0.4)
        fig.update_yaxes(rangemode="tozero")
        open_search(chart(fig, "distribution"), "word", **search)

elif view == "frequency vs alignment":
    frequency = questions.word_frequency_alignment(ctx.db, run_id, ctx.method, ctx.layer, min_count)
    if frequency.empty:
        st.info("No word that names a labelled object occurs often enough. Lower the minimum.")
    else:
        fig = px.scatter(
            plotly_labels(frequency, "word"),
            x="n",
            y=column,
            log_x=True,
            text="word",
            custom_data=["word"],
            hover_data={"n": True, "n_object": True, column: ":.3f"},
            labels={"n": "occurrences in captions", column: f"mean {ui.metric_label(metric)}"},
            title=f"Do frequent words ground better? Mean {ui.metric_label(metric)} of the words naming an object",
        )
        fig.update_traces(textposition="top center", marker={"size": 8})
        fig.update_yaxes(rangemode="tozero")
        open_search(chart(fig, "frequency"), "word", **search)

elif view == "word x category":
    matrix = questions.word_category_matrix(ctx.db, run_id, ctx.method, ctx.layer, metric, min_count)
    if matrix.empty:
        st.info("No word that names a COCO category occurs often enough. Lower the minimum.")
    else:
        top = matrix.groupby("word")["n"].sum().nlargest(MATRIX_WORDS).index
        matrix = matrix[matrix["word"].isin(top)]
        # Square markers rather than a heatmap: plotly reports clicks on scatter points reliably.
        fig = px.scatter(
            plotly_labels(matrix, "word", "category"),
            x="category",
            y="word",
            color="value",
            size="n",
            size_max=18,
            custom_data=["word", "category"],
            color_continuous_scale="Viridis",
            hover_data={"n": True, "value": ":.3f"},
            labels={"value": ui.metric_label(metric)},
            title=f"Mean {ui.metric_label(metric)} of each word per category it names",
        )
        fig.update_traces(marker={"symbol": "square"})
        fig.update_layout(height=max(400, 22 * matrix["word"].nunique()))
        open_search(chart(fig, "matrix"), "word", **search)

elif view == "leaderboards":
    categories = questions.category_stats(ctx.db, run_id, ctx.method, ctx.layer, min_count)
    boards = (("entropy", "Noisiest", "H"), ("background_mass", "Most background-heavy", "bg"))
    for board_metric, title, short in (board for board in boards if board[0] in metrics):
        threshold = st.slider(
            f"{title}: mean {ui.metric_label(board_metric)} at least",
            0.0,
            1.0,
            0.0,
            0.001,
            format="%.3f",
            key=f"min_{short}",
            bind=state.BIND,
        )
        word_col, category_col = st.columns(2)
        for label, plural, frame, col in (
            ("word", "words", words, word_col),
            ("category", "categories", categories, category_col),
        ):
            mean = mean_column(board_metric)
            top = frame[frame[mean] >= threshold].nlargest(LEADERBOARD_SIZE, mean)
            with col:
                if top.empty:
                    st.info(f"No {label} has mean {ui.metric_label(board_metric)} ≥ {threshold:.2f}.")
                    continue
                fig = px.bar(
                    plotly_labels(top, label),
                    x=mean,
                    y=label,
                    orientation="h",
                    custom_data=[label],
                    hover_data={"n": True},
                    labels={mean: f"mean {ui.metric_label(board_metric)}"},
                    title=f"{title} {plural}",
                )
                fig.update_yaxes(categoryorder="total ascending")
                # From zero, not from the smallest bar, so small differences look small; the user may zoom.
                fig.update_xaxes(rangemode="tozero")
                fig.update_traces(texttemplate="%{x:.3f}", textposition="inside")
                open_search(chart(fig, f"board_{short}_{label}"), label, sort=board_metric)

elif view == "grounding heads":
    heads_view.render(ctx)

elif view == "reviews":  # team review: verdicts and tags per word (dashboard/review/controls.py)
    review_controls.statistics_view(ctx, words, column)

else:
    layers = questions.layer_comparison(ctx.db, run_id)
    fig = px.line(
        layers,
        x="layer",
        y=column,
        color="method",
        symbol="method",
        markers=True,
        hover_data={"n": True},
        labels={column: f"mean {ui.metric_label(metric)}"},
        title=f"Mean {ui.metric_label(metric)} by fusion layer and method",
    )
    # Grad-CAM often shares a layer with attention: a larger open marker keeps both points in view.
    fig.for_each_trace(lambda t: t.update(marker={"size": 16 if t.name == "gradcam" else 9}))
    fig.update_traces(selector={"name": "gradcam"}, marker_symbol="circle-open", marker_line_width=3)
    fig.update_xaxes(dtick=1)
    fig.update_yaxes(rangemode="tozero")
    st.plotly_chart(fig, key="layers")
    st.dataframe(layers, hide_index=True, width="stretch")
