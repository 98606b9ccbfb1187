"""Copy/induction streams: structure of both modes, closed-form floor, bigram law, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from overtrain.config import validate
from overtrain.data.base import TokenSource
from overtrain.data.copy import CopyConfig, copy_eval_batch
from overtrain.errors import ConfigError, DataError
from overtrain.registry import DATASETS
from overtrain.seed import numpy_rng


def test_registered_and_protocol():
    assert DATASETS.get("copy") is CopyConfig
    assert isinstance(CopyConfig().build(), TokenSource)


@pytest.mark.parametrize("seq_len", [2, 3, 8, 9])
def test_repeat_mode_second_block_copies_first(seq_len):
    src = CopyConfig(mode="repeat", vocab_size=11).build()
    x, copied = src.batch_with_mask("train", 0, 64, seq_len)
    block = math.ceil(seq_len / 2)
    assert x.shape == (64, seq_len) and x.dtype == torch.int64
    assert torch.equal(x[:, block:], x[:, : seq_len - block])
    assert copied[:, block:].all() and not copied[:, :block].any()
    assert int(x.min()) >= 0 and int(x.max()) < 11


def test_repeat_floor_closed_form():
    src = CopyConfig(mode="repeat", vocab_size=64).build()
    log_v = math.log(64)
    assert src.loss_floor(2) == 0.0  # the only prediction is the copy of token 0
    assert src.loss_floor(3) == pytest.approx(log_v / 2)
    assert src.loss_floor(9) == pytest.approx(log_v / 2)  # odd: (ceil(T/2) - 1) / (T - 1) = 1/2
    assert src.loss_floor(64) == pytest.approx(31 * log_v / 63)
    with pytest.raises(DataError, match="seq_len >= 2"):
        src.loss_floor(1)


def test_repeat_first_block_is_uniform():
    """Block tokens are iid uniform: a chi-square test on all first-block tokens (p = 1e-6)."""
    x = CopyConfig(mode="repeat", vocab_size=16).build().batch("train", 0, 2000, 16)[:, :8]
    counts = np.bincount(x.flatten().numpy(), minlength=16)
    expected = x.numel() / 16
    assert ((counts - expected) ** 2 / expected).sum() < stats.chi2.ppf(1 - 1e-6, 15)


def test_copy_eval_batch_is_repeat_val_split():
    x = copy_eval_batch(32, 4, 10, seed=3, index=2)
    assert x.shape == (4, 20)
    assert torch.equal(x[:, 10:], x[:, :10])
    same = CopyConfig(mode="repeat", vocab_size=32, seed=3).build().batch("val", 2, 4, 20)
    assert torch.equal(x, same)
    with pytest.raises(DataError):
        copy_eval_batch(32, 4, 0)


def test_spans_copy_earlier_tokens_exactly():
    src = CopyConfig(vocab_size=64, spans=(2, 3), span_len=(4, 6)).build()
    tokens, offset = src._spans(numpy_rng("spans-test"), 300, 48)
    copied = offset > 0
    rows, cols = np.nonzero(copied)
    # every copied token equals the token it copies, which lies strictly earlier
    assert np.all(cols - offset[rows, cols] >= 0)
    np.testing.assert_array_equal(tokens[rows, cols], tokens[rows, cols - offset[rows, cols]])
    # 2..3 spans of 4..6 tokens per row
    per_row = copied.sum(axis=1)
    assert per_row.min() >= 2 * 4 and per_row.max() <= 3 * 6
    assert set(np.unique(per_row)) >= {8, 18}  # both extremes occur in 300 rows
    # a span of >= 4 tokens copies a source that ends at or before the span's start
    assert offset[copied].min() >= 4


def test_spans_batch_mask_matches_structure():
    src = CopyConfig().build()
    x, copied = src.batch_with_mask("train", 5, 8, 128)
    assert x.shape == copied.shape == (8, 128)
    per_row = copied.sum(dim=1)
    assert bool(((per_row >= 16) & (per_row <= 48)).all())  # 2..3 spans of 8..16 tokens
    assert not bool(copied[:, :8].any())  # the first span needs a source of >= 8 tokens before it


def test_spans_background_is_the_zipf_bigram():
    """Given the previous token, a non-copied token is a fresh draw from that token's row: chi-square
    on the successors of the most frequent token."""
    src = CopyConfig(vocab_size=16, zipf=1.1, spans=(1, 1), span_len=(2, 2)).build()
    np.testing.assert_allclose(src.bigram.sum(axis=1), 1.0)
    # every row is a permutation of the same Zipf law
    np.testing.assert_allclose(np.sort(src.bigram, axis=1)[:, ::-1], np.tile(src.zipf_law, (16, 1)))
    tokens, offset = src._spans(numpy_rng("bigram-test"), 4000, 32)
    prev, nxt = tokens[:, :-1], tokens[:, 1:]
    fresh = offset[:, 1:] == 0
    a = np.bincount(prev[fresh], minlength=16).argmax()
    counts = np.bincount(nxt[fresh & (prev == a)], minlength=16)
    expected = counts.sum() * src.bigram[a]
    assert ((counts - expected) ** 2 / expected).sum() < stats.chi2.ppf(1 - 1e-6, 15)


def test_spans_floor_none_and_bigram_entropy():
    src = CopyConfig().build()
    assert src.loss_floor(128) is None
    assert src.bigram_entropy_rate() == pytest.approx(3.9969, abs=1e-4)  # ~4.0 nats (docs/repeated_data.md)
    with pytest.raises(DataError, match="spans"):
        CopyConfig(mode="repeat").build().bigram_entropy_rate()


def test_spans_too_short_sequence_is_data_error():
    with pytest.raises(DataError, match="seq_len 32 is too short"):
        CopyConfig().build().batch("train", 0, 2, 32)


def test_determinism_and_splits():
    a, b = CopyConfig(seed=1).build(), CopyConfig(seed=1).build()
    x = a.batch("train", 7, 4, 64)
    assert torch.equal(x, b.batch("train", 7, 4, 64))
    assert not torch.equal(x, a.batch("val", 7, 4, 64))
    assert not torch.equal(x, a.batch("train", 8, 4, 64))
    assert not torch.equal(x, CopyConfig(seed=2).build().batch("train", 7, 4, 64))


def test_tokenizer_covers_vocab():
    tok = CopyConfig(vocab_size=7).build().tokenizer()
    assert len(tok) == 7
    assert tok("t6 t0").input_ids == [6, 0]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"spans": [3, 2]}, "spans"),
        ({"span_len": [0, 4]}, "span_len"),
        ({"mode": "shuffle"}, "mode"),
        ({"vocab_size": 1}, "vocab_size"),
    ],
)
def test_bad_config_is_config_error(data, field):
    with pytest.raises(ConfigError) as info:
        validate(CopyConfig, data)
    assert field in str(info.value) and "\n" not in str(info.value)
