"""`python -m extractor train-demo`: train the demo's tiny ALBEF on the synthetic world, on CPU.

The losses are ALBEF's pre-training losses, without momentum distillation or queues:
- ITC, image-text contrastive over the batch. Targets come from truth, not identity: a caption true of
  several images of the batch ("two shapes", "a red circle") is a positive for each of them.
- ITM, image-text matching on the fused [CLS]. Per image one negative caption and per caption one
  negative image from the batch (never a true pair), plus one caption with a colour, shape or
  relation word swapped. A first phase samples negatives uniformly and without swaps (matching does
  not take off otherwise); then negatives are sampled by ITC similarity (ALBEF's hard negatives).
  Positives are weighted as much as all negatives together.
- MLM, masked language modelling on the fused text, with a head that exists only here. Colour and
  shape words (one per phrase, the other left as the pointer) and relation words are masked far more
  often than other words: predicting them forces the text to look at the right object, which is what
  makes the word maps word-specific.
Every step draws fresh captions for its scenes from the demo grammar, and mirrors half the images
(with captions written for the mirrored geometry). A curriculum starts with single-object scenes,
where shapes are learnt, and adds one object per stage up to four: shape nouns stayed at chance
without it.

The committed checkpoint (`extractor/demo/checkpoint/`) is reproduced by
    python -m extractor train-demo --out extractor/demo/checkpoint
which generates the training world under `data/demo-world` first if it is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import math
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from extractor.config import ALBEFConfig, BertConfig, VisionConfig
from extractor.demo.captions import make_captions, parse_caption
from extractor.demo.evaluate import ValScene, evaluate, format_rates, val_scenes
from extractor.demo.sampling import MASK_ID, mask_tokens, sample_negatives, swapped_captions, truth_matrix
from extractor.demo.scene import Scene, mirrored
from extractor.demo.world import load_scenes, write_world
from extractor.image import CLIP_MEAN, CLIP_STD
from extractor.model import ALBEF
from extractor.text import Tokenizer, batch_tensors, pre_caption

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_VOCAB = REPO.parent / "shared" / "bert-base-uncased" / "vocab.txt"

DEMO_CONFIG = ALBEFConfig(
    image_res=96,
    patch_size=16,  # 6 x 6 patch grid
    vision=VisionConfig(embed_dim=96, depth=4, num_heads=4),
    bert=BertConfig(
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=40,  # captions are at most ~20 tokens
        fusion_layer=2,  # layers 2 and 3 fuse; Grad-CAM at 2 (the last fusion layer's is zero for words)
        encoder_width=96,
    ),
    embed_dim=64,
    gradcam_block=2,
)


@dataclasses.dataclass
class TrainConfig:
    steps: int = 8000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.02  # ALBEF's
    warmup_steps: int = 150
    easy_steps: int = 1500  # first phase: uniform in-batch negatives, no swapped captions
    stage_steps: int = 1500  # curriculum: scenes of at most 1 object, then 2 after this many steps, ... up to 4
    attribute_mask_prob: float = 0.8  # MLM masking of one of colour/shape per phrase, and relation words
    other_mask_prob: float = 0.15  # MLM masking of every other word (BERT's rate)
    shape_share: float = 0.7  # of the phrases masked: how many lose their shape (the rest their colour)
    mlm_captions: int = 4  # captions per image for MLM: its ITM positive and fresh ones (text is cheap)
    seed: int = 0

    def max_objects(self, step: int) -> int:
        """Most objects per scene at this step: single objects first, where "a red [MASK]" has one
        answer in view and shapes are learnt; then one more per stage, binding among ever more objects."""
        return min(4, 1 + step // self.stage_steps)


class MLMHead(nn.Module):
    """BERT's prediction head, decoder tied to the word embeddings (training only; never saved).

    It scores only the tokens the demo grammar can produce (`vocab_ids`): no other token is ever a
    target, and a full 30,522-way decoder would cost more than the rest of the text side.
    """

    def __init__(self, cfg: BertConfig, embeddings: nn.Embedding, vocab_ids: Tensor):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.embeddings = embeddings
        self.register_buffer("vocab_ids", vocab_ids)
        self.bias = nn.Parameter(torch.zeros(len(vocab_ids)))
        slot = torch.full((cfg.vocab_size,), -100)
        slot[vocab_ids] = torch.arange(len(vocab_ids))
        self.register_buffer("slot", slot)  # token id -> its row of the logits

    def forward(self, hidden: Tensor) -> Tensor:
        """(N, H) hidden states -> (N, len(vocab_ids)) logits."""
        h = self.LayerNorm(F.gelu(self.dense(hidden)))
        return F.linear(h, self.embeddings.weight[self.vocab_ids], self.bias)


def grammar_vocab(tokenizer: Tokenizer, scenes: list[Scene], rng: np.random.Generator) -> Tensor:
    """Sorted ids of every token in captions of these scenes: the MLM's output vocabulary."""
    captions = [pre_caption(c, 30) for s in scenes for c in make_captions(s, rng)]
    return torch.tensor(sorted({i for t in tokenizer(captions) for i in t.input_ids[1:]}))


