"""ALBEF (Li et al., "Align before Fuse", 2021) for inference and attention extraction.

Module attributes are the keys of ALBEF's fine-tuned checkpoints, so those load without renaming:
`visual_encoder.*` (a timm ViT), `text_encoder.*` (BERT whose layers from `fusion_layer` on add
cross-attention over the image tokens), `vision_proj`, `text_proj`, `itm_head`, `temp`.

The forward is split by stage, as ALBEF computes it: `encode_image` (ViT), `encode_text` (the
text-only BERT layers), `fuse` (the fusion layers, returning every cross-attention map).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention, VisionTransformer
from torch import Tensor, nn

from extractor.config import ALBEFConfig, BertConfig


def build_vit(cfg: ALBEFConfig) -> VisionTransformer:
    """ALBEF's ViT: pre-norm blocks, class token, final LayerNorm on every token, no head."""
    v = cfg.vision
    return VisionTransformer(
        img_size=cfg.image_res,
        patch_size=cfg.patch_size,
        embed_dim=v.embed_dim,
        depth=v.depth,
        num_heads=v.num_heads,
        mlp_ratio=v.mlp_ratio,
        qkv_bias=v.qkv_bias,
        num_classes=0,
        global_pool="",
        norm_layer=partial(nn.LayerNorm, eps=v.layer_norm_eps),
    )


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.register_buffer("position_ids", torch.arange(cfg.max_position_embeddings)[None], persistent=False)

    def forward(self, input_ids: Tensor) -> Tensor:
        B, T = input_ids.shape
        x = self.word_embeddings(input_ids) + self.position_embeddings(self.position_ids[:, :T])
        x = x + self.token_type_embeddings.weight[0]  # token_type_ids are all zero in ALBEF
        return self.LayerNorm(x)


class BertAttentionHeads(nn.Module):
    """Multi-head attention projections (`self.{query,key,value}`); keys/values may come from the image."""

    def __init__(self, cfg: BertConfig, kv_width: int):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(kv_width, cfg.hidden_size)
        self.value = nn.Linear(kv_width, cfg.hidden_size)

    def split(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, heads, T, head_dim)

    def self_attention(self, x: Tensor, additive_mask: Tensor) -> Tensor:
        """Fused self-attention (its weights are never needed). additive_mask: (B, 1, 1, T)."""
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=additive_mask)
        return out.transpose(1, 2).flatten(2)

    def cross_attention(
        self, x: Tensor, memory: Tensor, memory_index: Tensor | None, leaf: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Attention of the text over all image tokens; returns (context, post-softmax weights).

        Keys/values are computed once per image: `memory` holds I images and `memory_index` names each
        text row's image (None when I == 1, which then broadcasts over the batch). With leaf=True the
        weights are detached into a leaf that requires grad, so a backward stops there (Grad-CAM).
        """
        q = self.split(self.query(x))  # (B, heads, T, d)
        k, v = self.split(self.key(memory)), self.split(self.value(memory))  # (I, heads, 1+N, d)
        if memory_index is not None:
            k, v = k[memory_index], v[memory_index]
        attn = (q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)).softmax(dim=-1)  # (B, heads, T, 1+N)
        if leaf:
            attn = attn.detach().requires_grad_()
        return (attn @ v).transpose(1, 2).flatten(2), attn


class BertResidualOutput(nn.Module):
    """dense -> residual -> LayerNorm, BERT's `*.output` block."""

    def __init__(self, in_width: int, cfg: BertConfig):
        super().__init__()
        self.dense = nn.Linear(in_width, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, h: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(h) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: BertConfig, kv_width: int):
        super().__init__()
        self.self = BertAttentionHeads(cfg, kv_width)
        self.output = BertResidualOutput(cfg.hidden_size, cfg)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        if cfg.hidden_act != "gelu":
            raise ValueError(f"unsupported hidden_act {cfg.hidden_act!r} (ALBEF uses 'gelu')")
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, cfg: BertConfig, has_cross_attention: bool):
        super().__init__()
        self.attention = BertAttention(cfg, cfg.hidden_size)
        if has_cross_attention:
            self.crossattention = BertAttention(cfg, cfg.encoder_width)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertResidualOutput(cfg.intermediate_size, cfg)

    def forward(
        self,
        x: Tensor,
        additive_mask: Tensor,
        memory: Tensor | None = None,
        memory_index: Tensor | None = None,
        attention_leaf: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        x = self.attention.output(self.attention.self.self_attention(x, additive_mask), x)
        attn = None
        if memory is not None:
            ctx, attn = self.crossattention.self.cross_attention(x, memory, memory_index, attention_leaf)
            x = self.crossattention.output(ctx, x)
        x = self.output(self.intermediate(x), x)
        return x, attn


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg, i >= cfg.fusion_layer) for i in range(cfg.num_hidden_layers))


