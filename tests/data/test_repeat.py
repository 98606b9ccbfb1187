"""Repeated-data mixer: exact repeat counts, placement, content, determinism, untouched val."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from overtrain.config import ConfigError, validate
from overtrain.data.base import TokenSource
from overtrain.data.hmm import HMMConfig
from overtrain.data.repeat import RepeatConfig, _permute
from overtrain.errors import DataError
from overtrain.registry import DATASETS

BASE = {
    "name": "hmm",
    "states": 4,
    "vocab_size": 8,
    "emission_alpha": 1.0,
}  # ~1.7 nats/token: no chance collisions
T = 16


def build(**kw):
    return validate(RepeatConfig, {"base": BASE, "total_tokens": 4000 * T, **kw}).build()


def all_ids(src, batch_size, batches):
    return np.concatenate([src.subset_ids(i, batch_size, T) for i in range(batches)])


def test_registered_and_protocol():
    assert DATASETS.get("repeat") is RepeatConfig
    src = build()
    assert isinstance(src, TokenSource)
    assert src.vocab_size == 8


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 64, 1000, 4097])
def test_feistel_permutation_is_a_bijection(n):
    assert np.array_equal(np.sort(_permute(np.arange(n), n, key=11)), np.arange(n))
    # and it actually shuffles
    if n >= 17:
        assert not np.array_equal(_permute(np.arange(n), n, key=11), np.arange(n))


@pytest.mark.parametrize(("fraction", "repeats"), [(0.1, 4), (0.25, 7), (0.05, 200)])
def test_exact_repeat_counts(fraction, repeats):
    src = build(fraction=fraction, repeats=repeats)
    lay = src.layout(T)
    assert lay.sequences == 4000
    assert lay.subset == round(fraction * 4000 / repeats)
    assert lay.repeated == lay.subset * repeats
    # batch size 48 does not divide N: the last batch straddles the budget, and the next is past it
    ids = all_ids(src, 48, 4000 // 48 + 2)
    inside, beyond = ids[:4000], ids[4000:]
    counts = np.bincount(inside[inside >= 0], minlength=lay.subset)
    assert np.all(counts == repeats)
    assert (inside >= 0).sum() == lay.repeated
    assert np.all(beyond == -1)  # training past the budget is all unique


@pytest.mark.parametrize(("fraction", "repeats"), [(0.1, 1), (0.1, 3), (0.3, 64), (0.01, 40)])
def test_realised_fraction_is_f_up_to_rounding_of_the_subset(fraction, repeats):
    """R / N = round(f·N/E)·E / N lies within E/(2N) of f: the subset size is the only rounding."""
    src = build(fraction=fraction, repeats=repeats)
    ids = all_ids(src, 64, 4000 // 64 + 1)[:4000]
    realised = (ids >= 0).mean()
    assert realised == src.layout(T).repeated / 4000
    assert abs(realised - fraction) <= repeats / (2 * 4000) + 1e-12


def test_positions_do_not_depend_on_batch_size():
    src = build()
    assert np.array_equal(all_ids(src, 40, 10), all_ids(src, 8, 50))


def test_repeats_spread_through_training():
    """The placement is a shuffle: repeats land in both halves of the budget in similar numbers."""
    ids = all_ids(build(fraction=0.2, repeats=4), 100, 40)
    first, second = (ids[:2000] >= 0).sum(), (ids[2000:] >= 0).sum()
    assert first + second == 800
    assert abs(first - second) < 4 * np.sqrt(800 * 0.25)  # hypergeometric sd is below sqrt(n p q)


def test_batch_content():
    src = build(fraction=0.2, repeats=4)
    base = HMMConfig(**{k: v for k, v in BASE.items() if k != "name"}).build()
    seen: dict[int, torch.Tensor] = {}
    for index in range(30):
        x = src.batch("train", index, 32, T)
        assert x.shape == (32, T) and x.dtype == torch.int64
        ids = src.subset_ids(index, 32, T)
        unique = base.batch("train", index, 32, T)
        assert torch.equal(x[ids < 0], unique[ids < 0])  # unique rows are the base's own train rows
        for row, k in zip(x[ids >= 0], ids[ids >= 0]):
            if k in seen:
                assert torch.equal(row, seen[k])  # the same subset sequence every time it appears
            seen[k] = row
        assert torch.equal(x, src.batch("train", index, 32, T))
    assert len(seen) > 1
    distinct = torch.stack(list(seen.values()))
    assert torch.unique(distinct, dim=0).shape[0] == len(seen)  # different ids, different sequences
    # the `repeated` split walks through the same subset sequences
    subset = src.batch("repeated", 0, src.layout(T).subset, T)
    for k, row in seen.items():
        assert torch.equal(subset[k], row)


def test_val_is_base_val_and_floor_is_base_floor():
    src = build()
    base = HMMConfig(**{k: v for k, v in BASE.items() if k != "name"}).build()
    assert torch.equal(src.batch("val", 3, 8, T), base.batch("val", 3, 8, T))
    assert src.loss_floor(T) == base.loss_floor(T)
    assert src.tokenizer()("t1 t7").input_ids == [1, 7]


def test_default_base_is_copy_spans():
    src = RepeatConfig(total_tokens=24000 * 128).build()
    assert src.cfg.base.name == "copy" and src.cfg.base.mode == "spans"
    lay = src.layout(128)
    assert (lay.sequences, lay.subset, lay.repeated) == (
        24000,
        24,
        2400,
    )  # Hernandez et al. 2022's layout at E = 100 (docs/repeated_data.md)
    assert src.loss_floor(128) is None


def test_missing_total_tokens_is_data_error():
    cfg = validate(RepeatConfig, {"base": BASE})
    with pytest.raises(DataError, match="set total_tokens"):
        cfg.build()


def test_empty_subset_is_data_error():
    src = validate(RepeatConfig, {"base": BASE, "total_tokens": 100 * T, "repeats": 1000}).build()
    with pytest.raises(DataError, match="rounds to 0"):
        src.batch("train", 0, 4, T)


def test_unknown_split_is_data_error():
    with pytest.raises(DataError, match="split"):
        build().batch("test", 0, 4, T)


@pytest.mark.parametrize(
    ("data", "text"),
    [
        ({"fraction": 1.0}, "fraction"),
        ({"repeats": 0}, "repeats"),
        ({"total_tokens": "2x"}, "total_tokens"),
        ({"base": {"name": "hmmm"}}, "did you mean 'hmm'"),
    ],
)
def test_bad_config_is_config_error(data, text):
    with pytest.raises(ConfigError, match=text):
        validate(RepeatConfig, data)


def test_count_accepts_suffixes():
    assert validate(RepeatConfig, {"total_tokens": "3M"}).total_tokens == 3_000_000
