import duckdb
import pytest

from db import queries, writer
from db.schema import METRICS, SCHEMA_VERSION, SchemaMismatch, init_db, schema_version


def _tables(con):
    return sorted(r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall())


def test_init_is_idempotent_and_keeps_data(tmp_path):
    path = tmp_path / "x.duckdb"
    con = duckdb.connect(str(path))
    assert schema_version(con) is None
    init_db(con)
    tables = _tables(con)
    con.execute("INSERT INTO categories VALUES (18, 'dog', 'animal')")
    init_db(con)
    con.close()
    con = writer.connect(path)  # a third init, through the writer, on reopening
    assert _tables(con) == tables
    assert {"runs", "words", "captions", "image_status", "word_summary"} <= set(tables)
    assert schema_version(con) == SCHEMA_VERSION
    assert con.execute("SELECT count(*) FROM meta").fetchone()[0] == 1
    assert con.execute("SELECT name FROM categories").fetchall() == [("dog",)]


def test_words_has_every_metric_column(tmp_path):
    con = writer.connect(tmp_path / "x.duckdb")
    columns = {r[0] for r in con.execute("DESCRIBE words").fetchall()}
    assert set(METRICS) | {"map", "map_max", "word", "category_id", "method", "layer"} <= columns


def test_older_schema_is_refused_by_writer_and_dashboard(tmp_path):
    path = tmp_path / "old.duckdb"
    con = writer.connect(path)
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION - 1)])
    con.close()
    with pytest.raises(SchemaMismatch, match=f"v{SCHEMA_VERSION - 1}"):
        queries.connect_readonly(path)
    with pytest.raises(SchemaMismatch):
        writer.connect(path)


def test_foreign_database_is_refused_not_extended(tmp_path):
    path = tmp_path / "other.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE words (word VARCHAR)")
    with pytest.raises(SchemaMismatch, match="not an extraction database"):
        writer.connect(path)
    with pytest.raises(SchemaMismatch):
        queries.connect_readonly(path)
    with duckdb.connect(str(path)) as con:
        assert _tables(con) == ["words"]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no extraction database"):
        queries.connect_readonly(tmp_path / "missing.duckdb")
    assert not (tmp_path / "missing.duckdb").exists()
