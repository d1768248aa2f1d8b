"""A poisoned image stops a run at most once: processes killed on it, for real, then the same command."""

import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
from PIL import Image

from db import parts
from extractor.covers import GridCovers, cached_locations, save_block
from extractor.suspects import journal_dir
from tests.conftest import REPO
from tests.test_run import cli, rows


def kill_first_process_on(journal_glob, image_id: int, exclude: int, timeout_s: float = 120) -> int:
    """SIGKILL the first process (not `exclude`) whose journal says it started on image_id; its pid."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for path in journal_glob():
            pid = int(path.name.split("-")[0])
            if pid != exclude and str(image_id) in path.read_text().split():
                os.kill(pid, signal.SIGKILL)
                return pid
        time.sleep(0.005)
    raise AssertionError(f"no process started on image {image_id} in {timeout_s} s")


def test_an_image_that_kills_its_process_twice_is_set_aside(shared, tmp_path):
    src = shared / "coco" / "val2017-small"
    images = tmp_path / "images"
    shutil.copytree(src / "val2017", images)
    captions = json.loads(next((src / "annotations").glob("captions_*.json")).read_text())
    victim = sorted(captions["images"], key=lambda im: im["id"])[4]
    # Large enough that decoding and laying out its masks take long: the kill lands while it is in hand.
    noise = np.random.default_rng(0).integers(0, 256, (5000, 5000, 3), dtype=np.uint8)
    Image.fromarray(noise).save(images / victim["file_name"], "PNG", compress_level=1)
    db = tmp_path / "x.duckdb"
    argv = cli(shared, db, "val2017-small", "--workers", "1")
    argv[argv.index("--images") + 1] = str(images)

    def journals() -> list:
        return list((parts.parts_dir(db) / "runs").glob(f"*/{journal_dir(db, '').name}/*"))

    first = subprocess.Popen(argv, cwd=REPO, stderr=subprocess.PIPE, text=True)
    kill_first_process_on(journals, victim["id"], exclude=first.pid)
    err = first.communicate(timeout=300)[1]
    assert first.returncode == 1 and "a worker process died" in err and "Traceback" not in err, err[-2000:]

    second = subprocess.Popen(argv, cwd=REPO, stderr=subprocess.PIPE, text=True)
    killed = kill_first_process_on(lambda: [p for p in journals() if p.name.endswith("-alone")], victim["id"],
                                   exclude=second.pid)  # fmt: skip
    err = second.communicate(timeout=300)[1]
    assert second.returncode == 0, err[-2000:]
    assert killed != second.pid
    status = dict(rows(db, "SELECT image_id, status FROM image_status"))
    assert len(status) == 10 and status.pop(victim["id"]) == "error" and set(status.values()) == {"done"}
    (message,) = rows(db, "SELECT message FROM errors WHERE item_kind = 'image' AND item_id = ?", [str(victim["id"])])
    assert "died" in message[0] and "signal 9" in message[0]
    assert rows(db, "SELECT count(DISTINCT image_id) FROM words") == [(9,)]

    third = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)  # nothing left, no retry
    assert third.returncode == 0 and "set aside" not in third.stderr
    assert rows(db, "SELECT count(*) FROM image_status") == [(10,)]


def test_a_covers_block_half_written_by_a_killed_process_is_not_read(tmp_path):
    # A Ray actor killed while saving a block left its temporary file, which every later actor then failed on.
    g = 4
    cover = GridCovers(np.array([1], np.int32), np.ones((1, g * g)), np.ones((1, g * g)), np.ones(g * g), [], None)
    block = save_block(tmp_path, {7: cover, 3: cover})
    (tmp_path / f".{block.name}.tmp.npz").write_bytes(block.read_bytes()[:100])  # cut off mid-write
    assert cached_locations(tmp_path) == {3: (str(block), 0), 7: (str(block), 1)}
