"""The append-only audit log: appending a row, reading the log, and verifying its hash chain.

Every write appends who, when, what, and the value before and after. The database refuses to update,
delete or replace a row (triggers, db/review/schema.py), and the store's connections may not drop tables
or triggers (an authorizer), so nothing the application runs can rewrite the log. Against someone who can
write the file itself, each row also stores `row_hash`, the sha256 of the previous row's hash and its own
content: `verify_audit_chain` finds the first row that was edited, inserted or removed. Whoever can write
the file can still recompute the whole chain; only a copy of the chain head kept elsewhere shows that.
"""

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

from db.review.model import Actor, require
from db.review.store import frame, iso, json_text, one, snapshot

CHAIN_START = "0" * 64  # the "previous hash" of the first audit row


_AUDIT_COLUMNS = "audit_id, at, actor, role, action, target, value_before, value_after"  # what row_hash covers
_AUDIT = f"INSERT INTO audit_log ({_AUDIT_COLUMNS}, row_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_LAST_AUDIT = "SELECT audit_id, row_hash FROM audit_log ORDER BY audit_id DESC LIMIT 1"
AUDIT_CHAIN = f"SELECT {_AUDIT_COLUMNS}, row_hash FROM audit_log ORDER BY audit_id"


_AUDIT_LOG = f"""
SELECT {_AUDIT_COLUMNS} FROM audit_log
WHERE (:user IS NULL OR actor = :user)
  AND (:action IS NULL OR action = :action)
  AND (:target IS NULL OR target = :target)
  AND (:since IS NULL OR at >= :since)
  AND (:until IS NULL OR at < :until)
ORDER BY audit_id DESC LIMIT :limit"""


@dataclass(frozen=True)
class ChainCheck:
    """What `verify_audit_chain` found."""

    n_rows: int
    first_broken: int | None  # audit_id of the first row whose row_hash does not follow; None: all do
    head: str  # the last row's row_hash (CHAIN_START when empty): a copy kept elsewhere dates the log

    @property
    def ok(self) -> bool:
        """Whether every row's hash follows from the rows before it."""
        return self.first_broken is None


def audit_row_hash(previous: str, row: tuple) -> str:
    """The row_hash of an audit row: sha256 (hex) of the previous row's row_hash and this row's values
    (audit_id, at, actor, role, action, target, value_before, value_after) as a JSON list."""
    content = json.dumps([previous, *row], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(content.encode()).hexdigest()


def append_audit(
    con: sqlite3.Connection, at: str, actor: Actor, action: str, target: str, before: Any, after: Any
) -> None:
    # Inside the caller's write transaction, so no other writer can append between reading the last row
    # and appending this one.
    last = one(con, _LAST_AUDIT)
    audit_id, previous = (1, CHAIN_START) if last is None else (last["audit_id"] + 1, last["row_hash"])
    row = (audit_id, at, actor.user, actor.role, action, target, json_text(before), json_text(after))
    con.execute(_AUDIT, (*row, audit_row_hash(previous, row)))


def audit_log(
    con: sqlite3.Connection,
    actor: Actor,
    *,
    user: str | None = None,
    action: str | None = None,
    target: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
) -> pd.DataFrame:
    """The audit log (admin), newest first, filtered by acting user, action (ACTIONS), target (an item
    key or 'queue:<id>') and time [since, until). value_before/value_after are JSON text.
    """
    require(actor, "admin", "read the audit log")
    params = {
        "user": user, "action": action, "target": target,
        "since": None if since is None else iso(since), "until": None if until is None else iso(until),
        "limit": -1 if limit is None else limit,  # SQLite: a negative LIMIT means none
    }  # fmt: skip
    return frame(con, _AUDIT_LOG, params)


def verify_audit_chain(con: sqlite3.Connection, actor: Actor) -> ChainCheck:
    """Recompute every audit row's hash (admin): the first row that was edited, or inserted or removed
    before its successor, breaks the chain from there on."""
    require(actor, "admin", "verify the audit log")
    n_rows, first_broken, previous = 0, None, CHAIN_START
    with snapshot(con):
        for row in con.execute(AUDIT_CHAIN):
            n_rows += 1
            if first_broken is None and row["row_hash"] != audit_row_hash(previous, tuple(row)[:-1]):
                first_broken = row["audit_id"]
            previous = row["row_hash"]
    return ChainCheck(n_rows, first_broken, previous)
