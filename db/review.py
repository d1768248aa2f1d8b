"""Team review store: verdicts, tags, comment threads, queues and an append-only audit log, in SQLite.

Why SQLite, apart from the extraction DuckDB file:
- Reviews are written from many places at once: every dashboard session is a thread, and a team may run
  two or more dashboard server processes on the same store. SQLite in WAL mode lets any number of
  processes hold the file open read-write; writers take turns on a file lock for the few milliseconds a
  write lasts (`busy_timeout` makes a writer wait for its turn instead of failing), and readers never
  block writers. DuckDB allows one read-write process per file, so two dashboard servers could not both
  write to it.
- The extractor keeps writing its own DuckDB file (a new run, a resume) while people review, and the
  dashboard opens that file read-only. Review data in its own file never waits on, locks, or is
  rewritten by an extraction; re-extracting a run leaves what reviewers decided untouched.

Every write is one short `BEGIN IMMEDIATE` transaction: it takes the write lock up front (so it never
fails half-way on a lock upgrade), reads the value before, writes, appends an audit row, and commits.

Items. A review item is a word instance (run_id, image_id, caption_id, word_index, method, layer) or a
whole image (run_id, image_id); `Item.key` is its canonical text key
(`word:<run_id>:<image_id>:<caption_id>:<word_index>:<method>:<layer>` or `image:<run_id>:<image_id>`),
and the `items` table keeps the key's parts as columns so that exports join with word metrics.

Audit log. Every write appends who, when, what, and the value before and after. The database refuses
to update, delete or replace a row (triggers), and this module's connections may not drop tables or
triggers (an authorizer), so nothing the application runs can rewrite the log. Against someone who can
write the file itself, each row also stores `row_hash`, the sha256 of the previous row's hash and its own
content: `verify_audit_chain` finds the first row that was edited, inserted or removed. Whoever can write
the file can still recompute the whole chain; only a copy of the chain head kept elsewhere shows that.

Sign-in throttling. Failed sign-ins are counted per user name and per client address; `claim_sign_in`
checks and counts an attempt in one write transaction, so parallel attempts from any number of sessions
and processes cannot all pass the check.

Rights. Users and roles are not stored here: they come from the dashboard's secrets (dashboard/auth.py).
Every write takes the acting `Actor` (user and role) and raises PermissionError unless the role allows
it: anonymous and viewer read only; reviewer sets verdicts, tags and comments and resolves/reopens
items; admin also creates and assigns queues and reads the audit log.

Connections. `connect()` is cheap. Give each session (or thread) its own connection and never share one
between sessions running at the same time: a transaction belongs to the connection, not to the thread.
"""

import hashlib
import json
import logging
import math
import operator
import re
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import combinations
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: audit hash chain, no REPLACE of audit rows, sign-in failures per user and address
VERDICTS = ("aligned", "noisy", "background-heavy", "wrong object", "other")
ROLES = ("anonymous", "viewer", "reviewer", "admin")  # in increasing rights
METHODS = ("attention", "gradcam")
ACTIONS = (
    "set_verdict", "clear_verdict", "add_tag", "remove_tag", "add_comment", "resolve", "reopen",
    "create_queue", "assign_queue", "unassign_queue",
)  # fmt: skip
ITEM_COLUMNS = ("run_id", "image_id", "caption_id", "word_index", "method", "layer")
IMAGE_COLUMNS = ITEM_COLUMNS[:2]
MAX_TAG_CHARS = 64
MAX_NAME_CHARS = 200
MAX_TEXT_CHARS = 10_000
BUSY_TIMEOUT_MS = 30_000  # a writer waits up to this long for its turn; each write holds the lock for ms
CHAIN_START = "0" * 64  # the "previous hash" of the first audit row

_VERDICT_LIST = ", ".join(f"'{v}'" for v in VERDICTS)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', '{SCHEMA_VERSION}');

CREATE TABLE IF NOT EXISTS items (
    item_key TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('word', 'image')),
    run_id TEXT NOT NULL,
    image_id INTEGER NOT NULL,
    caption_id INTEGER,
    word_index INTEGER,
    method TEXT,
    layer INTEGER,
    status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved')),
    status_by TEXT,           -- who last resolved or reopened
    status_at TEXT
);
CREATE INDEX IF NOT EXISTS items_run_image ON items (run_id, image_id);

-- One current verdict per reviewer and item; earlier ones are in the audit log.
CREATE TABLE IF NOT EXISTS verdicts (
    item_key TEXT NOT NULL REFERENCES items (item_key),
    reviewer TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ({_VERDICT_LIST})),
    note TEXT NOT NULL DEFAULT '',
    at TEXT NOT NULL,
    PRIMARY KEY (item_key, reviewer)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS verdicts_reviewer ON verdicts (reviewer, item_key);

