"""The review store's audit log: append-only triggers, the authorizer that keeps them, the hash chain, migration."""

import json
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest

from db import review
from db.review import signin
from tests.test_review import ADMIN, ALICE, BOB, CAROL, IMAGE, WORD, audit_rows, word

REWRITES = [
    "UPDATE audit_log SET actor = 'mallory'",
    "DELETE FROM audit_log",
    "REPLACE INTO audit_log SELECT audit_id, at, 'mallory', role, action, target, value_before, value_after, "
    "row_hash FROM audit_log",
    "INSERT OR REPLACE INTO audit_log (audit_id, at, actor, role, action, target) "
    "VALUES (1, '2020-01-01', 'mallory', 'admin', 'set_verdict', 'x')",
    "INSERT INTO audit_log (audit_id, at, actor, role, action, target) VALUES (1, 'now', 'mallory', 'admin', 'a', 'x') "
    "ON CONFLICT (audit_id) DO UPDATE SET actor = excluded.actor",
]


@pytest.mark.parametrize("sql", REWRITES)
def test_audit_log_is_append_only(con, sql):
    review.set_verdict(con, ALICE, WORD, "noisy")
    before = audit_rows(con)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute(sql)
    assert audit_rows(con) == before and before[0]["actor"] == "alice"
    assert not any(name.startswith(("update", "delete")) for name in dir(review) if "audit" in name)


@pytest.mark.parametrize("sql", [
    "DROP TRIGGER audit_log_no_update",
    "DROP TABLE audit_log",
    "ALTER TABLE audit_log RENAME TO old_log",
    "PRAGMA writable_schema = ON",
])  # fmt: skip
def test_the_applications_connection_cannot_lift_the_triggers(con, sql):
    review.set_verdict(con, ALICE, WORD, "noisy")
    with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
        con.execute(sql)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("DELETE FROM audit_log")


def tampered(path) -> sqlite3.Connection:
    """A plain connection to the store file, as someone with write access to it has, without its triggers."""
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("DROP TRIGGER audit_log_no_update")
    raw.execute("DROP TRIGGER audit_log_no_delete")
    return raw


def judged_five_times(con) -> None:
    for i in range(5):
        review.set_verdict(con, ALICE, word(i), review.VERDICTS[i])


@pytest.mark.parametrize(("edit", "first_broken"), [
    ("UPDATE audit_log SET value_after = '{\"verdict\": \"aligned\", \"note\": \"\"}' WHERE audit_id = 3", 3),
    ("UPDATE audit_log SET actor = 'bob' WHERE audit_id = 5", 5),
    ("DELETE FROM audit_log WHERE audit_id = 2", 3),
    ("UPDATE audit_log SET audit_id = 7 WHERE audit_id = 1", 2),
])  # fmt: skip
def test_audit_chain_finds_the_first_edited_row(tmp_path, edit, first_broken):
    path = tmp_path / "review.sqlite"
    con = review.connect(path)
    judged_five_times(con)
    intact = review.verify_audit_chain(con, ADMIN)
    assert (intact.ok, intact.n_rows, intact.first_broken) == (True, 5, None)
    assert intact.head == audit_rows(con)[-1]["row_hash"] and len(intact.head) == 64

    tampered(path).execute(edit)
    check = review.verify_audit_chain(con, ADMIN)
    assert not check.ok and check.first_broken == first_broken
    with pytest.raises(PermissionError):
        review.verify_audit_chain(con, ALICE)


def test_a_rewritten_chain_verifies_but_its_head_differs(tmp_path):
    # What the README says: someone with the file can recompute every hash; only a copy of the head helps.
    path = tmp_path / "review.sqlite"
    con = review.connect(path)
    judged_five_times(con)
    head = review.verify_audit_chain(con, ADMIN).head
    raw = tampered(path)
    raw.execute("UPDATE audit_log SET actor = 'bob' WHERE audit_id = 2")
    previous = review.CHAIN_START
    for row in raw.execute("SELECT * FROM audit_log ORDER BY audit_id").fetchall():
        previous = review.audit_row_hash(previous, row[:-1])
        raw.execute("UPDATE audit_log SET row_hash = ? WHERE audit_id = ?", (previous, row[0]))
    check = review.verify_audit_chain(con, ADMIN)
    assert check.ok and check.head != head


