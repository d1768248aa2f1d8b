"""The Search ranked by one grounding head, on a real extraction of the shared COCO subset with the fine-tuned
fixture checkpoint (conftest's `extracted_db`): its ranking and numbers are direct SQL on word_heads, the
Statistics heatmap's cells open it, and each card computes the head's own map with the live probe."""

import re
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import duckdb
import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard.components import PAGE_SIZE
from dashboard.heads_view import NOT_WITH_HEAD
from db import heads
from db.queries import WordFilter, connect_readonly
from tests.conftest import open_page
from tests.test_browser import shoot, streamlit_server, wait_for_overlays

HEADER = re.compile(r"\*\*([\d,]+)\*\* occurrences · Ranked by head (\d+) of layer (\d+) \(its mask mass\)")
HEAD_BADGE = re.compile(r":primary-badge\[head (\d+) mask mass ([\d.]+)\] :gray-badge\[layer mean ([\d.]+)\]")
ANY_BADGE = re.compile(r":primary-badge\[head \d+ [^\]]+ ([\d.]+|–)\] :gray-badge\[layer mean ([\d.]+|–)\]")
NO_ROWS = "only words naming an object have per-head values"
REVIEW_KEYS = ("rv_verdict", "rv_tag", "rv_status", "rv_sort")


@pytest.fixture(scope="module")
def run(extracted_db) -> dict:
    """The run's id, its last attention layer, its number of attention layers and of heads."""
    with duckdb.connect(str(extracted_db), read_only=True) as con:
        run_id, layer, n_layers, n_heads = con.execute(
            "SELECT run_id, max(layer), count(DISTINCT layer), count(DISTINCT head) FROM word_heads GROUP BY run_id"
        ).fetchone()
    return {"id": run_id, "layer": int(layer), "layers": int(n_layers), "heads": int(n_heads)}


def direct_ranking(
    db: Path, layer: int, head: int, category_id: int | None = None, desc: bool = True, metric: str = "mask_mass"
) -> pd.DataFrame:
    """The head's metric of every word with an object (of one category) in its layer, ranked (NULLs last), with
    the layer mean map's value of the same metric, by direct SQL."""
    order = "DESC" if desc else "ASC"
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(
            f"""SELECT h.image_id, h.caption_id, h.word_index, w.word, h.{metric} AS head_value,
                       w.{metric} AS layer_value
                FROM word_heads AS h JOIN words AS w ON w.run_id = h.run_id AND w.image_id = h.image_id
                    AND w.caption_id = h.caption_id AND w.word_index = h.word_index AND w.layer = h.layer
                    AND w.method = 'attention'
                WHERE h.layer = $layer AND h.head = $head AND ($category IS NULL OR w.category_id = $category)
                ORDER BY h.{metric} {order} NULLS LAST, h.image_id, h.caption_id, h.word_index""",
            {"layer": layer, "head": head, "category": category_id},
        ).df()


def last_pages(n: int) -> tuple[int, int]:
    """The offsets of the last two pages of n rows: where a ranking's NULLs lie."""
    last = (n - 1) // PAGE_SIZE * PAGE_SIZE
    return last - PAGE_SIZE, last


@pytest.mark.parametrize(
    ("category_id", "desc", "metric"),
    [(None, True, "mask_mass"), (None, False, "mask_mass"), (1, True, "mask_mass"),
     (None, True, "specificity_others"), (None, False, "specificity_others"), (1, False, "specificity_others")],
)  # fmt: skip
def test_search_by_head_pages_through_the_direct_ranking(extracted_db, run, category_id, desc, metric):
    """Without a category word_heads alone ranks (the fast path); with one the word rows are joined (the
    filtered path). specificity_others is NULL for a word with no other object to contrast: last either way."""
    head = heads.Head(run["layer"], run["heads"] - 1, metric)
    expected = direct_ranking(extracted_db, head.layer, head.head, category_id, desc, metric)
    where = WordFilter(run_id=run["id"], category_id=category_id)
    offsets = (0, PAGE_SIZE, *last_pages(len(expected)))
    with connect_readonly(extracted_db) as con:
        assert heads.count_by_head(con, where, head) == len(expected) > 4 * PAGE_SIZE
        pages = [heads.search_by_head(con, where, head, desc, PAGE_SIZE, offset) for offset in offsets]
    if metric == "specificity_others":
        assert expected["head_value"].isna().any() and expected["head_value"].notna().any()
        assert pages[-1]["head_value"].isna().any()  # NULLs come last, whichever the order
    shown = pd.concat(pages, ignore_index=True)
    want = pd.concat([expected.iloc[o : o + PAGE_SIZE] for o in offsets], ignore_index=True)
    keys = ["image_id", "caption_id", "word_index", "word"]
    pd.testing.assert_frame_equal(shown[keys], want[keys], check_dtype=False)
    np.testing.assert_allclose(shown["head_value"], want["head_value"], rtol=1e-6)  # NaN where NULL, in both
    np.testing.assert_allclose(shown[metric], want["layer_value"], rtol=1e-6)
    assert (shown["method"] == "attention").all() and (shown["layer"] == head.layer).all()
    assert shown["map"].notna().all() and shown["caption"].notna().all()  # the layer's stored map, and context


