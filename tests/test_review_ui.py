"""Team review in the dashboard, headless: the whole app (dashboard/app.py) through AppTest, on a real
extraction of the shared COCO subset and a real review store, signed in as each role."""

import io
import json
import sqlite3
import sys
from pathlib import Path
from urllib.parse import parse_qs

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import auth, data
from dashboard.review import exports
from db import queries, review
from db.queries import WordFilter
from db.review import Actor, Item

APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"
ROUNDS = 4  # the cheapest bcrypt cost keeps sign-ins fast here
ROLES = {"alice": "reviewer", "bob": "reviewer", "carol": "admin", "victor": "viewer"}
WORD = "dog"  # the word the queues are made of: in the small subset's captions, with a labelled dog
INJECTIONS = [
    "<script>alert('xss')</script>",
    "'; DROP TABLE verdicts; --",
    "**bold** [link](javascript:alert(1)) <img src=x onerror=alert(1)>",
    "x' OR '1'='1",
]


@pytest.fixture(scope="module")
def accounts() -> dict:
    return {name: {"password_hash": auth.hash_password(f"{name}-pw", rounds=ROUNDS), "role": role}
            for name, role in ROLES.items()}


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "review.sqlite"


@pytest.fixture
def make_app(small_db, store, accounts, monkeypatch):
    """A fresh browser session on the dashboard: AppTest with the given [auth] secrets (None: none)."""
    monkeypatch.setattr(sys, "argv", ["app.py", "--db", str(small_db), "--review-db", str(store)])

    def make(public_read: bool = False, secrets: bool = True) -> AppTest:
        at = AppTest.from_file(str(APP), default_timeout=60)
        if secrets:
            at.secrets["auth"] = {"public_read": public_read, "users": accounts}
        return at

    return make


@pytest.fixture(scope="module")
def dog_words(small_db) -> pd.DataFrame:
    """The gradcam rows of the word 'dog' in the small subset, as the Search page ranks them."""
    con = queries.connect_readonly(small_db)
    try:
        rows = queries.search_words(con, WordFilter(word=WORD, method="gradcam"), sort="background_mass", limit=None,
                                    with_maps=False)
    finally:
        con.close()
    assert len(rows) >= 4
    return rows


def sign_in(at: AppTest, user: str, password: str | None = None) -> AppTest:
    by_label = {t.label: t for t in at.text_input}
    by_label["User name"].input(user)
    by_label["Password"].input(f"{user}-pw" if password is None else password)
    return button(at, "Sign in").click().run()


def button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


def labels(at: AppTest) -> list[str]:
    return [b.label for b in at.button]


def texts(at: AppTest) -> list[str]:
    return [t.value for t in at.text]


def verdict_lines(at: AppTest) -> list[str]:
    """The panel's verdict lines without their time: ':colour-badge[verdict] **reviewer**'."""
    return [m.value.rsplit(" · ", 1)[0] for m in at.markdown if "-badge[" in m.value and "**" in m.value
            and m.value.split("[", 1)[1].split("]", 1)[0] in review.VERDICTS]


def frame_with(at: AppTest, column: str) -> pd.DataFrame:
    """The first dataframe shown that has `column`."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def can_open(at: AppTest, page: str, title: str | None = None) -> bool:
    """Whether this session's navigation has `page` (and, when given, it shows `title`)."""
    try:
        at.switch_page(page).run()
    except ValueError as exc:  # AppTest: the page is not registered with st.navigation in this session
        assert "Could not find a navigation page" in str(exc)
        return False
    return title is None or title in [t.value for t in at.title]


def signed_in(make_app, user: str, **kwargs) -> AppTest:
    at = make_app(**kwargs)
    at.run()
    sign_in(at, user)
    assert not at.exception
    return at


def open_item(at: AppTest, item: Item) -> AppTest:
    at.query_params["item"] = item.key
    at.switch_page("review/views/items.py").run()
    assert not at.exception, at.exception
    return at


# ---------------------------------------------------------------------------------------------- sign-in


def test_nothing_is_shown_before_sign_in_and_sign_out_returns_there(make_app):
    at = make_app()
    at.run()
    assert [t.value for t in at.title] == ["Sign in"]
    assert not at.sidebar.selectbox and not at.dataframe and not at.markdown  # no run picker, no data
    for page in ("review/views/items.py", "review/views/admin.py", "views/search.py"):
        at.switch_page(page).run()
        assert [t.value for t in at.title] == ["Sign in"]

    sign_in(at, "carol", "wrong")
    assert "Wrong user name or password" in at.error[0].value
    sign_in(at, "' OR 1=1 --", "x' OR '1'='1")
    assert "Wrong user name or password" in at.error[0].value
    sign_in(at, "carol")
    assert "Signed in as **carol** · `admin`" in [m.value for m in at.sidebar.markdown]
    assert at.title[0].value != "Sign in" and at.sidebar.selectbox(key="run").value

    button(at, "Sign out").click().run()
    assert [t.value for t in at.title] == ["Sign in"] and not at.sidebar.selectbox