def init_bert_weights(module: nn.Module) -> None:
    """BERT's initialisation (normal 0.02, zero bias); PyTorch's default N(0, 1) embeddings are far off."""
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


class TrainWorld:
    """The training split held in memory as JPEG bytes (a few kB a scene) with its scenes."""

    def __init__(self, world: Path, res: int):
        scenes = load_scenes(world / "annotations" / "instances_train.json")
        self.ids = sorted(scenes)
        self.scenes = [scenes[i] for i in self.ids]
        self.files = [(world / "train" / f"{i:012d}.jpg").read_bytes() for i in self.ids]
        self.n_objects = np.array([len(s.objects) for s in self.scenes])
        self.res = res
        self.mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)

    def _pixels(self, k: int) -> Tensor:
        """(3, R, R) uint8, resized as eval_transform does (PIL bicubic to a square)."""
        with Image.open(io.BytesIO(self.files[k])) as img:
            pixels = np.array(img.convert("RGB").resize((self.res, self.res), Image.Resampling.BICUBIC))
        return torch.from_numpy(pixels).permute(2, 0, 1)

    def batch(self, rng: np.random.Generator, size: int, max_objects: int = 4) -> tuple[Tensor, list[Scene]]:
        """Normalised pixels (B, 3, R, R) of random images, half of them mirrored, and their scenes.

        Only scenes of at most `max_objects` objects are drawn.
        """
        eligible = np.flatnonzero(self.n_objects <= max_objects)
        idx = rng.choice(eligible, size, replace=False)
        flip = rng.random(size) < 0.5
        pixels = torch.stack([self._pixels(k) for k in idx])
        pixels[flip] = pixels[flip].flip(-1)
        scenes = [mirrored(self.scenes[i]) if f else self.scenes[i] for i, f in zip(idx, flip, strict=True)]
        return (pixels.float() / 255 - self.mean) / self.std, scenes


