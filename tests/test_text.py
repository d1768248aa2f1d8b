import json
import re

import numpy as np
import pytest

from extractor.categories import COCO_CATEGORIES, match_words
from extractor.maps import merge_pieces
from extractor.text import Tokenizer, batch_tensors, pre_caption


@pytest.fixture(scope="module")
def tokenizer(shared):
    return Tokenizer(shared / "bert-base-uncased" / "vocab.txt", max_tokens=40)


@pytest.mark.parametrize("name", ["finetuned-tiny", "pretrain-tiny"])
def test_cleaning_and_pieces_match_albef(shared, tokenizer, name):
    for case in json.loads((shared / "fixtures" / "albef-reference" / name / "cases.json").read_text()):
        for raw, pre, ids in zip(case["captions"], case["pre_captions"], case["input_ids"], strict=True):
            assert pre_caption(raw, 30) == pre
            assert tokenizer([pre])[0].input_ids == ids


def test_pieces_merge_back_to_the_cleaned_words(tokenizer):
    cap = tokenizer([pre_caption("Marshmellows & sprinkels on a café table", 30)])[0]
    assert cap.words == ["marshmellows", "&", "sprinkels", "on", "a", "café", "table"]
    assert cap.word_of_token[0] == -1 and len(cap.word_of_token) == len(cap.input_ids)
    assert cap.n_pieces[0] > 1 and sum(cap.n_pieces) == len(cap.input_ids) - 1
    assert sorted(set(cap.word_of_token[1:])) == list(range(len(cap.words)))


def test_word_limit_and_token_limit(tokenizer):
    long = " ".join(["supercalifragilistic"] * 50)
    assert len(pre_caption(long, 30).split()) == 30
    cap = tokenizer([pre_caption(long, 30)])[0]
    assert len(cap.input_ids) <= 40
    assert cap.n_pieces == [cap.n_pieces[0]] * len(cap.words)  # only whole words are kept


def test_non_ascii_and_empty(tokenizer):
    assert pre_caption("  ...!!  ", 30) == ""
    assert tokenizer([""])[0].words == []
    cap = tokenizer([pre_caption("Ein Hund läuft über die Straße 🐕", 30)])[0]
    assert cap.words[-1] == "🐕" and len(cap.words) == 7


def test_batch_is_right_padded(tokenizer):
    caps = tokenizer(["a dog", "a very small brown dog on a sofa"])
    ids, mask = batch_tensors(caps)
    assert ids.shape == mask.shape == (2, len(caps[1].input_ids))
    assert mask[0].tolist() == [1, 1, 1] + [0] * (ids.shape[1] - 3)
    assert ids[0, 3:].eq(0).all()


def test_word_maps_are_the_mean_of_their_pieces_maps(tokenizer):
    cap = tokenizer([pre_caption("Marshmellows & sprinkels on a café table", 30)])[0]
    rng = np.random.default_rng(0)
    token_maps = rng.random((len(cap.input_ids), 3, 3), dtype=np.float32)
    words = merge_pieces(token_maps, cap.word_of_token, len(cap.words))
    owner = np.array(cap.word_of_token)
    assert words.shape == (len(cap.words), 3, 3) and words.dtype == np.float32
    for w in range(len(cap.words)):  # [CLS] (owner -1) belongs to no word
        np.testing.assert_allclose(words[w], token_maps[owner == w].mean(0), rtol=1e-6)


def albef_pre_caption(caption: str, max_words: int) -> str:
    """ALBEF's dataset/utils.py::pre_caption verbatim: the reference our cleaning must not change."""
    caption = re.sub(r"([,.'!?\"()*#:;~])", "", caption.lower()).replace("-", " ").replace("/", " ")
    caption = caption.replace("<person>", "person")
    caption = re.sub(r"\s{2,}", " ", caption)
    caption = caption.rstrip("\n")
    caption = caption.strip(" ")
    words = caption.split(" ")
    if len(words) > max_words:
        caption = " ".join(words[:max_words])
    return caption


DOG = next(cid for cid, c in COCO_CATEGORIES.items() if c.name == "dog")
INVISIBLE = {"NUL": "\x00", "zero-width space": "\u200b", "zero-width non-joiner": "\u200c",
             "zero-width joiner": "\u200d", "word joiner": "\u2060", "BOM": "\ufeff", "soft hyphen": "\u00ad",
             "escape": "\x1b", "delete": "\x7f", "replacement character": "\ufffd"}  # fmt: skip


@pytest.mark.parametrize("char", INVISIBLE.values(), ids=INVISIBLE.keys())
def test_invisible_characters_inside_a_word_are_removed(tokenizer, char):
    raw = f"{char}A d{char}og on a{char} mat."
    assert pre_caption(raw, 30) == "a dog on a mat"
    words = tokenizer([pre_caption(raw, 30)])[0].words
    assert match_words(words) == [None, DOG, None, None, None]
    # ALBEF's tokenizer drops the same characters: the model reads the same pieces as before.
    assert tokenizer([pre_caption(raw, 30)])[0].input_ids == tokenizer([albef_pre_caption(raw, 30)])[0].input_ids


@pytest.mark.parametrize(
    "space", ["\t", "\n", "\r", "\u00a0", "\u3000"], ids=["tab", "newline", "CR", "no-break", "ideographic"]
)
def test_any_space_between_words_separates_them(tokenizer, space):
    raw = f"A{space}dog on a mat\n"
    assert pre_caption(raw, 30) == "a dog on a mat"
    assert tokenizer([pre_caption(raw, 30)])[0].input_ids == tokenizer([albef_pre_caption(raw, 30)])[0].input_ids


def test_every_coco_caption_is_cleaned_as_albef_cleans_it(shared):
    captions = json.loads((shared / "coco" / "captions-full" / "captions_val2017.json").read_text())["annotations"]
    assert sum(not c["caption"].isprintable() for c in captions) > 50  # line breaks and tabs among them
    assert [pre_caption(c["caption"], 30) for c in captions] == [albef_pre_caption(c["caption"], 30) for c in captions]
