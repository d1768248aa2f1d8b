"""Compare runs: how a metric changes from run A to run B (checkpoints, or two slices of one run), per word
or per category, with bootstrap intervals over images, and the same caption word's maps side by side.

Every choice is in the URL: run_a, run_b, slice_a, slice_b ("method-layer"), metric, per, min_n, order_by, pick.
"""

from __future__ import annotations

import html
import shlex
from dataclasses import replace

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import components as ui
from dashboard import data, questions, state
from dashboard.markup import literal, plotly_literal
from db.compare import BY, ORDERS, Slice
from db.metrics import METRICS

TOP = 20  # changes in the chart
PAIRS = 6  # occurrences shown side by side
RANKS = dict(zip(ORDERS, ("largest change either way", "largest rise (B > A)", "largest fall (B < A)"), strict=True))
INTERVALS = 100  # keys with a bootstrap interval, in the table's order: they cost resamples x their images
CLICKED = "compare_clicked"  # session state: the chart point last applied, so a stale selection does not win
SHOWN = "compare_intervals_shown"  # session state: the choices whose intervals this session has shown
PENDING = "computing intervals…"


def run_name(run: dict) -> str:
    """A run's label as the Runs page gives it, with its id's start: two checkpoints of one file name differ."""
    return f"{data.run_label(run)} · {run['run_id'][:8]}"


def run_context(ctx: data.Context, run: dict, shown: Slice) -> data.Context:
    """The page's context for one compared run and slice (its cards link to them): its own image folder when
    the sidebar's is not its."""
    own = replace(ctx, run=run, method=shown.method, layer=shown.layer)
    if run["run_id"] == ctx.run["run_id"]:
        return own
    images = data.images_dir(run, None, ctx.db)
    return replace(own, images_dir=images if images is not None and images.is_dir() else ctx.images_dir)


def from_coco(run: dict) -> bool:
    """Whether the run read COCO's captions JSON (captions_file), not a --pairs table or --webdataset shards."""
    return str(run.get("captions_file") or "").endswith(".json")


def source_flag(run: dict) -> str:
    """The extractor flag that names the run's recorded captions_file: --captions, --pairs or --webdataset."""
    if from_coco(run):
        return "--captions"
    return "--pairs" if str(run.get("captions_file")).endswith((".csv", ".tsv", ".parquet")) else "--webdataset"


def second_run_command(run: dict, db_path: str) -> str:
    """The extractor command that adds another checkpoint's run over this run's inputs (as recorded) to this
    database."""
    inputs = [("--images", run.get("images_dir")), (source_flag(run), run.get("captions_file")),
              ("--instances", run.get("instances_file"))]  # fmt: skip
    given = "".join(f"{flag} {shlex.quote(str(value))} " for flag, value in inputs if value)
    return f"python -m extractor run {given}--checkpoint OTHER.pth --db {shlex.quote(str(db_path))}"


def second_run_note(run: dict, db_path: str) -> str:
    """How to extract a second checkpoint's run comparable with this one, with its command."""
    over = "the same images" if from_coco(run) else "the same inputs as this run"
    return f"extract a second one over {over}, e.g.\n\n`{second_run_command(run, db_path)}`"


def slice_options(run_id: str) -> list[str]:
    """A run's slices as "method-layer"."""
    slices = questions.run_summary(ctx.db, run_id)["slices"]
    return [f"{method}-{int(layer)}" for method, layer in zip(slices["method"], slices["layer"], strict=True)]


def slice_choice(column, name: str, run_id: str, default: str) -> Slice:
    """A run's method and layer, kept in the URL as slice_<name> = "method-layer"."""
    options = slice_options(run_id)
    if not options:
        st.info(f"Run {name} has no word maps yet.")
        st.stop()
    value = state.url_choice(
        f"Map of run {name}",
        options,
        param=f"slice_{name.lower()}",
        default=default,
        widget=column.selectbox,
        format_func=lambda v: v.replace("-", " · layer "),
    )
    method, layer = value.rsplit("-", 1)
    return Slice(run_id, method, int(layer))


def change_chart(top: pd.DataFrame, metric: str, key_name: str, pending: bool) -> go.Figure:
    """The top changes on an axis centred on zero, with their intervals as error bars unless still `pending`."""
    reach = max(float(top[["change", "low", "high"]].abs().max().max()), 1e-3) * 1.1
    bars = None if pending else {"type": "data", "array": top["high"] - top["change"],
                                 "arrayminus": top["change"] - top["low"]}  # fmt: skip
    figure = go.Figure(
        go.Bar(
            x=top["change"],
            y=top["key"].map(plotly_literal),
            orientation="h",
            customdata=top[["key"]].map(plotly_literal).to_numpy(),
            error_x=bars,
            hovertemplate="%{y}: %{x:+.3f}<extra></extra>",
        )
    )
    figure.update_xaxes(range=[-reach, reach], zeroline=True, title=f"change in {ui.metric_label(metric)} (B − A)")
    figure.update_yaxes(autorange="reversed", title=key_name)
    figure.update_layout(height=120 + 22 * len(top), clickmode="event+select", margin={"t": 40})
    intervals = PENDING if pending else "95% bootstrap intervals over images"
    figure.update_layout(title=f"Top {len(top)} changes, {intervals}")
    return figure


