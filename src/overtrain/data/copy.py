"""Copy and induction streams: sequences in which copying earlier tokens is the way to a low loss.

Two modes:

- ``repeat`` — the pure induction task (Olsson et al. 2022): a block of ``L = ceil(T/2)`` uniformly random
  tokens followed by the same block, cut to ``T`` tokens (for odd ``T`` the copy is one token short).
  Tokens ``1..L-1`` of the block are unpredictable (``log V`` nats each) and every token of the copy is
  determined by the context (0 nats), so the Bayes-optimal mean loss over positions ``1..T-1`` is

      floor(T) = (L - 1) · log V / (T - 1),

  which is ``log V / 2`` for odd ``T`` and slightly less for even ``T``. Its validation split is what
  `copy_eval_batch` returns for copying-loss and prefix-matching probes.
- ``spans`` — the repeated-data study's "unique" language (docs/repeated_data.md, "The setup"): a Zipf bigram background
  (token ``a`` is followed by the token of rank ``r`` in its own random permutation of the vocabulary
  with probability ``∝ r^-zipf``) into which a few random spans are copied from earlier in the same
  sequence, so in-context copying lowers the loss. `loss_floor` is None here: the Bayes-optimal
  predictor would have to marginalise over where spans start and where their sources lie, a posterior
  over placements with no closed form that this module does not compute. `bigram_entropy_rate` gives the
  background's entropy rate (every row is a permutation of the same Zipf law, so it is that law's
  entropy, e.g. 4.00 nats for V = 256, zipf = 1.1).
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field, field_validator

from overtrain.data.base import DataConfig
from overtrain.data.hmm import alias_table, check_request, stationary
from overtrain.data.tokenizer import id_tokenizer
from overtrain.errors import DataError
from overtrain.registry import DATASETS
from overtrain.seed import numpy_rng

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast


@DATASETS.register("copy")
class CopyConfig(DataConfig):
    """Copy/induction streams: [random block; same block] or a Zipf bigram with copied spans."""

    name: Literal["copy"] = "copy"
    """Registered dataset name."""

    mode: Literal["repeat", "spans"] = "spans"
    """``repeat``: [random block; same block]. ``spans``: Zipf bigram text with spans copied from
    earlier in the same sequence."""

    seed: int = Field(0, ge=0)
    """Seed of the bigram permutations and of every batch."""

    vocab_size: int = Field(256, ge=2)
    """Tokens V; ids are ``0..V-1``."""

    zipf: float = Field(1.1, gt=0)
    """Zipf exponent of each token's next-token distribution (``spans`` mode)."""

    spans: tuple[int, int] = (2, 3)
    """Inclusive range of the number of copied spans per sequence (``spans`` mode), drawn uniformly."""

    span_len: tuple[int, int] = (8, 16)
    """Inclusive range of the length in tokens of each copied span (``spans`` mode), drawn uniformly."""

    @field_validator("spans", "span_len")
    @classmethod
    def _ordered_range(cls, value: tuple[int, int], info) -> tuple[int, int]:
        low, high = value
        smallest = 0 if info.field_name == "spans" else 1
        if low < smallest or low > high:
            raise ValueError(f"must be a range [low, high] with {smallest} <= low <= high, got {list(value)}")
        return value

    def build(self) -> CopySource:
        return CopySource(self)


