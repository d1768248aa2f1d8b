"""The whole run at a glance, where the Search page starts before a word is chosen.

Words, categories or images of the sidebar's slice, ranked by any metric, worst or best first, each one
click from its maps: a word or category opens its search ranked by the same metric, an image its page.
"""

from __future__ import annotations

import math

import streamlit as st

from dashboard import components as ui
from dashboard import data, paths, questions, state
from dashboard.markup import literal
from dashboard.overlay import OverlayStyle

TOP = 24
COLUMNS = 3
IMAGE_COLUMNS = 6
THUMB_SIDE = 220
# Where a high value is bad; for every other metric a low value is.
WORSE_WHEN_HIGH = ("background_mass", "entropy")
WORD_CLASSES = {"all words": None, "object nouns": "object", "attributes": "attribute", "other words": "other"}
ANY_CATEGORY = "any category"


def worst_descending(metric: str, worst_first: bool) -> bool:
    """Whether a 'worst first' (or 'best first') ranking by `metric` is in descending order."""
    return (metric in WORSE_WHEN_HIGH) == worst_first


def first_page() -> None:
    """A new ranking starts again at its first page."""
    state.first_page("rank_p")


def search_link(kind: str, name: str, metric: str, descending: bool) -> dict[str, str]:
    """Query parameters of the Search page for a word or category, ranked by `metric` the same way."""
    order = "descending" if descending else "ascending"
    return state.link_params(by=kind, **{kind: name}, sort=metric, order=order)


def ranked_links(ranked, kind: str, metric: str, descending: bool) -> None:
    """The ranking as a grid of links, best or worst first down each column: "name · mean · count"."""
    rows = math.ceil(len(ranked) / COLUMNS)
    for i, column in enumerate(st.columns(COLUMNS)):
        for rank, row in enumerate(ranked.iloc[i * rows : (i + 1) * rows].itertuples(), start=i * rows + 1):
            name = getattr(row, kind)
            column.page_link(
                "views/search.py",
                label=f"{rank}. {literal(name)} · **{row.value:.3f}** · {row.n:,}×",
                query_params=search_link(kind, name, metric, descending),
            )


def image_grid(ctx: data.Context, images, style: OverlayStyle) -> None:
    """Image thumbnails (the bare images), each with a link to its Image page."""
    for start in range(0, len(images), IMAGE_COLUMNS):
        chunk = images.iloc[start : start + IMAGE_COLUMNS].to_dict("records")
        for column, image in zip(st.columns(IMAGE_COLUMNS), chunk, strict=False):
            path = paths.image_path(ctx.images_dir, image["file_name"])
            picture, _ = data.render_overlay(
                str(path) if path else None, int(image["width"]), int(image["height"]), None, 0.0, style
            )
            value = "–" if math.isnan(image["value"]) else f"{image['value']:.3f}"
            column.image(picture, width="stretch")
            column.page_link(
                "views/image.py",
                label=f"Image {image['image_id']}",
                icon=":material/open_in_new:",
                query_params=state.link_params(image=image["image_id"]),
            )
            column.caption(f"{value} · {image['n_words']} words")


def show(ctx: data.Context) -> None:
    """Draw the overview of the context's run slice."""
    run_id = ctx.run["run_id"]
    st.subheader("Where does ALBEF look, across the whole run?")
    st.info(
        "Choose a word or a COCO category above, or start from these rankings of "
        f"{ctx.method} · layer {ctx.layer} (the sidebar changes the map and layer). Click one to see its maps."
    )
    kind_col, order_col = st.columns(2)
    kind = kind_col.segmented_control(
        "Rank", ["words", "categories", "images"], default="words", key="rank", bind=state.BIND, on_change=first_page
    )
    worst = order_col.segmented_control(
        "Show",
        ["worst first", "best first"],
        default="worst first",
        key="rank_order",
        bind=state.BIND,
        on_change=first_page,
    )
    metrics = ui.run_metrics(ctx)
    metric = state.url_choice(
        "By the mean of",
        list(metrics),
        param="rank_by",
        default=ui.preferred(metrics, "background_mass", "entropy"),
        widget=st.segmented_control,
        on_change=first_page,
        format_func=ui.metric_label,
        help=ui.metrics_help(metrics),
    )
    ui.absent_metrics_note(metrics)
    filter_col, min_col = st.columns([3, 1])
    descending = worst_descending(metric, worst == "worst first")
    where = f"mean {ui.metric_label(metric)}, {'highest' if descending else 'lowest'} first"
    if kind == "images":
        categories = questions.list_categories(ctx.db, run_id)
        labelled = categories[categories["n_images"] > 0]
        with filter_col:
            category = state.url_choice(
                "With a labelled object of", [ANY_CATEGORY, *labelled["name"]], param="rank_cat", on_change=first_page
            )
        ids = dict(zip(labelled["name"], labelled["category_id"].astype(int), strict=True))
        show_images(ctx, metric, descending, ids.get(category), where)
        return
    min_count = min_col.number_input(
        "Min. occurrences", 1, 1_000_000, 5, key="rank_min", bind=state.BIND, help="Rarer ones are left out."
    )
    if kind == "words":
        word_class = filter_col.radio(
            "Word class",
            list(WORD_CLASSES),
            key="wclass",
            bind=state.BIND,
            horizontal=True,
            help="object nouns name a COCO category; attributes (colours, sizes, ...) are scored on the object "
            "of the noun they describe; other words are neither.",
        )
        ranked = questions.ranked(
            ctx.db, run_id, ctx.method, ctx.layer, metric, "word", descending, min_count, WORD_CLASSES[word_class]
        )
        names = "words"
    else:
        ranked = questions.ranked(ctx.db, run_id, ctx.method, ctx.layer, metric, "category", descending, min_count)
        names = "categories"
    if ranked.empty:
        st.info(f"No {names} with a {ui.metric_label(metric)} occur {min_count} times or more. Lower the minimum.")
        return
    st.markdown(f"**The {len(ranked)} {worst.split()[0]} {names}** by {where} · name · mean · occurrences")
    ranked_links(ranked, "word" if kind == "words" else "category", metric, descending)


def show_images(ctx: data.Context, metric: str, descending: bool, category_id: int | None, where: str) -> None:
    """One page of the slice's images ranked by the mean metric of their words."""
    page = max(state.query_int("rank_p") or 1, 1)
    images = questions.ranked_images(
        ctx.db, ctx.run["run_id"], ctx.method, ctx.layer, metric, descending, category_id, TOP, (page - 1) * TOP
    )
    total = 0 if images.empty else int(images["n_images"].iloc[0])
    if total == 0:
        st.info("No image matches. Choose another category, or go back to the first page.")
        return
    st.markdown(f"**{total:,} images** by {where} of their words")
    image_grid(ctx, images, OverlayStyle(max_side=THUMB_SIDE))
    n_pages = math.ceil(total / TOP)
    if n_pages > 1:
        state.url_page(n_pages, "rank_p")
