"""File fingerprints, without torch: the demo's readiness check imports this and nothing heavy."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, as hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def current_sha256(path: str | Path) -> str:
    """file_sha256 of the file as it is now, hashed once per file version (path, mtime, size) in a process."""
    stat = Path(path).stat()
    return _version_sha256(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=16)
def _version_sha256(path: str, mtime_ns: int, size: int) -> str:
    return file_sha256(path)
