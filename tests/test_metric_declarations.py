"""The per-word metrics are declared once (db/metrics.py): the README, the schema, the extractor's NULLs and
the dashboard's badges agree with the declaration."""

from pathlib import Path

import duckdb
import numpy as np
import pytest

from dashboard import components
from db.metrics import BY_NAME, METRICS, SCORES, WORD_METRICS, markdown_table, words_order
from db.schema import LOOKUP_COLUMNS, RUN_COLUMNS, init_db
from extractor.metrics import word_metrics

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## What is measured per word"


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of a markdown table's rows, header and separator included, stripped of padding."""
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in markdown.splitlines() if line.startswith("|")]  # fmt: skip


@pytest.fixture(scope="module")
def con():
    con = duckdb.connect()
    init_db(con)
    yield con
    con.close()


def columns(con, table: str) -> dict[str, str]:
    return {name: sql_type for name, sql_type, *_ in con.execute(f"DESCRIBE {table}").fetchall()}


def test_readme_table_is_the_declaration():
    section = README.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    assert table_rows(section) == table_rows(markdown_table()), (
        f"README's metrics table differs from db/metrics.py; `python -m db.metrics` prints it:\n{markdown_table()}"
    )
    assert [row[0] for row in table_rows(section)[2:]] == [f"`{m.name}`" for m in WORD_METRICS]


def test_tables_have_the_declared_metric_columns(con):
    words, lookup, summary = (columns(con, t) for t in ("words", "word_lookup", "word_summary"))
    assert [name for name in words if name in BY_NAME] == [m.name for m in words_order()]
    assert all(words[m.name] == lookup[m.name] == m.sql_type for m in WORD_METRICS)
    assert list(lookup) == LOOKUP_COLUMNS.split(", ") and list(lookup)[-len(WORD_METRICS) :] == list(BY_NAME)
    assert [c for c in summary if c.startswith(("n_", "sum_"))] == [f"{p}_{m}" for m in METRICS for p in ("n", "sum")]
    assert [c for c in summary if c.startswith("median_")] == [f"median_{m}" for m in SCORES]


def test_runs_starts_with_the_run_settings(con):
    assert list(columns(con, "runs"))[: len(RUN_COLUMNS)] == list(RUN_COLUMNS)


@pytest.mark.parametrize("labelled", [True, False])
def test_the_metrics_that_need_the_object_are_exactly_the_ones_null_without_it(labelled):
    rng = np.random.default_rng(0)
    cover = (rng.uniform(size=(6, 6)) > 0.5).astype(float) if labelled else None
    reference = rng.uniform(size=(6, 6))  # the specificities' reference maps
    row = word_metrics(rng.uniform(size=(6, 6)), cover, cover, np.ones((6, 6)) * 0.3, reference, reference, reference)
    caption_level = {"itm_score"}  # computed per caption, not from the word's map
    assert set(row) == set(BY_NAME) - caption_level
    assert {k for k, v in row.items() if v is None} == (
        set() if labelled else {m.name for m in WORD_METRICS if m.needs_object}
    )


def test_every_ranked_metric_has_its_badge_and_help():
    row = {m: (True if BY_NAME[m].is_flag else 0.5) for m in METRICS}
    shown = components.badges(row, highlight="entropy")
    assert [f"[{BY_NAME[m].label} " in shown for m in METRICS] == [True] * len(METRICS)
    assert ":primary-badge[H 0.50]" in shown and ":gray-badge[hit yes]" in shown
    assert all(components.metric_help(m).endswith(".") for m in METRICS)
    assert components.metrics_help().count("**") == 2 * len(METRICS)
