"""`run --decode device`: JPEGs decoded in batches and resized where the model runs, every other file by PIL.

torchvision's `decode_jpeg` runs on the CPU too (libjpeg-turbo, the decoder PIL uses), so this machine
tests the whole path; on CUDA nvJPEG decodes instead (the last tests, skipped without a GPU).
"""

import io
import json

import duckdb
import numpy as np
import pytest
import torch
from PIL import Image

from extractor.__main__ import main
from extractor.coco import load_image
from extractor.image import decode_on_device, device_jpeg, resized_pixels
from tests.conftest import run_extraction
from tests.test_run import RESULT_KEYS, cli

CPU = torch.device("cpu")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def real_jpegs(shared, n=40):
    return sorted((shared / "coco" / "val2017-subset" / "val2017").glob("*.jpg"))[:n]


def pixel_differences(files, res, device):
    """Per file, |device path - PIL path| of the resized uint8 pixels."""
    got = decode_on_device([device_jpeg(f) for f in files], res, device)
    return [(g.cpu().int() - resized_pixels(load_image(f), res).int()).abs() for f, g in zip(files, got, strict=True)]


# Measured on all 283 images of val2017-subset with Pillow 13: at 64 px at most 1 level (222 of 3.5M
# values), at 384 px at most 13 levels, mean 0.051. Pillow 13 resizes a portrait photo's height first
# when it shrinks much more than its width; the device resizes width first, as Pillow did before, and
# the two orders round apart where bicubic overshoot is clipped. Landscape ones stay within 1 level.
@pytest.mark.parametrize("res, most, mean", [(64, 1, 1e-3), (384, 16, 0.1)])
def test_device_pixels_are_pils_within_a_few_levels(shared, res, most, mean):
    files = real_jpegs(shared)
    diffs = pixel_differences(files, res, CPU)
    assert max(int(d.max()) for d in diffs) <= most
    assert float(torch.cat([d.flatten() for d in diffs]).float().mean()) <= mean
    landscape = [d for f, d in zip(files, diffs, strict=True) if Image.open(f).width >= Image.open(f).height]
    assert landscape and max(int(d.max()) for d in landscape) <= 1


