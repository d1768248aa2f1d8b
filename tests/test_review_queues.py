"""Team review in the dashboard, headless: queues, agreement, the audit chain, exports and verdict filters."""

import io
import json
import sqlite3
from urllib.parse import parse_qs

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import data, questions
from dashboard.review import exports
from db import review
from db.review import Actor, Item
from tests.review_app import WORD, button, frame_with, signed_in

# ---------------------------------------------------------------------------------------------- queues


def create_queue(at: AppTest, name: str, limit: int, reviewers: list[str]) -> AppTest:
    """As an admin on the admin page: a queue of the top `limit` 'dog' words by background mass."""
    at.switch_page("review/views/admin.py").run()
    at.radio(key="nq_method").set_value("gradcam").run()
    at.selectbox(key="nq_word").select(WORD).run()
    at.text_input(key="nq_name").input(name)
    at.number_input(key="nq_limit").set_value(limit)
    for reviewer in reviewers:
        at.multiselect(key="nq_reviewers").select(reviewer)
    return button(at, "Create queue").click().run()


def test_admin_creates_a_queue_from_a_search(make_app, dog_words, store):
    at = signed_in(make_app, "carol")
    name = "background-heavy 'dog' <b>gradcam</b>"
    create_queue(at, name, 3, ["alice", "bob"])
    assert not at.exception and "created with 3 items" in at.success[0].value

    con = review.connect(store)
    queue = review.list_queues(con).iloc[0]
    assert (queue["name"], queue["n_items"], queue["reviewers"]) == (name, 3, ["alice", "bob"])
    assert queue["search_spec"] == {
        "word": WORD,
        "run_id": dog_words["run_id"].iloc[0],
        "method": "gradcam",
        "layer": int(dog_words["layer"][0]),
        "ranges": None,
        "has_object": None,
        "sort": "background_mass",
        "descending": True,
        "limit": 3,
    }
    items = review.queue_items(con, int(queue["queue_id"]))
    assert [Item.from_row(r).key for r in items.to_dict("records")] == [
        Item.from_row(r).key for r in dog_words.head(3).to_dict("records")
    ]  # the search's top 3, in order

    create_queue(at, name, 2, [])  # names are unique
    assert "exists" in at.error[0].value and len(review.list_queues(con)) == 1


def test_admin_page_verifies_the_audit_chain(make_app, dog_words, store):
    at = create_queue(signed_in(make_app, "carol"), "dogs", 2, ["alice"])  # two audit rows
    head = review.verify_audit_chain(review.connect(store), Actor("carol", "admin")).head
    at.switch_page("review/views/admin.py").run()
    assert any(m.value.startswith(f"Hash chain intact: 2 rows. Head `{head}`") for m in at.success)

    tamper = sqlite3.connect(store)  # someone with write access to the file
    tamper.execute("DROP TRIGGER audit_log_no_update")
    tamper.execute("UPDATE audit_log SET actor = 'mallory' WHERE audit_id = 2")
    tamper.commit()
    at.run()
    assert any(m.value.startswith("Hash chain broken at row 2 (2 rows)") for m in at.error)
    assert not any("Hash chain intact" in m.value for m in at.success)


def judge_button(at: AppTest, verdict: str):
    return at.button(key=f"queue_review_verdict_{verdict}")


def judge(at: AppTest, verdict: str) -> AppTest:
    return judge_button(at, verdict).click().run()