def show_changes(slots: tuple, changes: pd.DataFrame, metric: str, group: str, pending: bool) -> dict | None:
    """The chart of the top changes and the table of all into their two placeholders; once the intervals are in
    (not `pending`), the chart takes clicks (its selection is returned)."""
    chart, table = slots
    figure = change_chart(changes.head(TOP), metric, group, pending)
    if pending:
        chart.plotly_chart(figure)
        event = None
    else:
        event = chart.plotly_chart(figure, key="changes", on_select="rerun", selection_mode="points")
    table.dataframe(
        changes,
        hide_index=True,
        width="stretch",
        column_config={
            "key": group,
            "n": st.column_config.NumberColumn("occurrences"),
            "n_images": st.column_config.NumberColumn("images"),
            "mean_a": st.column_config.NumberColumn("mean in A", format="%.3f"),
            "mean_b": st.column_config.NumberColumn("mean in B", format="%.3f"),
            "change": st.column_config.NumberColumn("change (B − A)", format="%+.3f"),
            "low": st.column_config.NumberColumn("95% CI low", format="%+.3f"),
            "high": st.column_config.NumberColumn("95% CI high", format="%+.3f"),
        },
    )
    return event


def chosen_point(event) -> None:
    """A click on the chart picks that word or category (once per click: the selection outlives reruns)."""
    points = (event or {}).get("selection", {}).get("points", [])
    clicked = html.unescape(points[0]["customdata"][0]) if points and points[0].get("customdata") else None
    if clicked is not None and clicked != st.session_state.get(CLICKED):
        st.session_state[CLICKED] = clicked
        state.set_query(pick=clicked)


def side_by_side(contexts: tuple[data.Context, data.Context], rows, metric: str) -> None:
    """Each occurrence as two cards, run A's map beside run B's."""
    with st.expander("Display", icon=":material/palette:"):
        style, show_mask, show_box = ui.overlay_controls()
    ui.colour_key(style)
    instances = questions.image_instances(ctx.db, tuple(int(i) for i in rows["image_id"].unique()))
    missing = False
    for row in rows.to_dict("records"):
        matched = ui.named_objects(instances, row)
        with st.container(border=True):
            for column, side, run_ctx in zip(st.columns(2), "ab", contexts, strict=True):
                card = row | {
                    "map": row[f"map_{side}"],
                    "map_max": row[f"map_max_{side}"],
                    metric: row[f"value_{side}"],
                }
                with column:
                    st.caption(f"Run {side.upper()}: {literal(run_name(run_ctx.run))}")
                    missing |= not ui.word_card(run_ctx, card, style, matched, show_mask, show_box, metric)
    if missing:
        ui.image_missing_note(ctx)


def missing_metric_note(metric: str, shown: str, present: dict[str, set[str]]) -> str:
    """That the runs (by name, with the metrics each has) cannot compare `metric`, which of them lacks it, and
    the metric `shown` instead, in one sentence."""
    lacking = [name for name, has in present.items() if metric not in has]
    which = "either run" if len(lacking) == len(present) else f"run {lacking[0]}"
    return (
        f"The link's metric, {ui.metric_label(metric)}, is not measured in {which} (a run without object labels "
        f"has no object metrics), so it cannot be compared: showing {ui.metric_label(shown)} instead."
    )


ctx = data.context()
st.title("Compare runs")
runs = questions.list_runs(ctx.db)
by_id = {row["run_id"]: row for row in runs.to_dict("records")}
if len(by_id) < 2 and len(slice_options(ctx.run["run_id"])) < 2:
    st.warning(
        "This database holds a single run, with a single map: there is nothing to compare it with. A second run "
        f"is needed: {second_run_note(ctx.run, ctx.db.path)}",
        icon=":material/compare_arrows:",
    )
    st.stop()
if len(by_id) < 2:
    st.info(
        "This database holds a single run: two of its maps compare, but to compare checkpoints, "
        + second_run_note(ctx.run, ctx.db.path),
        icon=":material/compare_arrows:",
    )
