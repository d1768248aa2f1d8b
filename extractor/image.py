"""ALBEF's evaluation transform: bicubic resize to a square, scale to [0, 1], CLIP normalisation.

With `run --decode device`, JPEG files are decoded and resized where the model runs instead
(`device_jpeg` picks them in the loader workers, `decode_on_device` decodes a batch of them).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg

from extractor.coco import MAX_PIXELS

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Start-of-frame markers of the JPEGs nvJPEG decodes: baseline, extended (8-bit only), progressive.
DEVICE_SOF = (0xC0, 0xC1, 0xC2)
# Markers that stand alone, without a length: TEM and the restart markers RST0-RST7.
STANDALONE_MARKERS = (0x01, *range(0xD0, 0xD8))


def eval_transform(img: Image.Image, res: int) -> torch.Tensor:
    """PIL RGB image -> (3, res, res) float32 tensor, as torchvision Resize/ToTensor/Normalize do it."""
    return normalize(resized_pixels(img, res)[None])[0]


def resized_pixels(img: Image.Image, res: int) -> torch.Tensor:
    """PIL RGB image -> (3, res, res) uint8, bicubic as ALBEF's Resize: what travels to the device."""
    return torch.from_numpy(np.asarray(img.resize((res, res), Image.BICUBIC), dtype=np.uint8).copy()).permute(2, 0, 1)


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, R, R) uint8 -> float32 scaled to [0, 1] and CLIP-normalised, where the pixels are.

    The constants stay Python numbers: a tensor made of them would be copied from the host, which on CUDA
    waits for the device."""
    x = pixels.float().div(255)
    channels = zip(CLIP_MEAN, CLIP_STD, strict=True)
    return torch.stack([(x[:, c] - mean) / std for c, (mean, std) in enumerate(channels)], 1)


def decodable_on_device(data: bytes) -> bool:
    """Whether a file's bytes are a complete 8-bit baseline or progressive JPEG of 1 or 3 components
    (gray or YCbCr) within `MAX_PIXELS`: what nvJPEG decodes as PIL does.

    Everything else (CMYK's 4 components, 12-bit, arithmetic coding, another format under a .jpg
    name, a file cut before its end-of-image marker) is left to PIL, which gives today's errors.
    """
    if data[:2] != b"\xff\xd8" or data[-2:] != b"\xff\xd9":
        return False
    i = 2
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
        elif marker in STANDALONE_MARKERS:
            i += 2
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame: DHT, JPG, DAC are not
            frame = data[i + 4 : i + 10]  # precision, height, width, components
            if marker not in DEVICE_SOF or len(frame) < 6:
                return False
            height, width = int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big")
            return frame[0] == 8 and frame[5] in (1, 3) and 0 < height * width <= MAX_PIXELS
        elif marker == 0xDA:  # scan data before any frame header
            return False
        else:
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return False


def device_jpeg(path: Path) -> Tensor | None:
    """The file's bytes as a uint8 tensor when `decodable_on_device`, else None (and for an unreadable
    file, which PIL then reports)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return torch.from_numpy(np.frombuffer(data, np.uint8).copy()) if decodable_on_device(data) else None


def decode_on_device(raw: list[Tensor], res: int, device: torch.device) -> list[Tensor | None]:
    """JPEG files' bytes (uint8, on the host) -> each (3, res, res) uint8 on `device`, None for a file the
    decoder rejects.

    The files are decoded in one call (nvJPEG's batched decoder on CUDA); when that fails each is
    decoded alone, so a bad file costs only itself. Then each is resized as `device_resized` does.
    """
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders in favour of TorchCodec; they still do what we need.
        warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")
        try:
            images = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            images = [_decoded_alone(data, device) for data in raw]
    return [None if image is None else device_resized(image, res) for image in images]


def _decoded_alone(data: Tensor, device: torch.device) -> Tensor | None:
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None


def device_resized(image: Tensor, res: int) -> Tensor:
    """(3, H, W) uint8 -> (3, res, res) uint8, where the image is, as PIL's bicubic resize does it: Keys'
    a = -0.5 with a support widened by the scale (torch's antialiased bicubic), the width first, then
    the height, rounded to uint8 after each pass.

    Pillow 13 resizes the height first when it shrinks much more than the width (most portrait
    photos at 384 px); those pixels then differ by a few levels at clipped edges (see the README).
    """
    x = image[None].float()  # (1, 3, H, W)
    for size in ((x.shape[2], res), (res, res)):
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).round().clamp(0, 255)
    return x[0].to(torch.uint8)
