"""Every question a page asks the extraction database: one typed, cached function each.

Each is ``st.cache_data`` over the db.queries function of the same name, keyed by the `Database` (path
and modification time, so a re-extracted file is read again) and the question's own parameters.
Searches take one `WordFilter`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import streamlit as st

from dashboard.data import Database
from db import compare, heads, queries, rankings, stats
from db.compare import Slice
from db.heads import Head
from db.queries import WordFilter

_cached = st.cache_data(show_spinner=False, max_entries=1024)


@_cached
def list_runs(db: Database) -> pd.DataFrame:
    """All runs, newest first (db.queries.list_runs)."""
    return queries.list_runs(db.connection())


@_cached
def run_summary(db: Database, run_id: str) -> dict:
    """One run's row, live counts and its (method, layer) slices (db.queries.run_summary)."""
    return queries.run_summary(db.connection(), run_id)


@_cached
def run_errors(db: Database, run_id: str) -> pd.DataFrame:
    """The run's logged errors, newest first."""
    return queries.run_errors(db.connection(), run_id)


@_cached
def vocabulary(db: Database, run_id: str | None, limit: int) -> pd.DataFrame:
    """The run's `limit` most frequent words with their counts (word, n)."""
    return queries.vocabulary(db.connection(), "", run_id, limit)


@_cached
def list_categories(db: Database, run_id: str | None = None) -> pd.DataFrame:
    """The COCO categories by name, with how many words name them, instances and images."""
    return queries.list_categories(db.connection(), run_id)


@_cached
def search_words(db: Database, where: WordFilter, sort: str, descending: bool, limit: int, offset: int) -> pd.DataFrame:
    """One page of a search's ranked hits, with their maps."""
    return queries.search_words(db.connection(), where, sort=sort, descending=descending, limit=limit, offset=offset)


@_cached
def search_keys(db: Database, where: WordFilter, sort: str, descending: bool, limit: int) -> pd.DataFrame:
    """The first `limit` hits of a search without maps (what a review queue is made of)."""
    return queries.search_words(db.connection(), where, sort=sort, descending=descending, limit=limit, with_maps=False)


@_cached
def count_words(db: Database, where: WordFilter) -> int:
    """How many word rows a search matches."""
    return queries.count_words(db.connection(), where)


@_cached
def image_detail(db: Database, image_id: int, run_id: str) -> dict[str, pd.DataFrame]:
    """Everything about one image in one run: image, captions, words, caption_maps, instances."""
    return queries.image_detail(db.connection(), image_id, run_id)


@_cached
def image_encoder_maps(db: Database, image_id: int, run_id: str) -> pd.DataFrame:
    """The image encoder's [CLS] attention of one image: head (-1 = mean), map, map_max."""
    return queries.image_encoder_maps(db.connection(), image_id, run_id)


@_cached
def image_instances(db: Database, image_ids: tuple[int, ...]) -> pd.DataFrame:
    """The labelled objects of a page's images."""
    return queries.image_instances(db.connection(), image_ids)


@_cached
def words_at_region(
    db: Database, image_id: int, run_id: str, method: str, layer: int, region: tuple[int, int, int, int], limit: int
) -> pd.DataFrame:
    """The image's words whose maps weigh most in the grid region (row0, col0, row1, col1)."""
    return queries.words_at_region(db.connection(), image_id, run_id, method, layer, *region, limit=limit)


@_cached
def word_stats(db: Database, run_id: str, method: str, layer: int, min_count: int) -> pd.DataFrame:
    """Per word of a run slice: counts, hit rate, means and medians of the metrics."""
    return stats.word_stats(db.connection(), run_id, method, layer, min_count)


@_cached
def category_stats(db: Database, run_id: str, method: str, layer: int, min_count: int) -> pd.DataFrame:
    """Per category of a run slice, over the words naming it."""
    return stats.category_stats(db.connection(), run_id, method, layer, min_count)


@_cached
def word_category_matrix(
    db: Database, run_id: str, method: str, layer: int, metric: str, min_count: int
) -> pd.DataFrame:
    """Mean of `metric` per (word, category it names) of a run slice."""
    return stats.word_category_matrix(db.connection(), run_id, method, layer, metric, min_count)


