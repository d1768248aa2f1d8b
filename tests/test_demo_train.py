"""Training the demo ALBEF: negatives are false, masking targets attribute words, checkpoints load strictly."""

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from extractor.checkpoint import load_checkpoint
from extractor.config import ALBEFConfig
from extractor.demo import sampling, train
from extractor.demo.captions import caption_is_true, make_captions
from extractor.demo.scene import coverage, render_scene, sample_scene
from extractor.demo.world import write_world
from extractor.image import CLIP_MEAN, CLIP_STD
from extractor.model import ALBEF
from extractor.text import Tokenizer, batch_tensors, pre_caption


@pytest.fixture(scope="module")
def tokenizer(shared: Path) -> Tokenizer:
    return Tokenizer(shared / "bert-base-uncased" / "vocab.txt", 40)


def _batch(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, 128) for _ in range(n)]
    return scenes, [make_captions(s, rng, 1)[0] for s in scenes]


def test_truth_matrix_is_caption_truth() -> None:
    scenes, captions = _batch(24)
    truth = sampling.truth_matrix(captions, scenes)
    assert truth.diagonal().all()
    expected = [[caption_is_true(c, s) for c in captions] for s in scenes]
    assert np.array_equal(truth, expected)
    assert truth.sum() > len(scenes)  # generic captions are true of other scenes too


@pytest.mark.parametrize("hard", [False, True])
def test_negatives_are_never_true_pairs(hard: bool) -> None:
    scenes, captions = _batch(32, seed=1)
    truth = sampling.truth_matrix(captions, scenes)
    rng = np.random.default_rng(0)
    scores = torch.randn(32, 32) * 5
    for _ in range(20):
        picked = sampling.sample_negatives(scores, ~truth, hard, rng)
        assert not truth[np.arange(32), picked].any()
    # Hard sampling follows the scores: the most similar allowed column is picked most often.
    scores = torch.where(torch.from_numpy(~truth), torch.arange(32.0).expand(32, 32), -1e9)
    picks = np.stack([sampling.sample_negatives(scores, ~truth, hard, rng) for _ in range(50)])
    best = np.where(~truth, np.arange(32), -1).argmax(1)
    share = (picks == best).mean()
    assert share > 0.5 if hard else share < 0.3


def test_swapped_captions_are_false() -> None:
    scenes, captions = _batch(40, seed=2)
    swaps = sampling.swapped_captions(captions, scenes, np.random.default_rng(0))
    assert sum(s is not None for s in swaps) >= 35
    for scene, swap in zip(scenes, swaps, strict=True):
        assert swap is None or not caption_is_true(swap, scene)


def test_mlm_masks_whole_words_and_favours_attributes(tokenizer: Tokenizer) -> None:
    captions = ["a small purple hexagon left of a red box"] * 600
    tokens = tokenizer([pre_caption(c, 30) for c in captions])
    ids, _ = batch_tensors(tokens)
    cfg = train.TrainConfig()
    pool = torch.tensor([1000, 2000])
    masked, labels = sampling.mask_tokens(
        ids, captions, [t.word_of_token for t in tokens], cfg, np.random.default_rng(0), pool
    )
    picked = labels != -100
    assert torch.equal(labels[picked], ids[picked]) and not picked[:, 0].any()  # never [CLS]
    assert (picked.sum(1) >= 1).all()
    owner = torch.tensor(tokens[0].word_of_token)
    words = tokens[0].words
    word_picked = {w: picked[:, owner == i] for i, w in enumerate(words)}
    rate = {w: p.float().mean().item() for w, p in word_picked.items()}
    hexagon = word_picked["hexagon"]
    assert hexagon.shape[1] == 3 and (hexagon.all(1) | ~hexagon.any(1)).all()  # all pieces or none
    # One of colour and shape per phrase, never both: the other still names the object.
    for colour, shape in (("purple", "hexagon"), ("red", "box")):
        assert not (word_picked[colour].any(1) & word_picked[shape].any(1)).any()
        assert rate[colour] == pytest.approx(cfg.attribute_mask_prob * (1 - cfg.shape_share), abs=0.07)
        assert rate[shape] == pytest.approx(cfg.attribute_mask_prob * cfg.shape_share, abs=0.07)
    assert rate["left"] == pytest.approx(cfg.attribute_mask_prob, abs=0.07)
    for word in ("a", "small", "of"):
        assert rate[word] == pytest.approx(cfg.other_mask_prob, abs=0.05), word
    replaced = masked[picked]
    assert (replaced == sampling.MASK_ID).float().mean().item() == pytest.approx(0.8, abs=0.05)
    assert torch.isin(replaced, pool).float().mean().item() == pytest.approx(0.1, abs=0.04)
    assert torch.equal(masked[~picked], ids[~picked])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_world(out, 40, 4, seed=0)
    return out


