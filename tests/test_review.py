import json
import math
import sqlite3
from datetime import datetime

import numpy as np
import pandas as pd
import pytest

from db import review
from db.review import Actor, Item, signin
from db.review.joined import join_metrics

RUN = "0123456789abcdef"
WORD = Item(RUN, 139, 4021, 2, "gradcam", 8)
IMAGE = Item(RUN, 139)
ANON = Actor(None, "anonymous")
VIEWER = Actor("victor", "viewer")
ALICE = Actor("alice", "reviewer")
BOB = Actor("bob", "reviewer")
CAROL = Actor("carol", "reviewer")
ADMIN = Actor("root", "admin")

INJECTIONS = [
    "'; DROP TABLE verdicts; --",
    '"); DELETE FROM audit_log; --',
    "x' OR '1'='1",
    "<script>alert('xss')</script>",
    "**bold** [link](javascript:alert(1)) <img src=x onerror=alert(1)>",
    "Robert'); DROP TABLE items;-- \u2603 \u202e",
]


def word(i: int) -> Item:
    return Item(RUN, 139, 4021, i, "attention", 6)


def tables(con: sqlite3.Connection) -> list[str]:
    return [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]


def audit_rows(con: sqlite3.Connection) -> list[dict]:
    return [dict(r) for r in con.execute("SELECT * FROM audit_log ORDER BY audit_id")]


def test_connect_sets_wal_busy_timeout_and_schema_is_idempotent(tmp_path):
    path = tmp_path / "review.sqlite"
    first = review.connect(path)
    review.set_verdict(first, ALICE, WORD, "noisy")
    first.close()
    con = review.connect(path)  # runs the schema again on an existing store
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA busy_timeout").fetchone()[0] == review.BUSY_TIMEOUT_MS
    assert review.schema_version(con) == review.SCHEMA_VERSION
    assert [v.verdict for v in review.item_review(con, WORD).verdicts] == ["noisy"]


def test_store_from_another_schema_version_is_refused(tmp_path):
    path = tmp_path / "review.sqlite"
    review.connect(path).execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(RuntimeError, match="schema version 99"):
        review.connect(path)


# ---------------------------------------------------------------------------------------------- items


def test_item_keys_round_trip_and_refuse_non_canonical():
    assert WORD.key == f"word:{RUN}:139:4021:2:gradcam:8"
    assert IMAGE.key == f"image:{RUN}:139"
    assert Item.from_key(WORD.key) == WORD and Item.from_key(IMAGE.key) == IMAGE
    for bad in [
        f"word:{RUN}:139:4021:+2:gradcam:8",
        f"image:{RUN}:0139",
        f"image:{RUN}",
        "x",
        f"word:{RUN}:1",
    ]:
        with pytest.raises(ValueError):
            Item.from_key(bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"run_id": "'; DROP TABLE items; --", "image_id": 1},
        {"run_id": RUN.upper(), "image_id": 1},
        {"run_id": RUN, "image_id": "1"},
        {"run_id": RUN, "image_id": 1.5},
        {"run_id": RUN, "image_id": 1, "caption_id": 2},  # half a word item
        {"run_id": RUN, "image_id": 1, "caption_id": 2, "word_index": 0, "method": "x'--", "layer": 8},
    ],
)
def test_invalid_items_are_refused(kwargs):
    with pytest.raises((ValueError, TypeError)):
        Item(**kwargs)


def test_item_from_dataframe_rows_accepts_numpy_ints_and_nulls():
    df = pd.DataFrame(
        {
            "run_id": [RUN, RUN],
            "image_id": np.array([139, 139], dtype=np.int64),
            "caption_id": pd.array([4021, None], dtype="Int64"),
            "word_index": pd.array([2, None], dtype="Int16"),
            "method": ["gradcam", None],
            "layer": pd.array([8, None], dtype="Int16"),
            "entropy": [0.5, 0.7],
        }
    )
    assert [Item.from_row(r) for _, r in df.iterrows()] == [WORD, IMAGE]


# ---------------------------------------------------------------------------------------------- rights

