"""Reviewing one item, embeddable in any page: what the item is (:func:`item_view`) and what the team
says about it (:func:`review_panel`: verdicts, tags, comment thread, resolve/reopen, who and when).

Everything a user typed (comments, notes, tags) and every caption is shown as text (``st.text``, dataframe
cells, or Markdown escaped by dashboard/markup.py), never read as Markdown or HTML, so it cannot inject
markup or make the browser fetch anything. Writes go through db/review/, which
checks the actor's role again; viewers and anonymous visitors are shown no write controls at all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import components as ui
from dashboard import data, paths, questions, state
from dashboard.markup import literal, marked_caption
from dashboard.overlay import OverlayStyle
from dashboard.review import session
from db import review
from db.review import Actor, Item, ItemReview

ITEM_SIDE = 640
VERDICT_ICONS = {
    "aligned": ":material/check_circle:",
    "noisy": ":material/blur_on:",
    "background-heavy": ":material/landscape:",
    "wrong object": ":material/wrong_location:",
    "other": ":material/help:",
}
VERDICT_COLOURS = {
    "aligned": "green",
    "noisy": "orange",
    "background-heavy": "violet",
    "wrong object": "red",
    "other": "gray",
}
_FLASH_KEY = "_review_flash"  # (level, message) left by a write callback for the next run to show


def when(at: str | None) -> str:
    """A stored ISO timestamp (UTC) as 'YYYY-MM-DD HH:MM UTC'."""
    return "" if not at else f"{at[:10]} {at[11:16]} UTC"


def item_url(item: Item) -> dict[str, str]:
    """Query parameters of a link to the Reviews page open on `item`."""
    return state.link_params(item=item.key)


def describe(item: Item, db: data.Database) -> str:
    """A one-line name of an item, e.g. '“dog” in “a dog on a sofa” · image 139 · gradcam layer 8'
    (plain text: for a table cell, or Markdown after markup.literal)."""
    if item.kind == "image":
        return item_name(item, None)
    captions = questions.image_detail(db, item.image_id, item.run_id)["captions"]
    text = captions.loc[captions["caption_id"] == item.caption_id, "text"]
    return item_name(item, text.iloc[0] if len(text) else None)


def item_name(item: Item, caption: str | None) -> str:
    """`describe`'s name of an item whose caption text is known (None: the database lacks it)."""
    if item.kind == "image":
        return f"image {item.image_id} · run {item.run_id}"
    words = caption.split(" ") if caption is not None else []
    word = words[item.word_index] if item.word_index < len(words) else f"word {item.word_index}"
    quoted = f"“{caption}”" if caption is not None else f"caption {item.caption_id}"
    return f"“{word}” in {quoted} · image {item.image_id} · {item.method} layer {item.layer}"


# ---------------------------------------------------------------------------------------------- the item


def _run_row(ctx: data.Context, run_id: str) -> dict[str, Any] | None:
    if ctx.run["run_id"] == run_id:
        return dict(ctx.run)
    runs = questions.list_runs(ctx.db)
    hit = runs[runs["run_id"] == run_id]
    return None if hit.empty else hit.iloc[0].to_dict()


def _image_file(ctx: data.Context, run: dict[str, Any], file_name: str) -> str | None:
    """The image's path, refused (None) if the stored name would leave the image folder."""
    root = ctx.images_dir if run["run_id"] == ctx.run["run_id"] else data.images_dir(run, None, ctx.db)
    path = paths.image_path(root, file_name)
    return None if path is None else str(path)


