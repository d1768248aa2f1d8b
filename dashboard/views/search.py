"""Search: every occurrence of a word, or of the words naming a COCO category, ranked by a metric."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import pandas as pd
import streamlit as st

from dashboard import components as ui
from dashboard import data, heads_view, overview, questions, state
from dashboard.markup import literal
from dashboard.review import controls as review_controls
from dashboard.review import exports as review_exports
from dashboard.review import session as review_session
from db.queries import WordFilter
from db.review import joined

# Autocomplete offers this many of the most frequent words; any other word can still be typed.
VOCABULARY_SIZE = 5000
FULL_RANGE = (0.0, 1.0)
# Fine enough to split maps that are all nearly uniform (entropy 0.99x with small grids).
RANGE_STEP = 0.001
OBJECT_FILTER = {"any": None, "labelled": True, "not labelled": False}
POINTING_FILTER = {"any": None, "hit": (1.0, 1.0), "miss": (0.0, 0.0)}


def first_page() -> None:
    """New criteria start again at page 1."""
    state.first_page("p")


def new_target() -> None:
    """A new word or category opens on the slice where it grounds best (the sidebar reads the URL first)."""
    first_page()
    state.forget("method", "layer")
    for param in ("word", "category"):
        if f"{param}_choice" in st.session_state:
            state.set_query(**{param: st.session_state[f"{param}_choice"]})


def best_view_note(best: data.BestView, method: str, layer: int) -> str | None:
    """Says which slice grounds the word or category best, and whether it is the one shown; None when the
    run has no object labels to tell (no mask nor background mass)."""
    top = best.slices.iloc[0]
    has_mask = top["n_object"] >= 1
    if not has_mask and pd.isna(top["background_mass"]):
        return None
    score = (
        f"mean mask mass {top['mask_mass']:.2f} over {top['n_object']:,} occurrences with the object"
        if has_mask
        else f"least background mass, {top['background_mass']:.2f}, over {top['n']:,} occurrences"
    )
    where = f"{top['method']} · layer {int(top['layer'])}"
    if best.is_best(method, layer):
        return (
            f"Showing {where}, where “{literal(best.name)}” grounds best in this run ({score}). The sidebar changes it."
        )
    return f"“{literal(best.name)}” grounds best in {where} ({score}); you are looking at {method} · layer {layer}."


def stop_when_empty(total: int, note: str) -> None:
    """Stop the page when nothing matches, saying why: the typed word is not in the run, or `note`."""
    if total:
        return
    if by == "word" and chosen and questions.count_words(ctx.db, WordFilter(word=chosen, run_id=run_id)) == 0:
        st.warning(f"“{literal(chosen)}” does not occur in the captions of this run. Pick a word from the list.")
    else:
        st.info(note)
    st.stop()


def export_buttons(column, where: WordFilter, sort: str, descending: bool, reviewed: pd.DataFrame | None) -> None:
    """The metric ranking's downloads, every matching row with its metrics, in `column`."""
    stem = f"search_{chosen}_{ctx.method}{ctx.layer}".replace(" ", "_")
    formats = {"csv": ("CSV", "text/csv"), "parquet": ("Parquet", "application/vnd.apache.parquet")}
    for button, (fmt, (label, mime)) in zip(column.columns(2), formats.items(), strict=True):
        button.download_button(
            label,
            partial(review_exports.search_export, ctx.db, fmt, where, sort, descending, reviewed),
            f"{stem}.{fmt}",
            mime,
            icon=":material/download:",
            on_click="ignore",
            width="stretch",
            help="Every matching row with its metrics (no maps).",
        )


