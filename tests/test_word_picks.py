"""A batch's per-word device work never waits for the device: every index it needs is worked out on the host
(`extractor.word_picks`), and the one check of its maps travels back with the results.

On the meta device a tensor has a shape but no values, so any step whose size depends on values (a
`nonzero`, a `unique`, an `if` on a tensor) raises there: the same steps that on CUDA make the host wait.
"""

import dataclasses
import pickle
import re
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import numpy as np
import pytest
import torch

from extractor import run
from extractor.batch import Batch, ImageFiles, ImageItem, collate
from extractor.covers import cache_dir, fill_cache
from extractor.image import decode_on_device, normalize
from extractor.maps import BatchMaps
from extractor.pipeline import device_outputs, host_rows
from extractor.summarize import HostCopy, batch_tables, word_outputs
from extractor.tensors import SHARED_MEMORY_BYTES
from tests.test_run import FIXTURE

N_IMAGES = 6


@pytest.fixture(scope="module")
def extraction(shared, tmp_path_factory):
    """The fine-tuned fixture's setup on val2017-small, and the loader's items of its first images."""
    coco = shared / "coco" / "val2017-small"
    folder = tmp_path_factory.mktemp("picks")
    opts = run.Options(
        images=coco / "val2017",
        captions=next((coco / "annotations").glob("captions_*.json")),
        instances=next((coco / "annotations").glob("instances_*.json")),
        checkpoint=shared / "fixtures" / "albef-reference" / FIXTURE / "checkpoint.pth",
        config=None,
        vocab=shared / "bert-base-uncased" / "vocab.txt",
        db=folder / "x.duckdb",
        device="cpu",
    )
    s = run.setup(opts, torch.device("cpu"))
    records = s.dataset.images_with_captions()[:N_IMAGES]
    journal = (folder / "journal", "test")
    journal[0].mkdir()
    covers = cache_dir(s.scratch, opts.instances, opts.images, s.cfg.grid_size)
    covers_at = fill_cache(covers, records, s.dataset, opts.images, s.cfg.grid_size, 0, journal)
    return s, items_of(s, records, covers_at, journal, device_decode=False)


def items_of(
    s: run.Setup, records: list[dict], covers_at: dict, journal: tuple[Path, str], device_decode: bool
) -> list[ImageItem]:
    files = ImageFiles(s.opts.images, s.dataset, records, s.tokenizer, s.cfg.image_res, s.cfg.max_words, covers_at,
                       journal, device_decode)  # fmt: skip
    return [files[i] for i in range(len(records))]


def maps_of(s: run.Setup, batch: Batch) -> BatchMaps:
    return s.mapper(normalize(batch.pixels), batch.input_ids, batch.attention_mask, batch.image_index)


def on_meta(value):
    if isinstance(value, torch.Tensor):
        return value.to("meta")
    if isinstance(value, dict):
        return {k: on_meta(v) for k, v in value.items()}
    return value


def test_the_per_word_work_needs_no_value_from_the_device(extraction):
    s, items = extraction
    batch = collate(items)
    maps = maps_of(s, batch)
    assert maps.head_attention and batch.masks is not None and len(batch.picks.others.rows)  # every step runs
    expected = word_outputs(maps, batch, s.slices)
    meta_maps = dataclasses.replace(maps, **{f.name: on_meta(getattr(maps, f.name)) for f in dataclasses.fields(maps)})
    got = word_outputs(meta_maps, batch.to(torch.device("meta")), s.slices)
    assert got.keys() == expected.keys()
    assert {k: (v.shape, v.dtype) for k, v in got.items()} == {k: (v.shape, v.dtype) for k, v in expected.items()}


def picks_arrays(picks) -> dict[str, np.ndarray]:
    """Every array of a WordPicks by a dotted name."""
    arrays = {"object_rows": picks.object_rows.numpy()}
    for prefix, part in (("others", picks.others), ("heads", picks.heads), ("heads.others", picks.heads.others)):
        for f in dataclasses.fields(part):
            if isinstance(value := getattr(part, f.name), torch.Tensor):
                arrays[f"{prefix}.{f.name}"] = value.numpy()
    return arrays


