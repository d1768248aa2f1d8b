"""Team review store: verdicts, tags, comment threads, queues and an append-only audit log, in SQLite.

One module per concern; this package's names are the public API (`from db import review`):
- schema.py: the schema, its migration, `connect` (why SQLite, and how connections are shared)
- model.py: roles (`Actor`), review items (`Item`) and the records read back
- writes.py: every change, each one short transaction with its audit row
- reads.py: one item's review, the export summary, filters, queues and progress
- agreement.py: agreement between reviewers (Cohen's kappa) and disagreements
- audit.py: the audit log and its hash chain
- signin.py: sign-in throttling counts (used by dashboard/auth.py)
- joined.py: the one place where review rows meet the extraction database (DuckDB)
"""

from db.review.agreement import agreement, cohen_kappa, disagreements
from db.review.audit import CHAIN_START, ChainCheck, audit_log, audit_row_hash, verify_audit_chain
from db.review.model import (
    ACTIONS,
    IMAGE_COLUMNS,
    ITEM_COLUMNS,
    MAX_NAME_CHARS,
    MAX_TAG_CHARS,
    MAX_TEXT_CHARS,
    METHODS,
    ROLES,
    VERDICTS,
    Actor,
    CommentEntry,
    Item,
    ItemReview,
    QueueEntry,
    TagEntry,
    VerdictEntry,
)
from db.review.reads import (
    all_tags,
    find_items,
    item_review,
    list_queues,
    neighbour_item,
    queue_items,
    queue_progress,
    review_summary,
)
from db.review.schema import BUSY_TIMEOUT_MS, SCHEMA_VERSION, connect, init_db, schema_version
from db.review.writes import (
    add_comment,
    add_tag,
    assign_queue,
    clear_verdict,
    create_queue,
    remove_tag,
    reopen,
    resolve,
    set_verdict,
    unassign_queue,
)

__all__ = [
    "ACTIONS", "BUSY_TIMEOUT_MS", "CHAIN_START", "IMAGE_COLUMNS", "ITEM_COLUMNS", "MAX_NAME_CHARS", "MAX_TAG_CHARS",
    "MAX_TEXT_CHARS", "METHODS", "ROLES", "SCHEMA_VERSION", "VERDICTS", "Actor", "ChainCheck", "CommentEntry",
    "Item", "ItemReview", "QueueEntry", "TagEntry", "VerdictEntry", "add_comment", "add_tag", "agreement",
    "all_tags", "assign_queue", "audit_log", "audit_row_hash", "clear_verdict", "cohen_kappa", "connect",
    "create_queue", "disagreements", "find_items", "init_db", "item_review", "list_queues", "neighbour_item",
    "queue_items", "queue_progress", "remove_tag", "reopen", "resolve", "review_summary",
    "schema_version", "set_verdict", "unassign_queue", "verify_audit_chain",
]  # fmt: skip