@_cached
def metric_values(
    db: Database, metric: str, run_id: str, method: str, layer: int, words: Sequence[str] | None
) -> pd.DataFrame:
    """Values of one metric (word, value) of a run slice, for distribution plots."""
    return stats.metric_values(db.connection(), metric, run_id, method, layer, words)


@_cached
def head_means(db: Database, run_id: str, metric: str, category_id: int | None) -> pd.DataFrame:
    """Per fusion layer and head of a run: n words and the mean of a per-head metric (db.heads.head_means)."""
    return heads.head_means(db.connection(), run_id, metric, category_id)


@_cached
def count_by_head(db: Database, where: WordFilter, head: Head) -> int:
    """How many word rows a search ranked by one head matches."""
    return heads.count_by_head(db.connection(), where, head)


@_cached
def search_by_head(
    db: Database, where: WordFilter, head: Head, descending: bool, limit: int, offset: int
) -> pd.DataFrame:
    """One page of a search ranked by one head's own metric, with the layer's maps (db.heads.search_by_head)."""
    return heads.search_by_head(db.connection(), where, head, descending, limit, offset)


@_cached
def layer_comparison(db: Database, run_id: str) -> pd.DataFrame:
    """Per method and layer of a run: counts, hit rate and mean of each metric."""
    return stats.layer_comparison(db.connection(), run_id)


@_cached
def word_frequency_alignment(db: Database, run_id: str, method: str, layer: int, min_count: int) -> pd.DataFrame:
    """Caption frequency beside localisation quality, per word naming a labelled object."""
    return stats.word_frequency_alignment(db.connection(), run_id, method, layer, min_count)


@_cached
def search_images(
    db: Database, where: WordFilter, sort: str, descending: bool, limit: int, offset: int
) -> pd.DataFrame:
    """One page of a search grouped by image: the images of its hits, ranked by their best hit."""
    return queries.search_images(db.connection(), where, sort=sort, descending=descending, limit=limit, offset=offset)


@_cached
def best_slices(db: Database, run_id: str, word: str | None = None, category_id: int | None = None) -> pd.DataFrame:
    """The run's (method, layer) slices, where the word, category or whole run grounds best first."""
    return rankings.best_slices(db.connection(), run_id, word, category_id)


@_cached
def present_metrics(db: Database, run_id: str) -> tuple[str, ...]:
    """The ranked metrics the run has values of (db.rankings.present_metrics)."""
    return rankings.present_metrics(db.connection(), run_id)


@_cached
def ranked(
    db: Database,
    run_id: str,
    method: str,
    layer: int,
    metric: str,
    by: str,
    descending: bool,
    min_count: int,
    word_class: str | None = None,
) -> pd.DataFrame:
    """The run slice's words (of one word class, or all) or categories (`by`) by mean `metric`."""
    return rankings.ranked(
        db.connection(),
        run_id,
        method,
        layer,
        metric,
        by=by,
        descending=descending,
        min_count=min_count,
        word_class=word_class,
    )


@_cached
def ranked_images(
    db: Database,
    run_id: str,
    method: str,
    layer: int,
    metric: str,
    descending: bool,
    category_id: int | None,
    limit: int,
    offset: int,
) -> pd.DataFrame:
    """One page of the run slice's images by the mean `metric` of their words (optionally of one category)."""
    return rankings.ranked_images(
        db.connection(),
        run_id,
        method,
        layer,
        metric,
        descending=descending,
        category_id=category_id,
        limit=limit,
        offset=offset,
    )


@_cached
def image_overlap(db: Database, run_a: str, run_b: str) -> dict[str, int]:
    """Images both runs extracted, and those only one of them did (db.compare.image_overlap)."""
    return compare.image_overlap(db.connection(), run_a, run_b)


@_cached
def run_changes(
    db: Database, a: Slice, b: Slice, metric: str, by: str, min_count: int, order: str, intervals: int
) -> pd.DataFrame:
    """Per word or category, the metric's change from slice A to slice B, ranked, with bootstrap intervals
    for the first `intervals`."""
    return compare.changes(db.connection(), a, b, metric, by, min_count, order=order, intervals=intervals)


@_cached
def matched_words(db: Database, a: Slice, b: Slice, metric: str, key: str, by: str, limit: int) -> pd.DataFrame:
    """One word's (or category's) occurrences in both slices, with both maps, largest change first."""
    return compare.matched_words(db.connection(), a, b, metric, key, by, limit)
