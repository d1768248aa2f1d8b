"""The review store's schema, its migration, and opening a connection to it.

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

Connections. `connect()` is cheap. Give each session (or thread) its own connection and never share one
between sessions running at the same time: a transaction belongs to the connection, not to the thread.
"""

import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from db.review.audit import AUDIT_CHAIN, CHAIN_START, audit_row_hash
from db.review.model import VERDICTS
from db.review.store import one, write

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: audit hash chain, no REPLACE of audit rows, sign-in failures per user and address


BUSY_TIMEOUT_MS = 30_000  # a writer waits up to this long for its turn; each write holds the lock for ms


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
    with write(con):
        version = schema_version(con) if one(con, _HAS_META) else SCHEMA_VERSION
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"review store has schema version {version}, newer than this code's "
                f"{SCHEMA_VERSION}: update the dashboard"
            )
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
    for row in con.execute(AUDIT_CHAIN).fetchall():
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
    return int(one(con, _SCHEMA_VERSION_SQL)[0])
