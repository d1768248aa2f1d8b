"""Transactions and fetches shared by the review store's modules.

Every write is one short `BEGIN IMMEDIATE` transaction (`write`): it takes the write lock up front (so it
never fails half-way on a lock upgrade), reads the value before, writes, appends an audit row, and
commits. Reads that need several queries to agree run in one read transaction (`snapshot`).
"""

import json
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pandas as pd

ITEM_SELECT = "i.item_key, i.kind, i.run_id, i.image_id, i.caption_id, i.word_index, i.method, i.layer"


@contextmanager
def write(con: sqlite3.Connection) -> Iterator[str]:
    """One short write transaction; yields its timestamp, taken once the write lock is held."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield iso(datetime.now(UTC))
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise


@contextmanager
def snapshot(con: sqlite3.Connection) -> Iterator[None]:
    """A read transaction, so that several queries see one state even while others write."""
    con.execute("BEGIN")
    try:
        yield
    finally:
        con.execute("COMMIT")


def iso(when: datetime) -> str:
    # Fixed width (always microseconds, always UTC) so text order is time order.
    return when.astimezone(UTC).isoformat(timespec="microseconds")


def json_text(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False)


def one(con: sqlite3.Connection, sql: str, params: Mapping[str, Any] | tuple = ()) -> sqlite3.Row | None:
    # fetchall runs the statement to its end, so no read snapshot or write lock outlives the call.
    rows = con.execute(sql, params).fetchall()
    return rows[0] if rows else None


def frame(con: sqlite3.Connection, sql: str, params: Mapping[str, Any] | tuple = ()) -> pd.DataFrame:
    cur = con.execute(sql, params)
    return pd.DataFrame([tuple(r) for r in cur.fetchall()], columns=[d[0] for d in cur.description])


def typed_items(df: pd.DataFrame) -> pd.DataFrame:
    # Image items have no word columns: nullable integers keep the ids integral.
    for col in ("image_id", "caption_id", "word_index", "layer"):
        df[col] = df[col].astype("Int64")
    return df