def test_public_read_lets_visitors_read_but_not_write(make_app, dog_words, store):
    item = Item.from_row(dog_words.iloc[0])
    review.set_verdict(review.connect(store), Actor("alice", "reviewer"), item, "noisy", "peaks on the grass")
    at = make_app(public_read=True)
    at.run()
    assert "Not signed in: read-only." in [c.value for c in at.sidebar.caption]
    open_item(at, item)
    assert verdict_lines(at) == [":orange-badge[noisy] **alice**"] and "peaks on the grass" in texts(at)
    assert not any(label.startswith(review.VERDICTS) for label in labels(at))
    assert {"Add tag", "Comment", "Resolve"}.isdisjoint(labels(at)) and not at.text_area
    assert "Read-only: sign in as a reviewer to judge, tag and comment." in [c.value for c in at.caption]

    button(at, "Sign in").click().run()  # the sidebar's: asks for the form
    assert [t.value for t in at.title] == ["Sign in"]
    sign_in(at, "alice")
    assert "Signed in as **alice** · `reviewer`" in [m.value for m in at.sidebar.markdown]


def test_without_auth_secrets_the_dashboard_is_open_and_read_only(make_app, dog_words):
    at = make_app(secrets=False)
    at.run()
    assert "Read-only: no accounts are configured (see README, “Team review”)." in [c.value for c in at.sidebar.caption]
    open_item(at, Item.from_row(dog_words.iloc[0]))
    assert "Sign out" not in labels(at) and not any(label.startswith(review.VERDICTS) for label in labels(at))
    assert not can_open(at, "review/views/admin.py") and not can_open(at, "review/views/queue.py")


@pytest.mark.parametrize(
    ("user", "can_review", "can_manage"),
    [("victor", False, False), ("alice", True, False), ("carol", True, True)],
)
def test_each_role_sees_only_its_controls(make_app, dog_words, store, user, can_review, can_manage):
    item = Item.from_row(dog_words.iloc[1])
    at = open_item(signed_in(make_app, user), item)
    assert at.subheader[0].value == f"word {item.word_index} of caption {item.caption_id} · image {item.image_id} · " \
                                     f"gradcam layer {item.layer}"
    verdict_buttons = [b for b in at.button if b.label in review.VERDICTS]
    assert bool(verdict_buttons) == can_review
    assert ("Comment" in labels(at)) == can_review and ("Resolve" in labels(at)) == can_review
    assert any(e.label == "History (audit log)" for e in at.expander) == can_manage
    assert can_open(at, "review/views/queue.py", "My queues") == can_review
    assert can_open(at, "review/views/admin.py", "Review admin") == can_manage
    if can_review:
        open_item(at, item)
        button(at, "noisy").click().run()
        assert button(at, "noisy").proto.type == "primary"
        about = review.item_review(review.connect(store), item)
        assert [(v.reviewer, v.verdict) for v in about.verdicts] == [(user, "noisy")]


# ---------------------------------------------------------------------------------------------- reviewing


def test_reviewer_judges_tags_comments_and_resolves_an_item(make_app, dog_words, store):
    item = Item.from_row(dog_words.iloc[0])
    at = open_item(signed_in(make_app, "alice"), item)
    at.text_input(key="review_note").input("mass on the sofa")
    button(at, "background-heavy").click().run()
    assert at.text_input(key="review_note").value == ""  # the note went with the verdict
    at.text_input(key="review_tag").input("  sofa  ")
    button(at, "Add tag").click().run()
    at.text_area(key="review_comment").input("Grad-CAM peaks left of the dog.\nSecond line.")
    button(at, "Comment").click().run()
    button(at, "Resolve").click().run()
    assert not at.exception and not at.error

    assert verdict_lines(at) == [":violet-badge[background-heavy] **alice**"] and "mass on the sofa" in texts(at)
    assert next(m.value for m in at.markdown if "badge[background-heavy]" in m.value).endswith(" UTC")
    tags = frame_with(at, "tag")
    assert tags[["tag", "added by"]].values.tolist() == [["sofa", "alice"]]
    assert "Grad-CAM peaks left of the dog.\nSecond line." in texts(at)
    assert "Reopen" in labels(at) and any("resolved" in m.value for m in at.markdown)

    about = review.item_review(review.connect(store), item)
    assert about.status == "resolved" and about.status_by == "alice"
    assert [c.body for c in about.comments] == ["Grad-CAM peaks left of the dog.\nSecond line."]

    at.selectbox(key="review_untag").select("sofa")
    button(at, "Remove tag").click().run()
    button(at, "Reopen").click().run()
    button(at, "Withdraw my verdict").click().run()
    about = review.item_review(review.connect(store), item)
    assert (about.status, about.tags, about.verdicts) == ("open", (), ())


