import argparse
import dataclasses
import io
import re
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from extractor.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from extractor.config import ALBEFConfig
from extractor.model import ALBEF
from tests.conftest import REPO


def fixture(shared, name):
    return shared / "fixtures" / "albef-reference" / name


@pytest.mark.parametrize("name", ["finetuned-tiny", "pretrain-tiny"])
def test_both_release_formats_load_strictly(shared, name):
    model = ALBEF(ALBEFConfig.from_json(fixture(shared, name) / "config.json"))
    sha = load_checkpoint(model, fixture(shared, name) / "checkpoint.pth")
    assert len(sha) == 64
    raw = read_checkpoint(fixture(shared, name) / "checkpoint.pth")
    key = "text_encoder.encoder.layer.2.crossattention.self.key.weight"
    raw_key = key if key in raw else key.replace("text_encoder.", "text_encoder.bert.")
    assert torch.equal(model.state_dict()[key], raw[raw_key])
    assert torch.equal(model.visual_encoder.pos_embed, raw["visual_encoder.pos_embed"])


def test_momentum_copies_are_not_loaded(shared):
    path = fixture(shared, "pretrain-tiny") / "checkpoint.pth"
    model = ALBEF(ALBEFConfig.from_json(path.parent / "config.json"))
    load_checkpoint(model, path)
    raw = read_checkpoint(path)
    assert not torch.equal(model.visual_encoder.cls_token, raw["visual_encoder_m.cls_token"])


def test_pos_embed_is_resampled_bicubically_like_albef(shared):
    path = fixture(shared, "finetuned-tiny") / "checkpoint.pth"
    cfg = ALBEFConfig.from_json(path.parent / "config.json")
    model = ALBEF(dataclasses.replace(cfg, image_res=96)).eval()
    load_checkpoint(model, path)
    pos = read_checkpoint(path)["visual_encoder.pos_embed"]
    grid = pos[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    albef = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).flatten(1, 2)
    assert model.visual_encoder.pos_embed.shape == (1, 37, 32)
    assert torch.allclose(model.visual_encoder.pos_embed[:, 1:], albef, atol=1e-6)
    assert torch.equal(model.visual_encoder.pos_embed[:, :1], pos[:, :1])
    with torch.no_grad():
        assert model.encode_image(torch.zeros(1, 3, 96, 96)).shape == (1, 37, 32)


def test_unknown_and_missing_keys_are_named(shared, tmp_path):
    state = read_checkpoint(fixture(shared, "finetuned-tiny") / "checkpoint.pth")
    state["text_encoder.surprise.weight"] = torch.zeros(1)
    del state["itm_head.bias"]
    torch.save(state, tmp_path / "bad.pth")
    model = ALBEF(ALBEFConfig.from_json(fixture(shared, "finetuned-tiny") / "config.json"))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(model, tmp_path / "bad.pth")
    assert "itm_head.bias" in str(e.value) and "text_encoder.surprise.weight" in str(e.value)


def test_wrong_size_config_is_a_shape_error(shared):
    cfg = ALBEFConfig.from_json(fixture(shared, "finetuned-tiny") / "config.json")
    wider = dataclasses.replace(cfg, embed_dim=8)
    with pytest.raises(CheckpointError, match="shape mismatch.*vision_proj.weight"):
        load_checkpoint(ALBEF(wider), fixture(shared, "finetuned-tiny") / "checkpoint.pth")


def first_half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def saved(obj: object, **kwargs) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, **kwargs)
    return buffer.getvalue()


UNREADABLE = {
    "missing": (None, "file not found"),
    "directory": ("dir", "a directory, not a file"),
    "empty": (lambda shared: b"", r"empty file \(0 bytes\)"),
    "text": (lambda shared: b"this is not a checkpoint\n", "not a PyTorch checkpoint: neither a zip archive nor"),
    "JPEG": (lambda shared: (shared / "coco/val2017-small/val2017/000000037777.jpg").read_bytes(),
             "neither a zip archive nor a pickle"),
    "truncated zip": (lambda shared: first_half((fixture(shared, "finetuned-tiny") / "checkpoint.pth").read_bytes()),
                      "truncated or corrupt .*central directory"),
    "truncated legacy pickle": (  # torch.save's format before PyTorch 1.6
        lambda shared: first_half(saved({"a": torch.zeros(3)}, _use_new_zipfile_serialization=False)),
        "truncated: the data ends early",
    ),
    "a list": (lambda shared: saved([torch.zeros(3)]), "it holds a list, not a state dict"),
    "a dict of numbers": (lambda shared: saved({"epoch": 3, "w": torch.zeros(1)}),
                          r"not a state dict: 1 of its entries are not tensors \(epoch\)"),
    "a pickled class": (lambda shared: saved(argparse.Namespace(a=1)), "weights_only loading refuses .*Namespace"),
}  # fmt: skip


@pytest.mark.parametrize("make, problem", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_unreadable_checkpoints_are_one_line_naming_the_file_and_problem(shared, tmp_path, make, problem):
    path = tmp_path / "x.pth"
    if make == "dir":
        path.mkdir()
    elif make is not None:
        path.write_bytes(make(shared))
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert message.startswith(f"cannot read checkpoint {path}: ")
    assert re.search(problem, message), message
    assert "\n" not in message and len(message) < 300


def test_the_cli_reports_a_text_checkpoint_in_one_line(shared, tmp_path):
    bad = tmp_path / "mscoco.pth"
    bad.write_text("<html>404 Not Found</html>")
    ref = tmp_path / "ref"
    shutil.copytree(fixture(shared, "finetuned-tiny"), ref)
    (ref / "checkpoint.pth").write_bytes(bad.read_bytes())
    proc = subprocess.run([sys.executable, "-m", "extractor", "verify-reference", str(ref)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: cannot read checkpoint {ref / 'checkpoint.pth'}: not a PyTorch checkpoint: neither a zip archive "
        "nor a pickle (it starts with b'<html>404 Not Fo')"
    )


def test_default_config_is_albef_base():
    cfg = ALBEFConfig()
    assert (cfg.image_res, cfg.vision.embed_dim, cfg.vision.depth, cfg.bert.num_hidden_layers) == (384, 768, 12, 12)
    assert cfg.fusion_layers == list(range(6, 12)) and cfg.gradcam_block == 8 and cfg.grid_size == 24
    model = ALBEF(cfg)
    keys = model.state_dict().keys()
    assert "text_encoder.encoder.layer.7.crossattention.self.query.weight" in keys
    assert "text_encoder.encoder.layer.5.crossattention.self.query.weight" not in keys
    assert "visual_encoder.blocks.11.attn.qkv.weight" in keys
