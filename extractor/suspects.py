"""A poisoned image stops a run at most once.

Every process that works on an image (loader workers, the covers pool, the main process) first appends
its id to its own journal file, `X.parts/runs/<run>/attempts/<pid>-<token>`. When a process dies (a
segfault in a decoder, the kernel's OOM killer), the images it had started and that no done chunk
holds are the suspects. The next run of the same command tries each suspect alone in a forked child
first: an image whose child dies (or hangs) is recorded as failed, with why, and never tried again; the
others go on as usual.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from pathlib import Path

from db import parts as partsdir

ALONE_TIMEOUT_S = 300.0


def journal_dir(parts: Path, run_id: str) -> Path:
    return partsdir.run_dir(parts, run_id) / "attempts"


def record_attempt(journal: Path, token: str, image_id: int) -> None:
    """Note that this process starts on an image (one small append; the file survives a kill -9)."""
    with (journal / f"{os.getpid()}-{token}").open("a") as f:
        f.write(f"{image_id}\n")


def attempted(journal: Path) -> set[int]:
    """Every image any process of the run started, by the journals left so far."""
    ids = set()
    for path in journal.glob("*"):
        ids.update(int(line) for line in path.read_text().split() if line.isdigit())
    return ids


def try_alone(
    record: dict, work: Callable[[dict], object], journal: Path, timeout_s: float = ALONE_TIMEOUT_S
) -> str | None:
    """Run `work(record)` in a forked child (journaled as `<pid>-alone`); None when it finished, else why
    the child did not."""
    child = multiprocessing.get_context("fork").Process(target=_alone, args=(record, work, journal), daemon=True)
    child.start()
    child.join(timeout_s)
    if child.is_alive():
        child.kill()
        child.join()
        return f"processing this image took over {timeout_s:.0f} s; it is left out of the run"
    if child.exitcode == 0:
        return None
    how = f"was killed by signal {-child.exitcode}" if child.exitcode < 0 else f"exited with {child.exitcode}"
    return f"a process working on this image died before (crash or out of memory) and, tried alone, {how}"


def _alone(record: dict, work: Callable[[dict], object], journal: Path) -> None:
    record_attempt(journal, "alone", record["id"])
    work(record)


def poisoned(parts: Path, run_id: str, todo: list[dict], work: Callable[[dict], object]) -> dict[int, str]:
    """image id -> why, for the images in flight when an earlier process died that fail again alone.

    `work` must handle an image's ordinary errors itself: only a child that dies or hangs counts.
    """
    journal = journal_dir(parts, run_id)
    started = attempted(journal) if journal.is_dir() else set()
    found = {}
    for record in (r for r in todo if r["id"] in started):
        if (why := try_alone(record, work, journal)) is not None:
            found[record["id"]] = why
    return found


def clear_attempts(parts: Path, run_id: str) -> Path:
    """Forget earlier processes' journals (once their suspects are settled); returns the journal folder."""
    journal = journal_dir(parts, run_id)
    journal.mkdir(parents=True, exist_ok=True)
    for path in journal.glob("*"):
        path.unlink(missing_ok=True)
    return journal