def metric_page(
    db: data.Database,
    where: WordFilter,
    sort: str,
    descending: bool,
    reviewed: pd.DataFrame | None,
    grouped: bool,
    offset: int,
) -> tuple[pd.DataFrame, Callable[[dict], None]]:
    """One page of the metric ranking, and what goes below each card: the image's other matches when grouped."""
    if grouped:
        ranked_images = questions.search_images(db, where, sort, descending, ui.PAGE_SIZE, offset)
        image_ids = tuple(int(i) for i in ranked_images["image_id"])
        hits = questions.search_words(db, replace(where, image_ids=image_ids), sort, descending, None, 0)
        # search_words' order puts each image's best occurrence first.
        rows = hits.drop_duplicates("image_id").set_index("image_id").loc[list(image_ids)].reset_index()
        return rows, lambda row: ui.more_matches(hits[hits["image_id"] == row["image_id"]].iloc[1:], sort)
    if reviewed is None:
        rows = questions.search_words(db, where, sort, descending, ui.PAGE_SIZE, offset)
    else:
        rows = joined.item_words(db.connection(), reviewed.iloc[offset : offset + ui.PAGE_SIZE], with_maps=True)
    return rows, lambda row: None


ctx = data.context()
run_id = ctx.run["run_id"]
st.title("Search")
# Ranked by one head's own metric (from the Statistics heads view) instead of a layer metric: the controls
# of the metric ranking are off then, and `off` says why.
head_ranking = heads_view.url_ranking()
off = heads_view.NOT_WITH_HEAD if head_ranking else None

by = st.radio(
    "Search by",
    ["word", "category"],
    key="by",
    bind=state.BIND,
    horizontal=True,
    on_change=new_target,
    help="A word of the captions, or every word that names a COCO category.",
)
if by == "word":
    vocabulary = questions.vocabulary(ctx.db, run_id, VOCABULARY_SIZE)
    counts = dict(zip(vocabulary["word"], vocabulary["n"].astype(int), strict=True))
    word = state.counted_choice(
        "Word",
        list(counts),
        counts,
        param="word",
        accept_new_options=True,
        on_change=new_target,
        placeholder="Type a word, e.g. dog",
        help="Words of this run's captions, most frequent first, with their counts.",
    )
    chosen, target = word, {"word": word} if word else None
else:
    categories = questions.list_categories(ctx.db, run_id)
    named = categories[categories["n_words"] > 0]
    counts = dict(zip(named["name"], named["n_words"].astype(int), strict=True))
    category = state.counted_choice(
        "COCO category",
        list(counts),
        counts,
        param="category",
        on_change=new_target,
        placeholder="Choose a category, e.g. dog",
        help="COCO categories named in the captions, with how many words name them.",
    )
    ids = dict(zip(categories["name"], categories["category_id"], strict=True))
    chosen, target = category, {"category_id": int(ids[category])} if category else None

if target is None and head_ranking is None:
    overview.show(ctx)
    st.stop()

# Only the metrics the run has: without object labels, ranking or filtering by the others finds nothing.
metrics = ui.run_metrics(ctx)
with st.expander("Filters and ranking", icon=":material/filter_alt:"):
    ui.absent_metrics_note(metrics)
    left, right = st.columns(2)
    sort = state.url_choice(
        "Rank by",
        metrics,
        param="sort",
        widget=left.selectbox,
        on_change=first_page,
        format_func=ui.metric_label,
        disabled=off is not None,
        help=ui.metrics_help(metrics),
    )
    order = right.radio(
        "Order", ["descending", "ascending"], key="order", bind=state.BIND, horizontal=True, on_change=first_page
    )
    has_object = (
        left.radio(
            "Named object in the image",
            list(OBJECT_FILTER),
            key="object",
            bind=state.BIND,
            horizontal=True,
            on_change=first_page,
            help="labelled: the object the word names is labelled in the image (object "
            "metrics defined); not labelled: the word names a category the image lacks.",
        )
        if "mask_mass" in metrics
        else "any"
    )
    pointing = (
        right.radio(
            "Pointing game", list(POINTING_FILTER), key="hit", bind=state.BIND, horizontal=True, on_change=first_page
        )
        if "pointing_hit" in metrics
        else "any"
    )
    ranges = {}
    for i, metric in enumerate(m for m in ui.RANGE_METRICS if m in metrics):
        low, high = (left, right)[i % 2].slider(
            ui.metric_label(metric),
            0.0,
            1.0,
            FULL_RANGE,
            RANGE_STEP,
            format="%.3f",
            key=f"range_{metric}",
            bind=state.BIND,
            on_change=first_page,
            help=ui.metric_help(metric),
        )
        if (low, high) != FULL_RANGE:
            ranges[metric] = (low, high)
    if POINTING_FILTER[pointing]:
        ranges["pointing_hit"] = POINTING_FILTER[pointing]
    review_filter = review_controls.filter_controls(
        review_session.connection(),
        left,
        right,
        on_change=first_page,
        off_why=off,
    )

