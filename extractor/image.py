"""ALBEF's evaluation transform: bicubic resize to a square, scale to [0, 1], CLIP normalisation."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def eval_transform(img: Image.Image, res: int) -> torch.Tensor:
    """PIL RGB image -> (3, res, res) float32 tensor, as torchvision Resize/ToTensor/Normalize do it."""
    x = np.asarray(img.resize((res, res), Image.BICUBIC), dtype=np.uint8)
    t = torch.from_numpy(x.copy()).permute(2, 0, 1).float().div(255)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return t.sub(mean).div(std)