def test_reviewers_work_through_a_queue_and_the_admin_sees_agreement(make_app, dog_words, store, monkeypatch):
    admin = signed_in(make_app, "carol")
    assert not create_queue(admin, "dogs", 4, ["alice", "bob"]).error
    keys = [Item.from_row(r).key for r in dog_words.head(4).to_dict("records")]

    alice = signed_in(make_app, "alice")
    alice.switch_page("review/views/queue.py").run()
    assert alice.markdown[0].value.startswith("**Item 1 of 4**")
    assert judge_button(alice, "noisy").proto.shortcut == "2"  # keys 1-5 on the queue page
    for verdict in ("noisy", "noisy", "aligned"):  # each verdict moves on to the next item
        judge(alice, verdict)
    assert alice.query_params["pos"] == "3" and alice.markdown[0].value.startswith("**Item 4 of 4**")
    assert "You judged 3 of 4" in alice.get("progress")[0].proto.text
    button(alice, "Previous").click().run()
    assert alice.markdown[0].value.startswith("**Item 3 of 4**")
    assert judge_button(alice, "aligned").proto.type == "primary"
    alice.toggle(key="todo").set_value(True).run()
    button(alice, "Previous").click().run()  # every earlier item is judged: stays, says so
    assert alice.markdown[0].value.startswith("**Item 3 of 4**")
    button(alice, "Next").click().run()
    assert alice.markdown[0].value.startswith("**Item 4 of 4**")
    judge(alice, "other")
    assert alice.toast[0].value == "That was the last item." and alice.query_params["pos"] == "3"
    alice.query_params.pop("pos")
    alice.run()  # reopened later, with "Unreviewed only" on
    assert alice.success[0].value.startswith("You have judged every item of this queue")

    bob = signed_in(make_app, "bob")
    bob.switch_page("review/views/queue.py").run()
    for verdict in ("noisy", "aligned", "aligned", "other"):
        judge(bob, verdict)

    monkeypatch.setattr(questions, "image_detail", no_image_detail)  # the disagreements table: one query
    admin.switch_page("review/views/admin.py").run()
    assert not admin.exception
    progress = frame_with(admin, "reviewed")  # the chosen queue, per reviewer
    assert progress[["reviewer", "reviewed", "total"]].values.tolist() == [["alice", 4, 4], ["bob", 4, 4]]
    metrics = {m.label: m.value for m in admin.metric}
    assert metrics["Agreement"] == "75%"  # they differ on the second item only
    pairs = frame_with(admin, "kappa")
    assert pairs[["reviewer_a", "reviewer_b", "n_shared", "n_agree"]].values.tolist() == [["alice", "bob", 4, 3]]
    # Cohen's kappa: p_o = 3/4; alice noisy 2, aligned 1, other 1; bob noisy 1, aligned 2, other 1.
    p_e = (2 * 1 + 1 * 2 + 1 * 1) / 16
    assert pairs["kappa"].iloc[0] == pytest.approx((0.75 - p_e) / (1 - p_e))
    split = frame_with(admin, "open")
    assert split[["alice", "bob"]].values.tolist() == [["noisy", "aligned"]]
    assert split["open"].iloc[0].startswith("reviews?") and keys[1].replace(":", "%3A") in split["open"].iloc[0]
    second = dog_words.iloc[1]
    assert split["item"].tolist() == [f"“{second['word']}” in “{second['caption']}” · image {second['image_id']} · "
                                      f"gradcam layer {second['layer']}"]  # fmt: skip


def no_image_detail(*args):
    raise AssertionError("image_detail called: a query per row")


def test_queue_page_for_a_reviewer_without_queues(make_app):
    at = signed_in(make_app, "alice")
    at.switch_page("review/views/queue.py").run()
    assert "No queue is assigned to you yet" in at.info[0].value


# ---------------------------------------------------------------------------------------------- export


def test_reviews_page_lists_reviews_and_exports_them_with_metrics(make_app, small_db, dog_words, store):
    con = review.connect(store)
    alice, bob = Actor("alice", "reviewer"), Actor("bob", "reviewer")
    first, second = (Item.from_row(r) for r in dog_words.head(2).to_dict("records"))
    image = Item(first.run_id, first.image_id)
    review.set_verdict(con, alice, first, "noisy")
    review.set_verdict(con, bob, first, "aligned")
    review.add_tag(con, alice, second, "sofa")
    review.add_comment(con, bob, image, "two dogs, one labelled")

    at = signed_in(make_app, "victor")
    at.switch_page("review/views/items.py").run()
    table = at.dataframe[0].value
    assert set(table["kind"]) == {"word", "image"} and len(table) == 3
    assert set(table.loc[table["kind"] == "word", "word"]) == {WORD}
    at.selectbox(key="rv_tag").select("sofa").run()
    assert at.dataframe[0].value["tags"].tolist() == [["sofa"]]

    db = data.Database.open(small_db)
    words = pd.read_csv(io.BytesIO(exports.export_reviews(db, str(store), first.run_id, "csv", True)))
    assert len(words) == 2 and set(words["word"]) == {WORD}
    judged = words[words["caption_id"] == first.caption_id].iloc[0]
    assert judged["disputed"] and judged["n_verdicts"] == 2 and judged["image_n_comments"] == 1
    assert judged["mask_mass"] == pytest.approx(dog_words.iloc[0]["mask_mass"], rel=1e-6)
    assert json.loads(words[words["caption_id"] == second.caption_id].iloc[0]["tags"]) == ["sofa"]
    everything = pd.read_parquet(io.BytesIO(exports.export_reviews(db, str(store), first.run_id, "parquet", False)))
    assert sorted(everything["kind"]) == ["image", "word", "word"]


