"""A stand-in for ALBEF that returns maps of ALBEF's shapes without running a network.

`run --model null` swaps it in so the pipeline around the model (decoding, per-word work, storage) can
be measured on any machine (`bench/throughput.py`). Its maps are random but well formed: attention
rows are distributions over the image tokens, Grad-CAM maps are non-negative.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from extractor.config import ALBEFConfig
from extractor.maps import BatchMaps, patch_share


class StandIn:
    """Called like `maps.batch_maps` with the model bound: (pixels, ids, mask, image_index) -> BatchMaps."""

    def __init__(self, cfg: ALBEFConfig, layers: Sequence[int], gradcam: bool, seed: int = 0):
        self.cfg, self.layers, self.gradcam, self.seed = cfg, list(layers), gradcam, seed

    def __call__(self, pixels: Tensor, ids: Tensor, mask: Tensor, image_index: Tensor) -> BatchMaps:
        C, T = ids.shape
        n_tokens = self.cfg.grid_size**2 + 1
        # Seeded by the batch's shape (batches of one shape get the same maps): a value read from ids would
        # make the host wait for the device.
        gen = torch.Generator(pixels.device).manual_seed(self.seed + 1000 * C + T)

        def rand(*shape: int) -> Tensor:
            return torch.rand(*shape, generator=gen, device=pixels.device)

        attention = {}
        for layer in self.layers:
            a = rand(C, 1, T, n_tokens)
            attention[layer] = a / a.sum(-1, keepdim=True)
        gradcam = rand(C, T, n_tokens - 1) * 1e-3 if self.gradcam else None
        encoder_cls = patch_share(rand(len(pixels), self.cfg.vision.num_heads, n_tokens))
        return BatchMaps(rand(C, 2), rand(C) * 2 - 1, attention, gradcam, encoder_cls)
