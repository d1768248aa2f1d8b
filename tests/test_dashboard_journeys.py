"""The dashboard's ways in (issue 11), headless: the run at a glance, the best view first, plain names.

Same database and helpers as tests/test_dashboard.py; expected values come from db.rankings and SQL of
the test's own on the database file.
"""

from urllib.parse import parse_qsl

import duckdb

from db import queries, rankings
from tests import test_dashboard as base
from tests.conftest import open_page
from tests.test_dashboard import assert_clean, card_links, messages, run_row, shown_slice

db = base.db  # tests/test_dashboard.py's fixture, by name


def search_links(at) -> list[dict[str, str]]:
    """The query parameters of every link to the Search page, in page order."""
    return [dict(parse_qsl(link.proto.query_string)) for link in at.get("page_link") if link.proto.page == ""]


def ranking(db, **kwargs):
    con = queries.connect_readonly(db)
    try:
        return rankings.ranked(con, **kwargs)
    finally:
        con.close()


def test_the_landing_page_ranks_the_worst_words_and_links_each_to_its_maps(open_app, db):
    at = open_page(open_app, db, None)
    assert_clean(at)
    run_id, method, layer = shown_slice(at)
    worst = ranking(db, run_id=run_id, method=method, layer=layer, metric="background_mass", min_count=5)
    links = search_links(at)
    assert [link["word"] for link in links] == worst["word"].tolist() and len(links) == 24
    assert all(link["sort"] == "background_mass" and link["order"] == "descending" for link in links)
    assert all((link["method"], int(link["layer"])) == (method, layer) for link in links)
    # Mask mass is bad when low: worst first is ascending there.
    at.segmented_control(key="rank_by").set_value("mask_mass").run()
    worst = ranking(db, run_id=run_id, method=method, layer=layer, metric="mask_mass", descending=False, min_count=5)
    assert [link["word"] for link in search_links(at)] == worst["word"].tolist()
    assert {link["order"] for link in search_links(at)} == {"ascending"}


def test_the_image_browser_reaches_every_image_of_a_category(open_app, db):
    with duckdb.connect(str(db), read_only=True) as con:
        dogs = {i for (i,) in con.execute("SELECT DISTINCT image_id FROM instances WHERE category_id = 18").fetchall()}
    at = open_page(open_app, db, None, rank="images", rank_cat="dog")
    assert_clean(at)
    shown = [int(dict(parse_qsl(link.proto.query_string))["image"]) for link in at.get("page_link")]
    assert set(shown) == dogs and 0 < len(dogs) <= 24


def test_a_word_opens_on_its_best_slice_and_says_so(open_app, db):
    at = open_page(open_app, db, None, word="man")
    assert_clean(at)
    con = queries.connect_readonly(db)
    try:
        best = rankings.best_slices(con, run_row(db)["run_id"], word="man").iloc[0]
    finally:
        con.close()
    assert shown_slice(at)[1:] == (best["method"], int(best["layer"]))
    assert at.query_params["method"] == best["method"] and at.query_params["layer"] == str(best["layer"])
    assert "grounds best in this run" in " ".join(c.value for c in at.caption)


def test_a_link_to_a_layer_the_method_lacks_shows_a_note(open_app, db):
    run = run_row(db)
    lacking = sorted(set(run["layers"]) - {run["gradcam_layer"]})[0]
    at = open_page(open_app, db, None, word="man", method="gradcam", layer=str(lacking))
    assert_clean(at)
    assert f"Layer “{lacking}” from the link is not available" in messages(at)
    assert shown_slice(at)[1:] == ("gradcam", run["gradcam_layer"])
    assert at.query_params["layer"] == str(run["gradcam_layer"])


def test_switching_to_gradcam_moves_the_layer_visibly_and_in_the_url(open_app, db):
    run = run_row(db)
    lacking = sorted(set(run["layers"]) - {run["gradcam_layer"]})[0]
    at = open_page(open_app, db, None, word="man", method="attention", layer=str(lacking))
    at.radio(key="method").set_value("gradcam").run()
    assert_clean(at)
    assert f"gradcam has no layer {lacking} maps" in messages(at)
    assert shown_slice(at)[1:] == ("gradcam", run["gradcam_layer"])
    assert at.query_params["layer"] == str(run["gradcam_layer"])


def test_a_search_grouped_by_image_shows_each_image_once(open_app, db):
    at = open_page(open_app, db, None, word="a", group="true")
    assert_clean(at)
    images = [link["image"] for link in card_links(at)]
    assert len(images) == 24 and len(set(images)) == 24
    assert any("Also in this image" in m.value for m in at.markdown)


def test_runs_are_named_by_checkpoint_method_and_size_and_can_be_relabelled(open_app, db):
    at = open_page(open_app, db, "runs")
    run = run_row(db)
    assert at.selectbox(key="run").options == [f"checkpoint.pth · both · {run['image_res']} px"]
    at.text_input(key=f"label_{run['run_id']}").input("tiny fixture").run()
    assert_clean(at)
    assert at.selectbox(key="run").options == ["tiny fixture"]
    assert "Run tiny fixture" in [h.value for h in at.subheader]


def test_the_image_metrics_name_categories_not_ids(open_app, db):
    at = open_page(open_app, db, "image", image="139")
    assert_clean(at)
    table = at.dataframe[-1].value
    assert "category_id" not in table and "category" in table
    assert set(table["category"]) >= {"", "person"}


def test_the_word_class_filter_keeps_only_that_class(open_app, db):
    at = open_page(open_app, db, None, wclass="attributes", rank_min="1")
    assert_clean(at)
    words = [link["word"] for link in search_links(at)]
    with duckdb.connect(str(db), read_only=True) as con:
        classes = dict(con.execute("SELECT word, any_value(word_class) FROM words GROUP BY word").fetchall())
    assert words and {classes[w] for w in words} == {"attribute"}