# ---------------------------------------------------------------------------------------------- Search, Statistics


def card_items(at: AppTest) -> list[tuple[int, int]]:
    """(caption_id, word index) of the Search result cards, in order (from their Image page links)."""
    links = [parse_qs(link.proto.query_string) for link in at.get("page_link") if link.value.startswith("Image ")]
    return [(int(q["caption"][0]), int(q["w"][0])) for q in links]


def test_verdicts_and_tags_filter_and_sort_search_and_statistics(make_app, dog_words, store):
    con = review.connect(store)
    alice = Actor("alice", "reviewer")
    judged = [Item.from_row(r) for r in dog_words.head(3).to_dict("records")]
    for item, verdict in zip(judged, ("noisy", "aligned", "noisy"), strict=True):
        review.set_verdict(con, alice, item, verdict)
    review.add_tag(con, alice, judged[2], "sofa")
    review.resolve(con, alice, judged[0])

    at = signed_in(make_app, "victor")
    at.sidebar.radio(key="method").set_value("gradcam").run()
    at.selectbox(key="word_choice").select(WORD).run()  # the ranking controls follow a chosen word
    at.selectbox(key="sort").select("background_mass").run()
    assert card_items(at) == [(r.caption_id, r.word_index) for r in dog_words.itertuples()]

    def total() -> int:
        return int(next(m.value for m in at.markdown if "occurrences" in m.value).split("**")[1].replace(",", ""))

    at.selectbox(key="rv_verdict").select("noisy").run()
    assert total() == 2 and card_items(at) == [(i.caption_id, i.word_index) for i in (judged[0], judged[2])]
    at.selectbox(key="rv_verdict").select("unreviewed").run()
    assert total() == len(dog_words) - 3
    at.selectbox(key="rv_verdict").select("any")
    at.selectbox(key="rv_tag").select("sofa").run()
    assert card_items(at) == [(judged[2].caption_id, judged[2].word_index)]
    at.selectbox(key="rv_tag").select("any")
    at.selectbox(key="rv_status").select("resolved").run()
    assert card_items(at) == [(judged[0].caption_id, judged[0].word_index)]
    at.selectbox(key="rv_status").select("any")
    at.selectbox(key="rv_sort").select("verdict").run()  # aligned, noisy, noisy, then the unjudged in rank order
    assert card_items(at)[:4] == [(i.caption_id, i.word_index) for i in (judged[1], judged[0], judged[2])] + [
        (dog_words["caption_id"].iloc[3], dog_words["word_index"].iloc[3])
    ]
    assert not at.exception

    at.switch_page("views/statistics.py").run()
    at.selectbox(key="view").select("reviews")
    at.number_input(key="min_n").set_value(1).run()
    table = frame_with(at, "n_reviewed")
    dog = table[table["word"] == WORD].iloc[0]
    assert (dog["n_reviewed"], dog["n_noisy"], dog["n_aligned"], dog["tags"]) == (3, 2, 1, ["sofa"])
    assert dog["search"].startswith("./?") and "word=dog" in dog["search"]
    at.selectbox(key="st_verdict").select("wrong object").run()
    assert "No reviewed word matches." in [i.value for i in at.info]