def test_batches_are_mirrored_scenes_and_respect_the_curriculum(world: Path) -> None:
    data = train.TrainWorld(world, 96)
    assert len(data.scenes) == len(data.files) == 40
    rng = np.random.default_rng(0)
    pixels, scenes = data.batch(rng, 6, max_objects=1)
    assert pixels.shape == (6, 3, 96, 96) and all(len(s.objects) == 1 for s in scenes)
    assert abs(pixels.mean().item()) < 1.5  # normalised, not raw 0..255
    pixels, scenes = data.batch(rng, 40)
    by_seed = {s.seed: s for s in data.scenes}
    mirrored = [s for s in scenes if not np.array_equal(s.objects[0].polygon, by_seed[s.seed].objects[0].polygon)]
    assert 8 < len(mirrored) < 32  # about half
    for s in mirrored:  # mirrored geometry, in the scene's own pixel frame
        original = by_seed[s.seed].objects[0]
        assert np.allclose(s.objects[0].polygon[:, 0], s.res - original.polygon[:, 0])
    # The pixels show every object where its (mirrored or not) polygon says, in its colour.
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    rgb = ((pixels * std + mean) * 255).permute(0, 2, 3, 1).numpy()
    for image, scene in zip(rgb, scenes, strict=True):
        for obj in scene.objects:
            inside = coverage(obj.polygon * 96 / scene.res, 96) > 0.99
            assert np.abs(np.median(image[inside], 0) - obj.rgb).max() < 20


def test_curriculum_adds_one_object_per_stage() -> None:
    cfg = train.TrainConfig(stage_steps=100)
    assert [cfg.max_objects(s) for s in (0, 99, 100, 199, 200, 300, 10_000)] == [1, 1, 2, 2, 3, 4, 4]


def _train_demo(world: Path, out: Path, shared: Path) -> Path:
    parser = argparse.ArgumentParser()
    train.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        [
            "train-demo",
            "--world",
            str(world),
            "--out",
            str(out),
            "--steps",
            "4",
            "--batch-size",
            "8",
            "--easy-steps",
            "2",
            "--stage-steps",
            "1",
            "--eval-every",
            "2",
            "--n-eval",
            "2",
            "--threads",
            "1",
            "--vocab",
            str(shared / "bert-base-uncased" / "vocab.txt"),
        ]
    )
    assert args.func(args) == 0
    return out


def test_short_training_writes_a_strictly_loadable_checkpoint(world: Path, tmp_path: Path, shared: Path) -> None:
    out = _train_demo(world, tmp_path / "ckpt", shared)
    cfg = ALBEFConfig.from_json(out / "config.json")
    assert cfg == train.DEMO_CONFIG
    assert json.loads((out / "config.json").read_text())["checkpoint_format"] == "finetuned"
    model = ALBEF(cfg)
    load_checkpoint(model, out / "checkpoint.pth")  # strict: every key ours, none missing
    assert (out / "checkpoint.pth").stat().st_size < 20e6
    log = (out / "train_log.txt").read_text()
    assert "eval step 2" in log and "eval step 4" in log and "itm true accepted" in log

    # The documented command reproduces the checkpoint: same seed and world, same weights, bit for bit.
    again = torch.load(_train_demo(world, tmp_path / "again", shared) / "checkpoint.pth", weights_only=True)
    first = torch.load(out / "checkpoint.pth", weights_only=True)
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)


@pytest.mark.parametrize("step", [0, 10])  # first phase (easy negatives) and second (hard + swaps)
def test_train_step_losses_finite_and_weights_move(tokenizer: Tokenizer, step: int) -> None:
    model = train.demo_model(0)
    scenes, _ = _batch(6, seed=3)
    vocab = train.grammar_vocab(tokenizer, scenes, np.random.default_rng(0))
    trainer = train.Trainer(model, train.TrainConfig(easy_steps=5, warmup_steps=1), tokenizer, vocab)
    pixels = torch.randn(6, 3, 96, 96)
    before = model.itm_head.weight.detach().clone()
    losses = trainer.step(step, pixels, scenes, np.random.default_rng(0))
    assert all(np.isfinite(v) for v in losses.values())
    assert 0 < losses["itm"] < 2 and 0 < losses["mlm"] < 2 * np.log(len(vocab))
    assert not torch.equal(before, model.itm_head.weight)


def test_grammar_vocab_covers_captions(tokenizer: Tokenizer) -> None:
    scenes, _ = _batch(300, seed=4)
    vocab = set(train.grammar_vocab(tokenizer, scenes[:200], np.random.default_rng(0)).tolist())
    assert 60 < len(vocab) < 300 and sampling.MASK_ID not in vocab
    captions = [pre_caption(c, 30) for s in scenes[200:] for c in make_captions(s, np.random.default_rng(1))]
    unseen = {i for t in tokenizer(captions) for i in t.input_ids[1:]} - vocab
    assert not unseen  # captions of other scenes bring no token outside it


def test_patch_embedding_starts_whitened() -> None:
    rng = np.random.default_rng(5)
    images = np.stack([render_scene(sample_scene(rng, 96)) for _ in range(150)])
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    pixels = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    model = train.demo_model(0)
    train.init_patch_embedding(model, pixels)
    with torch.no_grad():
        features = model.visual_encoder.patch_embed.proj(pixels).flatten(2).transpose(1, 2).flatten(0, 1)
    assert features.mean(0).abs().max() < 1e-3
    cov = torch.cov(features.T)
    assert torch.allclose(cov, torch.eye(len(cov)), atol=0.05)  # decorrelated, unit variance