WRITES = {
    "set_verdict": lambda con, a: review.set_verdict(con, a, WORD, "noisy"),
    "clear_verdict": lambda con, a: review.clear_verdict(con, a, WORD),
    "add_tag": lambda con, a: review.add_tag(con, a, WORD, "blurry"),
    "remove_tag": lambda con, a: review.remove_tag(con, a, WORD, "seed-tag"),
    "add_comment": lambda con, a: review.add_comment(con, a, WORD, "hello"),
    "resolve": lambda con, a: review.resolve(con, a, IMAGE),
    "reopen": lambda con, a: review.reopen(con, a, WORD),
    "create_queue": lambda con, a: review.create_queue(con, a, "q2", {"word": "cat"}, [WORD]),
    "assign_queue": lambda con, a: review.assign_queue(con, a, 1, "carol"),
    "unassign_queue": lambda con, a: review.unassign_queue(con, a, 1, "alice"),
    "audit_log": lambda con, a: review.audit_log(con, a),
}
ALLOWED = {
    "anonymous": set(),
    "viewer": set(),
    "reviewer": {"set_verdict", "clear_verdict", "add_tag", "remove_tag", "add_comment", "resolve", "reopen"},
    "admin": set(WRITES),
}


@pytest.fixture
def seeded(con):
    """A store where every write above has something to act on."""
    review.set_verdict(con, ALICE, WORD, "aligned")
    review.add_tag(con, ALICE, WORD, "seed-tag")
    review.resolve(con, ALICE, WORD)
    review.create_queue(con, ADMIN, "q1", {"word": "dog"}, [WORD, IMAGE], ["alice"])
    return con


@pytest.mark.parametrize("actor", [ANON, VIEWER, ALICE, ADMIN], ids=lambda a: a.role)
@pytest.mark.parametrize("op", list(WRITES))
def test_each_role_may_do_exactly_its_writes(seeded, actor, op):
    before = audit_rows(seeded)
    if op in ALLOWED[actor.role]:
        WRITES[op](seeded, actor)
        if op != "audit_log":
            assert audit_rows(seeded)[-1]["actor"] == actor.user
    else:
        with pytest.raises(PermissionError):
            WRITES[op](seeded, actor)
        assert audit_rows(seeded) == before  # a refused write leaves no trace


def test_actor_properties_and_validation():
    assert (ANON.can_review, VIEWER.can_review, ALICE.can_review, ADMIN.can_review) == (
        False,
        False,
        True,
        True,
    )
    assert (ALICE.can_manage, ADMIN.can_manage) == (False, True)
    for bad in [("x", "anonymous"), (None, "viewer"), ("  ", "admin"), ("x", "superuser")]:
        with pytest.raises(ValueError):
            Actor(*bad)


# ---------------------------------------------------------------------------------------------- reviewing


def test_verdict_flow_records_who_when_and_history(con):
    assert review.set_verdict(con, ALICE, WORD, "noisy", "peak on the grass")
    assert not review.set_verdict(con, ALICE, WORD, "noisy", "peak on the grass")  # unchanged: no write
    assert review.set_verdict(con, BOB, WORD, "aligned")
    assert review.set_verdict(con, ALICE, WORD, "background-heavy")
    item = review.item_review(con, WORD)
    assert {(v.reviewer, v.verdict, v.note) for v in item.verdicts} == {
        ("alice", "background-heavy", ""),
        ("bob", "aligned", ""),
    }
    assert all(datetime.fromisoformat(v.at).tzinfo is not None for v in item.verdicts)

    assert review.clear_verdict(con, ALICE, WORD)
    assert not review.clear_verdict(con, ALICE, WORD)
    assert [v.reviewer for v in review.item_review(con, WORD).verdicts] == ["bob"]

    first = {"verdict": "noisy", "note": "peak on the grass"}
    second = {"verdict": "background-heavy", "note": ""}
    log = [r for r in audit_rows(con) if r["actor"] == "alice"]
    assert [(r["action"], r["value_before"], r["value_after"]) for r in log] == [
        ("set_verdict", None, json.dumps(first, sort_keys=True)),
        ("set_verdict", json.dumps(first, sort_keys=True), json.dumps(second, sort_keys=True)),
        ("clear_verdict", json.dumps(second, sort_keys=True), None),
    ]
    with pytest.raises(ValueError):
        review.set_verdict(con, ALICE, WORD, "great")


