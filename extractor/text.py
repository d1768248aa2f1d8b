"""Captions as ALBEF reads them: `pre_caption` cleaning, then BERT uncased WordPiece with [CLS], no [SEP].

Each word piece remembers which space-separated word of the cleaned caption it came from, so the
per-piece maps can be merged back into whole words.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import BertWordPieceTokenizer

CLS_ID = 101
_STRIP = re.compile(r"([,.'!?\"()*#:;~])")
_SPACES = re.compile(r"\s{2,}")
_REPLACEMENT = "\ufffd"


def _visible_char(char: str) -> str:
    category = unicodedata.category(char)
    if char in "\t\n\r" or category == "Zs":
        return " "
    return "" if category in ("Cc", "Cf") or char == _REPLACEMENT else char


def _visible_text(text: str) -> str:
    """BERT's own text cleaning: tabs, line breaks and Unicode spaces as a space; control characters
    (NUL, ...), invisible format characters (zero-width spaces and joiners, BOM, soft hyphen) and
    U+FFFD removed.

    ALBEF's tokenizer cleans the same way before it splits words, so its pieces are unchanged; done
    first, it also makes a word with a zero-width space inside one word, and "a<TAB>dog" two.
    """
    if text.isprintable() and _REPLACEMENT not in text:  # the common case, without a per-character loop
        return text
    return "".join(map(_visible_char, text))


def pre_caption(caption: str, max_words: int) -> str:
    """ALBEF's `dataset/utils.py::pre_caption`, character for character, after BERT's own cleaning (`_visible_text`)."""
    caption = _visible_text(caption)
    caption = _STRIP.sub("", caption.lower()).replace("-", " ").replace("/", " ").replace("<person>", "person")
    caption = _SPACES.sub(" ", caption)
    caption = caption.rstrip("\n").strip(" ")
    words = caption.split(" ")
    if len(words) > max_words:
        caption = " ".join(words[:max_words])
    return caption


@dataclass
class TokenizedCaption:
    text: str  # the cleaned caption
    words: list[str]  # its space-separated words that kept at least one piece
    input_ids: list[int]  # [CLS] + word pieces
    word_of_token: list[int]  # per token: index into `words`, -1 for [CLS]

    @property
    def n_pieces(self) -> list[int]:
        return [self.word_of_token.count(i) for i in range(len(self.words))]


class Tokenizer:
    """bert-base-uncased WordPiece as ALBEF's BertTokenizer applies it (lower-case, accents stripped)."""

    def __init__(self, vocab_path: str | Path, max_tokens: int = 512):
        vocab_path = Path(vocab_path)
        if not vocab_path.is_file():
            raise FileNotFoundError(f"vocab file not found: {vocab_path} (bert-base-uncased vocab.txt)")
        self._tok = BertWordPieceTokenizer(str(vocab_path), lowercase=True)
        self.max_tokens = max_tokens

    def __call__(self, texts: list[str]) -> list[TokenizedCaption]:
        """Tokenize cleaned captions; pieces beyond `max_tokens` are dropped with their whole word."""
        encodings = self._tok.encode_batch(texts, add_special_tokens=False)
        return [self._caption(text, enc.ids, enc.offsets) for text, enc in zip(texts, encodings, strict=True)]

    def _caption(self, text: str, ids: list[int], offsets: list[tuple[int, int]]) -> TokenizedCaption:
        word_at = _word_index_per_char(text)
        word_of_token = [word_at[start] for start, _ in offsets]
        if len(ids) + 1 > self.max_tokens:
            last_word = word_of_token[self.max_tokens - 1]  # first word that does not fit whole
            keep = sum(1 for w in word_of_token if w < last_word)
            ids, word_of_token = ids[:keep], word_of_token[:keep]
        all_words = text.split(" ")
        n_words = max(word_of_token) + 1 if word_of_token else 0
        words = all_words[:n_words]
        # Words that yield no piece at all (e.g. only control characters) keep no row; renumber densely.
        used = sorted(set(word_of_token))
        if used != list(range(n_words)):
            remap = {w: i for i, w in enumerate(used)}
            words = [all_words[w] for w in used]
            word_of_token = [remap[w] for w in word_of_token]
        return TokenizedCaption(text, words, [CLS_ID, *ids], [-1, *word_of_token])


def _word_index_per_char(text: str) -> list[int]:
    index, w = [], 0
    for ch in text:
        index.append(w)
        if ch == " ":
            w += 1
    return index


def batch_tensors(captions: list[TokenizedCaption]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) input ids and attention mask, as ALBEF's tokenizer(padding='longest')."""
    T = max(len(c.input_ids) for c in captions)
    ids = torch.zeros(len(captions), T, dtype=torch.long)
    mask = torch.zeros(len(captions), T, dtype=torch.long)
    for i, c in enumerate(captions):
        ids[i, : len(c.input_ids)] = torch.tensor(c.input_ids)
        mask[i, : len(c.input_ids)] = 1
    return ids, mask