class BertModel(nn.Module):
    """BERT with cross-attention from `fusion_layer` on (ALBEF's `xbert`), without pooler."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)


@dataclass
class FusionOutput:
    hidden: Tensor  # (B, T, H) final hidden states
    cross_attentions: list[Tensor]  # per fusion layer, (B, heads, T, 1+N) post-softmax


class ALBEF(nn.Module):
    def __init__(self, cfg: ALBEFConfig | None = None):
        super().__init__()
        cfg = cfg or ALBEFConfig()
        self.cfg = cfg
        self.visual_encoder = build_vit(cfg)
        self.text_encoder = BertModel(cfg.bert)
        self.vision_proj = nn.Linear(cfg.vision.embed_dim, cfg.embed_dim)
        self.text_proj = nn.Linear(cfg.bert.hidden_size, cfg.embed_dim)
        self.itm_head = nn.Linear(cfg.bert.hidden_size, 2)
        self.temp = nn.Parameter(torch.tensor(0.07))

    def encode_image(self, pixels: Tensor) -> Tensor:
        """(B, 3, R, R) normalised pixels -> (B, 1+N, C) ViT tokens after the final LayerNorm."""
        return self.visual_encoder.forward_features(pixels)

    def encode_image_attending(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """`encode_image` and, from the same pass, the last ViT block's [CLS]-query self-attention over all
        tokens: (B, 1+N, C), (B, heads, 1+N) float32 post-softmax.

        The last block's qkv projection is kept by a hook as the block computes it, so the encoder's own
        pass (and output) is unchanged; only the [CLS] query's row of attention is computed again.
        """
        attn = self.visual_encoder.blocks[-1].attn
        kept: list[Tensor] = []
        handle = attn.qkv.register_forward_hook(lambda _module, _inputs, out: kept.append(out))
        try:
            tokens = self.encode_image(pixels)
        finally:
            handle.remove()
        return tokens, cls_self_attention(attn, kept[0])

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Text-only layers 0..fusion_layer-1 (ALBEF's mode='text'): (B, T) ids -> (B, T, H)."""
        x = self.text_encoder.embeddings(input_ids)
        mask = additive_mask(attention_mask, x.dtype)
        for layer in self.text_encoder.encoder.layer[: self.cfg.bert.fusion_layer]:
            x, _ = layer(x, mask)
        return x

    def fuse(
        self,
        text: Tensor,
        attention_mask: Tensor,
        image: Tensor,
        image_index: Tensor | None = None,
        leaf_layer: int | None = None,
    ) -> FusionOutput:
        """Fusion layers over the image tokens (ALBEF's mode='fusion').

        image: (I, 1+N, C); image_index: (B,) each text's image row, or None when I == 1 or I == B.
        leaf_layer: a fusion layer whose cross-attention becomes a grad-requiring leaf, so that
        d(output)/d(attention) costs a backward through the layers above it only (Grad-CAM).
        """
        mask = additive_mask(attention_mask, text.dtype)
        attentions = []
        x = text
        for i, layer in enumerate(self.text_encoder.encoder.layer):
            if i < self.cfg.bert.fusion_layer:
                continue
            x, attn = layer(x, mask, image, image_index, attention_leaf=i == leaf_layer)
            attentions.append(attn)
        return FusionOutput(x, attentions)

    def itc_features(self, image: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        """L2-normalised ITC projections of the image [CLS] and the text-only [CLS]."""
        img = F.normalize(self.vision_proj(image[:, 0]), dim=-1)
        txt = F.normalize(self.text_proj(text[:, 0]), dim=-1)
        return img, txt


def cls_self_attention(attn: Attention, qkv: Tensor) -> Tensor:
    """The [CLS] query's post-softmax attention of a timm ViT block from its qkv projection (B, 1+N, 3C):
    (B, heads, 1+N) float32, as the block's softmax(q k^T * scale) row 0."""
    B, T, _ = qkv.shape
    h, d = attn.num_heads, attn.head_dim
    q = attn.q_norm(qkv[:, 0, : h * d].float().reshape(B, h, d)) * attn.scale
    k = attn.k_norm(qkv[:, :, h * d : 2 * h * d].float().reshape(B, T, h, d)).reshape(B, T, h * d)
    # Each head's query on a block diagonal (h*d, h): one matmul over the keys as they lie, no permuted copy.
    heads = torch.eye(h, device=q.device).repeat_interleave(d, 0)
    return (k @ (q.reshape(B, h * d, 1) * heads)).transpose(1, 2).softmax(-1)


def additive_mask(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """BERT's extended mask: 0 where attended, -10000 on padding; (B, T) -> (B, 1, 1, T)."""
    return (1.0 - attention_mask[:, None, None, :].to(dtype)) * -10000.0