class CopySource:
    """Indexed batches of a copy stream (a `TokenSource`)."""

    def __init__(self, cfg: CopyConfig) -> None:
        self.cfg = cfg
        self.vocab_size = cfg.vocab_size
        if cfg.mode == "spans":
            V = cfg.vocab_size
            # Row a ranks the vocabulary by a random permutation; the probabilities depend on `zipf`
            # but the permutations do not.
            rank = np.argsort(numpy_rng(cfg.seed, "copy", "bigram", V).random((V, V)), axis=1)
            zipf = np.arange(1, V + 1, dtype=np.float64) ** -cfg.zipf
            self.zipf_law = zipf / zipf.sum()
            self.bigram = np.empty((V, V))
            np.put_along_axis(self.bigram, rank, np.broadcast_to(self.zipf_law, (V, V)), axis=1)
            self.start = stationary(self.bigram)
            self._start_cdf = np.cumsum(self.start)
            self._start_cdf[-1] = 1.0
            keep, alias = alias_table(self.bigram)
            self._keep, self._alias = keep.ravel(), alias.ravel()

    # --- floors ---------------------------------------------------------------------------------------

    def loss_floor(self, seq_len: int) -> float | None:
        """``repeat``: ``(L-1)·log V/(T-1)`` nats/token with ``L = ceil(T/2)`` (see the module doc).
        ``spans``: None (no closed form; see the module doc)."""
        if self.cfg.mode == "spans":
            return None
        if seq_len < 2:
            raise DataError(f"loss_floor needs seq_len >= 2 (a next token to predict), got {seq_len}")
        block = -(-seq_len // 2)
        return (block - 1) * math.log(self.vocab_size) / (seq_len - 1)

    def bigram_entropy_rate(self) -> float:
        """Entropy rate (nats/token) of the ``spans`` background: the entropy of the Zipf law."""
        if self.cfg.mode != "spans":
            raise DataError("bigram_entropy_rate is defined for mode 'spans' only")
        p = self.zipf_law
        return float(-(p * np.log(p)).sum())

    # --- batches --------------------------------------------------------------------------------------

    def batch(self, split: str, index: int, batch_size: int, seq_len: int) -> torch.Tensor:
        """Batch `index` of `split`: int64 ``(batch_size, seq_len)``, deterministic in its arguments."""
        return self.batch_with_mask(split, index, batch_size, seq_len)[0]

    def batch_with_mask(
        self, split: str, index: int, batch_size: int, seq_len: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch and a bool ``(batch_size, seq_len)`` mask of the positions holding a copied token.

        The mask selects where a model that copies can beat the background: the second block in
        ``repeat`` mode, the copied spans in ``spans`` mode (for copying-loss probes on either).
        """
        import torch

        check_request(split, index, batch_size, seq_len)
        rng = numpy_rng(self.cfg.seed, "copy", self.cfg.mode, split, index, batch_size, seq_len)
        if self.cfg.mode == "repeat":
            tokens, copied = self._repeat(rng, batch_size, seq_len)
        else:
            tokens, offset = self._spans(rng, batch_size, seq_len)
            copied = offset > 0
        return torch.from_numpy(tokens), torch.from_numpy(copied)

    def _repeat(self, rng: np.random.Generator, n: int, T: int) -> tuple[np.ndarray, np.ndarray]:
        block = -(-T // 2)
        first = rng.integers(0, self.vocab_size, size=(n, block), dtype=np.int64)
        tokens = np.concatenate([first, first[:, : T - block]], axis=1)
        copied = np.zeros((n, T), dtype=bool)
        copied[:, block:] = True
        return tokens, copied

    def _spans(self, rng: np.random.Generator, n: int, T: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens ``(n, T)`` and copy offsets ``(n, T)``: token ``t`` copies token ``t - offset`` where
        ``offset > 0`` and is a bigram draw where ``offset == 0``."""
        (n_low, n_high), (l_low, l_high) = self.cfg.spans, self.cfg.span_len
        need = (n_high + 1) * l_high
        if T < need:
            raise DataError(
                f"copy spans: seq_len {T} is too short for up to {n_high} spans of up to {l_high} tokens "
                f"(and a source before the first); use seq_len >= {need} or smaller spans/span_len"
            )
        V = self.vocab_size
        # Span layout per row: count, lengths (0 for unused slots), gaps between destinations.
        count = rng.integers(n_low, n_high + 1, size=n)
        slot = np.arange(n_high)
        length = np.where(slot < count[:, None], rng.integers(l_low, l_high + 1, size=(n, n_high)), 0)
        # Reserve a prefix as long as the longest span so every span has room for a source before it;
        # the remaining free tokens are split into count+1 gaps by a flat Dirichlet (random spacing).
        prefix = length.max(axis=1, initial=0)
        free = T - length.sum(axis=1) - prefix
        weights = rng.exponential(size=(n, n_high + 1)) * (np.arange(n_high + 1) <= count[:, None])
        gaps = np.floor(weights / weights.sum(axis=1, keepdims=True) * free[:, None]).astype(np.int64)
        dest = prefix[:, None] + np.cumsum(gaps[:, :-1], axis=1) + np.cumsum(length, axis=1) - length
        # Source start uniform in [0, dest - length]: the whole source lies before the destination.
        source = (rng.random((n, n_high)) * (dest - length + 1)).astype(np.int64)
        offset = np.zeros((n, T), dtype=np.int64)
        position = np.arange(T)
        for i in range(n_high):
            inside = (position >= dest[:, i : i + 1]) & (position < (dest + length)[:, i : i + 1])
            offset = np.where(inside, (dest - source)[:, i : i + 1], offset)

        # Background bigram via alias tables; copied positions overwrite the draw with the earlier token.
        u = rng.random((n, T))
        scaled = u[:, 1:] * V
        column = scaled.astype(np.int64)
        frac = scaled - column
        tokens = np.zeros((n, T), dtype=np.int64)
        tokens[:, 0] = np.searchsorted(self._start_cdf, u[:, 0], side="right")
        rows = np.arange(n)
        for t in range(1, T):
            flat = tokens[:, t - 1] * V + column[:, t - 1]
            drawn = np.where(frac[:, t - 1] < self._keep[flat], column[:, t - 1], self._alias[flat])
            tokens[:, t] = np.where(offset[:, t] > 0, tokens[rows, t - offset[:, t]], drawn)
        return tokens, offset

    @cached_property
    def _tokenizer(self) -> PreTrainedTokenizerFast:
        return id_tokenizer(self.vocab_size)

    def tokenizer(self) -> PreTrainedTokenizerFast:
        """Word-level tokenizer over ``t0 .. t{V-1}`` (no special tokens)."""
        return self._tokenizer


def copy_eval_batch(
    vocab_size: int, batch_size: int, block_len: int, *, seed: int = 0, index: int = 0
) -> torch.Tensor:
    """[random block; same block] sequences for copying-loss and prefix-matching (induction) probes.

    Exactly the ``val`` split of ``CopyConfig(mode="repeat")`` at ``seq_len = 2·block_len``: an int64
    tensor ``(batch_size, 2·block_len)`` whose second half repeats the first. The copying loss is the
    mean loss on positions ``block_len..2·block_len-1``; the prefix-matching score of a head at
    position ``block_len + j`` reads its attention on position ``j + 1``.
    """
    if block_len < 1:
        raise DataError(f"block_len must be >= 1, got {block_len}")
    source = CopyConfig(mode="repeat", vocab_size=vocab_size, seed=seed).build()
    return source.batch("val", index, batch_size, 2 * block_len)
