"""Local tokenizers: ids, bytes and a tiny trained BPE, each surviving save_pretrained + AutoTokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from overtrain.data.tokenizer import EOS_TOKEN, byte_tokenizer, id_tokenizer, train_bpe
from overtrain.errors import DataError

EXCERPT = Path(__file__).parents[2] / "src/overtrain/data/fixtures/shakespeare_excerpt.txt"
UNICODE = "Héllo wörld — 日本語 🙂\n\ttabs and  double  spaces\r\n"


def reloaded(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    return AutoTokenizer.from_pretrained(tmp_path)


def test_id_tokenizer(tmp_path):
    tok = id_tokenizer(10)
    assert len(tok) == 10 and tok.all_special_tokens == []
    assert tok("t9 t0 t3").input_ids == [9, 0, 3]
    assert tok.decode([9, 0, 3]) == "t9 t0 t3"
    again = reloaded(tok, tmp_path)
    assert again("t9 t0 t3").input_ids == [9, 0, 3]
    # no unknown token: a word outside the language cannot be encoded (tokenizers raises a bare Exception)
    with pytest.raises(Exception, match="Missing \\[UNK\\] token"):  # noqa: B017
        tok("t10")
    with pytest.raises(DataError):
        id_tokenizer(0)


def test_byte_tokenizer_ids_are_bytes_and_round_trip(tmp_path):
    tok = byte_tokenizer()
    assert len(tok) == 256 and tok.all_special_tokens == []
    ids = tok(UNICODE).input_ids
    assert ids == list(UNICODE.encode("utf-8"))
    assert tok.decode(ids) == UNICODE
    every_byte = bytes(range(256)).decode("latin-1")  # all 256 code points <= U+00FF
    assert tok.decode(tok(every_byte).input_ids) == every_byte
    again = reloaded(tok, tmp_path)
    assert again(UNICODE).input_ids == ids
    assert again.decode(ids) == UNICODE


def test_train_bpe_round_trip_and_reload(tmp_path):
    text = EXCERPT.read_text()
    tok = train_bpe([text], 320)
    assert tok.eos_token == EOS_TOKEN and tok.eos_token_id == 0
    assert 257 < len(tok) <= 320
    ids = tok(text).input_ids
    assert len(ids) < len(text.encode()) / 1.3  # merges compress the text they were trained on
    assert tok.decode(ids) == text
    assert tok.decode(tok(UNICODE).input_ids) == UNICODE  # unseen characters still encode, via bytes
    again = reloaded(tok, tmp_path)
    assert again(text).input_ids == ids
    assert again.eos_token_id == 0


def test_train_bpe_is_deterministic():
    text = EXCERPT.read_text()
    assert train_bpe([text], 300).get_vocab() == train_bpe([text], 300).get_vocab()


def test_train_bpe_vocab_too_small():
    with pytest.raises(DataError, match="at least 257"):
        train_bpe(["abc"], 200)
