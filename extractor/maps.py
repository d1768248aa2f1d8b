"""Per-token maps from one ALBEF pass: raw cross-attention of every fusion layer and Grad-CAM.

The image encoder runs once per image; all captions of a batch are fused together (padded), and
Grad-CAM for every token of every caption comes from a single backward of the summed ITM logits:
each caption's logit depends only on its own attention, so one backward gives each its own gradient.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from extractor.model import ALBEF
from extractor.text import TokenizedCaption, batch_tensors

ATTENTION, GRADCAM = "attention", "gradcam"


@dataclass
class TokenMaps:
    """Everything one caption yields; arrays are numpy float32 on the (g, g) patch grid."""

    itm_logits: np.ndarray  # (2,) index 1 = match
    itm_score: float  # softmax match probability
    itc_score: float  # cosine of the ITC features (not divided by temp)
    attention: dict[int, np.ndarray]  # fusion layer -> (heads, T, 1+N) post-softmax, incl. image [CLS] column;
    # (1, T, 1+N), the mean over heads, unless caption_maps was asked to keep the heads
    gradcam: np.ndarray | None  # (T, g, g), row 0 = text [CLS]
    encoder_cls: np.ndarray  # (heads, g, g) the image's BatchMaps.encoder_cls

    def attention_grid(self, layer: int) -> np.ndarray:
        """Head-mean raw attention over the patches (image [CLS] column dropped): (T, g, g)."""
        a = self.attention[layer].mean(0)[:, 1:]
        g = int(round(a.shape[1] ** 0.5))
        return a.reshape(a.shape[0], g, g)


def gradcam_from(attn: Tensor, grad: Tensor) -> Tensor:
    """ALBEF's Grad-CAM: mean over heads of A * max(dA, 0) on the patch columns. (B, h, T, 1+N) -> (B, T, N)."""
    return (attn[..., 1:] * grad[..., 1:].clamp(min=0)).mean(1)


@dataclass
class BatchMaps:
    """A batch of C captions' maps as tensors where the model ran (T = longest caption, N = patches)."""

    itm_logits: Tensor  # (C, 2) float32
    itc: Tensor  # (C,) float32
    attention: dict[int, Tensor]  # fusion layer -> (C, heads or 1, T, 1+N) post-softmax, image [CLS] column first
    gradcam: Tensor | None  # (C, T, N) float32
    # (I, heads, N) float32: each head's attention of the image encoder's [CLS] over the patches in its last
    # block, renormalised over the patches (DINO's view); word-blind, a reference for specificity
    encoder_cls: Tensor
    # fusion layer -> (C, heads, T, 1+N) each head's attention where `attention` holds their mean; None: not kept
    head_attention: dict[int, Tensor] | None = None

    def attention_grid(self, layer: int) -> Tensor:
        """Head-mean raw attention over the patches (image [CLS] column dropped): (C, T, N) float32."""
        return self.attention[layer].float().mean(1)[..., 1:]


def patch_share(cls_attention: Tensor) -> Tensor:
    """(..., 1+N) attention of a [CLS] query over all tokens -> (..., N) over the patches, summing to 1."""
    patches = cls_attention[..., 1:]
    return patches / patches.sum(-1, keepdim=True)


def batch_maps(
    model: ALBEF,
    pixels: Tensor,
    ids: Tensor,
    mask: Tensor,
    image_index: Tensor,
    layers: Iterable[int],
    gradcam: bool,
    keep_heads: bool = False,
) -> BatchMaps:
    """One pass for captions of one or more images, everything left on the model's device.

    Args:
        model: ALBEF in eval mode.
        pixels: (I, 3, R, R) normalised images, each encoded once.
        ids, mask: (C, T) input ids and attention mask of the captions (`text.batch_tensors`).
        image_index: (C,) each caption's image row in `pixels`.
        layers: fusion layers whose raw attention to keep (absolute BERT indices).
        gradcam: also compute Grad-CAM at `model.cfg.gradcam_block`.
        keep_heads: keep each head's attention rather than their mean (the reference fixtures have them).
    """
    cfg = model.cfg
    with torch.no_grad():
        image, encoder_cls = model.encode_image_attending(pixels)
        text = model.encode_text(ids, mask)
        img_feat, txt_feat = model.itc_features(image, text)
        itc = (img_feat[image_index] * txt_feat).sum(-1)
    # The Grad-CAM layer's attention is a leaf: the backward runs through the layers above it only.
    leaf_layer = cfg.gradcam_block if gradcam else None
    with torch.set_grad_enabled(gradcam):
        fused = model.fuse(text, mask, image, image_index if len(pixels) > 1 else None, leaf_layer)
        logits = model.itm_head(fused.hidden[:, 0]).float()
        cams = None
        if gradcam:
            attn = fused.cross_attentions[cfg.gradcam_block - cfg.bert.fusion_layer]
            (grad,) = torch.autograd.grad(logits[:, 1].sum(), attn)
            cams = gradcam_from(attn.detach(), grad).float()
    attention, heads = {}, {}
    for layer in layers:
        heads[layer] = a = fused.cross_attentions[layer - cfg.bert.fusion_layer].detach()
        attention[layer] = a if keep_heads else a.float().mean(1, keepdim=True)
    return BatchMaps(logits.detach(), itc.float(), attention, cams, patch_share(encoder_cls), heads)


def caption_maps(
    model: ALBEF,
    pixels: Tensor,
    captions: list[TokenizedCaption],
    image_index: Iterable[int],
    layers: Iterable[int],
    gradcam: bool,
    keep_heads: bool = False,
) -> list[TokenMaps]:
    """`batch_maps` for tokenized captions, split per caption into numpy arrays (see `batch_maps`)."""
    device = pixels.device
    ids, mask = (t.to(device) for t in batch_tensors(captions))
    index = torch.as_tensor(list(image_index), device=device)
    maps = batch_maps(model, pixels, ids, mask, index, layers, gradcam, keep_heads)
    # One device-to-host copy per array for the whole batch: each copy waits for the device.
    kept = {layer: a.float().cpu().numpy() for layer, a in maps.attention.items()}
    scores, logits, itc = (t.cpu().numpy() for t in (maps.itm_logits.softmax(-1)[:, 1], maps.itm_logits, maps.itc))
    g = model.cfg.grid_size
    cams = None if maps.gradcam is None else maps.gradcam.reshape(len(captions), -1, g, g).cpu().numpy()
    encoder, images = maps.encoder_cls.reshape(len(pixels), -1, g, g).cpu().numpy(), index.tolist()
    out = []
    for b, cap in enumerate(captions):
        T = len(cap.input_ids)
        out.append(
            TokenMaps(
                itm_logits=logits[b],
                itm_score=float(scores[b]),
                itc_score=float(itc[b]),
                attention={layer: a[b, :, :T] for layer, a in kept.items()},
                gradcam=None if cams is None else cams[b, :T],
                encoder_cls=encoder[images[b]],
            )
        )
    return out


def merge_pieces(token_maps: np.ndarray, word_of_token: list[int], n_words: int) -> np.ndarray:
    """Whole-word maps as the mean of their word pieces' maps: (T, g, g) -> (n_words, g, g)."""
    owner = np.asarray(word_of_token)
    pieces = (owner == np.arange(n_words)[:, None]).astype(np.float32)  # (n_words, T)
    flat = token_maps.reshape(len(owner), -1).astype(np.float32)
    return ((pieces / pieces.sum(1, keepdims=True)) @ flat).reshape(n_words, *token_maps.shape[1:])
