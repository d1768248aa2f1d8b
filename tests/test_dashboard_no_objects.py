"""A run without object labels (a pairs table, issue 12): the pages offer only the metrics it has.

The run is a real `run --pairs` extraction of val2017-subset's first images (tests/test_inputs.py); its
mask, box, IoU, pointing and background values are NULL. Expected rankings come from db.rankings.
"""

from urllib.parse import parse_qsl

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dashboard.components import metric_label
from db import queries, rankings
from db.metrics import BY_NAME, METRICS
from tests.conftest import open_page
from tests.review_app import sign_in
from tests.test_dashboard import assert_clean, card_links, messages, shown_slice
from tests.test_inputs import pairs_run, subset_pairs

# NULL without object labels: the object metrics and the mass outside every labelled object.
OBJECT_METRICS = {m for m in METRICS if BY_NAME[m].needs_object} | {"background_mass"}


@pytest.fixture(scope="module")
def pairs_db(shared, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    pairs = subset_pairs(shared)
    pq.write_table(pa.table({"image": [f for f, _ in pairs], "caption": [c for _, c in pairs]}), folder / "p.parquet")
    db = folder / "pairs.duckdb"
    images = shared / "coco" / "val2017-subset" / "val2017"
    pairs_run(shared, db, "--pairs", str(folder / "p.parquet"), "--images", str(images))
    return db


def links(at, page: str) -> list[dict[str, str]]:
    return [dict(parse_qsl(link.proto.query_string)) for link in at.get("page_link") if link.proto.page == page]


def captions(at) -> str:
    return " ".join(c.value for c in at.caption)


def test_the_run_has_every_metric_but_the_object_ones(pairs_db):
    con = queries.connect_readonly(pairs_db)
    try:
        run_id = con.execute("SELECT run_id FROM runs").fetchone()[0]
        present = rankings.present_metrics(con, run_id)
    finally:
        con.close()
    assert set(present) == set(METRICS) - OBJECT_METRICS and "entropy" in present


def test_the_landing_page_ranks_by_entropy_and_names_what_is_missing(open_app, pairs_db):
    at = open_page(open_app, pairs_db, None)
    assert_clean(at)
    assert at.session_state["rank_by"] == "entropy"
    run_id, method, layer = shown_slice(at)
    con = queries.connect_readonly(pairs_db)
    try:
        worst = rankings.ranked(con, run_id, method, layer, "entropy", min_count=5)
    finally:
        con.close()
    shown = links(at, "")
    assert [link["word"] for link in shown] == worst["word"].tolist() and len(shown) > 5
    assert {(link["sort"], link["order"]) for link in shown} == {("entropy", "descending")}
    assert "Lower the minimum" not in " ".join(i.value for i in at.info)
    assert "Not measured in this run: mask mass" in captions(at) and "background mass" in captions(at)


def test_an_old_link_ranking_by_background_mass_falls_back_with_a_note(open_app, pairs_db):
    at = open_page(open_app, pairs_db, None, rank="images", rank_by="background_mass")
    assert_clean(at)
    assert "background\\_mass” from the link is not available here; showing entropy" in messages(at)
    images = links(at, "image")
    assert len(images) == 12  # every image of the run, ranked by its words' mean entropy


def test_search_ranks_by_entropy_without_object_filters(open_app, pairs_db):
    at = open_page(open_app, pairs_db, None, word="a")
    assert_clean(at)
    sort = at.selectbox(key="sort")
    assert sort.value == "entropy" and sort.options == [metric_label(m) for m in METRICS if m not in OBJECT_METRICS]
    assert not [w for w in at.radio if w.key in ("object", "hit")]
    assert {s.key for s in at.slider if s.key.startswith("range_")} == {
        f"range_{m}" for m in METRICS if m not in OBJECT_METRICS | {"pointing_hit"}
    }
    assert len(card_links(at)) == 24 and "Not measured in this run" in captions(at)


@pytest.mark.parametrize("view", ["distributions", "leaderboards", "layers and methods"])
def test_statistics_offer_only_the_runs_metrics(open_app, pairs_db, view):
    at = open_page(open_app, pairs_db, "statistics", view=view)
    assert_clean(at)
    assert at.selectbox(key="metric").value not in OBJECT_METRICS
    assert "Not measured in this run" in captions(at)
    if view == "leaderboards":  # the background board is gone, the noisiest one stays
        assert [s.key for s in at.slider] == ["min_H"]


def test_the_admin_queue_form_ranks_by_what_the_run_has(pairs_db, accounts, open_app):
    at = open_app("--db", str(pairs_db))
    at.secrets["auth"] = {"public_read": False, "users": accounts}
    sign_in(at.run(), "carol").switch_page("review/views/admin.py").run()
    assert_clean(at)
    sort = at.selectbox(key="nq_sort")
    assert sort.value == "entropy" and sort.options == [metric_label(m) for m in METRICS if m not in OBJECT_METRICS]
    assert not [r for r in at.radio if r.key in ("nq_object", "nq_hit")]
