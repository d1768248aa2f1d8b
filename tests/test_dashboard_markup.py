"""Dataset text shown as text: dashboard.markup escapes captions, words and paths for Markdown and Plotly."""

import html
import re

import pandas as pd
import pytest

from dashboard import markup

HOSTILE = [
    "![x](http://127.0.0.1:9/beacon.png)",
    '<img src="http://127.0.0.1:9/b.png"> <script>alert(1)</script> &lt;',
    "**bold** _it_ `code` ~~gone~~ $x^2$ [link](javascript:alert(1)) <http://127.0.0.1:9/>",
    ":red[colour] :material/home: :smile: # heading\n\n- item\n1. item\n> quote\n===",
    "back\\slash \\*still\\* | a | b |\r\nnext line\u2028and more",
]


def unescaped(markdown: str) -> str:
    """What CommonMark shows for text with backslash escapes only: each escaped character as itself."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown)


@pytest.mark.parametrize("text", HOSTILE)
def test_literal_escapes_every_markup_character(text):
    shown = markup.literal(text)
    assert unescaped(shown) == " ".join(text.splitlines())  # shows the text, its line breaks as spaces
    assert "\n" not in shown and "\r" not in shown
    assert not re.search(r"[!-/:-@\[-`{-~]", re.sub(r"\\.", "", shown))  # no punctuation left unescaped


@pytest.mark.parametrize("text", ["/data/coco/val2017", "a`b``c", "`", "two\n\nparagraphs"])
def test_code_fence_outlasts_any_backtick_run_inside(text):
    shown = markup.code(text)
    fence = shown[: len(shown) - len(shown.lstrip("`"))]
    assert shown == f"{fence} {' '.join(text.splitlines())} {fence}"
    assert fence not in shown[len(fence) : -len(fence)] and "\n" not in shown


def test_marked_caption_highlights_one_literal_word():
    assert markup.marked_caption("a dog on a sofa", 1) == "a :yellow-background[dog] on a sofa"
    assert markup.marked_caption("a dog", None) == "a dog" == markup.marked_caption("a dog", 9)
    assert markup.marked_caption("![x](y) dog", 0) == r":yellow-background[\!\[x\]\(y\)] dog"


@pytest.mark.parametrize("text", HOSTILE)
def test_plotly_labels_hold_no_tags_and_give_the_text_back(text):
    frame = markup.plotly_labels(pd.DataFrame({"word": [text], "n": [1]}), "word")
    label = frame["word"].iloc[0]
    assert "<" not in label and ">" not in label and html.unescape(label) == text
    assert frame["n"].iloc[0] == 1
