"""Row-wise mixture of data sources: each sequence of a batch comes whole from one source.

Row ``r`` of batch ``(split, index)`` comes from source ``k`` with probability ``w_k / Σw``; the choice is
drawn from ``numpy_rng(seed, "mixture", split, index, batch_size)``, and the row's tokens are row ``r`` of
source k's own batch ``(split, index)``, so the batch is deterministic in ``(config, split, index,
batch_size, seq_len)`` like every `TokenSource`. Every source is asked for the whole batch and the rows
are picked from it: K sources cost K batches (the synthetic sources here generate a batch in
milliseconds).

The repeated-data study mixes the copied-spans language with [random block; same block] sequences
(`overtrain.data.copy`): the pure copy rows make an induction head form within a few hundred steps,
which the spans language alone does not do at this scale (docs/repeated_data.md).
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field, model_validator

from overtrain.config import Registered
from overtrain.data.base import DataConfig, TokenSource
from overtrain.data.copy import CopyConfig
from overtrain.errors import DataError
from overtrain.registry import DATASETS
from overtrain.seed import numpy_rng

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast


def _default_sources() -> list:
    return [CopyConfig(mode="spans", vocab_size=64), CopyConfig(mode="repeat", vocab_size=64)]


@DATASETS.register("mixture")
class MixtureConfig(DataConfig):
    """Sequences drawn whole from one of several sources, with given weights."""

    name: Literal["mixture"] = "mixture"
    """Registered dataset name."""

    sources: list[Registered(DATASETS)] = Field(default_factory=_default_sources, min_length=1)
    """The sources, by name with their settings; they must share one vocabulary size."""

    weights: list[float] = [0.75, 0.25]
    """Relative frequency of each source's rows (normalised to sum to 1)."""

    seed: int = Field(0, ge=0)
    """Seed of which source each row comes from."""

    @model_validator(mode="after")
    def _weights(self) -> MixtureConfig:
        if len(self.weights) != len(self.sources):
            raise ValueError(
                f"give one weight per source: {len(self.sources)} sources, {len(self.weights)} weights"
            )
        if any(w <= 0 for w in self.weights):
            raise ValueError(f"weights must be positive, got {self.weights}")
        return self

    def build(self) -> MixtureSource:
        return MixtureSource(self)


class MixtureSource:
    """Indexed batches of a row-wise mixture (a `TokenSource`)."""

    def __init__(self, cfg: MixtureConfig) -> None:
        self.cfg = cfg
        self.sources: list[TokenSource] = [s.build() for s in cfg.sources]
        sizes = sorted({s.vocab_size for s in self.sources})
        if len(sizes) > 1:
            raise DataError(f"mixture: every source must have the same vocab_size, got {sizes}")
        self.vocab_size = sizes[0]
        w = np.asarray(cfg.weights, dtype=np.float64)
        self.probs = w / w.sum()

    def choices(self, split: str, index: int, batch_size: int) -> np.ndarray:
        """The source of each row of batch `index` of `split`: int64 ``(batch_size,)`` in ``[0, K)``."""
        u = numpy_rng(self.cfg.seed, "mixture", split, index, batch_size).random(batch_size)
        cdf = np.cumsum(self.probs)
        return np.minimum(np.searchsorted(cdf, u, side="right"), len(self.sources) - 1)

    def batch(self, split: str, index: int, batch_size: int, seq_len: int) -> torch.Tensor:
        """Batch `index` of `split`: row r is row r of its source's batch `index`."""
        import torch

        which = self.choices(split, index, batch_size)
        out: torch.Tensor | None = None
        for k, source in enumerate(self.sources):
            rows = np.flatnonzero(which == k)
            if not len(rows) and out is not None:
                continue
            x = source.batch(split, index, batch_size, seq_len)
            if out is None:
                out = x.clone()
            else:
                out[torch.from_numpy(rows)] = x[torch.from_numpy(rows)]
        assert out is not None
        return out

    def loss_floor(self, seq_len: int) -> float | None:
        """None: a Bayes-optimal predictor must also infer each row's source from its context, so the
        weighted mean of the sources' floors is only a lower bound."""
        return None

    @cached_property
    def _tokenizer(self) -> PreTrainedTokenizerFast:
        return self.sources[0].tokenizer()

    def tokenizer(self) -> PreTrainedTokenizerFast:
        """The first source's tokenizer (the sources share the vocabulary)."""
        return self._tokenizer