def item_view(ctx: data.Context, item: Item, style: OverlayStyle, show_mask: bool, show_box: bool) -> bool:
    """Draw what the item is: the word's map over its image with the caption and metrics, or the image
    with its labelled objects and captions. False (with a message) when the database lacks it."""
    run = _run_row(ctx, item.run_id)
    if run is None:
        st.warning(f"Run `{item.run_id}` is not in this database; only the review is shown.")
        return False
    detail = questions.image_detail(ctx.db, item.image_id, item.run_id)
    if detail["image"].empty:
        st.warning(f"Image {item.image_id} is not in this database; only the review is shown.")
        return False
    image = detail["image"].iloc[0]
    width, height = int(image["width"]), int(image["height"])
    path = _image_file(ctx, run, image["file_name"])
    big = dataclasses.replace(style, max_side=ITEM_SIDE)
    instances = detail["instances"]
    if item.kind == "image":
        png, found = data.render_overlay(
            path, width, height, None, 0.0, big, data.instance_tuples(instances), show_mask, show_box
        )
        st.image(png, width="stretch")
        for text in detail["captions"]["raw"]:
            st.text(text)
    else:
        words = detail["words"]
        rows = words[
            (words["caption_id"] == item.caption_id)
            & (words["word_index"] == item.word_index)
            & (words["method"] == item.method)
            & (words["layer"] == item.layer)
        ]
        if rows.empty:
            st.warning(f"This run has no {item.method} layer {item.layer} map for that word.")
            return False
        row = rows.iloc[0]
        named = instances[instances["category_id"] == row["category_id"]]
        png, found = data.render_overlay(
            path,
            width,
            height,
            row["map"],
            float(row["map_max"]),
            big,
            data.instance_tuples(named),
            show_mask,
            show_box,
        )
        st.image(png, width="stretch")
        caption = detail["captions"].set_index("caption_id").loc[item.caption_id, "text"]
        st.markdown(marked_caption(caption, item.word_index))
        st.markdown(ui.badges(row.to_dict()))
    if not found:
        ui.image_missing_note(ctx)
    # The item's own run, map and layer, which may differ from the sidebar's.
    where = {"run": item.run_id} | ({"method": item.method, "layer": item.layer} if item.kind == "word" else {})
    st.page_link(
        "views/image.py",
        label=f"Open image {item.image_id}",
        icon=":material/open_in_new:",
        query_params=state.link_params(image=item.image_id, caption=item.caption_id, w=item.word_index, **where),
    )
    return True


# ---------------------------------------------------------------------------------------------- writes


def write(action: Callable[..., Any], *args: Any, done: str, then: Callable[[], None] | None = None) -> None:
    """Run a db.review write as this session's actor (for button callbacks); `flash` shows its outcome.

    `then` runs after a successful write (a queue moves on).
    """
    try:
        action(session.connection(), session.actor(), *args)
    except (PermissionError, ValueError, TypeError) as exc:
        st.session_state[_FLASH_KEY] = ("error", str(exc))
        return
    st.session_state[_FLASH_KEY] = ("success", done)
    if then is not None:
        then()


def _write_text(action: Callable[..., Any], item: Item, widget_key: str, done: str) -> None:
    """Submit a text form: the text is taken verbatim from its widget (tags are trimmed)."""
    text = st.session_state.get(widget_key) or ""
    write(action, item, text.strip() if action is review.add_tag else text, done=done)


def _set_verdict(item: Item, verdict: str, note_key: str, then: Callable[[], None] | None) -> None:
    note = st.session_state.get(note_key) or ""
    write(review.set_verdict, item, verdict, note, done=f"Verdict: {verdict}", then=then)
    if st.session_state[_FLASH_KEY][0] == "success":
        st.session_state[note_key] = ""  # the note belonged to this verdict, not to the next item


def flash() -> None:
    """Show the outcome of the last write callback (errors in the page, successes as a toast)."""
    level, message = st.session_state.pop(_FLASH_KEY, (None, None))
    if level == "error":  # db.review's messages may quote what the user typed
        st.error(literal(message), icon=":material/error:")
    elif level == "success":
        st.toast(literal(message), icon=":material/check:")


# ---------------------------------------------------------------------------------------------- the panel


def review_panel(
    item: Item,
    *,
    key: str = "review",
    shortcuts: bool = False,
    after_verdict: Callable[[], None] | None = None,
) -> None:
    """Everything the team said about `item`, and (for reviewers) the controls to say more.

    Args:
        key: widget key prefix; give each panel on one page its own.
        shortcuts: verdict keys 1-5 (one panel per page may have them).
        after_verdict: called after this user set a verdict (a queue moves on to its next item).
    """
    con = session.connection()
    actor = session.actor()
    flash()
    about = review.item_review(con, item)
    status = "resolved" if about.status == "resolved" else "open"
    st.markdown(f"**Review** · {':green-badge[resolved]' if status == 'resolved' else ':orange-badge[open]'}")
    if about.status_by:
        st.caption(f"{status.capitalize()}{literal(f' by {about.status_by}, {when(about.status_at)}')}")
    verdicts_section(item, about, actor, key, shortcuts, after_verdict)
    tags_section(item, about, actor, key)
    comments_section(item, about, actor, key)
    if actor.can_manage:
        with st.expander("History (audit log)", icon=":material/history:"):
            log = review.audit_log(con, actor, target=item.key)
            st.dataframe(log.drop(columns=["target"]), hide_index=True, width="stretch")


