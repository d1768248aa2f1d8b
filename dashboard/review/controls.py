"""Review widgets that other pages embed: the review filters of Search and Reviews, the queue form of
Review admin, and the reviews view of Statistics. The data they show comes from db/review/ (the joins
with the extraction database: db/review/joined.py)."""

from __future__ import annotations

import sqlite3
from typing import Any
from urllib.parse import urlencode

import pandas as pd
import plotly.express as px
import streamlit as st

from dashboard import data, questions, state
from dashboard.markup import literal, plotly_labels
from dashboard.review import session
from db import review
from db.queries import WordFilter
from db.review import joined
from db.review.joined import ANY, REVIEW_SORTS, STATUSES, UNREVIEWED, ReviewFilter

QUEUE_LIMIT = 50  # default number of search results a new queue takes
STATISTICS_WORDS = 25  # words in the reviews chart of the Statistics page


# ---------------------------------------------------------------------------------------------- queues


def create_queue_from_search(
    db: data.Database, name: str, where: WordFilter, sort: str, descending: bool, limit: int, reviewers: list[str]
) -> tuple[int, int]:
    """Make a queue of the first `limit` results of a search, as this session's actor; (queue_id, items)."""
    rows = questions.search_keys(db, where, sort, descending, limit)
    items = [review.Item.from_row(row) for row in rows.to_dict("records")]
    spec = where.spec() | {"sort": sort, "descending": descending, "limit": limit}
    queue_id = review.create_queue(session.connection(), session.actor(), name, spec, items, reviewers)
    return queue_id, len(items)


def _create_queue(db: data.Database, search: tuple[WordFilter, str, bool], key: str) -> None:
    name, limit = st.session_state[f"{key}_name"], st.session_state[f"{key}_limit"]
    try:
        queue_id, n = create_queue_from_search(db, name, *search, limit, st.session_state[f"{key}_reviewers"])
    except (PermissionError, ValueError) as exc:
        st.session_state[f"{key}_outcome"] = ("error", str(exc))
    else:
        message = f"Queue {queue_id} “{literal(name)}” created with {n} items."
        st.session_state[f"{key}_outcome"] = ("success", message)


def queue_form(
    db: data.Database, search: tuple[WordFilter, str, bool], default_name: str, total: int, key: str
) -> None:
    """Admin form: name, size and reviewers of a queue made from a search (filter, sort, descending; it
    matches `total` rows); creates it on submit."""
    with st.form(f"{key}_form"):
        st.text_input("Queue name", value=default_name, key=f"{key}_name", max_chars=review.MAX_NAME_CHARS)
        st.number_input(
            "Items (the top of the ranking)",
            min_value=1,
            max_value=max(1, total),
            value=min(QUEUE_LIMIT, max(1, total)),
            key=f"{key}_limit",
        )
        st.multiselect(
            "Assign to",
            session.reviewer_names(),
            key=f"{key}_reviewers",
            accept_new_options=True,
            placeholder="Reviewers (type an e-mail for OIDC users)",
        )
        st.form_submit_button(
            "Create queue",
            icon=":material/playlist_add:",
            type="primary",
            on_click=_create_queue,
            args=(db, search, key),
            disabled=total == 0,
        )
    level, message = st.session_state.pop(f"{key}_outcome", (None, None))
    if level == "success":
        st.success(message)
    elif level == "error":  # db.review's message may quote the name as typed
        st.error(literal(message))


# ---------------------------------------------------------------------------------------------- Search, Statistics


def filter_controls(
    con: sqlite3.Connection, left: Any, right: Any, on_change: Any = None, off_why: str | None = None
) -> ReviewFilter:
    """Verdict, tag and status filters and a review sort key (bound to the URL), drawn in two columns;
    disabled, with `off_why` as their help, where they do not apply."""
    tags = review.all_tags(con)["tag"].tolist()
    common = {"bind": state.BIND, "on_change": on_change, "disabled": off_why is not None}
    verdict = left.selectbox(
        "Verdict",
        [ANY, UNREVIEWED, *review.VERDICTS],
        key="rv_verdict",
        help=off_why or "Words with this verdict by any reviewer.",
        **common,
    )
    tag = right.selectbox("Tag", [ANY, *tags], key="rv_tag", help=off_why, **common)
    status = left.selectbox("Review status", [ANY, *STATUSES], key="rv_status", help=off_why, **common)
    sort = right.selectbox(
        "Sort by review first",
        [None, *REVIEW_SORTS],
        key="rv_sort",
        format_func=lambda s: "no" if s is None else s.replace("_", " "),
        help=off_why
        or "verdict: majority verdict in the order aligned … other, then unjudged; "
        "n verdicts / n comments: most first. Ties keep the metric ranking.",
        **common,
    )
    return ReviewFilter(verdict, tag, status, sort)


def statistics_view(ctx: data.Context, words: pd.DataFrame, mean_column: str) -> None:
    """The Statistics page's "reviews" view: how reviewers judged each word of the slice, filtered by
    verdict and tag and sorted by a verdict's share, beside the word's statistics (`words`, word_stats)."""
    con = session.connection()
    per_word = joined.verdicts_by_word(ctx.db.connection(), con, ctx.run["run_id"], ctx.method, ctx.layer)
    if per_word.empty:
        st.info(f"No {ctx.method} layer {ctx.layer} word of this run has been reviewed yet.")
        return
    left, middle, right = st.columns(3)
    verdict = left.selectbox("With verdict", [ANY, *review.VERDICTS], key="st_verdict", bind=state.BIND)
    tag = middle.selectbox("With tag", [ANY, *review.all_tags(con)["tag"]], key="st_tag", bind=state.BIND)
    shares = {f"share_{v}": v for v in review.VERDICTS}
    sort = right.selectbox(
        "Sort by",
        ["n_reviewed", "n_disputed", *shares],
        key="st_sort",
        bind=state.BIND,
        format_func=lambda c: f"share {shares[c]}" if c in shares else c.replace("_", " "),
    )
    table = per_word.merge(
        words[["word", "category_id", "category", "n", mean_column]], how="left", on=["word", "category_id"]
    )
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
    top = shown.melt(
        id_vars="word", value_vars=[f"n_{v}" for v in review.VERDICTS], var_name="verdict", value_name="items"
    )
    top["verdict"] = top["verdict"].str.removeprefix("n_")
    fig = px.bar(
        top,
        x="items",
        y="word",
        color="verdict",
        orientation="h",
        title="Majority verdict per word",
        category_orders={"word": shown["word"].tolist(), "verdict": list(review.VERDICTS)},
    )
    st.plotly_chart(fig, key="review_verdicts")
    st.dataframe(
        table.drop(columns=list(shares)),
        hide_index=True,
        width="stretch",
        column_config={
            "search": st.column_config.LinkColumn("search", display_text="open"),
            "tags": st.column_config.ListColumn("tags"),
            mean_column: st.column_config.NumberColumn(mean_column, format="%.3f"),
        },
    )
