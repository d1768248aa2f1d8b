"""Floors on the committed demo model's grounding: a transposed map or an off-by-one token falls to chance."""

import pytest

from extractor.checkpoint import load_checkpoint
from extractor.config import ALBEFConfig
from extractor.demo.evaluate import evaluate, val_scenes
from extractor.demo.prepare import CHECKPOINT_DIR
from extractor.demo.world import write_split
from extractor.model import ALBEF
from extractor.text import Tokenizer


@pytest.fixture(scope="module")
def rates(tmp_path_factory):
    cfg = ALBEFConfig.from_json(CHECKPOINT_DIR / "config.json")
    model = ALBEF(cfg).eval()
    load_checkpoint(model, CHECKPOINT_DIR / "checkpoint.pth")
    tokenizer = Tokenizer(CHECKPOINT_DIR / "vocab.txt", cfg.bert.max_position_embeddings)
    world = tmp_path_factory.mktemp("held-out")
    write_split(world, "val", 40, seed=0, res=128)
    return evaluate(model, val_scenes(world, 40, cfg.image_res), tokenizer)


def test_gradcam_points_at_the_named_colour(rates):
    assert rates["gradcam colour pointing multi"] >= 0.45
    assert rates["gradcam colour pointing multi"] >= rates["[CLS] L2 colour pointing multi"] + 0.15
    assert rates["gradcam colour pointing multi"] >= rates["random object colour pointing multi"] + 0.1
    assert rates["gradcam colour mass/chance"] >= 3.0


def test_colour_words_bind_to_their_own_object(rates):
    assert rates["gradcam colour binding"] >= 0.55
    assert rates["attn L2 colour binding"] >= 0.55
    assert rates["gradcam colour binding"] >= rates["[CLS] L2 colour binding"] + 0.1


def test_matching_beats_a_coin(rates):
    assert rates["itm true accepted"] >= 0.6
    assert rates["itm colour rejected"] >= 0.6
