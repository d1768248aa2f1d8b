"""Review admin: make queues from a search and assign them, follow progress per queue and reviewer,
measure agreement between reviewers, and browse and export the audit log."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta
from urllib.parse import urlencode

import pandas as pd
import streamlit as st

from dashboard import components as ui
from dashboard import data, questions
from dashboard.review import controls, exports, panel, session
from db import review
from db.metrics import METRICS
from db.queries import WordFilter
from db.review import Item, joined

VOCABULARY_SIZE = 5000
FULL_RANGE = (0.0, 1.0)
OBJECT_FILTER = {"any": None, "labelled": True, "not labelled": False}
POINTING_FILTER = {"any": None, "hit": (1.0, 1.0), "miss": (0.0, 0.0)}
AUDIT_ROWS = 200

ctx = data.context()
con = session.connection()
actor = session.actor()
st.title("Review admin")
if not actor.can_manage:
    st.error("Only admins manage queues and read the audit log.")
    st.stop()


def item_link(key: str) -> str:
    """A relative link to the Reviews page open on an item."""
    return "reviews?" + urlencode(panel.item_url(Item.from_key(key)))


def new_queue() -> None:
    """A search spec (the Search page's filters, with run, map and layer) and the queue form."""
    runs = questions.list_runs(ctx.db)["run_id"].tolist()
    left, right = st.columns(2)
    run_id = left.selectbox("Run", runs, index=runs.index(ctx.run["run_id"]), key="nq_run")
    slices = questions.run_summary(ctx.db, run_id)["slices"]
    methods = sorted(slices["method"].unique())
    method = right.radio(
        "Map",
        methods,
        index=methods.index(ctx.method) if ctx.method in methods else 0,
        key="nq_method",
        horizontal=True,
    )
    layers = sorted(int(x) for x in slices.loc[slices["method"] == method, "layer"])
    layer = left.selectbox(
        "Layer", layers, index=layers.index(ctx.layer) if ctx.layer in layers else len(layers) - 1, key="nq_layer"
    )
    by = right.radio("Search by", ["word", "category"], key="nq_by", horizontal=True)
    if by == "word":
        vocabulary = questions.vocabulary(ctx.db, run_id, VOCABULARY_SIZE)["word"].tolist()
        target = left.selectbox(
            "Word", vocabulary, index=None, key="nq_word", accept_new_options=True, placeholder="Type a word, e.g. dog"
        )
        spec = {"word": target}
    else:
        categories = questions.list_categories(ctx.db, run_id)
        named = categories[categories["n_words"] > 0]
        target = left.selectbox("COCO category", named["name"].tolist(), index=None, key="nq_category")
        ids = dict(zip(named["name"], named["category_id"], strict=True))
        spec = {"category_id": None if target is None else int(ids[target])}
    # Only the metrics the run has: a run without object labels has no mask, pointing or background values.
    metrics = questions.present_metrics(ctx.db, run_id) or METRICS
    default = ui.preferred(metrics, "background_mass", "entropy")
    sort = right.selectbox("Rank by", metrics, index=metrics.index(default), key="nq_sort", format_func=ui.metric_label)
    order = left.radio("Order", ["descending", "ascending"], key="nq_order", horizontal=True)
    has_object = (
        right.radio("Named object in the image", list(OBJECT_FILTER), key="nq_object", horizontal=True)
        if "mask_mass" in metrics
        else "any"
    )
    pointing = (
        left.radio("Pointing game", list(POINTING_FILTER), key="nq_hit", horizontal=True)
        if "pointing_hit" in metrics
        else "any"
    )
    ranges = {}
    with st.expander("Metric ranges", icon=":material/tune:"):
        columns = st.columns(2)
        for i, metric in enumerate(m for m in ui.RANGE_METRICS if m in metrics):
            low, high = columns[i % 2].slider(
                ui.metric_label(metric), 0.0, 1.0, FULL_RANGE, 0.01, key=f"nq_{metric}", help=ui.metric_help(metric)
            )
            if (low, high) != FULL_RANGE:
                ranges[metric] = (low, high)
    if POINTING_FILTER[pointing]:
        ranges["pointing_hit"] = POINTING_FILTER[pointing]
    if target is None:
        st.info("Choose a word or a category: a queue is made from the top of a search's ranking.")
        return
    where = WordFilter(
        run_id=run_id, method=method, layer=layer, ranges=ranges or None, has_object=OBJECT_FILTER[has_object], **spec
    )
    total = questions.count_words(ctx.db, where)
    st.markdown(f"**{total:,}** matching words, ranked by **{ui.metric_label(sort)}** ({order}).")
    name = f"{ui.metric_label(sort)} {'high' if order == 'descending' else 'low'} · {target} · {method} layer {layer}"
    controls.queue_form(ctx.db, (where, sort, order == "descending"), name, total, key="nq")


def assign(queue_id: int) -> None:
    for reviewer in st.session_state["qa_add"]:
        panel.write(review.assign_queue, queue_id, reviewer, done=f"Assigned to {reviewer}")
    st.session_state["qa_add"] = []  # they are assigned now, so no longer among the options


def unassign(queue_id: int) -> None:
    reviewer = st.session_state["qa_remove"]
    panel.write(review.unassign_queue, queue_id, reviewer, done=f"{reviewer} unassigned")


def queues_and_progress(queues: pd.DataFrame) -> None:
    """Every queue with its progress; one queue's progress per reviewer and its assignments."""
    panel.flash()
    table = queues.assign(
        at=queues["at"].map(panel.when),
        progress=queues["n_judged"] / queues["n_items"],
        search_spec=queues["search_spec"].map(json.dumps),
    )
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={
            "progress": st.column_config.ProgressColumn("judged", min_value=0.0, max_value=1.0, format="percent"),
            "reviewers": st.column_config.ListColumn("reviewers"),
        },
    )
    by_name = dict(zip(queues["name"], queues["queue_id"].astype(int), strict=True))
    queue_id = by_name[st.selectbox("Queue", list(by_name), key="qa_queue")]
    progress = review.queue_progress(con, queue_id)
    st.dataframe(
        progress,
        hide_index=True,
        width="stretch",
        column_config={
            "fraction": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent")
        },
    )
    assigned = progress.loc[progress["assigned"], "reviewer"].tolist()
    left, right = st.columns(2, vertical_alignment="bottom")
    left.multiselect(
        "Assign reviewers",
        [n for n in session.reviewer_names() if n not in assigned],
        key="qa_add",
        accept_new_options=True,
        placeholder="Reviewers (or type an OIDC e-mail)",
    )
    right.button("Assign", icon=":material/person_add:", on_click=assign, args=(queue_id,))
    if assigned:
        left.selectbox("Unassign a reviewer (their verdicts stay)", assigned, key="qa_remove")
        right.button("Unassign", icon=":material/person_remove:", on_click=unassign, args=(queue_id,))


