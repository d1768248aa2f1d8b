"""Reviews: review any word or image, browse what the team reviewed, export it with the word metrics.

The open item is the ``item`` query parameter (its db.review key), so queue pages, the admin page and
pasted links all open an item here.
"""

from __future__ import annotations

import streamlit as st

from dashboard import data, questions, state
from dashboard.markup import code, literal
from dashboard.review import controls, exports, panel, session
from db.review import Item, joined

TABLE_COLUMNS = [
    "kind",
    "word",
    "image_id",
    "caption_id",
    "word_index",
    "method",
    "layer",
    "verdict",
    "disputed",
    "n_verdicts",
    "tags",
    "n_comments",
    "status",
]

ctx = data.context()
con = session.connection()
run_id = ctx.run["run_id"]
st.title("Reviews")


def open_item(key: str | None) -> None:
    """Show this item (None: close it)."""
    state.set_query(item=key)


def item_from_link() -> Item | None:
    key = st.query_params.get("item")
    if key is None:
        return None
    try:
        return Item.from_key(key)
    except ValueError:
        st.warning("The link names no review item; choose one below.")
        return None


item = item_from_link()
# A viewer opens items to read their reviews; only a reviewer is offered to review them.
verb = "Review" if session.actor().can_review else "Open"
with st.expander(f"{verb} a word or an image", expanded=item is None, icon=":material/add_comment:"):
    image_id = st.number_input(
        "COCO image id", value=None, step=1, min_value=0, key="rv_image", placeholder="Type an image id"
    )
    detail = None if image_id is None else questions.image_detail(ctx.db, int(image_id), run_id)
    if detail is not None and detail["image"].empty:
        st.error(f"Image {image_id} is not in this database.")
    elif detail is not None:
        texts = detail["captions"].set_index("caption_id")["text"]
        caption_id = st.selectbox("Caption", list(texts.index), format_func=lambda c: texts[c], key="rv_caption")
        words = detail["words"]
        here = words[
            (words["caption_id"] == caption_id) & (words["method"] == ctx.method) & (words["layer"] == ctx.layer)
        ]
        names = dict(zip(here["word_index"].astype(int), here["word"], strict=True))
        word_index = st.selectbox("Word", list(names), format_func=lambda i: f"{i}: {names[i]}", key="rv_word")
        left, right = st.columns(2)
        left.button(
            f"{verb} this word",
            icon=":material/text_fields:",
            disabled=word_index is None,
            on_click=open_item,
            args=(
                None
                if word_index is None
                else Item(run_id, int(image_id), int(caption_id), word_index, ctx.method, ctx.layer).key,
            ),
        )
        right.button(
            f"{verb} the whole image",
            icon=":material/image:",
            on_click=open_item,
            args=(Item(run_id, int(image_id)).key,),
        )
        st.caption(f"Words as {ctx.method} layer {ctx.layer} maps (change the map and layer in the sidebar).")

if item is not None:
    title, close = st.columns([5, 1], vertical_alignment="bottom")
    title.subheader(literal(panel.describe(item, ctx.db)))
    close.button("Close", icon=":material/close:", on_click=open_item, args=(None,), width="stretch")
    panel.item_with_review(ctx, item)

st.subheader("Reviewed items")
st.caption(
    f"Run {code(run_id)}: every word and image with a verdict, tag, comment or status change. Click a row to open it."
)
with st.expander("Filters", icon=":material/filter_alt:"):
    spec = controls.filter_controls(con, *st.columns(2))
table = joined.reviewed_items(ctx.db.connection(), con, run_id, spec)
if table.empty:
    st.info("Nothing reviewed in this run matches." if spec.active else "Nothing reviewed in this run yet.")
else:
    table["tags"] = table["tags"].map(joined.tag_list)
    keys = table["item_key"].tolist()

    def open_selected() -> None:
        rows = st.session_state["reviewed"].selection.rows
        open_item(keys[rows[0]] if rows else None)

    st.dataframe(
        table[TABLE_COLUMNS],
        hide_index=True,
        width="stretch",
        key="reviewed",
        on_select=open_selected,
        selection_mode="single-row",
        column_config={"tags": st.column_config.ListColumn("tags")},
    )

st.subheader("Export")
st.caption(
    "Reviewed words joined with their metrics (one row per word; the image's own review in image_* "
    "columns), or every reviewed item as it is stored. Verdicts, tags and comments are JSON lists."
)
store = session.store_path()
for label, with_metrics, stem in (
    ("Reviewed words + metrics", True, "reviewed_words"),
    ("All reviews", False, "reviews"),
):
    name, *buttons = st.columns([2, 1, 1], vertical_alignment="center")
    name.markdown(f"**{label}**")
    for column, (fmt, mime) in zip(buttons, exports.EXPORT_FORMATS.items(), strict=True):
        column.download_button(
            fmt.upper() if fmt == "csv" else fmt.capitalize(),
            lambda fmt=fmt, with_metrics=with_metrics: exports.export_reviews(ctx.db, store, run_id, fmt, with_metrics),
            f"{stem}_{run_id}.{fmt}",
            mime,
            key=f"export_{stem}_{fmt}",
            icon=":material/download:",
            on_click="ignore",
            width="stretch",
        )
