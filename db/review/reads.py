"""Reads of the review store: one item's review, the export summary, item filters, queues and progress."""

import json
import sqlite3
from typing import Any, Literal

import pandas as pd

from db.review.model import CommentEntry, Item, ItemReview, QueueEntry, TagEntry, VerdictEntry
from db.review.store import ITEM_SELECT, frame, json_text, one, snapshot, typed_items

_ITEM_STATUS = "SELECT status, status_by, status_at FROM items WHERE item_key = ?"
_ITEM_VERDICTS = "SELECT reviewer, verdict, note, at FROM verdicts WHERE item_key = ? ORDER BY at, reviewer"
_ITEM_TAGS = "SELECT tag, added_by, at FROM tags WHERE item_key = ? ORDER BY tag"
_ITEM_COMMENTS = "SELECT comment_id, author, body, at FROM comments WHERE item_key = ? ORDER BY comment_id"

_SUMMARY_ITEMS = f"""
SELECT {ITEM_SELECT}, i.status, i.status_by, i.status_at FROM items i
WHERE (:run_id IS NULL OR i.run_id = :run_id)
  AND (i.status_by IS NOT NULL
       OR EXISTS (SELECT 1 FROM verdicts v WHERE v.item_key = i.item_key)
       OR EXISTS (SELECT 1 FROM tags t WHERE t.item_key = i.item_key)
       OR EXISTS (SELECT 1 FROM comments c WHERE c.item_key = i.item_key))
ORDER BY i.item_key"""
_SUMMARY_VERDICTS = """
SELECT v.item_key, v.reviewer, v.verdict, v.note, v.at FROM verdicts v JOIN items i USING (item_key)
WHERE :run_id IS NULL OR i.run_id = :run_id ORDER BY v.item_key, v.at, v.reviewer"""
_SUMMARY_TAGS = """
SELECT t.item_key, t.tag FROM tags t JOIN items i USING (item_key)
WHERE :run_id IS NULL OR i.run_id = :run_id ORDER BY t.item_key, t.tag"""
_SUMMARY_COMMENTS = """
SELECT c.item_key, c.author, c.at, c.body FROM comments c JOIN items i USING (item_key)
WHERE :run_id IS NULL OR i.run_id = :run_id ORDER BY c.item_key, c.comment_id"""

_FIND_ITEMS = f"""
SELECT {ITEM_SELECT}, i.status FROM items i
WHERE (:run_id IS NULL OR i.run_id = :run_id)
  AND (:status IS NULL OR i.status = :status)
  AND ((:verdict IS NULL AND :reviewer IS NULL) OR EXISTS (
       SELECT 1 FROM verdicts v WHERE v.item_key = i.item_key
       AND (:verdict IS NULL OR v.verdict = :verdict) AND (:reviewer IS NULL OR v.reviewer = :reviewer)))
  AND (:tag IS NULL OR EXISTS (SELECT 1 FROM tags t WHERE t.item_key = i.item_key AND t.tag = :tag))
ORDER BY i.item_key"""
_ALL_TAGS = "SELECT tag, COUNT(*) AS n FROM tags GROUP BY tag ORDER BY n DESC, tag"

_LIST_QUEUES = """
SELECT q.queue_id, q.name, q.search_spec, q.created_by, q.at,
       (SELECT COUNT(*) FROM queue_items qi WHERE qi.queue_id = q.queue_id) AS n_items,
       (SELECT COUNT(DISTINCT qi.item_key) FROM queue_items qi JOIN verdicts v USING (item_key)
        WHERE qi.queue_id = q.queue_id) AS n_judged,
       (SELECT COUNT(*) FROM queue_items qi JOIN verdicts v USING (item_key)
        WHERE qi.queue_id = q.queue_id AND v.reviewer = :reviewer) AS n_reviewed
FROM queues q
WHERE :reviewer IS NULL
   OR EXISTS (SELECT 1 FROM queue_reviewers r WHERE r.queue_id = q.queue_id AND r.reviewer = :reviewer)
ORDER BY q.queue_id"""
_QUEUE_REVIEWERS = "SELECT queue_id, reviewer FROM queue_reviewers ORDER BY queue_id, reviewer"
_QUEUE_ITEMS = f"""
SELECT qi.position, {ITEM_SELECT}, i.status,
       (SELECT v.verdict FROM verdicts v WHERE v.item_key = qi.item_key AND v.reviewer = :reviewer)
           AS reviewer_verdict,
       (SELECT COUNT(*) FROM verdicts v WHERE v.item_key = qi.item_key) AS n_verdicts
FROM queue_items qi JOIN items i USING (item_key)
WHERE qi.queue_id = :queue_id ORDER BY qi.position"""
# Next and previous differ in comparison and order, which cannot be bound parameters: two statements.
_NEIGHBOUR_FILTER = """
WHERE qi.queue_id = :queue_id AND qi.position {op} :position
  AND (NOT :unreviewed_only OR NOT EXISTS (
       SELECT 1 FROM verdicts v WHERE v.item_key = qi.item_key AND v.reviewer = :reviewer))"""
