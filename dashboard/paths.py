"""Where image files may be read from: a stored file name is resolved under its image folder, never outside.

Annotation files are data from outside: a file name in them may be absolute, climb out with '..', or
name a symlink that points elsewhere. Every image the dashboard opens goes through `image_path`.
"""

from __future__ import annotations

import logging
from pathlib import Path, PureWindowsPath

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