def test_any_image_or_word_can_be_opened_for_review(make_app, dog_words, store, small_db):
    first = dog_words.iloc[0]
    at = signed_in(make_app, "alice")
    at.switch_page("review/views/items.py").run()
    at.number_input(key="rv_image").set_value(int(first["image_id"])).run()
    button(at, "Review the whole image").click().run()
    assert at.query_params["item"] == Item(first["run_id"], int(first["image_id"])).key
    assert at.subheader[0].value == f"image {first['image_id']} · run {first['run_id']}"
    assert first["caption_raw"] in texts(at)  # the image's captions, as text
    button(at, "noisy").click().run()

    at.selectbox(key="rv_caption").select(int(first["caption_id"]))
    at.selectbox(key="rv_word").select(int(first["word_index"])).run()
    button(at, "Review this word").click().run()
    assert at.query_params["item"] == Item(first["run_id"], int(first["image_id"]), int(first["caption_id"]),
                                           int(first["word_index"]), "attention", int(first["layer"])).key
    assert any(":yellow-background[dog]" in m.value for m in at.markdown)

    at.query_params["item"] = "word:not-a-key"
    at.run()
    assert "The link names no review item" in at.warning[0].value
    assert [v.verdict for v in review.item_review(review.connect(store), Item(first["run_id"], int(
        first["image_id"]))).verdicts] == ["noisy"]


def test_an_empty_tag_is_refused_with_a_message(make_app, dog_words, store):
    at = open_item(signed_in(make_app, "alice"), Item.from_row(dog_words.iloc[0]))
    at.text_input(key="review_tag").input("   ")
    button(at, "Add tag").click().run()
    assert "tag is empty" in at.error[0].value
    assert review.all_tags(review.connect(store)).empty


@pytest.mark.parametrize("text", INJECTIONS)
def test_injection_strings_are_stored_verbatim_and_shown_as_text(make_app, dog_words, store, text):
    item = Item.from_row(dog_words.iloc[2])
    at = open_item(signed_in(make_app, "carol"), item)
    at.text_input(key="review_note").input(text)
    button(at, "other").click().run()
    at.text_input(key="review_tag").input(text[: review.MAX_TAG_CHARS])
    button(at, "Add tag").click().run()
    at.text_area(key="review_comment").input(text)
    button(at, "Comment").click().run()
    assert not at.exception and not at.error

    # Comments are st.text; notes and tags are dataframe cells: text either way, never Markdown or HTML.
    assert texts(at).count(text) == 2  # the comment and the verdict's note
    assert frame_with(at, "tag")["tag"].tolist() == [text[: review.MAX_TAG_CHARS].strip()]
    assert not any(text in m.value for m in (*at.markdown, *at.caption))

    # Every other text input of the review pages takes it as data too.
    at.switch_page("review/views/admin.py").run()
    at.text_input(key="au_user").input(text)
    at.text_input(key="au_target").input(text).run()
    assert not at.exception and frame_with(at, "action").empty
    at.text_input(key="au_user").input("carol")
    at.text_input(key="au_target").input(item.key).run()
    assert set(frame_with(at, "action")["action"]) == {"set_verdict", "add_tag", "add_comment"}

    con = review.connect(store)
    about = review.item_review(con, item)
    assert about.comments[0].body == text and about.verdicts[0].note == text
    assert {"verdicts", "tags", "comments", "audit_log", "items", "queues"} <= {
        r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


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
        "word": WORD, "run_id": dog_words["run_id"].iloc[0], "method": "gradcam", "layer": int(dog_words["layer"][0]),
        "ranges": None, "has_object": None, "sort": "background_mass", "descending": True, "limit": 3}
    items = review.queue_items(con, int(queue["queue_id"]))
    assert [Item.from_row(r).key for r in items.to_dict("records")] == [
        Item.from_row(r).key for r in dog_words.head(3).to_dict("records")]  # the search's top 3, in order

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


def test_reviewers_work_through_a_queue_and_the_admin_sees_agreement(make_app, dog_words, store):
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

    admin.switch_page("review/views/admin.py").run()
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
    at.selectbox(key="word_choice").select(WORD)
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
        (dog_words["caption_id"].iloc[3], dog_words["word_index"].iloc[3])]
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