def test_tags_comments_resolve_and_reopen(con):
    assert review.add_tag(con, ALICE, WORD, "occluded")
    assert not review.add_tag(con, BOB, WORD, "occluded")
    assert review.add_tag(con, BOB, WORD, "dark")
    assert review.remove_tag(con, BOB, WORD, "occluded")  # anyone may remove anyone's tag; audited
    assert not review.remove_tag(con, BOB, WORD, "occluded")
    first = review.add_comment(con, ALICE, WORD, "Is this the dog or its shadow?")
    second = review.add_comment(con, BOB, WORD, "Shadow, see the peak at row 3.")
    assert review.resolve(con, ALICE, WORD) and not review.resolve(con, BOB, WORD)
    resolved = review.item_review(con, WORD)
    assert (resolved.status, resolved.status_by) == ("resolved", "alice")
    assert review.reopen(con, BOB, WORD) and not review.reopen(con, BOB, WORD)

    item = review.item_review(con, WORD)
    assert [(t.tag, t.added_by) for t in item.tags] == [("dark", "bob")]
    assert [(c.comment_id, c.author) for c in item.comments] == [(first, "alice"), (second, "bob")]
    assert (item.status, item.status_by) == ("open", "bob")
    assert [r["action"] for r in audit_rows(con)] == [
        "add_tag", "add_tag", "remove_tag", "add_comment", "add_comment", "resolve", "reopen",
    ]  # fmt: skip
    with pytest.raises(ValueError):
        review.add_comment(con, ALICE, WORD, "   ")
    with pytest.raises(ValueError):
        review.add_tag(con, ALICE, WORD, "x" * (review.MAX_TAG_CHARS + 1))


def test_unreviewed_item_reads_as_open_and_empty(con):
    item = review.item_review(con, IMAGE)
    assert (item.status, item.verdicts, item.tags, item.comments) == ("open", (), (), ())


def test_find_items_filters_by_verdict_tag_status_reviewer(con):
    review.set_verdict(con, ALICE, word(0), "noisy")
    review.set_verdict(con, BOB, word(1), "noisy")
    review.set_verdict(con, BOB, word(2), "aligned")
    review.add_tag(con, BOB, word(1), "shadow")
    review.add_tag(con, BOB, word(2), "shadow")
    review.resolve(con, ALICE, word(2))

    def keys(**filters):
        return list(review.find_items(con, **filters)["item_key"])

    assert keys(verdict="noisy") == [word(0).key, word(1).key]
    assert keys(verdict="noisy", reviewer="bob") == [word(1).key]
    assert keys(reviewer="bob") == [word(1).key, word(2).key]
    assert keys(tag="shadow", status="open") == [word(1).key]
    assert keys(run_id="f" * 16) == []
    assert review.all_tags(con).to_dict("records") == [{"tag": "shadow", "n": 2}]


# ---------------------------------------------------------------------------------------------- queues


