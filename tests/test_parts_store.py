"""The parts folder elsewhere than beside the database (`--parts URI`): a file:// URI, a non-local pyarrow
filesystem (fsspec's in-memory one, standing in for an object store: no rename, one PUT per file), and the
one-line errors for a URI that names nothing reachable."""

import fsspec
import pyarrow.fs as pafs
import pytest

from db import parts
from extractor.__main__ import main
from tests.conftest import require_ray, run_extraction
from tests.test_run import assert_same_results

SMALL = "val2017-small"


def finalize(db, *extra: str) -> int:
    return main(["finalize", str(db), *extra])


def test_a_run_into_a_file_uri_and_its_finalize_give_the_rows_of_the_default_layout(shared, small_db, tmp_path):
    elsewhere = tmp_path / "shared-storage" / "parts"
    db = run_extraction(shared, tmp_path / "x.duckdb", SMALL, "--parts", elsewhere.as_uri())
    assert_same_results(db, small_db)
    (run_id,) = parts.run_ids(elsewhere)
    assert len(parts.done_image_ids(elsewhere, run_id)) == 10
    local = parts.parts_dir(db)
    assert parts.run_ids(local) == [] and list(local.glob("covers/*/*.npz"))  # only the machine's own scratch
    db.unlink()  # a fresh build from the parts alone
    assert finalize(db, "--parts", elsewhere.as_uri()) == 0
    assert_same_results(db, small_db)


def test_a_ray_run_writes_its_parts_at_the_uri(shared, small_db, tmp_path):
    require_ray()
    elsewhere = tmp_path / "shared-storage" / "parts"
    db = run_extraction(shared, tmp_path / "ray.duckdb", SMALL, "--ray", "--chunk-images", "4",
                        "--parts", elsewhere.as_uri())  # fmt: skip
    assert_same_results(db, small_db)
    (run_id,) = parts.run_ids(elsewhere)
    assert len(parts.done_files(elsewhere, run_id, parts.DONE_TABLE)) == 3
    assert parts.run_ids(parts.parts_dir(db)) == []


@pytest.fixture
def memory_store(monkeypatch) -> parts.Store:
    """memory://bucket/parts opens a pyarrow filesystem over fsspec's memory one, as s3:// would open S3."""
    fs = fsspec.filesystem("memory")
    fs.store.clear()
    store = parts.Store(pafs.PyFileSystem(pafs.FSSpecHandler(fs)), "bucket/parts")
    opened = parts.open_store
    monkeypatch.setattr(parts, "open_store", lambda where: store if str(where) == "memory://bucket/parts" else
                        opened(where))  # fmt: skip
    yield store
    fs.store.clear()


def test_a_run_into_a_store_without_renames_and_its_finalize(shared, small_db, tmp_path, memory_store):
    db = run_extraction(shared, tmp_path / "x.duckdb", SMALL, "--parts", "memory://bucket/parts", "--chunk-images", "4")
    assert_same_results(db, small_db)
    (run_id,) = parts.run_ids(memory_store)
    names = [i.base_name for i in memory_store.fs.get_file_info(pafs.FileSelector(memory_store.root, recursive=True))]
    assert sum(n.endswith(".parquet") for n in names) > 3 and not [n for n in names if n.endswith(".tmp")]
    assert len(parts.done_files(memory_store, run_id, parts.DONE_TABLE)) == 3  # chunks of 4, 4 and 2 images
    assert len(parts.done_image_ids(memory_store, run_id)) == 10
    db.unlink()
    assert finalize(db, "--parts", "memory://bucket/parts") == 0
    assert_same_results(db, small_db)
    assert finalize(db, "--parts", "memory://bucket/parts") == 0  # nothing new: up to date


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("foo://bucket/parts", "Unrecognized filesystem type"),
        ("s3://bucket/parts?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1", "Could not connect"),
    ],
)
def test_a_uri_that_names_nothing_reachable_is_one_line(tmp_path, capsys, uri, says):
    assert finalize(tmp_path / "x.duckdb", "--parts", uri) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: parts folder {uri}: ") and says in err and err.count("\n") == 1
