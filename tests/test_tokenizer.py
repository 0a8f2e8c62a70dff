"""The toy CLIP's word tokenizer follows open_clip's id conventions."""

from __future__ import annotations

import torch

from medclipsam.models.tokenizer import WordTokenizer


def test_ids_padding_and_eot_is_the_largest_id():
    tok = WordTokenizer.from_texts(["breast tumor", "brain tumor"], context_length=6)
    ids = tok(["Breast TUMOR!", "kidney"])
    assert ids.shape == (2, 6) and ids.dtype == torch.long
    assert ids[0, 0] == tok.sot_id and ids[0, 3] == tok.eot_id and ids[0, 4:].eq(0).all()
    assert ids[1, 1] == tok.unk_id, "unknown words map to <unk>"
    assert int(ids.argmax(-1)[0]) == 3, "open_clip pools at the arg-max token: <eot> must be largest"
    assert tok.words("breast kidney") == ["breast", "<unk>"]


def test_truncation_keeps_eot_and_config_round_trip():
    tok = WordTokenizer.from_texts(["a b c d e f g"], context_length=5)
    ids = tok("a b c d e f g")
    assert ids[0, -1] == tok.eot_id
    again = WordTokenizer.from_config(tok.to_config())
    assert torch.equal(again("a b c"), tok("a b c")) and again.vocab == tok.vocab


def test_vocabulary_does_not_depend_on_corpus_order():
    a = WordTokenizer.from_texts(["x y", "z"])
    b = WordTokenizer.from_texts(["z", "y x"])
    assert a.vocab == b.vocab