def test_a_batch_that_loses_an_image_picks_as_if_collated_without_it(extraction):
    _, items = extraction
    lost = 2
    kept = collate(items)._without({lost: ("image", "x", "x.jpg", "unreadable")})
    fresh = collate(items[:lost] + items[lost + 1 :])
    assert kept.words == fresh.words and len(kept.picks.others.rows) and len(kept.picks.heads.piece_word)
    got, want = picks_arrays(kept.picks), picks_arrays(fresh.picks)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_maps_that_are_not_finite_stop_the_batch_with_its_images_named(extraction, bad):
    s, items = extraction
    batch = collate(items[:2])
    maps = maps_of(s, batch)
    layer = next(iter(maps.attention))
    maps.attention[layer][0, 0, 1, 3] = bad
    out = HostCopy(word_outputs(maps, batch, s.slices)).arrays()
    with pytest.raises(
        ValueError, match=re.escape(f"not finite and non-negative for images {batch.image_ids.tolist()}")
    ):
        batch_tables(batch, out, s.slices, "run")
    healthy = HostCopy(word_outputs(maps_of(s, batch), batch, s.slices)).arrays()
    assert len(batch_tables(batch, healthy, s.slices, "run")["words"]) == len(batch.words) * len(s.slices)


def test_the_picks_are_the_words_with_objects_and_their_contrasts(extraction):
    _, items = extraction
    batch = collate(items)
    picks = batch.picks
    np.testing.assert_array_equal(picks.object_rows.numpy(), np.flatnonzero(batch.cover_index.numpy() > 0))
    heads = picks.heads
    words = heads.rows.numpy()
    assert set(picks.object_rows.tolist()) <= set(words.tolist())
    np.testing.assert_array_equal(words[heads.object_at.numpy()], picks.object_rows.numpy())
    # every piece of every picked word, with its weight 1 / the word's pieces
    pieces = np.bincount(heads.piece_word.numpy(), minlength=len(words))
    np.testing.assert_array_equal(pieces, batch.n_pieces[words])
    np.testing.assert_allclose(heads.piece_weight.numpy(), 1.0 / pieces[heads.piece_word.numpy()], rtol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_queuing_a_batch_never_waits_for_the_device(extraction):
    s_cpu, items = extraction
    s = run.setup(dataclasses.replace(s_cpu.opts, device="cuda"), torch.device("cuda"))
    batch = collate(items).pin_memory()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any wait for the device raises
    try:
        outputs = device_outputs(batch.to(s.device), s.mapper, s.slices)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    _, tables = host_rows(batch, outputs, s.slices, "run")
    assert len(tables["words"]) == len(batch.words) * len(s.slices)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_jpegs_decoded_on_the_device_join_their_batch_without_waiting(extraction, tmp_path):
    s, items = extraction
    records = [item.record for item in items]
    covers = cache_dir(s.scratch, s.opts.instances, s.opts.images, s.cfg.grid_size)
    journal = (tmp_path, "test")
    raw = items_of(s, records, fill_cache(covers, records, s.dataset, s.opts.images, s.cfg.grid_size, 0, journal),
                   journal, device_decode=True)  # fmt: skip
    raw[0] = items[0]  # one image decoded by the worker, the others left as JPEG bytes
    batch = collate(raw).pin_memory()
    assert len(batch.jpegs) == len(raw) - 1
    res, device = s.cfg.image_res, torch.device("cuda")
    decoded = decode_on_device([j.data for j in batch.jpegs], res, device)
    assert all(image is not None for image in decoded)  # val2017-small's JPEGs are all nvJPEG's
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any wait for the device raises
    try:
        placed = batch.with_jpegs_decoded(decoded, res)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(placed.pixels[0].cpu(), items[0].pixels)
    for jpeg, image in zip(batch.jpegs, decoded, strict=True):
        assert torch.equal(placed.pixels[jpeg.row], image)


def test_a_batch_crosses_processes_whole_with_only_large_tensors_in_shared_memory(extraction):
    _, items = extraction
    tiny = collate(items)
    batch = dataclasses.replace(tiny, pixels=torch.randint(0, 256, (len(items), 3, 384, 384), dtype=torch.uint8))
    got = pickle.loads(ForkingPickler.dumps(batch))  # as a loader worker's batch reaches the main process
    assert got.pixels.is_shared() and got.pixels.nbytes >= SHARED_MEMORY_BYTES  # ALBEF's 384 px images
    small = [got.input_ids, got.word_slots, got.picks.object_rows, got.picks.heads.others.count]
    assert not any(t.is_shared() for t in small)
    assert torch.equal(got.pixels, batch.pixels) and torch.equal(got.piece_weights, batch.piece_weights)
    assert got.words == batch.words and np.array_equal(got.image_ids, batch.image_ids)
    got_picks, want_picks = picks_arrays(got.picks), picks_arrays(batch.picks)
    assert got_picks.keys() == want_picks.keys()
    for name, want in want_picks.items():
        np.testing.assert_array_equal(got_picks[name], want, err_msg=name)
