import json
import subprocess
import sys

import numpy as np
import pytest

from extractor.verify import max_differences

FIXTURES = ["finetuned-tiny", "pretrain-tiny"]


@pytest.mark.parametrize("name", FIXTURES)
def test_verify_reference_cli_passes_on_fixture(shared, name):
    ref = shared / "fixtures" / "albef-reference" / name
    vocab = shared / "bert-base-uncased" / "vocab.txt"
    proc = subprocess.run(
        [sys.executable, "-m", "extractor", "verify-reference", str(ref), "--vocab", str(vocab)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected_keys = np.load(ref / "expected.npz").files
    printed = {line.split()[0] for line in proc.stdout.splitlines()[:-1]}
    assert printed == set(expected_keys)
    assert "0 above tolerance" in proc.stdout


@pytest.mark.parametrize("name", FIXTURES)
def test_outputs_match_albef_within_float32_precision(shared, name):
    ref = shared / "fixtures" / "albef-reference" / name
    diffs = max_differences(ref, shared / "bert-base-uncased" / "vocab.txt")
    for key, d in diffs.items():
        tol = 1e-6 if key.startswith("gradcam") else 1e-5
        assert d <= tol, (key, d)


@pytest.mark.parametrize("name", FIXTURES)
def test_batching_captions_with_padding_changes_nothing(shared, name):
    ref = shared / "fixtures" / "albef-reference" / name
    diffs = max_differences(ref, shared / "bert-base-uncased" / "vocab.txt", batched=True)
    assert max(diffs.values()) <= 1e-5


def test_verify_reference_fails_on_a_wrong_expectation(shared, tmp_path):
    """A fixture whose expected arrays were perturbed must make the command exit non-zero."""
    src = shared / "fixtures" / "albef-reference" / "finetuned-tiny"
    for f in ("config.json", "checkpoint.pth", "cases.json"):
        (tmp_path / f).symlink_to(src / f)
    (tmp_path / "images").symlink_to(src / "images")
    arrays = dict(np.load(src / "expected.npz"))
    arrays["itm_0_0"] = arrays["itm_0_0"] + 1e-3
    np.savez(tmp_path / "expected.npz", **arrays)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "extractor",
            "verify-reference",
            str(tmp_path),
            "--vocab",
            str(shared / "bert-base-uncased" / "vocab.txt"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert any(line.startswith("itm_0_0") and "FAIL" in line for line in proc.stdout.splitlines())
    assert json.loads((tmp_path / "cases.json").read_text())  # the fixture itself was only linked
