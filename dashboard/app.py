"""ALBEF attention dashboard: `streamlit run dashboard/app.py -- --db PATH [--images DIR]`.

The router: parses the command line, signs the user in (team review: dashboard/review/session.py), opens
the extraction database read-only, draws the shared sidebar (run, method, layer) once, and hands a
:class:`dashboard.data.Context` to the page the URL names.
Without ``--db`` it opens the demo database that ``make run`` writes to data/demo/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# `streamlit run dashboard/app.py` puts only dashboard/ on sys.path; the packages live at the repo root.
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import streamlit as st  # noqa: E402

from dashboard import data, questions, state  # noqa: E402
from dashboard.markup import code  # noqa: E402
from dashboard.review import session as review_session  # noqa: E402
from db.review import Actor  # noqa: E402

# Not "pages/": a pages/ folder beside the entry point switches Streamlit to its old file-based
# multipage mode before st.navigation first runs, which runs a deep-linked page without this script.
VIEWS = Path(__file__).resolve().parent / "views"
# Served by the app itself: an emoji or Material page icon makes every browser fetch it from a CDN.
FAVICON = Path(__file__).resolve().parent / "favicon.png"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The dashboard's own flags (what follows ``--`` on the ``streamlit run`` line)."""
    parser = argparse.ArgumentParser(prog="streamlit run dashboard/app.py --", description=__doc__)
    parser.add_argument(
        "--db", default=str(data.DEMO_DB), help="extraction database (DuckDB) to browse; default: the demo database"
    )
    parser.add_argument(
        "--images",
        default=None,
        help="folder of the COCO images; default: the run's images_dir (the demo's images for the demo database)",
    )
    parser.add_argument(
        "--review-db",
        default=str(review_session.DEFAULT_STORE),
        help="team review store (SQLite; created if missing), shared by every server process "
        "that reviews the same data; default: data/review.sqlite",
    )
    return parser.parse_args(argv)


def navigation(actor: Actor | None) -> st.navigation:
    """The pages, grouped; the Review group holds the team-review pages this actor may open.

    Before sign-in (actor None) the menu is hidden: only the sign-in form is shown.
    """
    pages = {
        "Explore": [
            # The default page is served at the root URL ("/?word=dog").
            st.Page(VIEWS / "search.py", title="Search", icon=":material/search:", default=True),
            st.Page(VIEWS / "image.py", title="Image", icon=":material/image:", url_path="image"),
            st.Page(VIEWS / "statistics.py", title="Statistics", icon=":material/bar_chart:", url_path="statistics"),
            st.Page(VIEWS / "probe.py", title="Probe", icon=":material/science:", url_path="probe"),
            st.Page(VIEWS / "compare.py", title="Compare runs", icon=":material/compare:", url_path="compare"),
        ],
        "Extraction": [
            st.Page(VIEWS / "runs.py", title="Runs", icon=":material/dataset:", url_path="runs"),
        ],
        "Review": review_session.pages(actor),
    }
    return st.navigation(
        {group: items for group, items in pages.items() if items}, position="sidebar" if actor is not None else "hidden"
    )


def target(db: data.Database, run_id: str) -> tuple[str | None, dict]:
    """What the Search link asks about: its name and the word_aggregates filter, or (None, {})."""
    if st.query_params.get("by") == "category":
        name = st.query_params.get("category")
        categories = questions.list_categories(db, run_id)
        ids = dict(zip(categories["name"], categories["category_id"].astype(int), strict=True))
        return (name, {"category_id": ids[name]}) if name in ids else (None, {})
    word = st.query_params.get("word")
    return (word, {"word": word}) if word else (None, {})


LAYER_BEFORE = "layer_before_method_change"


def forget_layer() -> None:
    """A new map method keeps the layer if it has it, else starts on its own best layer (with a note)."""
    st.session_state[LAYER_BEFORE] = st.session_state.get("layer")
    state.forget("layer")