def verdicts_section(
    item: Item,
    about: ItemReview,
    actor: Actor,
    key: str,
    shortcuts: bool,
    after_verdict: Callable[[], None] | None,
) -> None:
    """Each reviewer's verdict and note; for reviewers, buttons to give or withdraw their own."""
    mine = next((v for v in about.verdicts if v.reviewer == actor.user), None)
    if actor.can_review:
        note_key = f"{key}_note"
        with st.container(horizontal=True, wrap=True, gap="small"):
            for number, verdict in enumerate(review.VERDICTS, start=1):
                st.button(
                    verdict,
                    key=f"{key}_verdict_{verdict}",
                    icon=VERDICT_ICONS[verdict],
                    type="primary" if mine and mine.verdict == verdict else "secondary",
                    shortcut=str(number) if shortcuts else None,
                    on_click=_set_verdict,
                    args=(item, verdict, note_key, after_verdict),
                    help=f"My verdict: {verdict} (with the note below, if any)",
                )
        st.text_input(
            "Note with my verdict (optional)",
            key=note_key,
            max_chars=review.MAX_TEXT_CHARS,
            placeholder=mine.note if mine and mine.note else "why, in a few words",
        )
    for v in about.verdicts:
        st.markdown(f":{VERDICT_COLOURS[v.verdict]}-badge[{v.verdict}] **{literal(v.reviewer)}** · {when(v.at)}")
        if v.note:
            st.text(v.note)
    if not about.verdicts:
        st.caption("No verdict yet.")
    if mine is not None:
        st.button(
            "Withdraw my verdict",
            key=f"{key}_clear",
            type="tertiary",
            icon=":material/undo:",
            on_click=write,
            args=(review.clear_verdict, item),
            kwargs={"done": "Verdict withdrawn"},
        )


def tags_section(item: Item, about: ItemReview, actor: Actor, key: str) -> None:
    """The item's tags; for reviewers, forms to add and remove them."""
    st.markdown("**Tags**")
    if about.tags:
        st.dataframe(
            pd.DataFrame([{"tag": t.tag, "added by": t.added_by, "when": when(t.at)} for t in about.tags]),
            hide_index=True,
            width="stretch",
        )
    else:
        st.caption("No tags.")
    if not actor.can_review:
        return
    add, remove = st.columns(2)
    with add.form(f"{key}_tag_form", clear_on_submit=True, border=False):
        st.text_input("Add a tag", key=f"{key}_tag", max_chars=review.MAX_TAG_CHARS)
        st.form_submit_button(
            "Add tag",
            icon=":material/sell:",
            on_click=_write_text,
            args=(review.add_tag, item, f"{key}_tag", "Tag added"),
        )
    if about.tags:
        with remove.form(f"{key}_untag_form", border=False):
            st.selectbox("Remove a tag", [t.tag for t in about.tags], key=f"{key}_untag")
            st.form_submit_button(
                "Remove tag",
                icon=":material/delete:",
                on_click=_write_text,
                args=(review.remove_tag, item, f"{key}_untag", "Tag removed"),
            )


def comments_section(item: Item, about: ItemReview, actor: Actor, key: str) -> None:
    """The comment thread; for reviewers, a form to add one and the resolve / reopen button."""
    st.markdown(f"**Comments** ({len(about.comments)})")
    for comment in about.comments:
        with st.container(border=True):
            st.caption(f"{literal(comment.author)} · {when(comment.at)}")
            st.text(comment.body)
    if not actor.can_review:
        st.caption("Read-only: sign in as a reviewer to judge, tag and comment.")
        return
    with st.form(f"{key}_comment_form", clear_on_submit=True, border=False):
        st.text_area("Add a comment", key=f"{key}_comment", max_chars=review.MAX_TEXT_CHARS, height=90)
        st.form_submit_button(
            "Comment",
            icon=":material/send:",
            on_click=_write_text,
            args=(review.add_comment, item, f"{key}_comment", "Comment added"),
        )
    label, action, icon, done = (
        ("Reopen", review.reopen, ":material/undo:", "Reopened")
        if about.status == "resolved"
        else ("Resolve", review.resolve, ":material/task_alt:", "Resolved")
    )
    st.button(
        label, key=f"{key}_{label.lower()}", icon=icon, on_click=write, args=(action, item), kwargs={"done": done}
    )


def item_with_review(ctx: data.Context, item: Item, **panel: Any) -> None:
    """The item's view (with display controls) beside its review panel; `panel` goes to review_panel."""
    with st.expander("Display", icon=":material/palette:"):
        style, show_mask, show_box = ui.overlay_controls()
    ui.colour_key(style)
    left, right = st.columns([3, 2])
    with left:
        item_view(ctx, item, style, show_mask, show_box)
    with right:
        review_panel(item, **panel)