def test_queue_navigation_unreviewed_only_and_progress(con):
    items = [word(i) for i in range(5)]
    qid = review.create_queue(con, ADMIN, "noisy dogs", {"word": "dog", "layer": 8}, [*items, items[0]], ["alice"])
    assert review.assign_queue(con, ADMIN, qid, "bob") and not review.assign_queue(con, ADMIN, qid, "bob")
    review.set_verdict(con, ALICE, items[1], "noisy")
    review.set_verdict(con, ALICE, items[2], "aligned")
    review.set_verdict(con, BOB, items[2], "aligned")
    review.set_verdict(con, CAROL, items[4], "other")  # not assigned, still counted

    def pos(entry):
        return None if entry is None else entry.position

    assert review.neighbour_item(con, qid, "alice").item == items[0]
    assert [pos(review.neighbour_item(con, qid, "alice", p)) for p in (0, 3, 4)] == [1, 4, None]
    assert [pos(review.neighbour_item(con, qid, "alice", p, unreviewed_only=True)) for p in (None, 0, 3)] == [
        0,
        3,
        4,
    ]
    assert pos(review.neighbour_item(con, qid, "alice", direction="previous")) == 4
    assert pos(review.neighbour_item(con, qid, "alice", 3, unreviewed_only=True, direction="previous")) == 0
    assert review.neighbour_item(con, qid, "alice", 0, direction="previous") is None

    progress = review.queue_progress(con, qid).set_index("reviewer")
    assert progress.loc[:, ["assigned", "reviewed", "total"]].to_dict("index") == {
        "alice": {"assigned": True, "reviewed": 2, "total": 5},
        "bob": {"assigned": True, "reviewed": 1, "total": 5},
        "carol": {"assigned": False, "reviewed": 1, "total": 5},
    }
    assert progress.loc["alice", "fraction"] == pytest.approx(0.4)

    queues = review.list_queues(con)
    assert queues.loc[0, "name"] == "noisy dogs"
    assert queues.loc[0, ["n_items", "n_judged"]].tolist() == [5, 3]  # the duplicate item was dropped
    assert queues.loc[0, "search_spec"] == {"word": "dog", "layer": 8}
    assert queues.loc[0, "reviewers"] == ["alice", "bob"]
    assert review.list_queues(con, "alice")["n_reviewed"].tolist() == [2]
    assert review.list_queues(con, "carol").empty
    listed = review.queue_items(con, qid, "alice")
    assert listed["reviewer_verdict"].fillna("").tolist() == ["", "noisy", "aligned", "", ""]
    assert listed["n_verdicts"].tolist() == [0, 1, 2, 0, 1]

    assert review.unassign_queue(con, ADMIN, qid, "bob")
    assert review.list_queues(con, "bob").empty


def test_queue_items_are_frozen_and_names_unique(con):
    qid = review.create_queue(con, ADMIN, "q", {}, [WORD, IMAGE])
    for sql in ("UPDATE queue_items SET position = 9", "DELETE FROM queue_items"):
        with pytest.raises(sqlite3.DatabaseError, match="frozen"):
            con.execute(sql)
    assert review.queue_items(con, qid)["item_key"].tolist() == [WORD.key, IMAGE.key]
    with pytest.raises(ValueError, match="exists"):
        review.create_queue(con, ADMIN, "q", {}, [WORD])
    with pytest.raises(ValueError, match="at least one"):
        review.create_queue(con, ADMIN, "empty", {}, [])
    with pytest.raises(ValueError, match="no queue"):
        review.assign_queue(con, ADMIN, 999, "alice")
    assert len(review.list_queues(con)) == 1  # failed creations rolled back


# ---------------------------------------------------------------------------------------------- agreement

# Hand-computed example. alice vs bob on 10 items: 7 agree, p_o = 0.7; marginals alice
# (aligned 4, noisy 3, background-heavy 2, wrong object 1), bob (3, 4, 2, 1):
# p_e = (4*3 + 3*4 + 2*2 + 1*1) / 100 = 0.29; kappa = (0.7 - 0.29) / 0.71 = 0.5774647887.
# carol says 'aligned' on items 0..3: vs alice 3/4 agree, p_e = 3*4/16 = 0.75, kappa = 0;
# vs bob 2/4 agree, p_e = 2*4/16 = 0.5, kappa = 0.
A, N, B, W = "aligned", "noisy", "background-heavy", "wrong object"
ALICE_SAYS = [A, A, A, N, N, N, B, A, W, B]
BOB_SAYS = [A, A, N, N, N, B, B, A, W, N]


@pytest.fixture
def judged(con):
    items = [word(i) for i in range(10)]
    qid = review.create_queue(con, ADMIN, "ten", {}, items[:4], ["alice", "bob", "carol"])
    for item, a, b in zip(items, ALICE_SAYS, BOB_SAYS, strict=True):
        review.set_verdict(con, ALICE, item, a)
        review.set_verdict(con, BOB, item, b)
    for item in items[:4]:
        review.set_verdict(con, CAROL, item, A)
    return con, qid


