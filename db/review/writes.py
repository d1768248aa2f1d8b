"""Every change to the review store: verdicts, tags, comments, item status, queues and assignments.

Each write checks the actor's rights, runs in one short write transaction and appends its audit row
in that same transaction.
"""

import json
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

from db.review.audit import append_audit
from db.review.model import ITEM_COLUMNS, MAX_NAME_CHARS, MAX_TAG_CHARS, MAX_TEXT_CHARS, VERDICTS, Actor, Item, require
from db.review.store import one, write

_ENSURE_ITEM = """
INSERT OR IGNORE INTO items (item_key, kind, run_id, image_id, caption_id, word_index, method, layer)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)"""


_GET_VERDICT = "SELECT verdict, note FROM verdicts WHERE item_key = ? AND reviewer = ?"
_UPSERT_VERDICT = """
INSERT INTO verdicts (item_key, reviewer, verdict, note, at) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (item_key, reviewer) DO UPDATE SET
    verdict = excluded.verdict, note = excluded.note, at = excluded.at"""
_DELETE_VERDICT = "DELETE FROM verdicts WHERE item_key = ? AND reviewer = ?"
_HAS_TAG = "SELECT 1 FROM tags WHERE item_key = ? AND tag = ?"
_INSERT_TAG = "INSERT INTO tags (item_key, tag, added_by, at) VALUES (?, ?, ?, ?)"
_DELETE_TAG = "DELETE FROM tags WHERE item_key = ? AND tag = ?"
_INSERT_COMMENT = "INSERT INTO comments (item_key, author, body, at) VALUES (?, ?, ?, ?)"
_GET_STATUS = "SELECT status FROM items WHERE item_key = ?"
_SET_STATUS = "UPDATE items SET status = ?, status_by = ?, status_at = ? WHERE item_key = ?"
_INSERT_QUEUE = "INSERT INTO queues (name, search_spec, created_by, at) VALUES (?, ?, ?, ?)"
_INSERT_QUEUE_ITEM = "INSERT INTO queue_items (queue_id, position, item_key) VALUES (?, ?, ?)"
_QUEUE_EXISTS = "SELECT 1 FROM queues WHERE queue_id = ?"
_IS_ASSIGNED = "SELECT 1 FROM queue_reviewers WHERE queue_id = ? AND reviewer = ?"
_ASSIGN = "INSERT INTO queue_reviewers (queue_id, reviewer, assigned_by, at) VALUES (?, ?, ?, ?)"
_UNASSIGN = "DELETE FROM queue_reviewers WHERE queue_id = ? AND reviewer = ?"


def _text(value: str, what: str, max_chars: int, *, allow_empty: bool = False) -> str:
    """Check a free-text input; it is stored verbatim (bound parameter), never interpreted."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string")
    if not allow_empty and not value.strip():
        raise ValueError(f"{what} is empty")
    if len(value) > max_chars:
        raise ValueError(f"{what} is longer than {max_chars} characters")
    return value


def _item_row(item: Item) -> tuple:
    return (item.key, item.kind, *(getattr(item, c) for c in ITEM_COLUMNS))


def _ensure_item(con: sqlite3.Connection, item: Item) -> None:
    con.execute(_ENSURE_ITEM, _item_row(item))


# ---------------------------------------------------------------------------------------------- writes


def set_verdict(con: sqlite3.Connection, actor: Actor, item: Item, verdict: str, note: str = "") -> bool:
    """Set the actor's verdict (one of VERDICTS) and optional note on an item; False if unchanged."""
    require(actor, "reviewer", "set verdicts")
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    note = _text(note, "note", MAX_TEXT_CHARS, allow_empty=True)
    after = {"verdict": verdict, "note": note}
    with write(con) as at:
        _ensure_item(con, item)
        row = one(con, _GET_VERDICT, (item.key, actor.user))
        before = dict(row) if row else None
        if before == after:
            return False
        con.execute(_UPSERT_VERDICT, (item.key, actor.user, verdict, note, at))
        append_audit(con, at, actor, "set_verdict", item.key, before, after)
    return True


def clear_verdict(con: sqlite3.Connection, actor: Actor, item: Item) -> bool:
    """Withdraw the actor's verdict on an item; False if there was none."""
    require(actor, "reviewer", "clear verdicts")
    with write(con) as at:
        row = one(con, _GET_VERDICT, (item.key, actor.user))
        if row is None:
            return False
        con.execute(_DELETE_VERDICT, (item.key, actor.user))
        append_audit(con, at, actor, "clear_verdict", item.key, dict(row), None)
    return True


def add_tag(con: sqlite3.Connection, actor: Actor, item: Item, tag: str) -> bool:
    """Tag an item (free-form, stored verbatim); False if it already had the tag."""
    require(actor, "reviewer", "add tags")
    tag = _text(tag, "tag", MAX_TAG_CHARS)
    with write(con) as at:
        _ensure_item(con, item)
        if one(con, _HAS_TAG, (item.key, tag)):
            return False
        con.execute(_INSERT_TAG, (item.key, tag, actor.user, at))
        append_audit(con, at, actor, "add_tag", item.key, None, {"tag": tag})
    return True


