"""`run --ray`: the same pipeline on a local Ray cluster gives the same rows, and survives a killed worker."""

import os
import signal
import subprocess
import sys
import time

import pytest

from db import parts
from tests.conftest import REPO, run_extraction
from tests.test_run import assert_same_results, cli, rows

if os.environ.get("CI") == "true":
    import ray  # noqa: F401  (make test installs it: in CI a missing Ray fails, never skips)
else:
    pytest.importorskip("ray", reason="Ray is optional: pip install -r requirements-ray.txt")


def test_a_ray_run_gives_the_same_rows(shared, small_db, tmp_path):
    db = run_extraction(shared, tmp_path / "ray.duckdb", "val2017-small", "--ray", "--chunk-images", "4")
    assert_same_results(db, small_db)
    assert rows(db, "SELECT status FROM runs") == [("complete",)]
    import ray

    assert not ray.is_initialized()  # the local cluster is shut down with the run


def test_no_cluster_at_the_address_is_a_one_line_error(shared, tmp_path):
    started = time.monotonic()
    argv = cli(shared, tmp_path / "x.duckdb", "val2017-small", "--ray", "127.0.0.1:1")
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: no Ray cluster at --ray 127.0.0.1:1") and "ray start --head" in line
    assert time.monotonic() - started < 60


def kill_an_actor(journals, driver: int, timeout_s: float = 120) -> int:
    """SIGKILL the first process other than the driver that journals an image (a Ray actor); its pid."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for path in journals():
            pid = int(path.name.split("-")[0])
            if pid != driver and path.read_text().split():
                os.kill(pid, signal.SIGKILL)
                return pid
        time.sleep(0.01)
    raise AssertionError(f"no Ray actor started an image in {timeout_s} s")


def test_a_killed_ray_worker_costs_only_a_retry(shared, small_db, tmp_path):
    db = tmp_path / "killed.duckdb"
    folder = parts.parts_dir(db)
    argv = [*cli(shared, db, "val2017-small", "--ray", "--chunk-images", "2"), "--ray-actors", "1"]
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        killed = kill_an_actor(lambda: folder.glob("runs/*/attempts/*"), proc.pid)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # the driver shuts its local cluster down
            proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert killed != proc.pid and "written to" in out
    (run_id,) = parts.run_ids(folder)
    actors = {path.name.split("-")[0] for path in folder.glob("runs/*/attempts/*")}
    assert str(killed) in actors and len(actors) >= 2  # Ray started another actor, which redid the chunk
    assert len(parts.done_image_ids(folder, run_id)) == 10
    assert_same_results(db, small_db)  # nothing lost, nothing twice


def test_ray_is_optional(shared, tmp_path):
    # Without Ray installed, --ray says how to install it; here Ray's import is made to fail.
    code = ("import sys; sys.modules['ray'] = None; from extractor.__main__ import main; "
            f"sys.exit(main({cli(shared, tmp_path / 'x.duckdb', 'val2017-small', '--ray')[3:]!r}))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: --ray needs Ray: pip install -r requirements-ray.txt"]
