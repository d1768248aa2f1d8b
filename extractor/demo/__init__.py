"""The embedded demo: a synthetic COCO-format world of coloured shapes and a tiny ALBEF trained on it."""