_NEXT_ITEM = (
    "SELECT qi.position, qi.item_key FROM queue_items qi"
    + _NEIGHBOUR_FILTER.format(op=">")
    + " ORDER BY qi.position LIMIT 1"
)
_PREVIOUS_ITEM = (
    "SELECT qi.position, qi.item_key FROM queue_items qi"
    + _NEIGHBOUR_FILTER.format(op="<")
    + " ORDER BY qi.position DESC LIMIT 1"
)
_QUEUE_PROGRESS = """
WITH q AS (SELECT item_key FROM queue_items WHERE queue_id = :queue_id),
people AS (SELECT reviewer FROM queue_reviewers WHERE queue_id = :queue_id
           UNION SELECT v.reviewer FROM verdicts v JOIN q USING (item_key))
SELECT p.reviewer,
       EXISTS (SELECT 1 FROM queue_reviewers r WHERE r.queue_id = :queue_id AND r.reviewer = p.reviewer)
           AS assigned,
       (SELECT COUNT(*) FROM verdicts v JOIN q USING (item_key) WHERE v.reviewer = p.reviewer) AS reviewed,
       (SELECT COUNT(*) FROM q) AS total
FROM people p ORDER BY p.reviewer"""


# ---------------------------------------------------------------------------------------------- reads


def item_review(con: sqlite3.Connection, item: Item) -> ItemReview:
    """Status, verdicts, tags and comment thread of one item (empty and open if never reviewed)."""
    with snapshot(con):
        status = one(con, _ITEM_STATUS, (item.key,))
        verdicts = tuple(VerdictEntry(**r) for r in con.execute(_ITEM_VERDICTS, (item.key,)))
        tags = tuple(TagEntry(**r) for r in con.execute(_ITEM_TAGS, (item.key,)))
        comments = tuple(CommentEntry(**r) for r in con.execute(_ITEM_COMMENTS, (item.key,)))
    return ItemReview(
        item=item,
        status=status["status"] if status else "open",
        status_by=status["status_by"] if status else None,
        status_at=status["status_at"] if status else None,
        verdicts=verdicts,
        tags=tags,
        comments=comments,
    )


def review_summary(con: sqlite3.Connection, run_id: str | None = None) -> pd.DataFrame:
    """One row per reviewed item (any verdict, tag, comment or status change): the export table.

    Columns: item_key, kind, the ITEM_COLUMNS (word columns null for image items), status, status_by,
    status_at, verdict (the most common verdict; null on a tie), disputed (reviewers differ), n_verdicts,
    verdicts (JSON list of {reviewer, verdict, note, at}), tags (JSON list), n_comments,
    comments (JSON list of {author, at, body}). JSON text keeps CSV and Parquet exports alike.
    """
    params = {"run_id": run_id}
    with snapshot(con):
        items = typed_items(frame(con, _SUMMARY_ITEMS, params))
        verdicts = frame(con, _SUMMARY_VERDICTS, params)
        tags = frame(con, _SUMMARY_TAGS, params)
        comments = frame(con, _SUMMARY_COMMENTS, params)

    by_item_verdicts = {k: g.drop(columns="item_key") for k, g in verdicts.groupby("item_key", sort=False)}
    by_item_tags = {k: list(g["tag"]) for k, g in tags.groupby("item_key", sort=False)}
    by_item_comments = {k: g.drop(columns="item_key") for k, g in comments.groupby("item_key", sort=False)}
    empty_verdicts = verdicts.drop(columns="item_key").iloc[:0]

    def row_of(key: str) -> dict[str, Any]:
        v = by_item_verdicts.get(key, empty_verdicts)
        counts = v["verdict"].value_counts()
        tie = len(counts) > 1 and counts.iloc[0] == counts.iloc[1]
        top = None if counts.empty or tie else counts.index[0]
        c = by_item_comments.get(key)
        return {
            "verdict": top,
            "disputed": len(counts) > 1,
            "n_verdicts": len(v),
            "verdicts": json_text(v.to_dict("records")),
            "tags": json_text(by_item_tags.get(key, [])),
            "n_comments": 0 if c is None else len(c),
            "comments": json_text([] if c is None else c.to_dict("records")),
        }

    columns = ["verdict", "disputed", "n_verdicts", "verdicts", "tags", "n_comments", "comments"]
    extra = pd.DataFrame([row_of(k) for k in items["item_key"]], index=items.index, columns=columns)
    # Nullable dtypes, so that rows left unmatched by `join_metrics` stay integral and boolean.
    extra = extra.astype({"disputed": "boolean", "n_verdicts": "Int64", "n_comments": "Int64"})
    return pd.concat([items, extra], axis=1)