class Trainer:
    def __init__(self, model: ALBEF, tcfg: TrainConfig, tokenizer: Tokenizer, vocab_ids: Tensor):
        self.model, self.tcfg, self.tokenizer = model, tcfg, tokenizer
        self.mlm = MLMHead(model.cfg.bert, model.text_encoder.embeddings.word_embeddings, vocab_ids)
        self.mlm.apply(init_bert_weights)
        # The MLM decoder shares the word embeddings: list each parameter once, in a fixed order.
        params = list(dict.fromkeys([*model.parameters(), *self.mlm.parameters()]))
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=tcfg.lr,
        )

    def lr_at(self, step: int) -> float:
        t = self.tcfg
        if step < t.warmup_steps:
            return t.lr * (step + 1) / t.warmup_steps
        progress = (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps)
        return t.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    @torch.no_grad()
    def mlm_accuracy(self, items: list[ValScene]) -> dict[str, float]:
        """MLM accuracy on held-out captions with one colour or shape word masked (all its pieces).

        The other attribute of the phrase stays, so the answer is on the image: "a [MASK] circle".
        """
        model, hits = self.model, defaultdict(list)
        for item in items:
            tokens, ids, mask = self._tokens(item.captions)
            rows, kinds = [], []
            for b, caption in enumerate(item.captions):
                owners = torch.full((ids.shape[1],), -1)  # word of each token, -1 on [CLS] and padding
                owners[: len(tokens[b].word_of_token)] = torch.tensor(tokens[b].word_of_token)
                for phrase in parse_caption(caption).phrases:
                    if "colour" in phrase.words and "shape" in phrase.words:
                        for kind in ("colour", "shape"):
                            rows.append((b, owners == phrase.words[kind]))
                            kinds.append(kind)
            if not rows:
                continue
            index = torch.tensor([b for b, _ in rows])
            target = torch.stack([m for _, m in rows])  # (R, T) the masked word's pieces
            masked = torch.where(target, MASK_ID, ids[index])
            hidden = model.fuse(model.encode_text(masked, mask[index]), mask[index], model.encode_image(item.pixels))
            logits = self.mlm(hidden.hidden)  # (R, T, V)
            predicted = self.mlm.vocab_ids[logits.argmax(-1)]
            correct = ((predicted == ids[index]) | ~target).all(1)
            scenes = "single" if len(item.scene.objects) == 1 else "multi"
            for kind, ok in zip(kinds, correct.tolist(), strict=True):
                hits[f"mlm {kind} accuracy"].append(ok)
                hits[f"mlm {kind} accuracy {scenes}"].append(ok)
        return {key: float(np.mean(v)) for key, v in sorted(hits.items())}

    def _tokens(self, texts: list[str]):
        tokens = self.tokenizer([pre_caption(t, self.model.cfg.max_words) for t in texts])
        ids, mask = batch_tensors(tokens)
        return tokens, ids, mask

    def step(self, step: int, pixels: Tensor, scenes: list[Scene], rng: np.random.Generator) -> dict[str, float]:
        model, B = self.model, len(scenes)
        hard = step >= self.tcfg.easy_steps
        captions = [make_captions(s, rng, 1)[0] for s in scenes]
        truth = truth_matrix(captions, scenes)
        swaps = swapped_captions(captions, scenes, rng) if hard else [None] * B
        has_swap = [i for i, s in enumerate(swaps) if s is not None]
        tokens, ids, mask = self._tokens(captions + [swaps[i] for i in has_swap])

        image = model.encode_image(pixels)
        text = model.encode_text(ids, mask)
        img_feat, txt_feat = model.itc_features(image, text[:B])
        with torch.no_grad():
            model.temp.clamp_(0.001, 0.5)
        sim = img_feat @ txt_feat.T / model.temp  # (images, captions)
        target = torch.from_numpy(truth).float()
        loss_itc = 0.5 * (
            -(F.log_softmax(sim, 1) * target / target.sum(1, keepdim=True)).sum(1).mean()
            - (F.log_softmax(sim.T, 1) * target.T / target.T.sum(1, keepdim=True)).sum(1).mean()
        )

        # ITM rows: positives, a negative caption per image, a negative image per caption, swaps.
        neg_cap = sample_negatives(sim, ~truth, hard, rng)
        neg_img = sample_negatives(sim.T, ~truth.T, hard, rng)
        arange = np.arange(B)
        text_rows = np.concatenate([arange, neg_cap, arange, B + np.arange(len(has_swap))])
        image_rows = np.concatenate([arange, arange, neg_img, has_swap]).astype(int)
        labels = torch.cat([torch.ones(B), torch.zeros(len(text_rows) - B)]).long()
        fused = model.fuse(text[text_rows], mask[text_rows], image, torch.from_numpy(image_rows))
        logits = model.itm_head(fused.hidden[:, 0])
        n_neg = len(text_rows) - B
        weight = torch.tensor([1.0, n_neg / B])  # per class (0 = no match): positives weigh as all negatives
        loss_itm = F.cross_entropy(logits, labels, weight=weight)

        # MLM on the positives and on fresh captions of the same images.
        extra = [make_captions(s, rng, 1)[0] for _ in range(self.tcfg.mlm_captions - 1) for s in scenes]
        mlm_tokens, mlm_ids, mlm_mask = self._tokens(captions + extra)
        masked_ids, mlm_labels = mask_tokens(
            mlm_ids, captions + extra, [t.word_of_token for t in mlm_tokens], self.tcfg, rng, self.mlm.vocab_ids
        )
        mlm_text = model.encode_text(masked_ids, mlm_mask)
        mlm_image = torch.arange(len(mlm_tokens)) % B
        mlm_hidden = model.fuse(mlm_text, mlm_mask, image, mlm_image).hidden
        picked = mlm_labels != -100
        loss_mlm = F.cross_entropy(self.mlm(mlm_hidden[picked]), self.mlm.slot[mlm_labels[picked]])

        loss = loss_itc + loss_itm + loss_mlm
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        accept = (logits.argmax(1) == labels).float()
        return {
            "itc": loss_itc.item(),
            "itm": loss_itm.item(),
            "mlm": loss_mlm.item(),
            "itm_pos_acc": accept[:B].mean().item(),
            "itm_neg_acc": accept[B:].mean().item(),
        }


