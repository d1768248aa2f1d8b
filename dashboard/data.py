"""The dashboard's access to the extraction database and its images, cached by role.

``st.cache_resource`` holds the one read-only connection per database file; ``st.cache_data`` holds query
results and rendered overlays. Both are keyed by the file's path and modification time, so a re-extracted
database is picked up without restarting the server. The cached questions are in dashboard/questions.py;
all SQL lives in ``db/``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import streamlit as st
from PIL import Image, UnidentifiedImageError

from dashboard import paths
from dashboard.markup import code
from dashboard.overlay import (
    OverlayStyle,
    attention_overlay,
    blank_image,
    display_size,
    draw_instances,
    encode,
)
from db import parts, queries
from db.codec import decode_map
from db.schema import SchemaMismatch

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEMO_DB = REPO / "data" / "demo" / "demo.duckdb"
CONTEXT_KEY = "dashboard_context"
RUN_LABELS = "run_labels"  # session state: run_id -> the label given on the Runs page
INSTANCE_FIELDS = ("segmentation", "bbox_x", "bbox_y", "bbox_w", "bbox_h")


class DatabaseUnavailable(Exception):
    """The database cannot be shown; the message says why and what to do, for st.error."""


@dataclass(frozen=True)
class Database:
    """A database file as the cache key of everything read from it: its path, and a version that changes
    with the file and with the done chunks of runs still in progress (`db.parts.version`)."""

    path: str
    mtime_ns: int

    @classmethod
    def open(cls, path: str | Path) -> Database:
        """Check that ``path`` is a readable extraction database of this schema version."""
        path = Path(path).expanduser().resolve()
        if not path.is_file() and not parts.run_ids(parts.parts_dir(path)):
            raise DatabaseUnavailable(
                f"No database file at {code(str(path))}, and no extraction in progress "
                f"beside it ({code(str(parts.parts_dir(path)))})."
            )
        db = cls(str(path), parts.version(path))
        try:
            _connection(db.path, db.mtime_ns)
        except SchemaMismatch as exc:
            raise DatabaseUnavailable(f"{code(str(path))} cannot be shown: {exc}") from exc
        except duckdb.Error as exc:
            if "lock" in str(exc).lower():  # DuckDB allows one writer or many readers, not both
                raise DatabaseUnavailable(
                    f"{code(str(path))} is being built by another process (`python -m "
                    f"extractor finalize` at the end of a run?); reload when that finishes. "
                    f"{code(str(exc))}"
                ) from exc
            raise DatabaseUnavailable(f"{code(str(path))} is not a readable DuckDB extraction database: {exc}") from exc
        return db

    def connection(self) -> duckdb.DuckDBPyConnection:
        """The shared read-only connection of this database version (db.queries and db.review.joined
        give each query its own cursor)."""
        return _connection(self.path, self.mtime_ns)


@dataclass(frozen=True)
class BestView:
    """Where the Search page's word or category (`name`; None: every word of the run) grounds best:
    db.rankings.best_slices, best first."""

    name: str | None
    slices: pd.DataFrame

    def is_best(self, method: str, layer: int) -> bool:
        first = self.slices.iloc[0]
        return (first["method"], int(first["layer"])) == (method, layer)


@dataclass(frozen=True)
class Context:
    """What the entry point's sidebar chose, handed to every page."""

    db: Database
    run: Mapping[str, Any]
    method: str
    layer: int
    images_dir: Path | None
    best: BestView | None = None


def run_label(run: Mapping[str, Any]) -> str:
    """A run as people name it: the label given on the Runs page, else checkpoint file, method and resolution."""
    given = st.session_state.get(RUN_LABELS, {}).get(run["run_id"])
    checkpoint = Path(run["checkpoint_path"] or "?").name
    return given or f"{checkpoint} · {run['method']} · {run['image_res'] or '?'} px"