left, right = st.columns(2)
run_a = state.url_choice(
    "Run A",
    list(by_id),
    param="run_a",
    default=ctx.run["run_id"],
    widget=left.selectbox,
    format_func=lambda r: run_name(by_id[r]),
    help="The run compared against: changes are B − A.",
)
run_b = state.url_choice(
    "Run B",
    list(by_id),
    param="run_b",
    default=next((r for r in by_id if r != run_a), run_a),
    widget=right.selectbox,
    format_func=lambda r: run_name(by_id[r]),
    help="Another checkpoint's run, or run A itself to compare two of its maps.",
)
sidebar_slice = f"{ctx.method}-{ctx.layer}"
a = slice_choice(left, "A", run_a, sidebar_slice)
shown_a = f"{a.method}-{a.layer}"
other_slice = next((o for o in slice_options(run_b) if o != shown_a), shown_a) if run_b == run_a else shown_a
b = slice_choice(right, "B", run_b, other_slice)
if a == b:
    st.warning(
        "Run A and run B are the same run with the same map: every change would be 0. Choose another map of "
        "this run, or another run, on either side.",
        icon=":material/compare_arrows:",
    )
    st.stop()
metric_col, group_col, count_col, rank_col = st.columns([2, 1, 1, 2])
# Only the metrics both runs have: a run without object labels has no object metrics to compare.
present = {name: set(questions.present_metrics(ctx.db, run)) for name, run in (("A", run_a), ("B", run_b))}
metrics = tuple(m for m in METRICS if all(m in has for has in present.values()))
wanted = st.query_params.get("metric")
metric = state.url_choice(
    "Metric",
    metrics,
    param="metric",
    widget=metric_col.selectbox,
    notes=[] if wanted in METRICS else None,  # a metric the runs lack is said below, in its own words
    format_func=ui.metric_label,
    help=ui.metrics_help(metrics),
)
group = state.url_choice("Per", BY, param="per", widget=group_col.radio, horizontal=True)
min_count = count_col.number_input(
    "Min. occurrences", 1, 100_000, 3, key="min_n", bind=state.BIND, help="Matched occurrences in both runs."
)
rank = state.url_choice(
    "Rank by",
    list(RANKS),
    param="order_by",
    widget=rank_col.selectbox,
    format_func=RANKS.get,
    help="Order of the table.",
)
if wanted in METRICS and wanted not in metrics:
    st.warning(missing_metric_note(wanted, metric, present))

overlap = questions.image_overlap(ctx.db, run_a, run_b)
if overlap["both"] == 0:
    st.warning("These two runs share no image: there is nothing to compare.")
    st.stop()
if overlap["only_a"] or overlap["only_b"]:
    st.info(
        f"The runs extracted different images: compared on the {overlap['both']:,} images in both; "
        f"A has {overlap['only_a']:,} more, B has {overlap['only_b']:,} more.",
        icon=":material/join_inner:",
    )
# The ranking first, from the SQL alone (tens of ms); then the bootstrap's intervals (up to ~1 s) fill it in place.
# A choice whose intervals this session has shown is drawn once, with them (cached: no flicker).
choice = (ctx.db, a, b, metric, group, int(min_count), rank)
shown = st.session_state.setdefault(SHOWN, set())
changes = questions.run_changes(*choice, INTERVALS if choice in shown else 0)
if changes.empty:
    st.info(f"No {group} has {min_count} occurrences with {ui.metric_label(metric)} in both runs. Lower the minimum.")
    st.stop()
st.caption(
    f"{len(changes):,} {group}s · change = mean {ui.metric_label(metric)} of the same caption words in B minus A "
    f"(B: {literal(run_name(by_id[run_b]))}, {b.method} layer {b.layer}; "
    f"A: {literal(run_name(by_id[run_a]))}, {a.method} layer {a.layer}) · intervals: 1,000 resamples of the images, "
    f"for the first {INTERVALS} in this order."
)
slots = st.empty(), st.empty()
event = show_changes(slots, changes, metric, group, pending=choice not in shown)
if choice not in shown:
    note = st.empty()
    note.caption(f":material/hourglass_top: {PENDING.capitalize()} (1,000 resamples of the images)")
    changes = questions.run_changes(*choice, INTERVALS)
    shown.add(choice)
    note.empty()
    event = show_changes(slots, changes, metric, group, pending=False)
chosen_point(event)
pick = state.url_choice(
    f"Maps of the {group}",
    changes["key"].tolist(),
    param="pick",
    help="Click a bar or choose here: its occurrences with the largest change, run A's map beside run B's.",
)
pairs = questions.matched_words(ctx.db, a, b, metric, pick, group, PAIRS)
side_by_side((run_context(ctx, by_id[run_a], a), run_context(ctx, by_id[run_b], b)), pairs, metric)
