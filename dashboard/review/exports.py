"""Download callbacks of the review pages: CSV or Parquet bytes of reviews, of the audit log and of a
reviewed search.

A download button calls these when clicked, outside the script run, so they open their own review store
connection rather than using the session's, which a script run may be using at that moment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from dashboard import data
from db import review
from db.queries import WordFilter
from db.review import joined

EXPORT_FORMATS = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}  # format -> MIME type


def export_reviews(db: data.Database, store: str, run_id: str | None, fmt: str, with_metrics: bool) -> bytes:
    """The reviews (joined with word metrics, or every reviewed item as is) of a run."""
    con = review.connect(store)
    try:
        frame = (
            joined.reviews_with_metrics(db.connection(), con, run_id)
            if with_metrics
            else review.review_summary(con, run_id)
        )
    finally:
        con.close()
    return data.frame_bytes(frame, fmt)


def export_audit(store: str, actor: review.Actor, filters: Mapping[str, Any], fmt: str) -> bytes:
    """Every audit row matching `filters` (db.review.audit_log; admin only)."""
    con = review.connect(store)
    try:
        return data.frame_bytes(review.audit_log(con, actor, **filters), fmt)
    finally:
        con.close()


def search_export(
    db: data.Database, fmt: str, where: WordFilter, sort: str, descending: bool, reviewed: pd.DataFrame | None
) -> bytes:
    """A Search's download: its reviewed rows when a review filter is chosen, else data.export."""
    return data.export(db, fmt, where, sort, descending) if reviewed is None else data.frame_bytes(reviewed, fmt)
