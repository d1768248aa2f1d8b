"""The CUDA path (bfloat16 autocast, batches of 32, loader workers, per-word work on the device, pinned memory)
against the CPU path.

CI has no GPU, so these tests are skipped there; run `pytest tests/test_cuda.py -s` on a machine with
one. `-s` prints the measured agreement beside each floor.
"""

import duckdb
import numpy as np
import pandas as pd
import pytest
import torch

from db.codec import decode_map
from extractor.demo.prepare import prepare
from extractor.verify import max_differences
from tests.conftest import run_extraction

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

KEYS = ["image_id", "caption_id", "word_index", "method", "layer"]


def word_rows(db) -> pd.DataFrame:
    columns = ", ".join([*KEYS, "category_id", "peak_row", "peak_col", "mask_mass", "background_mass",
                         "pointing_hit", "itm_score", "specificity_others", "map", "map_max"])  # fmt: skip
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(f"SELECT {columns} FROM words ORDER BY {', '.join(KEYS)}").df()


def paired(cpu_db, cuda_db) -> tuple[pd.DataFrame, pd.DataFrame]:
    cpu, cuda = word_rows(cpu_db), word_rows(cuda_db)
    pd.testing.assert_frame_equal(cpu[KEYS], cuda[KEYS])  # the same words, methods and layers
    return cpu, cuda


def map_distances(cpu: pd.DataFrame, cuda: pd.DataFrame) -> np.ndarray:
    """Per word, total variation distance between the two maps as distributions (0 same, 1 disjoint)."""
    out = []
    for a, am, b, bm in zip(cpu["map"], cpu["map_max"], cuda["map"], cuda["map_max"], strict=True):
        p, q = decode_map(a, am), decode_map(b, bm)
        out.append(0.5 * np.abs(p / p.sum() - q / q.sum()).sum())
    return np.array(out)


def same_peak(cpu: pd.DataFrame, cuda: pd.DataFrame) -> np.ndarray:
    return ((cpu["peak_row"] == cuda["peak_row"]) & (cpu["peak_col"] == cuda["peak_col"])).to_numpy()


@pytest.mark.parametrize("name", ["finetuned-tiny", "pretrain-tiny"])
def test_reference_outputs_reproduced_on_cuda_in_float32(shared, name):
    diffs = max_differences(shared / "fixtures" / "albef-reference" / name,
                            shared / "bert-base-uncased" / "vocab.txt", device="cuda")  # fmt: skip
    print(f"\n{name} on cuda: max abs difference {max(diffs.values()):.2e}")
    assert max(diffs.values()) <= 1e-4


def test_coco_extraction_on_cuda_agrees_with_cpu(shared, small_db, tmp_path):
    cuda_db = run_extraction(shared, tmp_path / "cuda.duckdb", "val2017-small", "--device", "cuda")
    cpu, cuda = paired(small_db, cuda_db)
    tv = map_distances(cpu, cuda)
    mass = (cpu["mask_mass"] - cuda["mask_mass"]).abs().max()
    background = (cpu["background_mass"] - cuda["background_mass"]).abs().max()
    itm = (cpu["itm_score"] - cuda["itm_score"]).abs().max()
    print(f"\nCOCO, {len(cpu)} word maps: map distance median {np.median(tv):.4f} max {tv.max():.4f}; "
          f"max |diff| mask mass {mass:.4f}, background {background:.4f}, ITM score {itm:.4f}")  # fmt: skip
    # Random weights give flat maps, where bfloat16 rounding moves the peak among near-equal patches:
    # compare the maps as distributions instead.
    assert np.median(tv) <= 0.02 and tv.max() <= 0.1
    assert mass <= 0.03 and background <= 0.03 and itm <= 0.02
    # The contrast with the caption's other objects (a sparse product on the device): NULL alike, values close.
    assert cpu["specificity_others"].isna().equals(cuda["specificity_others"].isna())
    assert (cpu["specificity_others"] - cuda["specificity_others"]).abs().max() <= 0.05
    heads_cpu, heads_cuda = (head_rows(db) for db in (small_db, cuda_db))
    pd.testing.assert_frame_equal(heads_cpu[HEAD_KEYS], heads_cuda[HEAD_KEYS])  # the same words, layers and heads
    assert heads_cpu["specificity_others"].isna().equals(heads_cuda["specificity_others"].isna())
    for column in ("mask_mass", "specificity_others"):
        assert (heads_cpu[column] - heads_cuda[column]).abs().max() <= 0.05, column


HEAD_KEYS = ["image_id", "caption_id", "word_index", "layer", "head"]


def head_rows(db) -> pd.DataFrame:
    with duckdb.connect(str(db), read_only=True) as con:
        keys = ", ".join(HEAD_KEYS)
        return con.execute(f"SELECT {keys}, mask_mass, specificity_others FROM word_heads ORDER BY {keys}").df()


def test_demo_model_grounds_the_same_on_cuda(tmp_path):
    cpu = prepare(tmp_path / "cpu", n_images=40, seed=0, res=128, device="cpu")
    cuda = prepare(tmp_path / "cuda", n_images=40, seed=0, res=128, device="cuda")
    cpu, cuda = paired(cpu, cuda)
    tv, peaks = map_distances(cpu, cuda), same_peak(cpu, cuda)
    named = cpu["category_id"].notna().to_numpy()
    hits_cpu, hits_cuda = cpu["pointing_hit"][named].mean(), cuda["pointing_hit"][named].mean()
    print(f"\ndemo, {len(cpu)} word maps: same peak {peaks.mean():.3f}; map distance median {np.median(tv):.4f} "
          f"max {tv.max():.4f}; pointing on named objects cpu {hits_cpu:.3f} cuda {hits_cuda:.3f}")  # fmt: skip
    assert peaks.mean() >= 0.95
    assert np.median(tv) <= 0.02
    assert abs(hits_cpu - hits_cuda) <= 0.02
