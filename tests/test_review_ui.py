"""Team review in the dashboard, headless: the whole app (dashboard/app.py) through AppTest, on a real
extraction of the shared COCO subset and a real review store, signed in as each role."""

import pytest

from dashboard.markup import literal
from db import review
from db.review import Actor, Item
from tests.review_app import (
    INJECTIONS,
    button,
    can_open,
    frame_with,
    labels,
    open_item,
    sign_in,
    signed_in,
    texts,
    verdict_lines,
)

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
    # The item is named by its word and caption (issue 11), not by their positions.
    name = f"“dog” in “{dog_words.iloc[1]['caption']}” · image {item.image_id} · gradcam layer {item.layer}"
    assert at.subheader[0].value == literal(name)
    # Only a reviewer is offered to review another item; a viewer may open one.
    verb = "Review" if can_review else "Open"
    assert [e.label for e in at.expander if e.label.endswith("a word or an image")] == [f"{verb} a word or an image"]
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
    assert (
        at.query_params["item"]
        == Item(
            first["run_id"],
            int(first["image_id"]),
            int(first["caption_id"]),
            int(first["word_index"]),
            at.radio(key="method").value,  # the sidebar's slice: by default the run's best (issue 11)
            int(at.selectbox(key="layer").value),
        ).key
    )
    assert any(":yellow-background[dog]" in m.value for m in at.markdown)

    at.query_params["item"] = "word:not-a-key"
    at.run()
    assert "The link names no review item" in at.warning[0].value
    assert [
        v.verdict
        for v in review.item_review(review.connect(store), Item(first["run_id"], int(first["image_id"]))).verdicts
    ] == ["noisy"]


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
        r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
