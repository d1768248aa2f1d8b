"""ALBEF per-word cross-attention extraction over COCO."""

__version__ = "0.2.0"  # part of every run id: a change of what rows mean starts new runs