def agreement(queues: pd.DataFrame) -> None:
    """Pairwise agreement (percent, Cohen's kappa) and every disagreement, in one queue or overall."""
    scopes = {"all reviews": None} | dict(zip(queues["name"], queues["queue_id"].astype(int), strict=True))
    queue_id = scopes[st.selectbox("Scope", list(scopes), key="ag_scope")]
    pairs = review.agreement(con, queue_id)
    if pairs.empty:
        st.info("No item has verdicts from two reviewers yet.")
        return
    shared, agreed = int(pairs["n_shared"].sum()), int(pairs["n_agree"].sum())
    first, second, third = st.columns(3)
    first.metric("Agreement", f"{100 * agreed / shared:.0f}%", help="Share of (pair, item) judgements that agree.")
    second.metric(
        "Mean Cohen's kappa",
        "n/a" if pairs["kappa"].isna().all() else f"{pairs['kappa'].mean():.2f}",
        help="Agreement beyond chance per reviewer pair, averaged; n/a where undefined.",
    )
    third.metric("Judgements compared", f"{shared:,}")
    st.dataframe(
        pairs,
        hide_index=True,
        width="stretch",
        column_config={
            "percent_agreement": st.column_config.NumberColumn("agreement %", format="%.1f"),
            "kappa": st.column_config.NumberColumn("Cohen's kappa", format="%.2f"),
        },
    )
    st.markdown("**Disagreements**")
    split = review.disagreements(con, queue_id)
    if split.empty:
        st.caption("None: every item judged by several reviewers got one verdict.")
        return
    wide = split.pivot(index="item_key", columns="reviewer", values="verdict").reset_index()
    wide.insert(0, "open", wide["item_key"].map(item_link))
    captions = joined.item_captions(ctx.db.connection(), split)
    wide.insert(1, "item", wide["item_key"].map(lambda k: panel.item_name(Item.from_key(k), captions.get(k))))
    st.dataframe(
        wide.drop(columns="item_key"),
        hide_index=True,
        width="stretch",
        column_config={"open": st.column_config.LinkColumn("open", display_text="review")},
    )


