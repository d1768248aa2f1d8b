"""ALBEF's evaluation transform: bicubic resize to a square, scale to [0, 1], CLIP normalisation."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def eval_transform(img: Image.Image, res: int) -> torch.Tensor:
    """PIL RGB image -> (3, res, res) float32 tensor, as torchvision Resize/ToTensor/Normalize do it."""
    return normalize(resized_pixels(img, res)[None])[0]


def resized_pixels(img: Image.Image, res: int) -> torch.Tensor:
    """PIL RGB image -> (3, res, res) uint8, bicubic as ALBEF's Resize: what travels to the device."""
    return torch.from_numpy(np.asarray(img.resize((res, res), Image.BICUBIC), dtype=np.uint8).copy()).permute(2, 0, 1)


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, R, R) uint8 -> float32 scaled to [0, 1] and CLIP-normalised, where the pixels are."""
    mean = torch.tensor(CLIP_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=pixels.device).view(1, 3, 1, 1)
    return pixels.float().div(255).sub(mean).div(std)
