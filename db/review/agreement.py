"""Agreement between reviewers: Cohen's kappa, pairwise agreement, and the items they disagree on."""

import math
import sqlite3
from itertools import combinations

import pandas as pd

from db.review.store import ITEM_SELECT, frame, typed_items

_IN_QUEUE = "(:queue_id IS NULL OR v.item_key IN (SELECT item_key FROM queue_items WHERE queue_id = :queue_id))"
_SCOPED_VERDICTS = f"SELECT v.item_key, v.reviewer, v.verdict FROM verdicts v WHERE {_IN_QUEUE}"
_DISAGREEMENTS = f"""
SELECT {ITEM_SELECT}, v.reviewer, v.verdict, v.note, v.at FROM verdicts v JOIN items i USING (item_key)
WHERE {_IN_QUEUE}
  AND v.item_key IN (SELECT item_key FROM verdicts GROUP BY item_key HAVING COUNT(DISTINCT verdict) > 1)
ORDER BY i.item_key, v.reviewer"""


def cohen_kappa(a: list[str], b: list[str]) -> float:
    """Cohen's kappa of two raters' labels on the same items: (p_o - p_e) / (1 - p_e), where p_o is the
    observed agreement and p_e the agreement expected from each rater's label frequencies.

    NaN when undefined: no items, or both raters gave one and the same label to every item (p_e = 1).
    """
    if len(a) != len(b):
        raise ValueError("both raters must label the same items")
    n = len(a)
    if n == 0:
        return math.nan
    p_o = sum(x == y for x, y in zip(a, b, strict=True)) / n
    counts_a = pd.Series(a).value_counts()
    counts_b = pd.Series(b).value_counts()
    p_e = float((counts_a * counts_b.reindex(counts_a.index, fill_value=0)).sum()) / (n * n)
    return math.nan if p_e == 1 else (p_o - p_e) / (1 - p_e)


def agreement(con: sqlite3.Connection, queue_id: int | None = None) -> pd.DataFrame:
    """Pairwise agreement between reviewers on the items both judged (within a queue when given).

    Columns: reviewer_a, reviewer_b (a < b), n_shared, n_agree, percent_agreement (0..100), kappa
    (Cohen's, see `cohen_kappa`). Only pairs with at least one shared item are listed.
    """
    verdicts = frame(con, _SCOPED_VERDICTS, {"queue_id": queue_id})
    wide = verdicts.pivot(index="item_key", columns="reviewer", values="verdict")
    rows = []
    for a, b in combinations(sorted(wide.columns), 2):
        shared = wide[[a, b]].dropna()
        if shared.empty:
            continue
        n_agree = int((shared[a] == shared[b]).sum())
        rows.append({
            "reviewer_a": a, "reviewer_b": b, "n_shared": len(shared), "n_agree": n_agree,
            "percent_agreement": 100.0 * n_agree / len(shared),
            "kappa": cohen_kappa(list(shared[a]), list(shared[b])),
        })  # fmt: skip
    columns = ["reviewer_a", "reviewer_b", "n_shared", "n_agree", "percent_agreement", "kappa"]
    return pd.DataFrame(rows, columns=columns)


def disagreements(con: sqlite3.Connection, queue_id: int | None = None) -> pd.DataFrame:
    """Every verdict on items where reviewers differ (within a queue when given), one row per
    (item, reviewer): item_key, kind, ITEM_COLUMNS, reviewer, verdict, note, at."""
    return typed_items(frame(con, _DISAGREEMENTS, {"queue_id": queue_id}))
