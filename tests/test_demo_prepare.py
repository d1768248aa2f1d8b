import duckdb

from extractor.demo.prepare import CHECKPOINT_DIR, demo_is_ready, prepare
from extractor.demo.world import CATEGORY_ID


def test_demo_database_is_built_once_and_then_reused(tmp_path):
    db = prepare(tmp_path, n_images=12, seed=0, res=128)
    assert demo_is_ready(db)
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT status, n_images FROM runs").fetchall() == [("complete", 12)]
        methods = con.execute("SELECT DISTINCT method, layer FROM words ORDER BY ALL").fetchall()
        named = dict(con.execute("SELECT word, any_value(category_id) FROM words "
                                 "WHERE category_id IS NOT NULL GROUP BY word").fetchall())
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