def sidebar(db: data.Database, images_override: str | None, notes: list[str]) -> data.Context | None:
    """Run, method and layer pickers shared by every page; None (with a message) when nothing to show.

    Method and layer default to the slice where the Search page's word or category (or, without one, the
    whole run) grounds best; a link or the user's choice overrides it, and the URL always names them.
    """
    runs = questions.list_runs(db)
    if runs.empty:
        st.info(
            "This database has no extraction runs yet. Extract some with `python -m extractor run ...`, "
            "or open another database with `streamlit run dashboard/app.py -- --db PATH`."
        )
        return None
    by_id = {row["run_id"]: row for row in runs.to_dict("records")}
    with st.sidebar:
        run_id = state.url_choice(
            "Run",
            list(by_id),
            param="run",
            notes=notes,
            format_func=lambda r: data.run_label(by_id[r]),
            help="Extraction run: checkpoint file, method and image size. The Runs page shows what each "
            "one extracted, and lets you label it.",
        )
        run = by_id[run_id]
        st.caption(f"{run['status']} · {run['n_images'] or 0:,} images · run {code(run_id)}")
        slices = questions.run_summary(db, run_id)["slices"]
        if slices.empty:
            st.info(f"Run {code(run_id)} has no word maps yet (status: {run['status']}).")
            return None
        name, about = target(db, run_id)
        best = questions.best_slices(db, run_id, **about)
        if best.empty:  # a word the captions lack: the search says so; the run's best slice meanwhile
            name, best = None, questions.best_slices(db, run_id)
        method = state.url_choice(
            "Map",
            sorted(slices["method"].unique()),
            param="method",
            default=best["method"].iloc[0],
            widget=st.radio,
            on_change=forget_layer,
            notes=notes,
            horizontal=True,
            help="attention: ALBEF's raw cross-attention, mean over heads; "
            "gradcam: ALBEF's Grad-CAM (attention x positive gradient of the ITM score).",
        )
        layers = sorted(int(x) for x in slices.loc[slices["method"] == method, "layer"])
        before = st.session_state.pop(LAYER_BEFORE, None)
        layer = state.url_choice(
            "Layer",
            layers,
            param="layer",
            default=before if before in layers else int(best.loc[best["method"] == method, "layer"].iloc[0]),
            notes=notes,
            help="Absolute BERT layer of the fusion encoder the map comes from.",
        )
        if before is not None and before not in layers:
            notes.append(f"{method} has no layer {before} maps in this run: showing layer {layer}.")
    view = data.BestView(name, best.reset_index(drop=True))
    return data.Context(db, run, method, layer, data.images_dir(run, images_override, db), view)


def main() -> None:
    st.set_page_config(page_title="ALBEF attention", page_icon=FAVICON, layout="wide")
    try:
        args = parse_args(sys.argv[1:])
    except SystemExit:
        st.error(
            "Bad command line. Usage: `streamlit run dashboard/app.py -- --db PATH [--images DIR] [--review-db PATH]`."
        )
        st.stop()
    actor = review_session.start(args.review_db)
    page = navigation(actor)
    review_session.gate(actor)  # before sign-in: the sign-in form, then stop
    if args.db == str(data.DEMO_DB) and not data.DEMO_DB.is_file():
        st.info(
            "No database given and the demo database is missing: build it with `make run`, or start "
            "the dashboard with `streamlit run dashboard/app.py -- --db PATH`."
        )
        st.stop()
    try:
        db = data.Database.open(args.db)
    except data.DatabaseUnavailable as exc:
        st.error(str(exc))
        st.stop()
    notes: list[str] = []
    ctx = sidebar(db, args.images, notes)
    for note in notes:
        st.warning(note, icon=":material/info:")
    if ctx is None:
        st.stop()
    st.session_state[data.CONTEXT_KEY] = ctx
    page.run()


main()
