"""ALBEF per-word cross-attention extraction over COCO."""

__version__ = "0.1.0"