def demo_model(seed: int) -> ALBEF:
    """A freshly initialised demo ALBEF: timm's ViT init, BERT's init for the text side and heads."""
    torch.manual_seed(seed)
    model = ALBEF(DEMO_CONFIG)
    for module in (model.text_encoder, model.vision_proj, model.text_proj, model.itm_head):
        module.apply(init_bert_weights)
    return model


@torch.no_grad()
def init_patch_embedding(model: ALBEF, pixels: Tensor, n_patches: int = 30000) -> None:
    """Set the patch embedding to the whitened principal components of training patches.

    A data-dependent initialisation: with random filters the tiny ViT learns shapes very slowly (its
    supervised shape accuracy after 800 steps: 0.30 random, 0.88 PCA-initialised), while colours come
    fast either way.

    Args:
        model: its `visual_encoder.patch_embed.proj` is overwritten.
        pixels: (N, 3, R, R) normalised training images.
    """
    proj = model.visual_encoder.patch_embed.proj  # Conv2d(3, C, P, stride=P)
    C, P = proj.out_channels, proj.kernel_size[0]
    patches = pixels.unfold(2, P, P).unfold(3, P, P).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3 * P * P)
    patches = patches[torch.randperm(len(patches))[:n_patches]]
    mean = patches.mean(0)
    _, S, V = torch.linalg.svd(patches - mean, full_matrices=False)
    W = V[:C] * (len(patches) ** 0.5 / S[:C, None])  # unit variance per component on the data
    proj.weight.copy_(W.view(C, 3, P, P))
    proj.bias.copy_(-(W @ mean))