CREATE TABLE IF NOT EXISTS tags (
    item_key TEXT NOT NULL REFERENCES items (item_key),
    tag TEXT NOT NULL,
    added_by TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (item_key, tag)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tags_tag ON tags (tag);

CREATE TABLE IF NOT EXISTS comments (
    comment_id INTEGER PRIMARY KEY,
    item_key TEXT NOT NULL REFERENCES items (item_key),
    author TEXT NOT NULL,
    body TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS comments_item ON comments (item_key, comment_id);

CREATE TABLE IF NOT EXISTS queues (
    queue_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    search_spec TEXT NOT NULL,  -- JSON of the search filters the queue was made from
    created_by TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS queue_items (
    queue_id INTEGER NOT NULL REFERENCES queues (queue_id),
    position INTEGER NOT NULL,  -- 0-based order of the search result
    item_key TEXT NOT NULL REFERENCES items (item_key),
    PRIMARY KEY (queue_id, position),
    UNIQUE (queue_id, item_key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queue_reviewers (
    queue_id INTEGER NOT NULL REFERENCES queues (queue_id),
    reviewer TEXT NOT NULL,
    assigned_by TEXT NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (queue_id, reviewer)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS audit_log (
    audit_id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,     -- an item key or 'queue:<queue_id>'
    value_before TEXT,        -- JSON; NULL when nothing was there
    value_after TEXT,         -- JSON; NULL when it was removed
    row_hash TEXT             -- sha256 of the previous row's row_hash and this row (audit_row_hash)
);
CREATE INDEX IF NOT EXISTS audit_target ON audit_log (target);

-- Append-only and frozen, enforced by the database itself rather than by the absence of an API.
CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
-- REPLACE INTO / INSERT OR REPLACE would delete the row holding the id without firing the delete trigger.
CREATE TRIGGER IF NOT EXISTS audit_log_no_replace BEFORE INSERT ON audit_log
WHEN EXISTS (SELECT 1 FROM audit_log WHERE audit_id = NEW.audit_id)
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: an audit_id cannot be reused'); END;
CREATE TRIGGER IF NOT EXISTS queue_items_no_update BEFORE UPDATE ON queue_items
BEGIN SELECT RAISE(ABORT, 'a queue''s item list is frozen'); END;
CREATE TRIGGER IF NOT EXISTS queue_items_no_delete BEFORE DELETE ON queue_items
BEGIN SELECT RAISE(ABORT, 'a queue''s item list is frozen'); END;

-- Failed sign-ins in a row per user name and per client address, shared by every session and process.
CREATE TABLE IF NOT EXISTS sign_in_failures (
    kind TEXT NOT NULL CHECK (kind IN ('user', 'address')),
    name TEXT NOT NULL,            -- the user name as typed, or the client's IP address
    failures INTEGER NOT NULL,
    last_failure_at REAL NOT NULL, -- unix seconds
    PRIMARY KEY (kind, name)
) WITHOUT ROWID;
"""

_SCHEMA_VERSION_SQL = "SELECT value FROM meta WHERE key = 'schema_version'"
_HAS_META = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
_SET_SCHEMA_VERSION = "UPDATE meta SET value = ? WHERE key = 'schema_version'"
_ITEM_SELECT = "i.item_key, i.kind, i.run_id, i.image_id, i.caption_id, i.word_index, i.method, i.layer"
_ENSURE_ITEM = """
INSERT OR IGNORE INTO items (item_key, kind, run_id, image_id, caption_id, word_index, method, layer)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)"""
_AUDIT_COLUMNS = "audit_id, at, actor, role, action, target, value_before, value_after"  # what row_hash covers
_AUDIT = f"INSERT INTO audit_log ({_AUDIT_COLUMNS}, row_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_LAST_AUDIT = "SELECT audit_id, row_hash FROM audit_log ORDER BY audit_id DESC LIMIT 1"
_AUDIT_CHAIN = f"SELECT {_AUDIT_COLUMNS}, row_hash FROM audit_log ORDER BY audit_id"
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

_ITEM_STATUS = "SELECT status, status_by, status_at FROM items WHERE item_key = ?"
_ITEM_VERDICTS = "SELECT reviewer, verdict, note, at FROM verdicts WHERE item_key = ? ORDER BY at, reviewer"
_ITEM_TAGS = "SELECT tag, added_by, at FROM tags WHERE item_key = ? ORDER BY tag"
_ITEM_COMMENTS = "SELECT comment_id, author, body, at FROM comments WHERE item_key = ? ORDER BY comment_id"

_SUMMARY_ITEMS = f"""
SELECT {_ITEM_SELECT}, i.status, i.status_by, i.status_at FROM items i
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
SELECT {_ITEM_SELECT}, i.status FROM items i
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
SELECT qi.position, {_ITEM_SELECT}, i.status,
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
_IN_QUEUE = "(:queue_id IS NULL OR v.item_key IN (SELECT item_key FROM queue_items WHERE queue_id = :queue_id))"
_SCOPED_VERDICTS = f"SELECT v.item_key, v.reviewer, v.verdict FROM verdicts v WHERE {_IN_QUEUE}"
_DISAGREEMENTS = f"""
SELECT {_ITEM_SELECT}, v.reviewer, v.verdict, v.note, v.at FROM verdicts v JOIN items i USING (item_key)
WHERE {_IN_QUEUE}
  AND v.item_key IN (SELECT item_key FROM verdicts GROUP BY item_key HAVING COUNT(DISTINCT verdict) > 1)
ORDER BY i.item_key, v.reviewer"""

_AUDIT_LOG = f"""
SELECT {_AUDIT_COLUMNS} FROM audit_log
WHERE (:user IS NULL OR actor = :user)
  AND (:action IS NULL OR action = :action)
  AND (:target IS NULL OR target = :target)
  AND (:since IS NULL OR at >= :since)
  AND (:until IS NULL OR at < :until)
ORDER BY audit_id DESC LIMIT :limit"""

_SIGN_IN_FAILURES = "SELECT failures, last_failure_at FROM sign_in_failures WHERE kind = ? AND name = ?"
_COUNT_SIGN_IN_FAILURE = """
INSERT INTO sign_in_failures (kind, name, failures, last_failure_at) VALUES (:kind, :name, 1, :now)
ON CONFLICT (kind, name) DO UPDATE SET
    failures = CASE WHEN :now - last_failure_at > :reset_after THEN 1 ELSE failures + 1 END,
    last_failure_at = MAX(last_failure_at, :now)"""
_CLEAR_USER_FAILURES = "DELETE FROM sign_in_failures WHERE kind = 'user' AND name = ?"
_UNCOUNT_ADDRESS_FAILURE = """
UPDATE sign_in_failures SET failures = failures - 1 WHERE kind = 'address' AND name = ? AND failures > 0"""

_RUN_ID = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class Actor:
    """Who acts, as signed in: user name (None when anonymous) and role (one of ROLES)."""

    user: str | None
    role: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; expected one of {ROLES}")
        if self.role == "anonymous":
            if self.user is not None:
                raise ValueError("an anonymous actor has no user name")
        elif not isinstance(self.user, str) or not self.user.strip():
            raise ValueError(f"a {self.role} needs a user name")

    @property
    def can_review(self) -> bool:
        """Whether this actor may write verdicts, tags and comments and resolve items."""
        return ROLES.index(self.role) >= ROLES.index("reviewer")

    @property
    def can_manage(self) -> bool:
        """Whether this actor may create and assign queues and read the audit log."""
        return self.role == "admin"


@dataclass(frozen=True)
class Item:
    """A review item: a word instance (all fields set) or a whole image (run_id and image_id only)."""

    run_id: str
    image_id: int
    caption_id: int | None = None
    word_index: int | None = None
    method: str | None = None
    layer: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.run_id, str) or not _RUN_ID.fullmatch(self.run_id):
            raise ValueError(f"run_id must be 16 lowercase hex characters, got {self.run_id!r}")
        word_fields = (self.caption_id, self.word_index, self.method, self.layer)
        if any(f is None for f in word_fields) and any(f is not None for f in word_fields):
            raise ValueError("a word item needs caption_id, word_index, method and layer; an image item none")
        if self.method is not None and self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        # operator.index accepts numpy integers from DataFrames and refuses floats and strings.
        for name in ("image_id", "caption_id", "word_index", "layer"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, operator.index(value))

    @property
    def kind(self) -> str:
        """'word' or 'image'."""
        return "image" if self.caption_id is None else "word"

    @property
    def key(self) -> str:
        """The canonical text key, e.g. 'word:0123456789abcdef:139:4021:2:gradcam:8'."""
        columns = IMAGE_COLUMNS if self.kind == "image" else ITEM_COLUMNS
        return self.kind + ":" + ":".join(str(getattr(self, c)) for c in columns)

    @classmethod
    def from_key(cls, key: str) -> "Item":
        """Parse a key made by `Item.key`; ValueError for anything else."""
        kind, _, rest = key.partition(":")
        parts = rest.split(":")
        if kind == "image" and len(parts) == 2:
            item = cls(parts[0], int(parts[1]))
        elif kind == "word" and len(parts) == 6:
            run_id, image_id, caption_id, word_index, method, layer = parts
            item = cls(run_id, int(image_id), int(caption_id), int(word_index), method, int(layer))
        else:
            raise ValueError(f"not an item key: {key!r}")
        if item.key != key:  # e.g. '+7' or '007' parse as ints but are not canonical
            raise ValueError(f"not a canonical item key: {key!r}")
        return item

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Item":
        """The item of a search-result or `words` row; missing or null word columns make an image item."""
        values = {c: row[c] for c in ITEM_COLUMNS if c in row and not pd.isna(row[c])}
        return cls(**values)


@dataclass(frozen=True)
class VerdictEntry:
    """One reviewer's current verdict on an item."""

    reviewer: str
    verdict: str
    note: str
    at: str


@dataclass(frozen=True)
class TagEntry:
    """A tag on an item, with who added it and when."""

    tag: str
    added_by: str
    at: str


@dataclass(frozen=True)
class CommentEntry:
    """One message of an item's comment thread. Render `body` as plain text, never as HTML/Markdown."""

    comment_id: int
    author: str
    body: str
    at: str


@dataclass(frozen=True)
class ItemReview:
    """Everything said about one item: status, verdicts, tags and the comment thread, with who and when."""

    item: Item
    status: str  # 'open' or 'resolved'
    status_by: str | None
    status_at: str | None
    verdicts: tuple[VerdictEntry, ...]
    tags: tuple[TagEntry, ...]
    comments: tuple[CommentEntry, ...]


@dataclass(frozen=True)
class QueueEntry:
    """An item at its 0-based position in a queue."""

    position: int
    item: Item


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


@dataclass(frozen=True)
class ThrottlePolicy:
    """How long sign-ins must wait after failures in a row, per user name and per client address."""

    free_failures: int = 3  # failures of one user name allowed back to back (typos) before any wait
    address_free_failures: int = 10  # the same from one client address, any names: people may share one
    base_delay_s: float = 1.0  # the first wait; doubles with each further failure
    max_delay_s: float = 900.0  # cap, so an attacker can lock an account out for 15 minutes at most
    reset_after_s: float = 3600.0  # a failure this long after the previous one starts a new count

    def delay_s(self, failures: int, free: int | None = None) -> float:
        """Seconds to wait after `failures` failures in a row, the first `free` (default free_failures) of
        them without a wait: 0, ..., 0, base, 2 base, 4 base, ..., max."""
        extra = failures - (self.free_failures if free is None else free)
        if extra < 0:
            return 0.0
        return min(self.max_delay_s, self.base_delay_s * 2.0 ** min(extra, 64))


# ---------------------------------------------------------------------------------------------- setup


def connect(path: str | Path) -> sqlite3.Connection:
    """Open (creating or migrating if needed) the review store at `path`, in WAL mode.

    Autocommit mode: writes in this module open their own short transactions. The connection may not
    drop or alter tables and triggers (`_authorize`), so the audit log's triggers hold for it.
    """
    # timeout= is SQLite's busy_timeout. check_same_thread=False: Streamlit reruns a session's script on
    # a new thread each time, one after another, so a session's connection is never used concurrently.
    con = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    con.row_factory = sqlite3.Row
    con.execute("PRAGMA foreign_keys = ON")
    mode = _set_wal(con)
    if mode != "wal":
        # e.g. a network file system: still correct, but writers then block readers.
        log.warning("review store %s runs in journal mode %r, not WAL", path, mode)
    init_db(con)
    con.set_authorizer(_authorize)
    return con


# Schema changes a connection of this module must never make: they would lift the audit log's triggers.
_DENIED_ACTIONS = frozenset({sqlite3.SQLITE_DROP_TABLE, sqlite3.SQLITE_DROP_TRIGGER, sqlite3.SQLITE_ALTER_TABLE})


def _authorize(action: int, arg1: str | None, *_: str | None) -> int:
    if action in _DENIED_ACTIONS or (action == sqlite3.SQLITE_PRAGMA and (arg1 or "").lower() == "writable_schema"):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _set_wal(con: sqlite3.Connection) -> str:
    """Switch to WAL and return the journal mode in force.

    The switch needs the file to itself. While other processes are creating the store at the same
    moment, SQLite can answer "database is locked" without calling the busy handler (it would deadlock
    waiting), so the switch is retried here, within the same busy timeout.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            return con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def init_db(con: sqlite3.Connection) -> None:
    """Create the schema if missing, or migrate a store of an older version, in one transaction
    (idempotent, safe when several processes start at once). A newer store is refused."""
    with _write(con):
        version = schema_version(con) if _one(con, _HAS_META) else SCHEMA_VERSION
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"review store has schema version {version}, newer than this code's "
                               f"{SCHEMA_VERSION}: update the dashboard")
        if version == 1:
            _migrate_from_1(con)
        for statement in _statements(SCHEMA):  # executescript would commit the transaction first
            con.execute(statement)
        version = schema_version(con)
    if version != SCHEMA_VERSION:
        raise RuntimeError(f"review store has schema version {version}, this code expects {SCHEMA_VERSION}")


def _migrate_from_1(con: sqlite3.Connection) -> None:
    """Version 1 to 2: chain the existing audit rows (lifting the update trigger while their hashes are
    written; the schema puts it back). Sign-in failure counts are transient: their table starts afresh."""
    con.execute("DROP TRIGGER audit_log_no_update")
    con.execute("ALTER TABLE audit_log ADD COLUMN row_hash TEXT")
    previous = CHAIN_START
    for row in con.execute(_AUDIT_CHAIN).fetchall():
        previous = audit_row_hash(previous, tuple(row)[:-1])
        con.execute("UPDATE audit_log SET row_hash = ? WHERE audit_id = ?", (previous, row["audit_id"]))
    con.execute("DROP TABLE sign_in_failures")
    con.execute(_SET_SCHEMA_VERSION, (str(SCHEMA_VERSION),))
    log.info("review store migrated from schema version 1 to %d", SCHEMA_VERSION)


def _statements(script: str) -> Iterator[str]:
    """The statements of an SQL script, one by one."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement
            statement = ""


def schema_version(con: sqlite3.Connection) -> int:
    """The schema version stored in the review database."""
    return int(_one(con, _SCHEMA_VERSION_SQL)[0])


# ---------------------------------------------------------------------------------------------- helpers


@contextmanager
def _write(con: sqlite3.Connection) -> Iterator[str]:
    """One short write transaction; yields its timestamp, taken once the write lock is held."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield _iso(datetime.now(UTC))
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise


@contextmanager
def _snapshot(con: sqlite3.Connection) -> Iterator[None]:
    """A read transaction, so that several queries see one state even while others write."""
    con.execute("BEGIN")
    try:
        yield
    finally:
        con.execute("COMMIT")


def _iso(when: datetime) -> str:
    # Fixed width (always microseconds, always UTC) so text order is time order.
    return when.astimezone(UTC).isoformat(timespec="microseconds")


def _require(actor: Actor, role: str, what: str) -> None:
    if ROLES.index(actor.role) < ROLES.index(role):
        raise PermissionError(f"{actor.user or 'anonymous'} ({actor.role}) may not {what}")


def _text(value: str, what: str, max_chars: int, *, allow_empty: bool = False) -> str:
    """Check a free-text input; it is stored verbatim (bound parameter), never interpreted."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string")
    if not allow_empty and not value.strip():
        raise ValueError(f"{what} is empty")
    if len(value) > max_chars:
        raise ValueError(f"{what} is longer than {max_chars} characters")
    return value


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False)


def audit_row_hash(previous: str, row: tuple) -> str:
    """The row_hash of an audit row: sha256 (hex) of the previous row's row_hash and this row's values
    (audit_id, at, actor, role, action, target, value_before, value_after) as a JSON list."""
    content = json.dumps([previous, *row], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(content.encode()).hexdigest()


def _audit(con: sqlite3.Connection, at: str, actor: Actor, action: str, target: str, before: Any, after: Any) -> None:
    # Inside the caller's write transaction, so no other writer can append between reading the last row
    # and appending this one.
    last = _one(con, _LAST_AUDIT)
    audit_id, previous = (1, CHAIN_START) if last is None else (last["audit_id"] + 1, last["row_hash"])
    row = (audit_id, at, actor.user, actor.role, action, target, _json(before), _json(after))
    con.execute(_AUDIT, (*row, audit_row_hash(previous, row)))


def _item_row(item: Item) -> tuple:
    return (item.key, item.kind, *(getattr(item, c) for c in ITEM_COLUMNS))


def _ensure_item(con: sqlite3.Connection, item: Item) -> None:
    con.execute(_ENSURE_ITEM, _item_row(item))


def _one(con: sqlite3.Connection, sql: str, params: Mapping[str, Any] | tuple = ()) -> sqlite3.Row | None:
    # fetchall runs the statement to its end, so no read snapshot or write lock outlives the call.
    rows = con.execute(sql, params).fetchall()
    return rows[0] if rows else None


def _frame(con: sqlite3.Connection, sql: str, params: Mapping[str, Any] | tuple = ()) -> pd.DataFrame:
    cur = con.execute(sql, params)
    return pd.DataFrame([tuple(r) for r in cur.fetchall()], columns=[d[0] for d in cur.description])


def _typed_items(df: pd.DataFrame) -> pd.DataFrame:
    # Image items have no word columns: nullable integers keep the ids integral.
    for col in ("image_id", "caption_id", "word_index", "layer"):
        df[col] = df[col].astype("Int64")
    return df


# ---------------------------------------------------------------------------------------------- writes


def set_verdict(con: sqlite3.Connection, actor: Actor, item: Item, verdict: str, note: str = "") -> bool:
    """Set the actor's verdict (one of VERDICTS) and optional note on an item; False if unchanged."""
    _require(actor, "reviewer", "set verdicts")
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    note = _text(note, "note", MAX_TEXT_CHARS, allow_empty=True)
    after = {"verdict": verdict, "note": note}
    with _write(con) as at:
        _ensure_item(con, item)
        row = _one(con, _GET_VERDICT, (item.key, actor.user))
        before = dict(row) if row else None
        if before == after:
            return False
        con.execute(_UPSERT_VERDICT, (item.key, actor.user, verdict, note, at))
        _audit(con, at, actor, "set_verdict", item.key, before, after)
    return True


def clear_verdict(con: sqlite3.Connection, actor: Actor, item: Item) -> bool:
    """Withdraw the actor's verdict on an item; False if there was none."""
    _require(actor, "reviewer", "clear verdicts")
    with _write(con) as at:
        row = _one(con, _GET_VERDICT, (item.key, actor.user))
        if row is None:
            return False
        con.execute(_DELETE_VERDICT, (item.key, actor.user))
        _audit(con, at, actor, "clear_verdict", item.key, dict(row), None)
    return True


def add_tag(con: sqlite3.Connection, actor: Actor, item: Item, tag: str) -> bool:
    """Tag an item (free-form, stored verbatim); False if it already had the tag."""
    _require(actor, "reviewer", "add tags")
    tag = _text(tag, "tag", MAX_TAG_CHARS)
    with _write(con) as at:
        _ensure_item(con, item)
        if _one(con, _HAS_TAG, (item.key, tag)):
            return False
        con.execute(_INSERT_TAG, (item.key, tag, actor.user, at))
        _audit(con, at, actor, "add_tag", item.key, None, {"tag": tag})
    return True


def remove_tag(con: sqlite3.Connection, actor: Actor, item: Item, tag: str) -> bool:
    """Remove a tag from an item, whoever added it; False if the item did not have it."""
    _require(actor, "reviewer", "remove tags")
    with _write(con) as at:
        if not _one(con, _HAS_TAG, (item.key, tag)):
            return False
        con.execute(_DELETE_TAG, (item.key, tag))
        _audit(con, at, actor, "remove_tag", item.key, {"tag": tag}, None)
    return True


def add_comment(con: sqlite3.Connection, actor: Actor, item: Item, body: str) -> int:
    """Append a message to an item's comment thread; returns its comment_id."""
    _require(actor, "reviewer", "comment")
    body = _text(body, "comment", MAX_TEXT_CHARS)
    with _write(con) as at:
        _ensure_item(con, item)
        comment_id = con.execute(_INSERT_COMMENT, (item.key, actor.user, body, at)).lastrowid
        _audit(con, at, actor, "add_comment", item.key, None, {"comment_id": comment_id, "body": body})
    return comment_id


def _set_status(con: sqlite3.Connection, actor: Actor, item: Item, status: str, action: str) -> bool:
    _require(actor, "reviewer", action)
    with _write(con) as at:
        _ensure_item(con, item)
        before = _one(con, _GET_STATUS, (item.key,))["status"]
        if before == status:
            return False
        con.execute(_SET_STATUS, (status, actor.user, at, item.key))
        _audit(con, at, actor, action, item.key, {"status": before}, {"status": status})
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
    _require(actor, "admin", "create queues")
    name = _text(name, "queue name", MAX_NAME_CHARS)
    spec = json.dumps(dict(search_spec), sort_keys=True, ensure_ascii=False, allow_nan=False)
    unique = list({item.key: item for item in items}.values())
    if not unique:
        raise ValueError("a queue needs at least one item")
    with _write(con) as at:
        try:
            queue_id = con.execute(_INSERT_QUEUE, (name, spec, actor.user, at)).lastrowid
        except sqlite3.IntegrityError:
            raise ValueError(f"a queue named {name!r} exists") from None
        con.executemany(_ENSURE_ITEM, [_item_row(item) for item in unique])
        con.executemany(_INSERT_QUEUE_ITEM, [(queue_id, i, item.key) for i, item in enumerate(unique)])
        after = {"name": name, "search_spec": json.loads(spec), "n_items": len(unique)}
        _audit(con, at, actor, "create_queue", f"queue:{queue_id}", None, after)
        for reviewer in dict.fromkeys(reviewers):
            _assign(con, at, actor, queue_id, reviewer)
    return queue_id


def _assign(con: sqlite3.Connection, at: str, actor: Actor, queue_id: int, reviewer: str) -> bool:
    reviewer = _text(reviewer, "reviewer", MAX_NAME_CHARS)
    if not _one(con, _QUEUE_EXISTS, (queue_id,)):
        raise ValueError(f"no queue {queue_id}")
    if _one(con, _IS_ASSIGNED, (queue_id, reviewer)):
        return False
    con.execute(_ASSIGN, (queue_id, reviewer, actor.user, at))
    _audit(con, at, actor, "assign_queue", f"queue:{queue_id}", None, {"reviewer": reviewer})
    return True


def assign_queue(con: sqlite3.Connection, actor: Actor, queue_id: int, reviewer: str) -> bool:
    """Assign a queue to a reviewer (admin); False if already assigned."""
    _require(actor, "admin", "assign queues")
    with _write(con) as at:
        return _assign(con, at, actor, queue_id, reviewer)


def unassign_queue(con: sqlite3.Connection, actor: Actor, queue_id: int, reviewer: str) -> bool:
    """Take a queue away from a reviewer (admin); their verdicts stay. False if not assigned."""
    _require(actor, "admin", "unassign queues")
    with _write(con) as at:
        if not _one(con, _IS_ASSIGNED, (queue_id, reviewer)):
            return False
        con.execute(_UNASSIGN, (queue_id, reviewer))
        _audit(con, at, actor, "unassign_queue", f"queue:{queue_id}", {"reviewer": reviewer}, None)
    return True


# ---------------------------------------------------------------------------------------------- reads


def item_review(con: sqlite3.Connection, item: Item) -> ItemReview:
    """Status, verdicts, tags and comment thread of one item (empty and open if never reviewed)."""
    with _snapshot(con):
        status = _one(con, _ITEM_STATUS, (item.key,))
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
    with _snapshot(con):
        items = _typed_items(_frame(con, _SUMMARY_ITEMS, params))
        verdicts = _frame(con, _SUMMARY_VERDICTS, params)
        tags = _frame(con, _SUMMARY_TAGS, params)
        comments = _frame(con, _SUMMARY_COMMENTS, params)

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
            "verdicts": _json(v.to_dict("records")),
            "tags": _json(by_item_tags.get(key, [])),
            "n_comments": 0 if c is None else len(c),
            "comments": _json([] if c is None else c.to_dict("records")),
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
    return _typed_items(_frame(con, _FIND_ITEMS, params))


def all_tags(con: sqlite3.Connection) -> pd.DataFrame:
    """Every tag in use with its number of items (columns tag, n), most used first."""
    return _frame(con, _ALL_TAGS)


def list_queues(con: sqlite3.Connection, reviewer: str | None = None) -> pd.DataFrame:
    """Queues with progress; with `reviewer`, only the queues assigned to them and their own progress.

    Columns: queue_id, name, search_spec (dict), created_by, at, reviewers (list), n_items, n_judged
    (items with at least one verdict), and with `reviewer` also n_reviewed (items they judged).
    """
    with _snapshot(con):
        queues = _frame(con, _LIST_QUEUES, {"reviewer": reviewer})
        assigned = _frame(con, _QUEUE_REVIEWERS).groupby("queue_id")["reviewer"].agg(list)
    queues["search_spec"] = queues["search_spec"].map(json.loads)
    queues.insert(5, "reviewers", [assigned.get(q, []) for q in queues["queue_id"]])
    return queues if reviewer is not None else queues.drop(columns="n_reviewed")


def queue_items(con: sqlite3.Connection, queue_id: int, reviewer: str | None = None) -> pd.DataFrame:
    """A queue's items in order: position, item_key, kind, ITEM_COLUMNS, status, reviewer_verdict (the
    given reviewer's verdict, null if none or no reviewer) and n_verdicts (by anyone)."""
    return _typed_items(_frame(con, _QUEUE_ITEMS, {"queue_id": queue_id, "reviewer": reviewer}))


def _neighbour(
    con: sqlite3.Connection, sql: str, queue_id: int, reviewer: str, position: int, unreviewed_only: bool
) -> QueueEntry | None:
    params = {
        "queue_id": queue_id, "reviewer": reviewer, "position": position, "unreviewed_only": unreviewed_only,
    }  # fmt: skip
    row = _one(con, sql, params)
    return None if row is None else QueueEntry(row["position"], Item.from_key(row["item_key"]))


def next_item(
    con: sqlite3.Connection,
    queue_id: int,
    reviewer: str,
    position: int | None = None,
    *,
    unreviewed_only: bool = False,
) -> QueueEntry | None:
    """The entry after `position` (the first when None), skipping items `reviewer` judged if
    `unreviewed_only`; None at the end."""
    start = -1 if position is None else position
    return _neighbour(con, _NEXT_ITEM, queue_id, reviewer, start, unreviewed_only)


def previous_item(
    con: sqlite3.Connection,
    queue_id: int,
    reviewer: str,
    position: int | None = None,
    *,
    unreviewed_only: bool = False,
) -> QueueEntry | None:
    """The entry before `position` (the last when None), skipping items `reviewer` judged if
    `unreviewed_only`; None at the start."""
    start = 2**62 if position is None else position
    return _neighbour(con, _PREVIOUS_ITEM, queue_id, reviewer, start, unreviewed_only)


def queue_progress(con: sqlite3.Connection, queue_id: int) -> pd.DataFrame:
    """Per reviewer of a queue (assigned, or who judged any of its items): reviewer, assigned, reviewed,
    total, fraction."""
    df = _frame(con, _QUEUE_PROGRESS, {"queue_id": queue_id})
    df["assigned"] = df["assigned"].astype(bool)
    df["fraction"] = (df["reviewed"] / df["total"]).astype(float)
    return df


def cohen_kappa(a: list[str], b: list[str]) -> float:
    """Cohen's kappa of two raters' labels on the same items: (p_o - p_e) / (1 - p_e), where p_o is the
    observed agreement and p_e the agreement expected from each rater's label frequencies.

    NaN when undefined: no items, or both raters gave one and the same label to every item (p_e = 1).
    """
    if len(a) != len(b):
        raise ValueError("both raters must label the same items")
    n = len(a)
    if n == 0:
        return math.nan
    p_o = sum(x == y for x, y in zip(a, b, strict=True)) / n
    counts_a = pd.Series(a).value_counts()
    counts_b = pd.Series(b).value_counts()
    p_e = float((counts_a * counts_b.reindex(counts_a.index, fill_value=0)).sum()) / (n * n)
    return math.nan if p_e == 1 else (p_o - p_e) / (1 - p_e)


def agreement(con: sqlite3.Connection, queue_id: int | None = None) -> pd.DataFrame:
    """Pairwise agreement between reviewers on the items both judged (within a queue when given).

    Columns: reviewer_a, reviewer_b (a < b), n_shared, n_agree, percent_agreement (0..100), kappa
    (Cohen's, see `cohen_kappa`). Only pairs with at least one shared item are listed.
    """
    verdicts = _frame(con, _SCOPED_VERDICTS, {"queue_id": queue_id})
    wide = verdicts.pivot(index="item_key", columns="reviewer", values="verdict")
    rows = []
    for a, b in combinations(sorted(wide.columns), 2):
        shared = wide[[a, b]].dropna()
        if shared.empty:
            continue
        n_agree = int((shared[a] == shared[b]).sum())
        rows.append({
            "reviewer_a": a, "reviewer_b": b, "n_shared": len(shared), "n_agree": n_agree,
            "percent_agreement": 100.0 * n_agree / len(shared),
            "kappa": cohen_kappa(list(shared[a]), list(shared[b])),
        })  # fmt: skip
    columns = ["reviewer_a", "reviewer_b", "n_shared", "n_agree", "percent_agreement", "kappa"]
    return pd.DataFrame(rows, columns=columns)


def disagreements(con: sqlite3.Connection, queue_id: int | None = None) -> pd.DataFrame:
    """Every verdict on items where reviewers differ (within a queue when given), one row per
    (item, reviewer): item_key, kind, ITEM_COLUMNS, reviewer, verdict, note, at."""
    return _typed_items(_frame(con, _DISAGREEMENTS, {"queue_id": queue_id}))


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
    _require(actor, "admin", "read the audit log")
    params = {
        "user": user, "action": action, "target": target,
        "since": None if since is None else _iso(since), "until": None if until is None else _iso(until),
        "limit": -1 if limit is None else limit,  # SQLite: a negative LIMIT means none
    }  # fmt: skip
    return _frame(con, _AUDIT_LOG, params)


def verify_audit_chain(con: sqlite3.Connection, actor: Actor) -> ChainCheck:
    """Recompute every audit row's hash (admin): the first row that was edited, or inserted or removed
    before its successor, breaks the chain from there on."""
    _require(actor, "admin", "verify the audit log")
    n_rows, first_broken, previous = 0, None, CHAIN_START
    with _snapshot(con):
        for row in con.execute(_AUDIT_CHAIN):
            n_rows += 1
            if first_broken is None and row["row_hash"] != audit_row_hash(previous, tuple(row)[:-1]):
                first_broken = row["audit_id"]
            previous = row["row_hash"]
    return ChainCheck(n_rows, first_broken, previous)


def join_metrics(metrics: pd.DataFrame, reviews: pd.DataFrame) -> pd.DataFrame:
    """Join word metrics rows (extraction `words` columns incl. ITEM_COLUMNS) with `review_summary` rows.

    Word-item review columns join on all ITEM_COLUMNS; image-item review columns join on (run_id,
    image_id) with an `image_` prefix. Every metrics row is kept, in order; unreviewed ones get nulls.
    """
    review_cols = [c for c in reviews.columns if c not in (*ITEM_COLUMNS, "kind")]
    words = reviews.loc[reviews["kind"] == "word", [*ITEM_COLUMNS, *review_cols]]
    images = reviews.loc[reviews["kind"] == "image", [*IMAGE_COLUMNS, *review_cols]]
    images = images.rename(columns={c: f"image_{c}" for c in review_cols})
    # Align key dtypes with the metrics frame (DuckDB gives int16 for word_index/layer).
    words = words.astype({c: metrics[c].dtype for c in ITEM_COLUMNS})
    images = images.astype({c: metrics[c].dtype for c in IMAGE_COLUMNS})
    return metrics.merge(words, on=list(ITEM_COLUMNS), how="left").merge(images, on=list(IMAGE_COLUMNS), how="left")


# ---------------------------------------------------------------------------------------------- sign-in


def sign_in_failures(con: sqlite3.Connection, kind: str, name: str) -> tuple[int, float]:
    """(failures in a row, unix time of the last one) counted for a user name (`kind` 'user') or a client
    address ('address'); (0, 0.0) if none."""
    row = _one(con, _SIGN_IN_FAILURES, (kind, name))
    return (0, 0.0) if row is None else (row["failures"], row["last_failure_at"])


def _sign_in_counters(policy: ThrottlePolicy, username: str, address: str | None) -> dict[tuple[str, str], int]:
    """The counters (kind, name) an attempt for `username` from `address` (None: unknown) goes on, with
    the failures each allows before a wait."""
    counters = {("user", username): policy.free_failures}
    if address is not None:
        counters[("address", address)] = policy.address_free_failures
    return counters


def sign_in_wait_s(
    con: sqlite3.Connection, policy: ThrottlePolicy, username: str, address: str | None, now: float
) -> float:
    """Seconds before `username` may try to sign in again from `address` (0 if now): the longer of the
    user name's and the address's waits."""
    waits = [0.0]
    for (kind, name), free in _sign_in_counters(policy, username, address).items():
        failures, last_at = sign_in_failures(con, kind, name)
        # `now` may predate a failure that another session counted while this one waited for the lock.
        elapsed = max(now - last_at, 0.0)
        if elapsed <= policy.reset_after_s:
            waits.append(policy.delay_s(failures, free) - elapsed)
    return max(waits)


def claim_sign_in(
    con: sqlite3.Connection, policy: ThrottlePolicy, username: str, address: str | None, now: float
) -> float:
    """Let one password check for `username` from `address` (None: unknown) go ahead, or say how long
    it must wait.

    In one write transaction: when `sign_in_wait_s` is 0 the attempt is counted as a failure of the user
    name and of the address before the password is checked, and 0 is returned; otherwise nothing is
    counted and the wait is returned. Counting first is what keeps parallel attempts, from any session or
    process, from all passing the check; `sign_in_succeeded` takes the count back.
    """
    with _write(con):
        wait = sign_in_wait_s(con, policy, username, address, now)
        if wait == 0:
            for kind, name in _sign_in_counters(policy, username, address):
                params = {"kind": kind, "name": name, "now": now, "reset_after": policy.reset_after_s}
                con.execute(_COUNT_SIGN_IN_FAILURE, params)
    return wait


def sign_in_succeeded(con: sqlite3.Connection, username: str, address: str | None) -> None:
    """After a claimed attempt succeeded: the user name's failures are forgotten; the address only loses
    the failure counted in advance, so that one good account does not clear a guessing address."""
    with _write(con):
        con.execute(_CLEAR_USER_FAILURES, (username,))
        if address is not None:
            con.execute(_UNCOUNT_ADDRESS_FAILURE, (address,))
