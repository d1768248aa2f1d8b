import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from extractor.demo import prepare as prepare_module
from extractor.demo.prepare import CHECKPOINT_DIR, demo_is_ready, prepare
from extractor.demo.world import CATEGORY_ID

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ready_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo folder whose database is complete (4 scenes)."""
    out = tmp_path_factory.mktemp("demo")
    prepare(out, n_images=4, seed=0, res=128)
    return out


def test_demo_database_is_built_once_and_then_reused(tmp_path):
    db = prepare(tmp_path, n_images=12, seed=0, res=128)
    assert demo_is_ready(db)
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT status, n_images FROM runs").fetchall() == [("complete", 12)]
        methods = con.execute("SELECT DISTINCT method, layer FROM words ORDER BY ALL").fetchall()
        named = dict(
            con.execute(
                "SELECT word, any_value(category_id) FROM words WHERE category_id IS NOT NULL GROUP BY word"
            ).fetchall()
        )
        n_rows = con.execute("SELECT count(*) FROM words").fetchone()[0]
    assert methods == [("attention", 2), ("attention", 3), ("gradcam", 2)]
    assert named and set(named.values()) <= set(CATEGORY_ID.values())
    assert all(named[w] == CATEGORY_ID[w] for w in named if w in CATEGORY_ID)
    mtime = db.stat().st_mtime_ns
    assert prepare(tmp_path, n_images=12, seed=0, res=128) == db
    assert db.stat().st_mtime_ns == mtime  # reused, not rebuilt
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM words").fetchone()[0] == n_rows


def test_committed_demo_model_is_small_and_complete():
    files = {p.name: p.stat().st_size for p in CHECKPOINT_DIR.iterdir()}
    assert {"checkpoint.pth", "config.json", "vocab.txt", "train_log.txt"} <= set(files)
    assert sum(files.values()) <= 20 * 2**20


def test_a_database_of_another_demo_model_is_rebuilt(tmp_path):
    db = prepare(tmp_path, n_images=4, seed=0, res=128)
    with duckdb.connect(str(db)) as con:  # as if an older commit's model had made it
        con.execute("UPDATE runs SET checkpoint_sha256 = 'an older model'")
    assert not demo_is_ready(db)
    assert prepare(tmp_path, n_images=4, seed=0, res=128) == db
    assert demo_is_ready(db)
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*), count(DISTINCT n_images) FROM runs").fetchone() == (1, 1)


def test_a_ready_demo_answers_without_importing_torch(ready_demo):
    # `make run` makes this call on every start: it must neither rebuild nor pay for torch's import.
    db = ready_demo / "demo.duckdb"
    mtime = db.stat().st_mtime_ns
    code = (
        "import sys; from extractor.__main__ import main; status = main(['demo', '--out', sys.argv[1]]); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm'))); "
        "sys.exit(status)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(ready_demo)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"demo database: {db}", "[]"]
    assert "is ready" in done.stderr
    assert db.stat().st_mtime_ns == mtime


def test_a_changed_checkpoint_of_the_same_size_and_mtime_is_not_ready(ready_demo, tmp_path, monkeypatch):
    db = ready_demo / "demo.duckdb"
    assert demo_is_ready(db)
    changed = shutil.copytree(CHECKPOINT_DIR, tmp_path / "checkpoint")
    checkpoint, original = changed / "checkpoint.pth", (CHECKPOINT_DIR / "checkpoint.pth").stat()
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte of the weights, so size and file type stay
    checkpoint.write_bytes(data)
    os.utime(checkpoint, ns=(original.st_atime_ns, original.st_mtime_ns))
    monkeypatch.setattr(prepare_module, "CHECKPOINT_DIR", changed)
    assert not demo_is_ready(db)