def remove_tag(con: sqlite3.Connection, actor: Actor, item: Item, tag: str) -> bool:
    """Remove a tag from an item, whoever added it; False if the item did not have it."""
    require(actor, "reviewer", "remove tags")
    with write(con) as at:
        if not one(con, _HAS_TAG, (item.key, tag)):
            return False
        con.execute(_DELETE_TAG, (item.key, tag))
        append_audit(con, at, actor, "remove_tag", item.key, {"tag": tag}, None)
    return True


def add_comment(con: sqlite3.Connection, actor: Actor, item: Item, body: str) -> int:
    """Append a message to an item's comment thread; returns its comment_id."""
    require(actor, "reviewer", "comment")
    body = _text(body, "comment", MAX_TEXT_CHARS)
    with write(con) as at:
        _ensure_item(con, item)
        comment_id = con.execute(_INSERT_COMMENT, (item.key, actor.user, body, at)).lastrowid
        append_audit(con, at, actor, "add_comment", item.key, None, {"comment_id": comment_id, "body": body})
    return comment_id


def _set_status(con: sqlite3.Connection, actor: Actor, item: Item, status: str, action: str) -> bool:
    require(actor, "reviewer", action)
    with write(con) as at:
        _ensure_item(con, item)
        before = one(con, _GET_STATUS, (item.key,))["status"]
        if before == status:
            return False
        con.execute(_SET_STATUS, (status, actor.user, at, item.key))
        append_audit(con, at, actor, action, item.key, {"status": before}, {"status": status})
    return True


def resolve(con: sqlite3.Connection, actor: Actor, item: Item) -> bool:
    """Mark an item's discussion resolved; False if it already was."""
    return _set_status(con, actor, item, "resolved", "resolve")


def reopen(con: sqlite3.Connection, actor: Actor, item: Item) -> bool:
    """Reopen a resolved item; False if it was open."""
    return _set_status(con, actor, item, "open", "reopen")


def create_queue(
    con: sqlite3.Connection,
    actor: Actor,
    name: str,
    search_spec: Mapping[str, Any],
    items: Iterable[Item],
    reviewers: Iterable[str] = (),
) -> int:
    """Create a queue (admin) from a search: its filters as JSON and its result items, frozen in order.

    Args:
        name: unique display name, e.g. "background-heavy 'dog', Grad-CAM, layer 8".
        search_spec: the search filters (JSON-serialisable), kept so the queue says where it came from.
        items: the search result; duplicates are dropped, order is kept.
        reviewers: user names to assign at once (see `assign_queue`).
    Returns the new queue_id.
    """
    require(actor, "admin", "create queues")
    name = _text(name, "queue name", MAX_NAME_CHARS)
    spec = json.dumps(dict(search_spec), sort_keys=True, ensure_ascii=False, allow_nan=False)
    unique = list({item.key: item for item in items}.values())
    if not unique:
        raise ValueError("a queue needs at least one item")
    with write(con) as at:
        try:
            queue_id = con.execute(_INSERT_QUEUE, (name, spec, actor.user, at)).lastrowid
        except sqlite3.IntegrityError:
            raise ValueError(f"a queue named {name!r} exists") from None
        con.executemany(_ENSURE_ITEM, [_item_row(item) for item in unique])
        con.executemany(_INSERT_QUEUE_ITEM, [(queue_id, i, item.key) for i, item in enumerate(unique)])
        after = {"name": name, "search_spec": json.loads(spec), "n_items": len(unique)}
        append_audit(con, at, actor, "create_queue", f"queue:{queue_id}", None, after)
        for reviewer in dict.fromkeys(reviewers):
            _assign(con, at, actor, queue_id, reviewer)
    return queue_id


def _assign(con: sqlite3.Connection, at: str, actor: Actor, queue_id: int, reviewer: str) -> bool:
    reviewer = _text(reviewer, "reviewer", MAX_NAME_CHARS)
    if not one(con, _QUEUE_EXISTS, (queue_id,)):
        raise ValueError(f"no queue {queue_id}")
    if one(con, _IS_ASSIGNED, (queue_id, reviewer)):
        return False
    con.execute(_ASSIGN, (queue_id, reviewer, actor.user, at))
    append_audit(con, at, actor, "assign_queue", f"queue:{queue_id}", None, {"reviewer": reviewer})
    return True


def assign_queue(con: sqlite3.Connection, actor: Actor, queue_id: int, reviewer: str) -> bool:
    """Assign a queue to a reviewer (admin); False if already assigned."""
    require(actor, "admin", "assign queues")
    with write(con) as at:
        return _assign(con, at, actor, queue_id, reviewer)


def unassign_queue(con: sqlite3.Connection, actor: Actor, queue_id: int, reviewer: str) -> bool:
    """Take a queue away from a reviewer (admin); their verdicts stay. False if not assigned."""
    require(actor, "admin", "unassign queues")
    with write(con) as at:
        if not one(con, _IS_ASSIGNED, (queue_id, reviewer)):
            return False
        con.execute(_UNASSIGN, (queue_id, reviewer))
        append_audit(con, at, actor, "unassign_queue", f"queue:{queue_id}", {"reviewer": reviewer}, None)
    return True
