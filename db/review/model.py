"""Who acts and on what: roles (`Actor`), review items (`Item`) and the records read back about them.

Items. A review item is a word instance (run_id, image_id, caption_id, word_index, method, layer) or a
whole image (run_id, image_id); `Item.key` is its canonical text key
(`word:<run_id>:<image_id>:<caption_id>:<word_index>:<method>:<layer>` or `image:<run_id>:<image_id>`),
and the `items` table keeps the key's parts as columns so that exports join with word metrics.

Rights. Users and roles are not stored in the review store: they come from the dashboard's secrets
(dashboard/auth.py). Every write takes the acting `Actor` (user and role) and raises PermissionError
unless the role allows it: anonymous and viewer read only; reviewer sets verdicts, tags and comments and
resolves/reopens items; admin also creates and assigns queues and reads the audit log.
"""

import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

VERDICTS = ("aligned", "noisy", "background-heavy", "wrong object", "other")
ROLES = ("anonymous", "viewer", "reviewer", "admin")  # in increasing rights
METHODS = ("attention", "gradcam")
ACTIONS = (
    "set_verdict", "clear_verdict", "add_tag", "remove_tag", "add_comment", "resolve", "reopen",
    "create_queue", "assign_queue", "unassign_queue",
)  # fmt: skip
ITEM_COLUMNS = ("run_id", "image_id", "caption_id", "word_index", "method", "layer")
IMAGE_COLUMNS = ITEM_COLUMNS[:2]
MAX_TAG_CHARS = 64
MAX_NAME_CHARS = 200
MAX_TEXT_CHARS = 10_000


_RUN_ID = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class Actor:
    """Who acts, as signed in: user name (None when anonymous) and role (one of ROLES)."""

    user: str | None
    role: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; expected one of {ROLES}")
        if self.role == "anonymous":
            if self.user is not None:
                raise ValueError("an anonymous actor has no user name")
        elif not isinstance(self.user, str) or not self.user.strip():
            raise ValueError(f"a {self.role} needs a user name")

    @property
    def can_review(self) -> bool:
        """Whether this actor may write verdicts, tags and comments and resolve items."""
        return ROLES.index(self.role) >= ROLES.index("reviewer")

    @property
    def can_manage(self) -> bool:
        """Whether this actor may create and assign queues and read the audit log."""
        return self.role == "admin"


@dataclass(frozen=True)
class Item:
    """A review item: a word instance (all fields set) or a whole image (run_id and image_id only)."""

    run_id: str
    image_id: int
    caption_id: int | None = None
    word_index: int | None = None
    method: str | None = None
    layer: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.run_id, str) or not _RUN_ID.fullmatch(self.run_id):
            raise ValueError(f"run_id must be 16 lowercase hex characters, got {self.run_id!r}")
        word_fields = (self.caption_id, self.word_index, self.method, self.layer)
        if any(f is None for f in word_fields) and any(f is not None for f in word_fields):
            raise ValueError("a word item needs caption_id, word_index, method and layer; an image item none")
        if self.method is not None and self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        # operator.index accepts numpy integers from DataFrames and refuses floats and strings.
        for name in ("image_id", "caption_id", "word_index", "layer"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, operator.index(value))

    @property
    def kind(self) -> str:
        """'word' or 'image'."""
        return "image" if self.caption_id is None else "word"

    @property
    def key(self) -> str:
        """The canonical text key, e.g. 'word:0123456789abcdef:139:4021:2:gradcam:8'."""
        columns = IMAGE_COLUMNS if self.kind == "image" else ITEM_COLUMNS
        return self.kind + ":" + ":".join(str(getattr(self, c)) for c in columns)

    @classmethod
    def from_key(cls, key: str) -> "Item":
        """Parse a key made by `Item.key`; ValueError for anything else."""
        kind, _, rest = key.partition(":")
        parts = rest.split(":")
        if kind == "image" and len(parts) == 2:
            item = cls(parts[0], int(parts[1]))
        elif kind == "word" and len(parts) == 6:
            run_id, image_id, caption_id, word_index, method, layer = parts
            item = cls(run_id, int(image_id), int(caption_id), int(word_index), method, int(layer))
        else:
            raise ValueError(f"not an item key: {key!r}")
        if item.key != key:  # e.g. '+7' or '007' parse as ints but are not canonical
            raise ValueError(f"not a canonical item key: {key!r}")
        return item

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> "Item":
        """The item of a search-result or `words` row; missing or null word columns make an image item."""
        values = {c: row[c] for c in ITEM_COLUMNS if c in row and not pd.isna(row[c])}
        return cls(**values)


@dataclass(frozen=True)
class VerdictEntry:
    """One reviewer's current verdict on an item."""

    reviewer: str
    verdict: str
    note: str
    at: str


@dataclass(frozen=True)
class TagEntry:
    """A tag on an item, with who added it and when."""

    tag: str
    added_by: str
    at: str


@dataclass(frozen=True)
class CommentEntry:
    """One message of an item's comment thread. Render `body` as plain text, never as HTML/Markdown."""

    comment_id: int
    author: str
    body: str
    at: str


@dataclass(frozen=True)
class ItemReview:
    """Everything said about one item: status, verdicts, tags and the comment thread, with who and when."""

    item: Item
    status: str  # 'open' or 'resolved'
    status_by: str | None
    status_at: str | None
    verdicts: tuple[VerdictEntry, ...]
    tags: tuple[TagEntry, ...]
    comments: tuple[CommentEntry, ...]


@dataclass(frozen=True)
class QueueEntry:
    """An item at its 0-based position in a queue."""

    position: int
    item: Item


def require(actor: Actor, role: str, what: str) -> None:
    if ROLES.index(actor.role) < ROLES.index(role):
        raise PermissionError(f"{actor.user or 'anonymous'} ({actor.role}) may not {what}")
