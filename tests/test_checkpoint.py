import dataclasses

import pytest
import torch
import torch.nn.functional as F

from extractor.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from extractor.config import ALBEFConfig
from extractor.model import ALBEF


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


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", None])
def test_unreadable_checkpoints_are_clear_errors(tmp_path, content):
    path = tmp_path / "x.pth"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError):
        read_checkpoint(path)


def test_default_config_is_albef_base():
    cfg = ALBEFConfig()
    assert (cfg.image_res, cfg.vision.embed_dim, cfg.vision.depth, cfg.bert.num_hidden_layers) == (384, 768, 12, 12)
    assert cfg.fusion_layers == list(range(6, 12)) and cfg.gradcam_block == 8 and cfg.grid_size == 24
    model = ALBEF(cfg)
    keys = model.state_dict().keys()
    assert "text_encoder.encoder.layer.7.crossattention.self.query.weight" in keys
    assert "text_encoder.encoder.layer.5.crossattention.self.query.weight" not in keys
    assert "visual_encoder.blocks.11.attn.qkv.weight" in keys