def test_agreement_matches_hand_computed_kappa(judged):
    con, _ = judged
    pairs = review.agreement(con).set_index(["reviewer_a", "reviewer_b"])
    assert pairs.loc[("alice", "bob"), ["n_shared", "n_agree"]].tolist() == [10, 7]
    assert pairs.loc[("alice", "bob"), "percent_agreement"] == pytest.approx(70.0)
    assert pairs.loc[("alice", "bob"), "kappa"] == pytest.approx(0.41 / 0.71)
    assert pairs.loc[("alice", "carol"), ["n_shared", "n_agree"]].tolist() == [4, 3]
    assert pairs.loc[("alice", "carol"), "kappa"] == pytest.approx(0.0)
    assert pairs.loc[("bob", "carol"), "percent_agreement"] == pytest.approx(50.0)
    assert pairs.loc[("bob", "carol"), "kappa"] == pytest.approx(0.0)


def test_agreement_and_disagreements_within_a_queue(judged):
    con, qid = judged
    pairs = review.agreement(con, qid).set_index(["reviewer_a", "reviewer_b"])
    assert pairs["n_shared"].tolist() == [4, 4, 4]
    # alice vs bob on items 0..3: 3 agree; alice (A3, N1), bob (A2, N2): p_e = (6 + 2) / 16 = 0.5.
    assert pairs.loc[("alice", "bob"), "kappa"] == pytest.approx((0.75 - 0.5) / 0.5)

    every = review.disagreements(con)
    assert sorted(set(every["word_index"])) == [2, 3, 5, 9]  # items where the verdicts differ
    within = review.disagreements(con, qid)
    assert within.loc[within["word_index"] == 2, ["reviewer", "verdict"]].values.tolist() == [
        ["alice", A], ["bob", N], ["carol", A],
    ]  # fmt: skip
    assert set(within["word_index"]) == {2, 3}


def test_cohen_kappa_edge_cases():
    assert review.cohen_kappa(ALICE_SAYS, ALICE_SAYS) == pytest.approx(1.0)
    assert review.cohen_kappa([A, N], [N, A]) == pytest.approx(-1.0)
    assert math.isnan(review.cohen_kappa([A, A], [A, A]))  # one shared label only: undefined
    assert math.isnan(review.cohen_kappa([], []))
    with pytest.raises(ValueError):
        review.cohen_kappa([A], [A, N])


def test_agreement_on_an_empty_store(con):
    assert review.agreement(con).empty and review.disagreements(con).empty


# ---------------------------------------------------------------------------------------------- injection


@pytest.mark.parametrize("text", INJECTIONS)
def test_injection_strings_are_stored_verbatim_and_tables_survive(con, text):
    before = tables(con)
    evil = Actor(text, "admin")  # user names come from secrets, but are text all the same
    review.set_verdict(con, evil, WORD, "other", text)
    review.add_tag(con, evil, WORD, text[: review.MAX_TAG_CHARS])
    review.add_comment(con, evil, WORD, text)
    review.resolve(con, evil, WORD)
    qid = review.create_queue(con, evil, text, {"word": text, text: [text]}, [WORD], [text])

    item = review.item_review(con, WORD)
    assert (item.verdicts[0].reviewer, item.verdicts[0].note) == (text, text)
    assert item.tags[0].tag == text[: review.MAX_TAG_CHARS] and item.tags[0].added_by == text
    assert (item.comments[0].author, item.comments[0].body) == (text, text)
    assert item.status_by == text
    queue = review.list_queues(con, text).iloc[0]
    assert (queue["name"], queue["search_spec"], queue["reviewers"]) == (
        text,
        {"word": text, text: [text]},
        [text],
    )
    assert review.queue_progress(con, qid)["reviewer"].tolist() == [text]
    assert review.find_items(con, tag=text[: review.MAX_TAG_CHARS], reviewer=text)["item_key"].tolist() == [WORD.key]
    log = review.audit_log(con, evil, user=text)
    assert len(log) == 6 and json.loads(log["value_after"].iloc[-1])["note"] == text
    summary = review.review_summary(con).iloc[0]
    assert json.loads(summary["comments"])[0]["body"] == text
    assert review.remove_tag(con, evil, WORD, text[: review.MAX_TAG_CHARS])

    assert tables(con) == before
    assert con.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0] == 1
    assert signin.sign_in_failures(con, "user", text) == (0, 0.0)
    assert signin.claim_sign_in(con, signin.ThrottlePolicy(), text, text, 10.0) == 0.0
    assert signin.sign_in_failures(con, "user", text) == signin.sign_in_failures(con, "address", text) == (1, 10.0)
    assert review.verify_audit_chain(con, evil).ok


