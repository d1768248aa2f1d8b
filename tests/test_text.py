import json

import numpy as np
import pytest

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