def jpeg_bytes(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", **options)
    return out.getvalue()


def broken_huffman_table(data: bytes) -> bytes:
    """A JPEG whose header is whole but whose first Huffman table counts more codes than exist: both
    decoders reject it, PIL as a broken data stream."""
    at = data.index(b"\xff\xc4") + 5  # the 16 code counts after the marker, its length and the table id
    return data[:at] + bytes([255] * 16) + data[at + 16 :]


MAKE = {  # name: (the file's bytes from a real COCO JPEG, whether the device decodes it)
    "color": (lambda p: p.read_bytes(), True),
    "gray": (lambda p: jpeg_bytes(Image.open(p).convert("L")), True),
    "progressive": (lambda p: jpeg_bytes(Image.open(p), progressive=True), True),
    "broken Huffman table": (lambda p: broken_huffman_table(p.read_bytes()), True),
    "CMYK": (lambda p: jpeg_bytes(Image.open(p).convert("CMYK")), False),
    "PNG in a .jpg": (lambda p: (out := io.BytesIO(), Image.open(p).save(out, "PNG"))[0].getvalue(), False),
    "truncated": (lambda p: p.read_bytes()[: p.stat().st_size // 3], False),
    "zero bytes": (lambda p: b"", False),
    "not an image": (lambda p: b"\x00garbage" * 100, False),
}


@pytest.mark.parametrize("name", MAKE)
def test_only_whole_8bit_gray_or_color_jpegs_are_left_to_the_device(shared, tmp_path, name):
    make, on_device = MAKE[name]
    path = tmp_path / "x.jpg"
    path.write_bytes(make(real_jpegs(shared, 1)[0]))
    assert (device_jpeg(path) is not None) == on_device
    if on_device and name != "broken Huffman table":
        assert int(pixel_differences([path], 64, CPU)[0].max()) <= 1


def test_a_file_the_decoder_rejects_costs_only_itself(shared, tmp_path):
    good = real_jpegs(shared, 2)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(broken_huffman_table(good[0].read_bytes()))
    decoded = decode_on_device([device_jpeg(f) for f in (good[0], bad, good[1])], 64, CPU)
    assert decoded[1] is None
    assert decoded[0].shape == decoded[2].shape == (3, 64, 64)


@pytest.fixture
def mixed_dataset(shared, tmp_path):
    """val2017-small with its ten images made into every kind of file of `MAKE`, and one missing."""
    src = shared / "coco" / "val2017-small"
    captions = json.loads(next((src / "annotations").glob("captions_*.json")).read_text())
    images = sorted(captions["images"], key=lambda im: im["id"])
    (tmp_path / "images").mkdir()
    for image, name in zip(images, [*MAKE, "missing"], strict=True):
        if name != "missing":
            (tmp_path / "images" / image["file_name"]).write_bytes(MAKE[name][0](src / "val2017" / image["file_name"]))
    return tmp_path


def extract(shared, folder, db, *extra):
    argv = cli(shared, db, "val2017-small", *extra)[3:]  # in this process: ["run", ...]
    if folder:
        argv[argv.index("--images") + 1] = str(folder / "images")
    assert main(argv) == 0
    return db


def rows(db, sql):
    with duckdb.connect(str(db), read_only=True) as con:
        return con.execute(sql).fetchall()


def uint8(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, np.uint8).astype(int)


def largest_differences(db, reference):
    """The largest absolute difference of every float column and of every map's uint8 codes between two
    extractions, after checking that they hold the same rows and the same integer and text values."""
    largest = {}
    for table, keys in RESULT_KEYS.items():
        query = f"SELECT * EXCLUDE (run_id) FROM {table} ORDER BY {', '.join(keys)}"
        with duckdb.connect(str(db), read_only=True) as a, duckdb.connect(str(reference), read_only=True) as b:
            got, want = a.execute(query).df(), b.execute(query).df()
        assert got[keys].equals(want[keys]), table
        for column in got.columns.difference(keys):
            a, b = got[column], want[column]
            if column in ("map", "cls_map"):
                steps = [np.abs(uint8(x) - uint8(y)).max() for x, y in zip(a, b, strict=True)]
                largest[f"{table}.{column}"] = int(max(steps))
            elif a.dtype.kind == "f":
                assert a.isna().equals(b.isna()), (table, column)
                largest[f"{table}.{column}"] = float((a - b).abs().max())
            else:
                assert a.equals(b), (table, column)
    return largest


# Measured on val2017-small with the fine-tuned fixture (64 px): metrics at most 1.1e-4 apart (peak_value),
# maps at most one uint8 step (on 6% of them), every integer column (peaks, pointing) equal.
FLOAT_BOUND, CODE_BOUND = 1e-3, 1


def assert_close(db, reference):
    for column, difference in largest_differences(db, reference).items():
        assert difference <= (CODE_BOUND if column.endswith("map") else FLOAT_BOUND), column


def test_device_decoding_gives_the_same_rows_within_pixel_noise(shared, small_db, tmp_path):
    db = run_extraction(shared, tmp_path / "device.duckdb", "val2017-small", "--decode", "device", "--device", "cpu",
                        "--batch-size", "4")  # fmt: skip
    assert_close(db, small_db)


def test_files_the_device_cannot_decode_fail_or_pass_as_with_pil(shared, mixed_dataset):
    # One loader worker: the undecoded JPEGs travel from it to the main process with the PIL-decoded images.
    device = extract(shared, mixed_dataset, mixed_dataset / "device.duckdb", "--decode", "device", "--device", "cpu",
                     "--batch-size", "4", "--workers", "1")  # fmt: skip
    reference = extract(shared, mixed_dataset, mixed_dataset / "cpu.duckdb", "--decode", "cpu")
    status = "SELECT image_id, status FROM image_status ORDER BY image_id"
    assert rows(device, status) == rows(reference, status)
    assert [s for _, s in rows(device, status)] == ["done"] * 3 + ["error"] + ["done"] * 2 + ["error"] * 4
    errors = "SELECT item_kind, item_id, path, message FROM errors ORDER BY ALL"
    assert rows(device, errors) == rows(reference, errors)
    messages = " ".join(m for *_, m in rows(device, errors))
    for why in ("broken data stream", "truncated or corrupt", "empty file", "not an image", "not found"):
        assert why in messages
    assert_close(device, reference)


@CUDA
@pytest.mark.parametrize("res", [64, 384])
def test_nvjpeg_pixels_are_pils_within_a_few_levels(shared, res):
    # Not yet measured on a GPU: nvJPEG's IDCT and chroma upsampling are not libjpeg's, so it adds to
    # the resize's differences above; these bounds are to be set from the first CUDA run.
    diffs = pixel_differences(real_jpegs(shared), res, torch.device("cuda"))
    assert max(int(d.max()) for d in diffs) <= 32
    assert float(torch.cat([d.flatten() for d in diffs]).float().mean()) <= 1.0


@CUDA
def test_files_nvjpeg_cannot_decode_fail_or_pass_as_with_pil(shared, mixed_dataset):
    device = extract(shared, mixed_dataset, mixed_dataset / "cuda.duckdb", "--decode", "device", "--device", "cuda")
    reference = extract(shared, mixed_dataset, mixed_dataset / "cpu.duckdb", "--decode", "cpu", "--device", "cuda")
    for query in ("SELECT image_id, status FROM image_status ORDER BY ALL",
                  "SELECT item_kind, item_id, path, message FROM errors ORDER BY ALL"):  # fmt: skip
        assert rows(device, query) == rows(reference, query)