# ---------------------------------------------------------------------------------------------- export


def test_review_summary_and_join_with_word_metrics(con):
    other = Item(RUN, 139, 4021, 3, "gradcam", 8)
    review.set_verdict(con, ALICE, WORD, "noisy", "grass")
    review.set_verdict(con, BOB, WORD, "noisy")
    review.set_verdict(con, CAROL, WORD, "aligned")
    review.add_tag(con, ALICE, WORD, "grass")
    review.add_comment(con, BOB, WORD, "<b>not bold</b>")
    review.set_verdict(con, ALICE, other, "aligned")
    review.set_verdict(con, BOB, other, "noisy")  # a tie: no majority verdict
    review.set_verdict(con, ALICE, IMAGE, "background-heavy")
    review.create_queue(con, ADMIN, "q", {}, [Item(RUN, 140)])  # queued but unreviewed: not exported

    summary = review.review_summary(con).set_index("item_key")
    assert list(summary.index) == [IMAGE.key, WORD.key, other.key]
    row = summary.loc[WORD.key]
    assert (row["verdict"], row["disputed"], row["n_verdicts"], row["n_comments"]) == ("noisy", True, 3, 1)
    assert pd.isna(summary.loc[other.key, "verdict"])
    assert json.loads(summary.loc[WORD.key, "tags"]) == ["grass"]
    assert {v["reviewer"]: v["verdict"] for v in json.loads(summary.loc[WORD.key, "verdicts"])} == {
        "alice": "noisy", "bob": "noisy", "carol": "aligned",
    }  # fmt: skip
    assert review.review_summary(con, run_id="f" * 16).empty

    metrics = pd.DataFrame(  # as DuckDB returns the words table
        {
            "run_id": [RUN] * 3,
            "image_id": np.array([139, 139, 139], dtype=np.int64),
            "caption_id": np.array([4021, 4021, 4021], dtype=np.int64),
            "word_index": np.array([2, 3, 4], dtype=np.int16),
            "word": ["dog", "on", "grass"],
            "method": ["gradcam"] * 3,
            "layer": np.array([8, 8, 8], dtype=np.int16),
            "background_mass": [0.7, 0.2, 0.1],
        }
    )
    joined = join_metrics(metrics, review.review_summary(con))
    assert joined["word"].tolist() == ["dog", "on", "grass"]
    assert joined["verdict"].tolist()[0] == "noisy" and pd.isna(joined["verdict"].iloc[2])
    assert joined["n_verdicts"].tolist() == [3, 2, pd.NA]
    assert (joined["image_verdict"] == "background-heavy").all()
    assert joined["word_index"].dtype == np.int16


def test_export_writes_csv_and_parquet(con, tmp_path):
    review.set_verdict(con, ALICE, WORD, "noisy", INJECTIONS[0])
    review.add_comment(con, ALICE, WORD, INJECTIONS[3])
    summary = review.review_summary(con)
    summary.to_csv(tmp_path / "r.csv", index=False)
    summary.to_parquet(tmp_path / "r.parquet")
    for back in (pd.read_csv(tmp_path / "r.csv"), pd.read_parquet(tmp_path / "r.parquet")):
        assert json.loads(back.loc[0, "comments"])[0]["body"] == INJECTIONS[3]
        assert json.loads(back.loc[0, "verdicts"])[0]["note"] == INJECTIONS[0]
