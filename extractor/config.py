"""ALBEF architecture config: one typed dataclass whose defaults are the real ALBEF base.

The JSON form is the fixtures' `config.json`: the image resolution and ViT sizes, ALBEF's
`config_bert.json` fields under `"bert"`, and a few run settings (`gradcam_block`, `max_words`).
Preprocessing constants that are not architecture (CLIP mean/std) live in `extractor/image.py`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class VisionConfig:
    embed_dim: int = 768  # ViT-B/16 width
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6


@dataclass
class BertConfig:
    """The fields of ALBEF's `configs/config_bert.json` that shape the model."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"  # exact (erf) GELU, as transformers' "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    fusion_layer: int = 6  # layers >= fusion_layer add cross-attention over the image tokens
    encoder_width: int = 768  # width of the image tokens the cross-attention reads


@dataclass
class ALBEFConfig:
    image_res: int = 384  # run resolution (fine-tuned ALBEF checkpoints use 384, pre-trained 256)
    patch_size: int = 16
    vision: VisionConfig = field(default_factory=VisionConfig)
    bert: BertConfig = field(default_factory=BertConfig)
    embed_dim: int = 256  # output width of vision_proj / text_proj (ITC)
    gradcam_block: int = 8  # absolute BERT layer whose cross-attention Grad-CAM uses (ALBEF's choice)
    max_words: int = 30  # word limit of ALBEF's pre_caption

    @property
    def grid_size(self) -> int:
        return self.image_res // self.patch_size

    @property
    def fusion_layers(self) -> list[int]:
        return list(range(self.bert.fusion_layer, self.bert.num_hidden_layers))

    def __post_init__(self) -> None:
        if self.image_res % self.patch_size:
            raise ValueError(f"image_res {self.image_res} is not a multiple of patch_size {self.patch_size}")
        if not self.bert.fusion_layer <= self.gradcam_block < self.bert.num_hidden_layers:
            raise ValueError(
                f"gradcam_block {self.gradcam_block} is not a fusion layer "
                f"({self.bert.fusion_layer}..{self.bert.num_hidden_layers - 1})"
            )
        if self.bert.encoder_width != self.vision.embed_dim:
            raise ValueError(
                f"bert.encoder_width {self.bert.encoder_width} != vision.embed_dim {self.vision.embed_dim}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ALBEFConfig:
        """Build from the JSON layout; unknown keys (e.g. `checkpoint_format`, HF's `architectures`) are ignored."""
        top = _known(cls, d)
        top["vision"] = VisionConfig(**_known(VisionConfig, d.get("vision", {})))
        top["bert"] = BertConfig(**_known(BertConfig, d.get("bert", {})))
        return cls(**top)

    @classmethod
    def from_json(cls, path: str | Path) -> ALBEFConfig:
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read config {path}: {e}") from e
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _known(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)} - {"vision", "bert"}
    return {k: v for k, v in d.items() if k in names}
