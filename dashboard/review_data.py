"""Review data joined with extraction data: exports with word metrics, queues made from a search, and
verdicts and tags as filters and sort keys of the Search and Statistics pages.

The review store answers "which items, what verdicts"; the extraction database answers "which word,
which metrics" (db/review_words.py). Joins happen here, in pandas, on the item key columns.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import duckdb
import pandas as pd
import plotly.express as px
import streamlit as st

from dashboard import data, review_session, state
from dashboard.markup import literal, plotly_labels
from db import queries, review
from db.review import ITEM_COLUMNS, Item, joined

ANY = "any"
UNREVIEWED = "unreviewed"
STATUSES = ("open", "resolved")
QUEUE_LIMIT = 50  # default number of search results a new queue takes
STATISTICS_WORDS = 25  # words in the reviews chart of the Statistics page
# Review sort keys beside the metrics: the majority verdict in VERDICTS order, then the number of them.
REVIEW_SORTS = ("verdict", "n_verdicts", "n_comments")
EXPORT_FORMATS = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}  # format -> MIME type


@st.cache_resource(show_spinner=False, max_entries=4)
def _extraction(path: str, mtime_ns: int) -> duckdb.DuckDBPyConnection:
    """A read-only connection for the joins (db.review_words gives each call its own cursor)."""
    return queries.connect_readonly(path)


def item_words(db: data.Database, items: pd.DataFrame, *, with_maps: bool = False) -> pd.DataFrame:
    """The words rows (search_words' columns) of the word items in `items`, in order."""
    return joined.item_words(_extraction(db.path, db.mtime_ns), items, with_maps=with_maps)


def reviews_with_metrics(db: data.Database, con: sqlite3.Connection, run_id: str | None) -> pd.DataFrame:
    """Every reviewed word of a run (all runs for None) with its metrics, verdicts, tags and comments,
    plus its image's review as image_* columns (db.joined.join_metrics)."""
    summary = review.review_summary(con, run_id)
    metrics = item_words(db, summary[summary["kind"] == "word"])
    return joined.join_metrics(metrics, summary)


def export_reviews(db: data.Database, store: str, run_id: str | None, fmt: str, with_metrics: bool) -> bytes:
    """CSV or Parquet bytes of the reviews (joined with word metrics, or every reviewed item as is).

    Called by a download button outside the script run, so it opens its own review store connection
    rather than using the session's, which a script run may be using at that moment.
    """
    con = review.connect(store)
    try:
        frame = reviews_with_metrics(db, con, run_id) if with_metrics else review.review_summary(con, run_id)
    finally:
        con.close()
    return data.frame_bytes(frame, fmt)


def tag_list(tags: str) -> list[str]:
    """The tags of a review_summary row (stored there as a JSON list, like CSV and Parquet exports)."""
    return json.loads(tags)


def export_audit(store: str, actor: review.Actor, filters: Mapping[str, Any], fmt: str) -> bytes:
    """CSV or Parquet bytes of every audit row matching `filters` (db.review.audit_log; admin only).

    A download callback, outside the script run: it opens its own connection (see `export_reviews`).
    """
    con = review.connect(store)
    try:
        return data.frame_bytes(review.audit_log(con, actor, **filters), fmt)
    finally:
        con.close()


# ---------------------------------------------------------------------------------------------- queues


def create_queue_from_search(
    db: data.Database, name: str, filters: Mapping[str, Any], limit: int, reviewers: Sequence[str]
) -> tuple[int, int]:
    """Make a queue of the first `limit` results of a search (db.queries.search_words filters and sort),
    as this session's actor; (queue_id, number of items)."""
    rows = data.ask(db, "search_words", **filters, limit=limit, offset=0, with_maps=False)
    items = [Item.from_row(row) for row in rows.to_dict("records")]
    spec = dict(filters) | {"limit": limit}
    queue_id = review.create_queue(review_session.connection(), review_session.actor(), name, spec, items, reviewers)
    return queue_id, len(items)


def _create_queue(db: data.Database, filters: Mapping[str, Any], key: str) -> None:
    name, limit = st.session_state[f"{key}_name"], st.session_state[f"{key}_limit"]
    try:
        queue_id, n = create_queue_from_search(db, name, filters, limit, st.session_state[f"{key}_reviewers"])
    except (PermissionError, ValueError) as exc:
        st.session_state[f"{key}_outcome"] = ("error", str(exc))
    else:
        message = f"Queue {queue_id} “{literal(name)}” created with {n} items."
        st.session_state[f"{key}_outcome"] = ("success", message)


def queue_form(db: data.Database, filters: Mapping[str, Any], default_name: str, total: int, key: str) -> None:
    """Admin form: name, size and reviewers of a queue made from the search `filters` (which match
    `total` rows); creates it on submit."""
    with st.form(f"{key}_form"):
        st.text_input("Queue name", value=default_name, key=f"{key}_name", max_chars=review.MAX_NAME_CHARS)
        st.number_input("Items (the top of the ranking)", min_value=1, max_value=max(1, total),
                        value=min(QUEUE_LIMIT, max(1, total)), key=f"{key}_limit")
        st.multiselect("Assign to", review_session.reviewer_names(), key=f"{key}_reviewers",
                       accept_new_options=True, placeholder="Reviewers (type an e-mail for OIDC users)")
        st.form_submit_button("Create queue", icon=":material/playlist_add:", type="primary",
                              on_click=_create_queue, args=(db, filters, key), disabled=total == 0)
    level, message = st.session_state.pop(f"{key}_outcome", (None, None))
    if level == "success":
        st.success(message)
    elif level == "error":  # db.review's message may quote the name as typed
        st.error(literal(message))


# ---------------------------------------------------------------------------------------------- Search, Statistics


@dataclass(frozen=True)
class ReviewFilter:
    """Verdict/tag/status filters and review sort key chosen on a page (ANY = no filter)."""

    verdict: str = ANY  # a verdict (by anyone), UNREVIEWED (no verdict at all), or ANY
    tag: str = ANY
    status: str = ANY
    sort: str | None = None  # one of REVIEW_SORTS, before the metric ranking

    @property
    def active(self) -> bool:
        """Whether results depend on the review store at all."""
        return (self.verdict, self.tag, self.status) != (ANY, ANY, ANY) or self.sort is not None


def filter_controls(con: sqlite3.Connection, left: Any, right: Any, on_change: Any = None) -> ReviewFilter:
    """Verdict, tag and status filters and a review sort key (bound to the URL), drawn in two columns."""
    tags = review.all_tags(con)["tag"].tolist()
    verdict = left.selectbox("Verdict", [ANY, UNREVIEWED, *review.VERDICTS], key="rv_verdict", bind=state.BIND,
                             on_change=on_change, help="Words with this verdict by any reviewer.")
    tag = right.selectbox("Tag", [ANY, *tags], key="rv_tag", bind=state.BIND, on_change=on_change)
    status = left.selectbox("Review status", [ANY, *STATUSES], key="rv_status", bind=state.BIND, on_change=on_change)
    sort = right.selectbox("Sort by review first", [None, *REVIEW_SORTS], key="rv_sort", bind=state.BIND,
                           on_change=on_change, format_func=lambda s: "no" if s is None else s.replace("_", " "),
                           help="verdict: majority verdict in the order aligned … other, then unjudged; "
                                "n verdicts / n comments: most first. Ties keep the metric ranking.")
    return ReviewFilter(verdict, tag, status, sort)


def select(con: sqlite3.Connection, frame: pd.DataFrame, spec: ReviewFilter) -> pd.DataFrame:
    """Rows of `frame` (review_summary columns item_key, verdict, n_verdicts, n_comments, status; item_key
    null for unreviewed rows) kept by the filter, stably re-sorted by its review sort key."""
    keep = pd.Series(True, index=frame.index)
    if spec.verdict == UNREVIEWED:
        keep &= frame["n_verdicts"] == 0
    elif spec.verdict != ANY:
        keep &= frame["item_key"].isin(review.find_items(con, verdict=spec.verdict)["item_key"])
    if spec.tag != ANY:
        keep &= frame["item_key"].isin(review.find_items(con, tag=spec.tag)["item_key"])
    if spec.status != ANY:
        keep &= frame["status"] == spec.status
    frame = frame[keep]
    if spec.sort == "verdict":  # majority verdict in VERDICTS order, unjudged last
        order = frame["verdict"].map({v: i for i, v in enumerate(review.VERDICTS)}).fillna(len(review.VERDICTS))
        frame = frame.iloc[order.to_numpy().argsort(kind="stable")]
    elif spec.sort is not None:
        frame = frame.sort_values(spec.sort, ascending=False, kind="stable")
    return frame.reset_index(drop=True)


def apply(con: sqlite3.Connection, ranked: pd.DataFrame, run_id: str, spec: ReviewFilter) -> pd.DataFrame:
    """A ranked word frame of one run (with ITEM_COLUMNS) with its review columns (item_key, verdict,
    n_verdicts, n_comments, tags, status) joined, filtered and re-sorted by `spec` (see `select`)."""
    summary = review.review_summary(con, run_id)
    words = summary.loc[summary["kind"] == "word", [*ITEM_COLUMNS, "item_key", "verdict", "n_verdicts",
                                                     "n_comments", "tags", "status"]]
    joined = ranked.merge(words.astype({c: ranked[c].dtype for c in ITEM_COLUMNS}), on=list(ITEM_COLUMNS),
                          how="left")
    joined = joined.fillna({"n_verdicts": 0, "n_comments": 0, "status": "open"})
    return select(con, joined, spec)


def reviewed_search(
    db: data.Database, con: sqlite3.Connection, filters: Mapping[str, Any], spec: ReviewFilter
) -> pd.DataFrame | None:
    """Every row of a Search (db.queries.export_frame filters, with sort) that passes the review filter, in
    review-then-metric order with review columns; None when no review filter or sort is chosen (the page
    then pages through the database directly)."""
    if not spec.active:
        return None
    return apply(con, data.ask(db, "export_frame", **filters), filters["run_id"], spec)


def search_export(db: data.Database, fmt: str, filters: Mapping[str, Any], reviewed: pd.DataFrame | None) -> bytes:
    """A Search's download: its `reviewed_search` rows when a review filter is chosen, else data.export."""
    return data.export(db, fmt, filters) if reviewed is None else data.frame_bytes(reviewed, fmt)


def page_rows(db: data.Database, reviewed: pd.DataFrame, offset: int, limit: int) -> pd.DataFrame:
    """One page of `reviewed_search` rows with their maps, as search_words gives them."""
    return item_words(db, reviewed.iloc[offset:offset + limit], with_maps=True)


def verdicts_by_word(db: data.Database, con: sqlite3.Connection, run_id: str, method: str, layer: int) -> pd.DataFrame:
    """Per word (and the category it names) of one run slice: n_reviewed, one n_<verdict> column per
    verdict (items whose majority verdict it is), n_disputed and the tags in use, for Statistics."""
    summary = review.review_summary(con, run_id)
    words = summary[(summary["kind"] == "word") & (summary["method"] == method) & (summary["layer"] == layer)]
    named = item_words(db, words)[[*ITEM_COLUMNS, "word", "category_id"]]
    joined = named.merge(words.astype({c: named[c].dtype for c in ITEM_COLUMNS}), on=list(ITEM_COLUMNS))
    per_verdict = {f"n_{v}": (joined["verdict"] == v).astype(int) for v in review.VERDICTS}
    joined = joined.assign(**per_verdict, tag_list=joined["tags"].map(tag_list))
    return (
        joined.groupby(["word", "category_id"], dropna=False)
        .agg(n_reviewed=("item_key", "size"), **{c: (c, "sum") for c in per_verdict},
             n_disputed=("disputed", "sum"), tags=("tag_list", lambda lists: sorted({t for x in lists for t in x})))
        .reset_index()
        .astype({"n_disputed": int})
    )


def statistics_view(ctx: data.Context, words: pd.DataFrame, mean_column: str) -> None:
    """The Statistics page's "reviews" view: how reviewers judged each word of the slice, filtered by
    verdict and tag and sorted by a verdict's share, beside the word's statistics (`words`, word_stats)."""
    con = review_session.connection()
    per_word = verdicts_by_word(ctx.db, con, ctx.run["run_id"], ctx.method, ctx.layer)
    if per_word.empty:
        st.info(f"No {ctx.method} layer {ctx.layer} word of this run has been reviewed yet.")
        return
    left, middle, right = st.columns(3)
    verdict = left.selectbox("With verdict", [ANY, *review.VERDICTS], key="st_verdict", bind=state.BIND)
    tag = middle.selectbox("With tag", [ANY, *review.all_tags(con)["tag"]], key="st_tag", bind=state.BIND)
    shares = {f"share_{v}": v for v in review.VERDICTS}
    sort = right.selectbox("Sort by", ["n_reviewed", "n_disputed", *shares], key="st_sort", bind=state.BIND,
                           format_func=lambda c: f"share {shares[c]}" if c in shares else c.replace("_", " "))
    table = per_word.merge(words[["word", "category_id", "category", "n", mean_column]], how="left",
                           on=["word", "category_id"])
    table = table.assign(**{c: table[f"n_{v}"] / table["n_reviewed"] for c, v in shares.items()})
    if verdict != ANY:
        table = table[table[f"n_{verdict}"] > 0]
    if tag != ANY:
        table = table[table["tags"].map(lambda tags: tag in tags)]
    if table.empty:
        st.info("No reviewed word matches.")
        return
    table = table.sort_values([sort, "n_reviewed"], ascending=False, kind="stable")
    table["search"] = [
        "./?" + urlencode(state.link_params(by="word", word=w, rv_verdict=None if verdict == ANY else verdict))
        for w in table["word"]
    ]
    shown = plotly_labels(table.head(STATISTICS_WORDS), "word")
    top = shown.melt(id_vars="word", value_vars=[f"n_{v}" for v in review.VERDICTS], var_name="verdict",
                     value_name="items")
    top["verdict"] = top["verdict"].str.removeprefix("n_")
    fig = px.bar(top, x="items", y="word", color="verdict", orientation="h", title="Majority verdict per word",
                 category_orders={"word": shown["word"].tolist(), "verdict": list(review.VERDICTS)})
    st.plotly_chart(fig, key="review_verdicts")
    st.dataframe(table.drop(columns=list(shares)), hide_index=True, width="stretch", column_config={
        "search": st.column_config.LinkColumn("search", display_text="open"),
        "tags": st.column_config.ListColumn("tags"),
        mean_column: st.column_config.NumberColumn(mean_column, format="%.3f")})