def find_items(
    con: sqlite3.Connection,
    *,
    verdict: str | None = None,
    tag: str | None = None,
    status: str | None = None,
    reviewer: str | None = None,
    run_id: str | None = None,
) -> pd.DataFrame:
    """Items matching every given filter (a verdict by anyone, or by `reviewer` when given; a tag; a status).

    Columns: item_key, kind, ITEM_COLUMNS, status. The dashboard joins these with its search results.
    """
    params = {"verdict": verdict, "tag": tag, "status": status, "reviewer": reviewer, "run_id": run_id}
    return typed_items(frame(con, _FIND_ITEMS, params))


def all_tags(con: sqlite3.Connection) -> pd.DataFrame:
    """Every tag in use with its number of items (columns tag, n), most used first."""
    return frame(con, _ALL_TAGS)


def list_queues(con: sqlite3.Connection, reviewer: str | None = None) -> pd.DataFrame:
    """Queues with progress; with `reviewer`, only the queues assigned to them and their own progress.

    Columns: queue_id, name, search_spec (dict), created_by, at, reviewers (list), n_items, n_judged
    (items with at least one verdict), and with `reviewer` also n_reviewed (items they judged).
    """
    with snapshot(con):
        queues = frame(con, _LIST_QUEUES, {"reviewer": reviewer})
        assigned = frame(con, _QUEUE_REVIEWERS).groupby("queue_id")["reviewer"].agg(list)
    queues["search_spec"] = queues["search_spec"].map(json.loads)
    queues.insert(5, "reviewers", [assigned.get(q, []) for q in queues["queue_id"]])
    return queues if reviewer is not None else queues.drop(columns="n_reviewed")


def queue_items(con: sqlite3.Connection, queue_id: int, reviewer: str | None = None) -> pd.DataFrame:
    """A queue's items in order: position, item_key, kind, ITEM_COLUMNS, status, reviewer_verdict (the
    given reviewer's verdict, null if none or no reviewer) and n_verdicts (by anyone)."""
    return typed_items(frame(con, _QUEUE_ITEMS, {"queue_id": queue_id, "reviewer": reviewer}))


def _neighbour(
    con: sqlite3.Connection, sql: str, queue_id: int, reviewer: str, position: int, unreviewed_only: bool
) -> QueueEntry | None:
    params = {
        "queue_id": queue_id, "reviewer": reviewer, "position": position, "unreviewed_only": unreviewed_only,
    }  # fmt: skip
    row = one(con, sql, params)
    return None if row is None else QueueEntry(row["position"], Item.from_key(row["item_key"]))


def neighbour_item(
    con: sqlite3.Connection,
    queue_id: int,
    reviewer: str,
    position: int | None = None,
    *,
    direction: Literal["next", "previous"] = "next",
    unreviewed_only: bool = False,
) -> QueueEntry | None:
    """The entry after (`direction` "next") or before `position` (the first or last when None), skipping
    items `reviewer` judged if `unreviewed_only`; None past the end."""
    if direction == "next":
        return _neighbour(con, _NEXT_ITEM, queue_id, reviewer, -1 if position is None else position, unreviewed_only)
    start = 2**62 if position is None else position
    return _neighbour(con, _PREVIOUS_ITEM, queue_id, reviewer, start, unreviewed_only)


def queue_progress(con: sqlite3.Connection, queue_id: int) -> pd.DataFrame:
    """Per reviewer of a queue (assigned, or who judged any of its items): reviewer, assigned, reviewed,
    total, fraction."""
    df = frame(con, _QUEUE_PROGRESS, {"queue_id": queue_id})
    df["assigned"] = df["assigned"].astype(bool)
    df["fraction"] = (df["reviewed"] / df["total"]).astype(float)
    return df
