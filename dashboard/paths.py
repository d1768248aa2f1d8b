"""Where image files may be read from: a stored file name is resolved under its image folder, never outside.

Annotation files are data from outside: a file name in them may be absolute, climb out with '..', or
name a symlink that points elsewhere. Every image the dashboard opens goes through `image_path`.
"""

from __future__ import annotations

import io
import logging
import tarfile
from functools import lru_cache
from pathlib import Path, PureWindowsPath
from typing import BinaryIO

logger = logging.getLogger(__name__)


def safe_image_path(root: Path, relative: str) -> Path:
    """`root / relative`, resolved, or ValueError if it would leave `root`: absolute paths, drive
    letters, '..' climbing out, and symlinks pointing outside are refused. The file need not exist."""
    if not relative or "\x00" in relative:
        raise ValueError("empty image path or NUL in it")
    if Path(relative).is_absolute() or PureWindowsPath(relative).anchor:
        raise ValueError(f"absolute image path refused: {relative!r}")
    base = Path(root).resolve()
    path = (base / relative).resolve()  # follows symlinks, so a link out of root lands outside
    if not path.is_relative_to(base):
        raise ValueError(f"image path escapes its root: {relative!r}")
    return path


def image_path(root: Path | None, file_name: str) -> Path | None:
    """The image file's path under the image folder `root`; None without a folder, or when the stored
    name would leave it (a hostile annotation file: absolute, '..', a symlink out)."""
    if root is None:
        return None
    try:
        return safe_image_path(root, file_name)
    except ValueError:
        logger.warning("refusing image path %r outside %s", file_name, root)
        return None


def open_image_file(path: Path) -> BinaryIO:
    """The image file at `path` opened for reading, or, when `path` names a member of a WebDataset shard
    ("shards/00001.tar/KEY.jpg", as the extractor stores such images), that member's bytes."""
    if path.is_file():
        return path.open("rb")
    for shard in path.parents:
        if shard.suffix == ".tar" and shard.is_file():
            where = _shard_members(str(shard), shard.stat().st_mtime_ns).get(path.relative_to(shard).as_posix())
            if where is None:
                break
            with shard.open("rb") as f:
                f.seek(where[0])
                return io.BytesIO(f.read(where[1]))
    raise FileNotFoundError(f"no image file or shard member at {path}")


@lru_cache(maxsize=64)
def _shard_members(shard: str, mtime_ns: int) -> dict[str, tuple[int, int]]:
    """A shard's members: name -> (offset, size) of its data (none for a damaged shard); read once per shard
    and version of it."""
    try:
        with tarfile.open(shard) as tar:
            return {m.name: (m.offset_data, m.size) for m in tar if m.isfile()}
    except tarfile.TarError as exc:
        logger.warning("cannot read shard %s: %s", shard, exc)
        return {}