def search_page(open_app, db: Path, **query: str) -> AppTest:
    """The Search page, headless, opened with these query parameters."""
    at = open_page(open_app, db, None, timeout=120, **query)
    assert not at.exception, [e.value for e in at.exception]
    return at


def head_badges(at: AppTest) -> list[tuple[int, float, float]]:
    """(head, its mask mass, the layer mean's) of every card, in page order."""
    found = (HEAD_BADGE.search(m.value) for m in at.markdown)
    return [(int(m[1]), float(m[2]), float(m[3])) for m in found if m]


def test_a_head_in_the_url_ranks_the_search_by_it_until_cleared(open_app, extracted_db, run):
    layer, head = run["layer"], 1
    expected = direct_ranking(extracted_db, layer, head, category_id=1)
    at = search_page(open_app, extracted_db, head=f"{layer}.{head}", by="category", category="person")
    (header,) = [m for m in (HEADER.search(md.value) for md in at.markdown) if m]
    assert (int(header[1].replace(",", "")), int(header[2]), int(header[3])) == (len(expected), head, layer)
    badges = head_badges(at)
    assert len(badges) == PAGE_SIZE and {b[0] for b in badges} == {head}
    np.testing.assert_allclose([b[1] for b in badges], expected["head_value"].head(PAGE_SIZE), atol=0.005)
    np.testing.assert_allclose([b[2] for b in badges], expected["layer_value"].head(PAGE_SIZE), atol=0.005)
    ignored = [at.selectbox(key=k) for k in REVIEW_KEYS] + [at.toggle(key="group")]  # the head ranking ignores them
    assert all(w.disabled and w.help == NOT_WITH_HEAD for w in ignored)
    assert not at.get("download_button")  # the exports are of the metric ranking
    at = clear_head(at)
    assert [b.proto.label for b in at.get("download_button")] == ["CSV", "Parquet"]
    assert "head" not in at.query_params and not head_badges(at)
    assert not [md for md in at.markdown if HEADER.search(md.value)]
    assert not any(w.disabled for w in [at.selectbox(key=k) for k in REVIEW_KEYS] + [at.toggle(key="group")])


def clear_head(at: AppTest) -> AppTest:
    return next(b for b in at.button if b.label == "Clear head ranking").click().run()


@pytest.mark.parametrize("link", [{"by": "word", "word": "a"}, {"head": "9.9"}])
def test_a_head_that_ranks_nothing_says_why_and_can_be_cleared(open_app, extracted_db, run, link):
    """A word naming no object has no per-head rows; a link's head may not be one of the run's."""
    at = search_page(open_app, extracted_db, **({"head": f"{run['layer']}.0"} | link))
    assert any(NO_ROWS in i.value for i in at.info) and not head_badges(at)
    assert not any("Widen the metric ranges" in i.value for i in at.info)
    at = clear_head(at)
    assert not at.exception and "head" not in at.query_params
    assert not any(NO_ROWS in i.value for i in at.info)


@pytest.mark.parametrize(
    ("link", "said", "not_said"),
    [({"head": "3"}, "expected LAYER.HEAD", "mask_mass"), ({"head_metric": "bogus"}, "mask_mass", "LAYER.HEAD")],
)
def test_a_malformed_head_link_names_what_is_wrong(open_app, extracted_db, run, link, said, not_said):
    at = search_page(open_app, extracted_db, **({"head": f"{run['layer']}.0"} | link))
    (warning,) = at.warning
    assert said in warning.value and not_said not in warning.value
    if "head_metric" in link:
        assert all(metric in warning.value for metric in heads.HEAD_METRICS)
    assert not head_badges(at)  # the Search ranks by the layer's metrics instead


