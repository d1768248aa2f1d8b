"""My queues: work through an assigned review queue item by item, keyboard first.

J / K move to the next / previous item, 1-5 set a verdict (and move on when "Advance after a verdict"
is on). The queue and position live in the URL (``queue``, ``pos``), so a link reopens the same item.
"""

from __future__ import annotations

import streamlit as st

from dashboard import data, state
from dashboard.markup import literal
from dashboard.review import panel, session
from db import review

ctx = data.context()
con = session.connection()
actor = session.actor()
st.title("My queues")

if not actor.can_review:
    st.info("Queues are worked through by reviewers; your role reads only. Browse reviews on the Reviews page.")
    st.stop()

queues = review.list_queues(con, reviewer=actor.user)
if queues.empty:
    st.info(
        "No queue is assigned to you yet. An admin makes queues from a search and assigns them on the "
        "Review admin page."
    )
    st.stop()


def restart() -> None:
    """Another queue starts at its first item."""
    state.set_query(pos=None)


by_name = {row["name"]: row for row in queues.to_dict("records")}
top, toggles = st.columns([3, 2], vertical_alignment="bottom")
name = top.selectbox("Queue", list(by_name), key="queue", bind=state.BIND, on_change=restart)
queue = by_name[name]
queue_id = int(queue["queue_id"])
unreviewed_only = toggles.toggle(
    "Unreviewed only", key="todo", bind=state.BIND, help="Next and previous skip the items you already judged."
)
advance = toggles.toggle(
    "Advance after a verdict",
    value=True,
    key="advance",
    help="A verdict (buttons or keys 1-5) moves on to the next item.",
)


def go(direction: str, position: int | None) -> None:
    """Move to the next or previous entry (button and verdict callbacks)."""
    unreviewed_only = st.session_state.get("todo", False)
    entry = review.neighbour_item(
        con, queue_id, actor.user, position, direction=direction, unreviewed_only=unreviewed_only
    )
    if entry is None:
        st.toast(
            "That was the last item." if direction == "next" else "This is the first item.", icon=":material/flag:"
        )
    else:
        state.set_query(pos=entry.position)


items = review.queue_items(con, queue_id, reviewer=actor.user)
done = int(items["reviewer_verdict"].notna().sum())
reviewers = literal(", ".join(queue["reviewers"])) or "none"
st.progress(
    done / len(items),
    text=f"You judged {done} of {len(items)} · {int(queue['n_judged'])} judged by anyone · reviewers: {reviewers}",
)

position = state.query_int("pos")
if position is None or not 0 <= position < len(items):
    entry = review.neighbour_item(con, queue_id, actor.user, None, unreviewed_only=unreviewed_only)
    if entry is None:
        st.success(
            "You have judged every item of this queue. Turn off “Unreviewed only” to go over them again.",
            icon=":material/done_all:",
        )
        st.stop()
    position = entry.position
    state.set_query(pos=position)
item = review.Item.from_row(items.iloc[position].to_dict())

back, where, forward = st.columns([1, 3, 1], vertical_alignment="center")
back.button(
    "Previous",
    key="previous",
    icon=":material/arrow_back:",
    shortcut="K",
    width="stretch",
    on_click=go,
    args=("previous", position),
    help="Previous item (K)",
)
where.markdown(f"**Item {position + 1} of {len(items)}** · {literal(panel.describe(item, ctx.db))}")
forward.button(
    "Next",
    key="next",
    icon=":material/arrow_forward:",
    icon_position="right",
    shortcut="J",
    width="stretch",
    on_click=go,
    args=("next", position),
    help="Next item (J)",
)

panel.item_with_review(
    ctx, item, key="queue_review", shortcuts=True, after_verdict=(lambda: go("next", position)) if advance else None
)