def audit_filters() -> dict:
    """The audit log filters (keyword arguments of db.review.audit_log, without the limit)."""
    left, right = st.columns(2)
    user = left.text_input("User", key="au_user", max_chars=review.MAX_NAME_CHARS)
    action = right.selectbox("Action", ["any", *review.ACTIONS], key="au_action")
    target = left.text_input("Target (an item key or queue:<id>)", key="au_target", max_chars=review.MAX_NAME_CHARS)
    days = right.date_input("Between", value=(), key="au_days", help="Days (UTC), first and last included.")

    def day_start(day: date) -> datetime:
        return datetime.combine(day, time(), tzinfo=UTC)

    return {
        "user": user or None,
        "action": None if action == "any" else action,
        "target": target or None,
        "since": day_start(days[0]) if len(days) > 0 else None,
        "until": day_start(days[-1]) + timedelta(days=1) if len(days) > 1 else None,
    }


def audit_chain() -> None:
    """Whether every audit row's hash still follows from the rows before it, and the chain head to copy."""
    check = review.verify_audit_chain(con, actor)
    if check.ok:
        st.success(
            f"Hash chain intact: {check.n_rows:,} rows. Head `{check.head}`: keep a dated copy "
            "elsewhere; a log rewritten from an earlier row on will not end in it.",
            icon=":material/verified:",
        )
    else:
        st.error(
            f"Hash chain broken at row {check.first_broken} ({check.n_rows:,} rows): it or the row before "
            "it was edited, or a row was inserted or removed there, outside the dashboard.",
            icon=":material/gpp_bad:",
        )


def audit_log() -> None:
    """The chain check, the newest audit rows matching the filters, and the whole filtered log as CSV or
    Parquet."""
    audit_chain()
    filters = audit_filters()
    log = review.audit_log(con, actor, **filters, limit=AUDIT_ROWS)
    st.caption(
        f"Newest {len(log)} rows shown; the downloads hold every matching row. Append-only: "
        "the database refuses updates, deletes and replacements."
    )
    st.dataframe(log, hide_index=True, width="stretch")
    store = session.store_path()
    columns = st.columns(4)
    for column, fmt in zip(columns, exports.EXPORT_FORMATS, strict=False):
        column.download_button(
            f"Audit log {fmt}",
            lambda fmt=fmt: exports.export_audit(store, actor, filters, fmt),
            f"audit_log.{fmt}",
            exports.EXPORT_FORMATS[fmt],
            key=f"audit_{fmt}",
            icon=":material/download:",
            on_click="ignore",
            width="stretch",
        )


new_tab, queues_tab, agreement_tab, audit_tab = st.tabs(["New queue", "Queues and progress", "Agreement", "Audit log"])
with new_tab:
    new_queue()
all_queues = review.list_queues(con)
with queues_tab:
    if all_queues.empty:
        st.info("No queues yet: make one in “New queue”.")
    else:
        queues_and_progress(all_queues)
with agreement_tab:
    agreement(all_queues)
with audit_tab:
    audit_log()
