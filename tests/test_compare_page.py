"""The Compare runs page when there is nothing to compare: a database of one run (its two maps still compare,
and the page says how to add a second checkpoint's run), and one run with one map chosen on both sides. On real
extractions of the shared val2017-small images; the expected command and slices are read with the test's own SQL."""

from pathlib import Path

import duckdb
import pytest
from streamlit.testing.v1 import AppTest

from dashboard.components import metric_label
from db.metrics import METRICS
from tests.conftest import open_page, run_extraction
from tests.test_inputs import pairs_run

ONE_RUN = "This database holds a single run"
SAME = "the same run with the same map"
ONE_MAP = "a single run, with a single map"
PRETRAINED = ("fixtures", "albef-reference", "pretrain-tiny", "checkpoint.pth")


def sql(db: Path, query: str) -> list[tuple]:
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(query).fetchall()


def open_compare(open_app, db: Path, **query: str) -> AppTest:
    """The Compare runs page of the app on `db`, opened with `query` as its URL's parameters."""
    return open_page(open_app, db, "compare", timeout=120, **query)


def notes(at: AppTest) -> str:
    return " ".join(m.value for m in [*at.info, *at.warning])


def test_one_run_says_how_to_extract_a_second_and_still_compares_two_of_its_maps(small_db, open_app):
    ((images, captions, instances),) = sql(small_db, "SELECT images_dir, captions_file, instances_file FROM runs")
    at = open_compare(open_app, small_db)
    assert not at.exception
    note = notes(at)
    assert ONE_RUN in note and SAME not in note
    want = f"python -m extractor run --images {images} --captions {captions} --instances {instances} "
    assert f"{want}--checkpoint OTHER.pth --db {small_db}" in note
    assert at.query_params["slice_a"] != at.query_params["slice_b"]  # B defaults to another map of the run
    table = at.dataframe[0].value
    assert len(table) > 0 and table["change"].abs().max() > 0


def test_the_same_run_and_map_on_both_sides_is_refused_with_a_note(small_db, open_app):
    ((run_id, method, layer),) = sql(small_db, "SELECT run_id, method, max(layer) FROM word_summary "
                                               "WHERE method = 'gradcam' GROUP BY ALL")  # fmt: skip
    chosen = f"{method}-{layer}"
    at = open_compare(open_app, small_db, run_a=run_id, run_b=run_id, slice_a=chosen, slice_b=chosen)
    assert not at.exception
    assert SAME in notes(at)
    assert not at.dataframe and not at.get("plotly_chart")


def test_one_run_of_one_map_says_a_second_run_is_needed(shared, open_app, tmp_path_factory):
    db = run_extraction(shared, tmp_path_factory.mktemp("one map") / "one map.duckdb", "val2017-small",
                        "--method", "gradcam")  # fmt: skip
    assert sql(db, "SELECT count(DISTINCT (method, layer)) FROM word_summary") == [(1,)]
    ((images, captions),) = sql(db, "SELECT images_dir, captions_file FROM runs")
    at = open_compare(open_app, db)
    assert not at.exception
    note = notes(at)
    assert ONE_MAP in note and "a second run is needed" in note.lower()
    assert SAME not in note and "another map" not in note  # no other map to choose
    assert f"--images {images} --captions {captions} " in note
    assert f"--db '{db}'" in note  # a path with a space, quoted for the shell
    assert not at.dataframe and not at.get("plotly_chart")


def test_two_runs_compare_without_a_note(runs, open_app):
    at = open_compare(open_app, runs["db"])
    assert not at.exception
    note = notes(at)
    assert ONE_RUN not in note and SAME not in note and ONE_MAP not in note
    run_ids = {r for (r,) in sql(runs["db"], "SELECT run_id FROM runs")}
    chosen = {at.query_params["run_a"], at.query_params["run_b"]}
    assert len(chosen) == 2 and chosen <= run_ids  # B defaults to another run
    assert len(at.dataframe[0].value) > 0


@pytest.fixture(scope="module")
def unlabelled(shared, tmp_path_factory) -> dict:
    """One database of two runs over val2017-small: 'labelled' (pre-trained, with --instances) and 'unlabelled'
    (fine-tuned, COCO captions without --instances: no object metrics), and their ids."""
    db = tmp_path_factory.mktemp("unlabelled") / "runs.duckdb"
    coco = shared / "coco" / "val2017-small"
    pairs_run(shared, db, "--images", str(coco / "val2017"), "--captions",
              str(next((coco / "annotations").glob("captions_*.json"))))  # fmt: skip
    run_extraction(shared, db, "val2017-small", "--checkpoint", str(shared.joinpath(*PRETRAINED)))
    ids = dict(sql(db, "SELECT CASE WHEN instances_file IS NULL THEN 'unlabelled' ELSE 'labelled' END, run_id "
                       "FROM runs"))  # fmt: skip
    return {"db": db, **ids}


def measured(db: Path, run_id: str) -> list[str]:
    """The ranked metrics with at least one value in the run's word rows, by direct SQL."""
    counts = ", ".join(f"count({m})" for m in METRICS)
    (found,) = sql(db, f"SELECT {counts} FROM words WHERE run_id = '{run_id}'")
    return [m for m, n in zip(METRICS, found, strict=True) if n > 0]


@pytest.mark.parametrize(("a", "b"), [("labelled", "unlabelled"), ("unlabelled", "labelled"), ("labelled", "labelled")])
def test_the_metric_choice_offers_only_what_both_runs_measure(unlabelled, open_app, a, b):
    db, run_a, run_b = unlabelled["db"], unlabelled[a], unlabelled[b]
    at = open_compare(open_app, db, run_a=run_a, run_b=run_b)
    assert not at.exception and not at.warning
    both = [m for m in measured(db, run_a) if m in measured(db, run_b)]
    assert ("mask_mass" in both) == (a == b) and "entropy" in both
    assert at.selectbox(key="metric").options == [metric_label(m) for m in both]
    assert len(at.dataframe[0].value) > 0


def test_a_linked_metric_a_run_lacks_is_said_in_one_sentence(unlabelled, open_app):
    at = open_compare(open_app, unlabelled["db"], run_a=unlabelled["labelled"], run_b=unlabelled["unlabelled"],
                      metric="mask_mass")  # fmt: skip
    assert not at.exception
    (warning,) = at.warning
    shown = at.query_params["metric"]
    assert shown != "mask_mass" and at.selectbox(key="metric").value == shown
    assert warning.value == (
        "The link's metric, mask mass, is not measured in run B (a run without object labels has no object "
        f"metrics), so it cannot be compared: showing {metric_label(shown)} instead."
    )
    assert len(at.dataframe[0].value) > 0  # the page compares the metric shown instead
