import os
import sys
from pathlib import Path

import duckdb
import pytest

from tests.chromium import launch, playwright_api

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
APP = REPO / "dashboard" / "app.py"

pytest_plugins = ["tests.review_app"]
IMAGES, FEWER = 80, 25  # the compared runs' images (runs)


@pytest.fixture(scope="session")
def shared() -> Path:
    """The read-only shared data beside the repo; required in CI, skipped locally when absent."""
    if not SHARED.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"shared data missing at {SHARED} (required when CI=true)")
        pytest.skip(f"shared data missing at {SHARED}")
    return SHARED


@pytest.fixture
def con(tmp_path):
    """A fresh review store (tests/test_review*.py); modules with a `con` of their own override it."""
    from db import review

    con = review.connect(tmp_path / "review.sqlite")
    yield con
    con.close()


def require_ray() -> None:
    """Ray is optional for users but `make test` installs it: in CI a missing Ray fails, elsewhere it skips."""
    if os.environ.get("CI") == "true":
        import ray  # noqa: F401
    else:
        pytest.importorskip("ray", reason="Ray is optional: pip install -r requirements-ray.txt")


def run_extraction(shared: Path, db: Path, subset: str = "val2017-subset", *extra: str) -> Path:
    """Run the real extractor CLI in-process on a shared COCO subset with the fine-tuned fixture checkpoint."""
    from extractor.__main__ import main

    coco = shared / "coco" / subset
    ann = coco / "annotations"
    argv = [
        "run",
        "--images", str(coco / "val2017"),
        "--captions", str(next(ann.glob("captions_*.json"))),
        "--instances", str(next(ann.glob("instances_*.json"))),
        "--checkpoint", str(shared / "fixtures" / "albef-reference" / "finetuned-tiny" / "checkpoint.pth"),
        "--vocab", str(shared / "bert-base-uncased" / "vocab.txt"),
        "--db", str(db),
        *extra,
    ]  # fmt: skip
    assert main(argv) == 0
    return db


@pytest.fixture(scope="session")
def extracted_db(shared, tmp_path_factory) -> Path:
    """A real extraction of ../shared/coco/val2017-subset (283 images, both methods), built once per session."""
    return run_extraction(shared, tmp_path_factory.mktemp("extracted") / "subset.duckdb")


@pytest.fixture(scope="session")
def small_db(shared, tmp_path_factory) -> Path:
    """A real extraction of ../shared/coco/val2017-small (10 images)."""
    return run_extraction(shared, tmp_path_factory.mktemp("small") / "small.duckdb", "val2017-small")


@pytest.fixture(scope="session")
def runs(shared, tmp_path_factory) -> dict:
    """Runs to compare (tests/test_compare*.py) in one database, and their ids: 'a' fine-tuned, 'b' pre-trained
    (same IMAGES images), 'c' pre-trained Grad-CAM only on the first FEWER images."""
    db = tmp_path_factory.mktemp("compare") / "runs.duckdb"
    pretrain = str(shared / "fixtures" / "albef-reference" / "pretrain-tiny" / "checkpoint.pth")
    run_extraction(shared, db, "val2017-subset", "--limit", str(IMAGES))
    run_extraction(shared, db, "val2017-subset", "--limit", str(IMAGES), "--checkpoint", pretrain)
    run_extraction(shared, db, "val2017-subset", "--limit", str(FEWER), "--checkpoint", pretrain, "--method", "gradcam")
    with duckdb.connect(str(db), read_only=True) as con:
        found = con.execute("SELECT run_id, checkpoint_path, method, gradcam_layer FROM runs").df()
    finetuned = found["checkpoint_path"].str.contains("finetuned")
    ids = {
        "a": found.loc[finetuned, "run_id"].item(),
        "b": found.loc[~finetuned & (found["method"] == "both"), "run_id"].item(),
        "c": found.loc[found["method"] == "gradcam", "run_id"].item(),
    }
    return {"db": db, "ids": ids, "gradcam_layer": int(found["gradcam_layer"].iloc[0])}


@pytest.fixture
def open_app(monkeypatch, tmp_path, close_cached_connections):
    """Build an AppTest of the dashboard started as `streamlit run dashboard/app.py -- ARGS`, each script run
    allowed `timeout` seconds (the module's cached connections are dropped after its tests)."""
    from streamlit.testing.v1 import AppTest

    def make(*args: str, timeout: float = 60, **query: str) -> AppTest:
        monkeypatch.setattr(sys, "argv", [str(APP), "--review-db", str(tmp_path / "review.sqlite"), *args])
        at = AppTest.from_file(str(APP), default_timeout=timeout)
        at.query_params.update(query)
        return at

    return make


def open_page(open_app, db: Path, page: str | None, *args: str, timeout: float = 60, **query: str):
    """Run the app at a deep link: a page (None = Search, the default) with query parameters."""
    at = open_app("--db", str(db), *args, timeout=timeout)
    if page is None:
        at.query_params.update(query)
        return at.run()
    at.run()
    at.query_params.clear()
    at.query_params.update(query)
    return at.switch_page(f"views/{page}.py").run()


@pytest.fixture(scope="module")
def close_cached_connections():
    """Drop the dashboard's cached DuckDB connections after a module's tests (else they live until exit);
    every module that opens the app (`open_app`) has it."""
    import streamlit as st

    yield
    st.cache_resource.clear()


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium for a module's browser tests (tests/test_browser.py's pattern)."""
    with playwright_api().sync_playwright() as p:
        chromium = launch(p)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1800})
    yield context.new_page()
    context.close()