def train(world: Path, out: Path, tcfg: TrainConfig, vocab: Path, eval_every: int, n_eval: int) -> list[Path]:
    """Train, evaluating on held-out scenes every `eval_every` steps; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train_log.txt"
    log_file = log_path.open("w")

    def record(line: str) -> None:
        log.info(line)
        log_file.write(line + "\n")
        log_file.flush()

    tokenizer = Tokenizer(vocab, DEMO_CONFIG.bert.max_position_embeddings)
    data = TrainWorld(world, DEMO_CONFIG.image_res)
    val = val_scenes(world, n_eval, DEMO_CONFIG.image_res) if eval_every else []
    model = demo_model(tcfg.seed)
    rng = np.random.default_rng(tcfg.seed)
    init_patch_embedding(model, data.batch(rng, min(2000, len(data.ids)))[0])
    trainer = Trainer(model, tcfg, tokenizer, grammar_vocab(tokenizer, data.scenes[:2000], rng))
    n_params = sum(p.numel() for p in model.parameters())
    record(f"config {json.dumps(DEMO_CONFIG.to_dict())}")
    record(
        f"train {json.dumps(dataclasses.asdict(tcfg))}; {n_params:,} parameters; {len(data.ids)} scenes; "
        f"{torch.get_num_threads()} threads; MLM vocabulary {len(trainer.mlm.vocab_ids)} tokens"
    )
    start = time.perf_counter()
    running: dict[str, list[float]] = {}
    for step in range(tcfg.steps):
        model.train()
        pixels, scenes = data.batch(rng, tcfg.batch_size, tcfg.max_objects(step))
        for k, v in trainer.step(step, pixels, scenes, rng).items():
            running.setdefault(k, []).append(v)
        if (step + 1) % 50 == 0:
            means = " ".join(f"{k} {np.mean(v):.3f}" for k, v in running.items())
            record(f"step {step + 1} {time.perf_counter() - start:.0f}s lr {trainer.lr_at(step):.2e} {means}")
            running = {}
        if eval_every and ((step + 1) % eval_every == 0 or step + 1 == tcfg.steps):
            model.eval()
            rates = {**evaluate(model, val, tokenizer), **trainer.mlm_accuracy(val)}
            record(f"eval step {step + 1} on {len(val)} val scenes\n{format_rates(rates)}")
            save_checkpoint(model, out)  # a crash loses at most one evaluation interval
    written = save_checkpoint(model, out)
    record(f"done in {time.perf_counter() - start:.0f}s")
    log_file.close()
    return [*written, log_path]


def save_checkpoint(model: ALBEF, out: Path) -> list[Path]:
    """Write checkpoint.pth (ALBEF's fine-tuned format) and config.json; returns both paths."""
    checkpoint, config = out / "checkpoint.pth", out / "config.json"
    torch.save(model.state_dict(), checkpoint)
    config.write_text(json.dumps({**DEMO_CONFIG.to_dict(), "checkpoint_format": "finetuned"}, indent=2) + "\n")
    return [checkpoint, config]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-demo",
        help="train the demo's tiny ALBEF on the synthetic world (CPU)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = TrainConfig()
    p.add_argument(
        "--out",
        type=Path,
        default=REPO / "extractor" / "demo" / "checkpoint",
        help="folder for checkpoint.pth, config.json and train_log.txt",
    )
    p.add_argument(
        "--world",
        type=Path,
        default=REPO / "data" / "demo-world",
        help="demo world folder (generated there if it has no training split)",
    )
    p.add_argument("--n-train", type=int, default=40000, help="training scenes when the world is generated")
    p.add_argument("--n-val", type=int, default=500, help="held-out scenes when the world is generated")
    p.add_argument("--steps", type=int, default=defaults.steps, help="optimisation steps")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per step")
    p.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate (AdamW, cosine decay)")
    p.add_argument(
        "--easy-steps",
        type=int,
        default=defaults.easy_steps,
        help="steps of the first phase (uniform negatives, no swapped captions)",
    )
    p.add_argument(
        "--stage-steps",
        type=int,
        default=defaults.stage_steps,
        help="curriculum: steps per stage of 1, 2, 3 objects at most (then up to 4)",
    )
    p.add_argument(
        "--shape-share",
        type=float,
        default=defaults.shape_share,
        help="of the MLM-masked phrases, the share that loses its shape word (the rest: colour)",
    )
    p.add_argument(
        "--mlm-captions",
        type=int,
        default=defaults.mlm_captions,
        help="captions per image for MLM (the ITM positive and fresh ones)",
    )
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of the model and the batches")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (the committed checkpoint used 1; results are bit-exact per count)",
    )
    p.add_argument("--eval-every", type=int, default=1000, help="evaluate on val scenes every N steps (0: never)")
    p.add_argument("--n-eval", type=int, default=200, help="val scenes per evaluation")
    p.add_argument("--vocab", type=Path, default=DEFAULT_VOCAB, help="bert-base-uncased vocab.txt")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    if not (args.world / "annotations" / "instances_train.json").is_file():
        write_world(args.world, args.n_train, args.n_val, seed=0)
    tcfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        easy_steps=args.easy_steps,
        stage_steps=args.stage_steps,
        shape_share=args.shape_share,
        mlm_captions=args.mlm_captions,
        seed=args.seed,
    )
    for path in train(args.world, args.out, tcfg, args.vocab, args.eval_every, args.n_eval):
        print(path)
    return 0