def test_the_chain_continues_across_connections_and_after_refused_writes(tmp_path):
    path = tmp_path / "review.sqlite"
    first, second = review.connect(path), review.connect(path)
    review.set_verdict(first, ALICE, WORD, "noisy")
    with pytest.raises(ValueError):
        review.set_verdict(second, BOB, WORD, "great")
    review.add_comment(second, BOB, WORD, "agreed")
    review.resolve(first, ALICE, WORD)
    rows = audit_rows(first)
    assert [r["audit_id"] for r in rows] == [1, 2, 3]
    assert review.verify_audit_chain(second, ADMIN) == review.ChainCheck(3, None, rows[-1]["row_hash"])


# The review store as version 1 created it: the tables that changed, with their triggers; connect() adds
# the others. Rows are written as version 1's code wrote them.
VERSION_1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
CREATE TABLE audit_log (
    audit_id INTEGER PRIMARY KEY, at TEXT NOT NULL, actor TEXT NOT NULL, role TEXT NOT NULL,
    action TEXT NOT NULL, target TEXT NOT NULL, value_before TEXT, value_after TEXT
);
CREATE INDEX audit_target ON audit_log (target);
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TABLE sign_in_failures (username TEXT PRIMARY KEY, failures INTEGER NOT NULL, last_failure_at REAL NOT NULL);
INSERT INTO sign_in_failures VALUES ('mallory', 4, 1000.0);
INSERT INTO audit_log (at, actor, role, action, target, value_before, value_after) VALUES
    ('2025-01-01T10:00:00.000000+00:00', 'alice', 'reviewer', 'add_tag', 'image:0123456789abcdef:139', NULL,
     '{"tag": "dark"}'),
    ('2025-01-01T10:05:00.000000+00:00', 'bob', 'reviewer', 'add_tag', 'image:0123456789abcdef:139', NULL,
     '{"tag": "blurry"}');
"""


def test_a_version_1_store_is_migrated_with_its_audit_rows_chained(tmp_path):
    path = tmp_path / "review.sqlite"
    sqlite3.connect(path).executescript(VERSION_1)
    con = review.connect(path)
    assert review.schema_version(con) == review.SCHEMA_VERSION == 2
    assert [r["actor"] for r in audit_rows(con)] == ["alice", "bob"]
    assert review.verify_audit_chain(con, ADMIN).ok
    review.add_tag(con, CAROL, IMAGE, "dark")  # appends to the migrated chain
    assert review.verify_audit_chain(con, ADMIN) == review.ChainCheck(3, None, audit_rows(con)[-1]["row_hash"])
    for sql in REWRITES:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            con.execute(sql)
    assert signin.sign_in_failures(con, "user", "mallory") == (0, 0.0)  # transient counts start afresh
    reopened = review.connect(path)  # a second open finds version 2 and changes nothing
    assert review.verify_audit_chain(reopened, ADMIN).n_rows == 3


def test_audit_log_browse_filters(con):
    start = datetime.now(UTC)
    review.set_verdict(con, ALICE, WORD, "noisy")
    review.add_tag(con, BOB, WORD, "dark")
    review.resolve(con, BOB, IMAGE)
    qid = review.create_queue(con, ADMIN, "q", {"k": 1}, [WORD], ["alice"])
    log = review.audit_log(con, ADMIN)
    assert log["action"].tolist() == ["assign_queue", "create_queue", "resolve", "add_tag", "set_verdict"]
    assert log.loc[1, "target"] == f"queue:{qid}"
    assert json.loads(log.loc[1, "value_after"]) == {"name": "q", "search_spec": {"k": 1}, "n_items": 1}
    assert (log["role"] == ["admin", "admin", "reviewer", "reviewer", "reviewer"]).all()

    def actions(**filters):
        return review.audit_log(con, ADMIN, **filters)["action"].tolist()

    assert actions(user="bob") == ["resolve", "add_tag"]
    assert actions(action="set_verdict") == ["set_verdict"]
    assert actions(target=WORD.key) == ["add_tag", "set_verdict"]
    assert actions(limit=2) == ["assign_queue", "create_queue"]
    assert len(actions(since=start)) == 5
    assert actions(since=start + timedelta(hours=1)) == []
    assert actions(until=start) == []
