"""db.review.joined on a real extraction of the shared COCO subset: review items back to their word rows."""

import pandas as pd
import pytest

from db import queries, review
from db.queries import WordFilter
from db.review import Actor, Item
from db.review.joined import item_words


@pytest.fixture(scope="module")
def con(small_db):
    con = queries.connect_readonly(small_db)
    yield con
    con.close()


@pytest.fixture(scope="module")
def dogs(con) -> pd.DataFrame:
    return queries.search_words(con, WordFilter(word="dog"), sort="entropy", limit=None, with_maps=True)


def test_rows_come_back_in_the_items_order_with_search_columns(con, dogs):
    picked = dogs.iloc[[3, 0, 2]]
    rows = item_words(con, picked, with_maps=True)
    assert rows[list(review.ITEM_COLUMNS)].values.tolist() == picked[list(review.ITEM_COLUMNS)].values.tolist()
    shared = [c for c in dogs.columns if c in rows.columns]
    assert set(dogs.columns) - set(shared) == set()  # everything a search row has, so cards draw both alike
    pd.testing.assert_frame_equal(
        rows[shared].reset_index(drop=True), picked[shared].reset_index(drop=True), check_dtype=False
    )
    assert "map" not in item_words(con, picked).columns


def test_image_items_unknown_items_and_duplicates_are_left_out(con, dogs, tmp_path):
    store = review.connect(tmp_path / "review.sqlite")
    alice = Actor("alice", "reviewer")
    first = Item.from_row(dogs.iloc[0])
    missing = Item(first.run_id, first.image_id, first.caption_id, 99, first.method, first.layer)
    for item in (first, Item(first.run_id, first.image_id), missing):
        review.set_verdict(store, alice, item, "noisy")
    summary = review.review_summary(store)  # nullable ids, image rows with null word columns
    rows = item_words(con, pd.concat([summary, summary]))
    assert rows[list(review.ITEM_COLUMNS)].values.tolist() == [[getattr(first, c) for c in review.ITEM_COLUMNS]]
    assert rows["word"].tolist() == ["dog"]
    assert item_words(con, summary.iloc[:0]).empty
