"""Row-wise mixture of sources: rows come whole from one source, in the given proportions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from overtrain.config import ConfigError, validate
from overtrain.data.base import TokenSource
from overtrain.data.copy import CopyConfig
from overtrain.data.mixture import MixtureConfig
from overtrain.errors import DataError
from overtrain.registry import DATASETS

SPANS = {"name": "copy", "mode": "spans", "vocab_size": 16, "spans": [1, 2], "span_len": [2, 4]}
COPY = {"name": "copy", "mode": "repeat", "vocab_size": 16}
T = 16


def build(weights=(0.7, 0.3)):
    return validate(MixtureConfig, {"sources": [SPANS, COPY], "weights": list(weights)}).build()


def test_registered_and_protocol():
    assert DATASETS.get("mixture") is MixtureConfig
    src = build()
    assert isinstance(src, TokenSource) and src.vocab_size == 16
    assert src.loss_floor(T) is None
    assert src.tokenizer()("t1 t7").input_ids == [1, 7]


def test_rows_are_their_sources_rows_and_deterministic():
    src = build()
    spans, copy = (
        validate(CopyConfig, {k: v for k, v in s.items() if k != "name"}).build() for s in (SPANS, COPY)
    )
    for split in ("train", "val"):
        for index in (0, 5):
            x = src.batch(split, index, 32, T)
            which = torch.from_numpy(src.choices(split, index, 32))
            assert torch.equal(x[which == 0], spans.batch(split, index, 32, T)[which == 0])
            assert torch.equal(x[which == 1], copy.batch(split, index, 32, T)[which == 1])
            assert torch.equal(x, src.batch(split, index, 32, T))
    assert not torch.equal(src.batch("train", 0, 32, T), src.batch("val", 0, 32, T))


def test_proportions_follow_the_weights():
    src = build((3.0, 1.0))  # weights are normalised
    share = np.mean([src.choices("train", i, 64) for i in range(100)])
    assert share == pytest.approx(0.25, abs=4 * np.sqrt(0.25 * 0.75 / 6400))


def test_vocab_sizes_must_match():
    with pytest.raises(DataError, match="same vocab_size"):
        validate(MixtureConfig, {"sources": [SPANS, {**COPY, "vocab_size": 32}], "weights": [1, 1]}).build()


@pytest.mark.parametrize(
    ("data", "text"),
    [
        ({"weights": [1.0]}, "one weight per source"),
        ({"weights": [1.0, 0.0]}, "positive"),
        ({"sources": []}, "sources"),
    ],
)
def test_bad_config_is_config_error(data, text):
    with pytest.raises(ConfigError, match=text):
        validate(MixtureConfig, {"sources": [SPANS, COPY], **data})