def test_a_head_value_that_is_null_shows_a_dash_on_the_last_page(open_app, extracted_db, run):
    layer, head = run["layer"], 0
    expected = direct_ranking(extracted_db, layer, head, metric="specificity_others")
    last = last_pages(len(expected))[1]
    query = {"head": f"{layer}.{head}", "head_metric": "specificity_others", "p": str(last // PAGE_SIZE + 1)}
    at = search_page(open_app, extracted_db, **query)
    shown = [m[1] for m in (ANY_BADGE.search(md.value) for md in at.markdown) if m]
    want = expected.iloc[last:]["head_value"]
    assert want.isna().any()
    assert shown == ["–" if pd.isna(v) else f"{v:.2f}" for v in want]


def compute_first_head_map(at: AppTest) -> AppTest:
    return next(b for b in at.button if b.label == "Compute this head's map").click().run()


def test_a_card_computes_its_heads_map_with_the_probe(open_app, extracted_db, run):
    layer, head = run["layer"], 0
    top = direct_ranking(extracted_db, layer, head).iloc[0]
    at = search_page(open_app, extracted_db, head=f"{layer}.{head}")
    n_images = len(at.get("image"))
    at = compute_first_head_map(at)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.get("image")) == n_images + 1  # the head's own map
    (note,) = [c.value for c in at.caption if c.value.startswith(f"Head {head} of layer {layer}, computed now")]
    # The probe recomputes the head's map through the run's code: its mask mass is the stored one.
    assert re.search(r"mask ([\d.]+)\]", note)[1] == f"{top['head_value']:.2f}"


def test_without_the_checkpoint_the_card_says_why_in_one_sentence(open_app, tmp_path, extracted_db, run):
    db = tmp_path / "moved.duckdb"
    shutil.copy(extracted_db, db)
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE runs SET checkpoint_path = $p", {"p": str(tmp_path / "gone" / "checkpoint.pth")})
    at = compute_first_head_map(search_page(open_app, db, head=f"{run['layer']}.0"))
    (error,) = at.error
    gone = tmp_path / "gone" / "checkpoint.pth"
    said = error.value.replace("\\", "")  # the page escapes markdown
    assert said == f"The run's checkpoint {gone} is not on this machine: copy it there to probe this run."


def test_clicking_a_heatmap_cell_opens_the_search_ranked_by_that_head_in_chromium(extracted_db, run, page, tmp_path):
    head = run["heads"] - 1  # the right-most column, in the last layer's row (the bottom one)
    expected = direct_ranking(extracted_db, run["layer"], head)
    with streamlit_server(extracted_db, tmp_path / "review.sqlite") as base:
        page.goto(f"{base}/statistics?view=grounding+heads")
        area = page.locator('[data-testid="stPlotlyChart"] .nsewdrag').first
        area.wait_for(timeout=90_000)
        page.wait_for_timeout(1000)  # let plotly finish drawing
        shoot(page, "statistics_grounding_heads")
        box = area.bounding_box()
        x, y = (
            box["x"] + box["width"] * (head + 0.5) / run["heads"],
            box["y"] + box["height"] * (1 - 0.5 / run["layers"]),
        )
        page.mouse.move(x - 5, y - 5)
        page.mouse.move(x, y, steps=5)  # plotly picks the cell under the pointer on hover
        page.mouse.click(x, y)
        page.wait_for_url("**head=**", timeout=30_000)
        query = parse_qs(urlparse(page.url).query)
        assert query["head"] == [f"{run['layer']}.{head}"] and query["head_metric"] == ["mask_mass"]
        assert query["method"] == ["attention"] and query["layer"] == [str(run["layer"])]
        page.get_by_text(f"Ranked by head {head} of layer {run['layer']} (its mask mass)").wait_for(timeout=60_000)
        wait_for_overlays(page, PAGE_SIZE, timeout_ms=90_000)
        assert page.get_by_text(f"{len(expected):,} occurrences").count() == 1
        badges = page.locator('[data-testid="stMarkdownContainer"]', has_text=f"head {head} mask mass")
        first = badges.first.inner_text()
        assert f"head {head} mask mass {expected['head_value'].iloc[0]:.2f}" in first
        assert f"layer mean {expected['layer_value'].iloc[0]:.2f}" in first
        shoot(page, "search_ranked_by_head")