def context() -> Context:
    """The context the entry point set for this run (pages are only run after it is set)."""
    return st.session_state[CONTEXT_KEY]


@st.cache_resource(show_spinner=False, max_entries=4)
def _connection(path: str, mtime_ns: int) -> duckdb.DuckDBPyConnection:
    """One read-only connection per database version; db.queries gives each query its own cursor."""
    logger.info("opening %s read-only", path)
    return queries.connect_readonly(path)


def images_dir(run: Mapping[str, Any], override: str | None, db: Database) -> Path | None:
    """Where the run's images are: ``--images`` if given, else the run's images_dir.

    A database moved together with its images (the demo under data/demo/) is handled too: when the
    stored folder does not exist, the folder of that name beside the database file is used.
    """
    if override:
        return Path(override).expanduser()
    stored = run.get("images_dir")
    if not stored:
        return None
    path = Path(stored).expanduser()
    if path.is_dir():
        return path
    beside = Path(db.path).parent / (path.name if path.is_absolute() else path)
    return beside if beside.is_dir() else path


def load_image(path: Path | None, width: int, height: int) -> tuple[Image.Image, bool]:
    """The image at ``path`` (RGB), or a grey stand-in of the COCO size; the flag says it was found."""
    if path is not None:
        try:
            with paths.open_image_file(path) as f, Image.open(f) as img:
                return img.convert("RGB"), True
        except (OSError, UnidentifiedImageError) as exc:
            logger.warning("cannot read image %s: %s", path, exc)
    return blank_image(int(width), int(height)), False


@st.cache_data(show_spinner=False, max_entries=4096)
def render_overlay(
    path: str | None,
    width: int,
    height: int,
    blob: bytes | None,
    map_max: float,
    style: OverlayStyle,
    instances: tuple[tuple[str, float, float, float, float], ...] = (),
    show_mask: bool = False,
    show_box: bool = False,
) -> tuple[bytes, bool]:
    """JPEG of a word map over its image (+ instance masks/boxes); the flag says the image file was found.

    ``blob`` None draws the bare image. ``instances`` are (segmentation JSON, x, y, w, h) in COCO pixels.
    """
    image, found = load_image(Path(path) if path else None, width, height)
    if blob is None:
        out = image.resize(display_size(*image.size, style.max_side), Image.Resampling.BILINEAR)
    else:
        out = attention_overlay(image, decode_map(blob, map_max), style)
    if instances and (show_mask or show_box):
        rows = [dict(zip(INSTANCE_FIELDS, inst, strict=True)) for inst in instances]
        out = draw_instances(out, rows, (int(width), int(height)), show_mask=show_mask, show_box=show_box)
    return encode(out, "JPEG"), found


def instance_tuples(instances: pd.DataFrame) -> tuple[tuple[str, float, float, float, float], ...]:
    """Instance rows as the hashable tuples render_overlay takes."""
    return tuple(
        (str(seg), float(x), float(y), float(w), float(h))
        for seg, x, y, w, h in instances[list(INSTANCE_FIELDS)].itertuples(index=False)
    )


def frame_bytes(frame: pd.DataFrame, fmt: str) -> bytes:
    """A result set (no map blobs) as CSV or Parquet bytes for a download button."""
    frame = frame.drop(columns=[c for c in ("map", "map_max") if c in frame.columns])
    if fmt == "csv":
        return frame.to_csv(index=False).encode("utf-8")
    if fmt == "parquet":
        return frame.to_parquet(index=False)
    raise ValueError(f"unknown export format {fmt!r}")


def export(db: Database, fmt: str, where: queries.WordFilter, sort: str, descending: bool) -> bytes:
    """The whole result set of a search (metrics, no maps) as CSV or Parquet bytes.

    Called by a download button when clicked, outside the script run, so it skips st.cache_data.
    """
    return frame_bytes(queries.export_frame(db.connection(), where, sort=sort, descending=descending), fmt)
