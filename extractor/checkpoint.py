"""Load ALBEF's released checkpoints (pre-trained and fine-tuned formats) into our model.

One pure filter (like timm's `checkpoint_filter_fn`) maps a checkpoint onto our keys; the load is
then strict, so anything unexpected is an error that names the keys rather than a silent skip.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from extractor.config import ALBEFConfig
from extractor.digest import file_sha256
from extractor.model import ALBEF

log = logging.getLogger(__name__)
DEFAULT_VOCAB = Path(__file__).resolve().parents[2] / "shared" / "bert-base-uncased" / "vocab.txt"

# Keys of ALBEF checkpoints that inference does not use: momentum encoders, ITC queues, MLM head,
# and BERT's position-id buffer and pooler (neither is a weight we need).
IGNORED_PREFIXES = (
    "visual_encoder_m.",
    "text_encoder_m.",
    "vision_proj_m.",
    "text_proj_m.",
    "text_encoder.cls.",
    "text_encoder.pooler.",
)
IGNORED_KEYS = {"image_queue", "text_queue", "idx_queue", "queue_ptr", "text_encoder.embeddings.position_ids"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the configured model."""


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
_PICKLE_START = b"\x80"  # the legacy format: pickles, the first opening with its protocol number


def _file_problem(path: Path) -> str | None:
    """Why `path` cannot be a torch.save file, told from what it is and its first bytes; None if it may be."""
    if not path.exists():
        return "file not found"
    if path.is_dir():
        return "a directory, not a file"
    if not path.is_file():
        return "not a regular file"
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        return f"cannot read it ({e.strerror})"
    if not head:
        return "empty file (0 bytes)"
    if not head.startswith((_ZIP_MAGIC, _PICKLE_START)):
        return f"not a PyTorch checkpoint: neither a zip archive nor a pickle (it starts with {head!r})"
    return None


def _first_sentence(text: str) -> str:
    return re.split(r"\.\s+(?=[A-Z])", " ".join(text.split()))[0]


def _load_problem(error: Exception) -> str:
    """What torch.load's error says, in one line."""
    text = str(error)
    if "WeightsUnpickler error:" in text:  # torch's long weights_only refusal: keep its verdict
        verdict = next((line for line in text.split("WeightsUnpickler error:")[1].splitlines() if line.strip()), "")
        return f"holds objects that weights_only loading refuses ({_first_sentence(verdict)})"
    if isinstance(error, EOFError):
        return "truncated: the data ends early"
    return f"truncated or corrupt ({type(error).__name__}: {_first_sentence(text):.200})"


def _not_a_state_dict(ckpt: object) -> str | None:
    """Why a loaded object is not an ALBEF state dict; None when it is one."""
    if not isinstance(ckpt, dict):
        return f"it holds a {type(ckpt).__name__}, not a state dict"
    if not_tensors := [str(k) for k, v in ckpt.items() if not isinstance(v, Tensor)]:
        names = ", ".join(not_tensors[:5])
        return f"not a state dict: {len(not_tensors)} of its entries are not tensors ({names:.200})"
    return None


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The raw state dict of an ALBEF checkpoint file, loaded with `weights_only=True`.

    Raises:
        CheckpointError: one line naming the file and why it cannot be read: missing, a directory,
            empty, not a checkpoint, truncated or corrupt, refused by weights_only, or not a state dict.
    """
    path = Path(path)
    if problem := _file_problem(path):
        raise CheckpointError(f"cannot read checkpoint {path}: {problem}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load's parsers raise anything on bad bytes: IndexError, EOFError, RuntimeError...
        raise CheckpointError(f"cannot read checkpoint {path}: {_load_problem(e)}") from None
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        ckpt = ckpt["model"]  # pre-trained format: {'model': ..., 'config': ..., 'epoch': ...}
    if problem := _not_a_state_dict(ckpt):
        raise CheckpointError(f"cannot read checkpoint {path}: {problem}")
    return ckpt


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Map an ALBEF state dict (either release format) onto `model`'s keys.

    Strips the `bert.` infix of pre-trained checkpoints, drops the keys inference ignores, and
    resamples `pos_embed` bicubically when the checkpoint's grid differs from the model's.
    """
    out = {}
    for k, v in state_dict.items():
        k = k.replace("text_encoder.bert.", "text_encoder.")
        if k in IGNORED_KEYS or k.startswith(IGNORED_PREFIXES):
            continue
        out[k] = v
    pos = out.get("visual_encoder.pos_embed")
    target = model.visual_encoder.pos_embed
    if pos is not None and pos.shape != target.shape:
        grid = model.visual_encoder.patch_embed.grid_size
        log.info("resampling pos_embed %s -> %s", tuple(pos.shape), tuple(target.shape))
        # ALBEF's interpolate_pos_embed: bicubic, align_corners=False, no antialiasing.
        out["visual_encoder.pos_embed"] = resample_abs_pos_embed(
            pos, new_size=list(grid), num_prefix_tokens=1, interpolation="bicubic", antialias=False
        )
    return out


def load_checkpoint(model: nn.Module, path: str | Path) -> str:
    """Load an ALBEF checkpoint into `model` strictly; returns the file's sha256."""
    state = checkpoint_filter_fn(read_checkpoint(path), model)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    problems = [
        f"{label} ({len(keys)}): {', '.join(keys[:12])}{' ...' if len(keys) > 12 else ''}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", wrong_shape))
        if keys
    ]
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit the model config:\n  " + "\n  ".join(problems))
    model.load_state_dict(state, strict=True)
    return file_sha256(path)


def frozen_albef(cfg: ALBEFConfig, checkpoint: Path) -> tuple[ALBEF, str]:
    """ALBEF with the checkpoint's weights, in eval mode and without gradients, on the CPU; and the
    checkpoint's sha256. Raises CheckpointError as `load_checkpoint`."""
    model = ALBEF(cfg).eval()
    sha = load_checkpoint(model, checkpoint)
    model.requires_grad_(False)
    return model, sha


def default_vocab(checkpoint: Path) -> Path:
    """The vocab read with a checkpoint when none is given: a vocab.txt beside it (the demo's), else the shared
    bert-base-uncased one."""
    beside = checkpoint.with_name("vocab.txt")
    return beside if beside.is_file() else DEFAULT_VOCAB