with st.expander("Display", icon=":material/palette:"):
    style, show_mask, show_box = ui.overlay_controls()
    by_image = st.toggle(
        "One card per image",
        key="group",
        bind=state.BIND,
        on_change=first_page,
        disabled=off is not None,
        help=off
        or "Group the occurrences by image: each card shows an image's best-ranked occurrence and lists "
        "all of its matching words.",
    )

where = WordFilter(
    run_id=run_id,
    method=ctx.method,
    layer=ctx.layer,
    ranges=ranges or None,
    has_object=OBJECT_FILTER[has_object],
    **(target or {}),
)
descending = order == "descending"
if head_ranking is None:
    # Verdict, tag and review-status filters and review sort keys join the whole result with the reviews.
    reviewed = (
        joined.reviewed_search(ctx.db.connection(), review_session.connection(), where, sort, descending, review_filter)
        if review_filter.active
        else None
    )
    total = questions.count_words(ctx.db, where) if reviewed is None else len(reviewed)
    stop_when_empty(total, "No occurrences match these filters. Widen the metric ranges or reset the filters.")
    # One card per image: a page of images ranked by their best occurrence (not with review filters).
    grouped = by_image and reviewed is None
    # The first page's query (cached) also counts the images, so page 1 asks once.
    first = questions.search_images(ctx.db, where, sort, descending, ui.PAGE_SIZE, 0) if grouped else None
    n_images = int(first["n_images"].iloc[0]) if grouped and not first.empty else 0
    header, downloads = st.columns([3, 2], vertical_alignment="bottom")
    header.markdown(
        f"**{total:,}** occurrences"
        + (f" in **{n_images:,}** images" if grouped else "")
        + f" · {ctx.method} layer {ctx.layer} · ranked by **{ui.metric_label(sort)}** ({order})"
    )
    export_buttons(downloads, where, sort, descending, reviewed)
    note = None if ctx.best is None or ctx.best.name is None else best_view_note(ctx.best, ctx.method, ctx.layer)
    if note:
        st.caption(note)
    page_of = partial(metric_page, ctx.db, where, sort, descending, reviewed, grouped)
    n_rows, card_sort = n_images if grouped else total, sort
else:
    total = head_ranking.count(ctx.db, where)
    head_ranking.header(total, order)  # before any stop: its button is the way out of a link's bad head
    ctx = head_ranking.context(ctx)
    stop_when_empty(total, head_ranking.nothing_found())
    page_of = partial(head_ranking.page, ctx, where, descending, style)
    n_rows, card_sort = total, None
ui.colour_key(style)
ui.badge_legend(metrics)

n_pages = math.ceil(n_rows / ui.PAGE_SIZE)
page = state.url_page(n_pages, "p") if n_pages > 1 else 1
rows, below_card = page_of((page - 1) * ui.PAGE_SIZE)
instances = questions.image_instances(ctx.db, tuple(int(i) for i in rows["image_id"].unique()))
missing = False
for start in range(0, len(rows), ui.GRID_COLUMNS):
    for column, row in zip(
        st.columns(ui.GRID_COLUMNS), rows.iloc[start : start + ui.GRID_COLUMNS].to_dict("records"), strict=False
    ):
        matched = ui.named_objects(instances, row)
        with column.container(border=True):
            missing |= not ui.word_card(ctx, row, style, matched, show_mask, show_box, card_sort)
            below_card(row)
if missing:
    ui.image_missing_note(ctx)
