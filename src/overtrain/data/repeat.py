"""Repeated-data mixer: a fraction of the training sequences comes from a small subset seen many times.

The construction of Hernandez et al. (2022; docs/repeated_data.md, "The setup"). With a training budget of
``N = total_tokens // seq_len`` sequences, a repeated fraction ``f`` and ``E`` repeats, the subset holds

    S = round(f·N / E) sequences, each placed exactly E times,

so ``R = S·E ≈ f·N`` of the N training positions are repeats and the rest are unique. Which positions
are repeats is a seeded pseudo-random permutation ``π`` of ``[0, N)``: the training sequence at global
position ``g = index·batch_size + row`` is subset sequence ``π(g) mod S`` if ``π(g) < R``, else the
base source's own (unique) training sequence at that position. Repeats are therefore spread uniformly
through training, and position ``g`` is the same whatever the batch size. Positions ``g >= N`` (training
past the budget) are unique.

The permutation is a keyed Feistel network with cycle walking, so mapping a batch of positions costs
O(batch) time and no memory however large N is.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from overtrain.config import Count, Registered
from overtrain.data.base import DataConfig, TokenSource
from overtrain.data.copy import CopyConfig
from overtrain.data.hmm import check_request
from overtrain.errors import DataError
from overtrain.registry import DATASETS
from overtrain.seed import derive_seed

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast

SUBSET_INDEX_OFFSET = 2**40
"""Subset sequences come from the base's ``train`` stream at batch indices from here on: far beyond any
index a run reaches, so they are not the unique sequences (for synthetic sources, whose streams are
independent per index; a finite text corpus may still overlap)."""

SUBSET_CHUNK = 16
"""Subset sequence k is row ``k % 16`` of base train batch ``SUBSET_INDEX_OFFSET + k // 16`` (of 16 rows)."""

CACHE_TOKENS = 2**24
"""Generated subset chunks are kept (least recently used first out) up to this many tokens."""

SPLITS = ("train", "val", "repeated")


@DATASETS.register("repeat")
class RepeatConfig(DataConfig):
    """A base source with a fraction of its training sequences replaced by a subset repeated E times."""

    name: Literal["repeat"] = "repeat"
    """Registered dataset name."""

    base: Registered(DATASETS) = Field(default_factory=lambda: CopyConfig(mode="spans"))
    """The source of unique and subset sequences, chosen by name (``{name: hmm, seed: 3}``). Default:
    the copy-spans language (docs/repeated_data.md, "The setup")."""

    fraction: float = Field(0.1, gt=0, lt=1)
    """Fraction f of training sequences that are repeats of the subset."""

    repeats: int = Field(100, ge=1)
    """Times E that each subset sequence appears within the budget."""

    total_tokens: Count | None = None
    """The training budget in tokens (N = total_tokens // seq_len sequences); required to build. The
    study sets it from the run's token budget."""

    seed: int = Field(0, ge=0)
    """Seed of the placement of repeats among training positions."""

    def build(self) -> RepeatSource:
        return RepeatSource(self)


@dataclass(frozen=True)
class RepeatLayout:
    """Counts of the mixer at one sequence length."""

    sequences: int
    """N: training sequences in the budget."""

    subset: int
    """S: distinct repeated sequences."""

    repeated: int
    """R = S·E: training positions holding a repeat."""


class RepeatSource:
    """Indexed batches of the repeated-data mixture (a `TokenSource`; also serves split ``repeated``:
    the subset itself, sequence ``(index·batch_size + row) mod S``, for the loss on memorised data)."""

    def __init__(self, cfg: RepeatConfig) -> None:
        if cfg.total_tokens is None:
            raise DataError(
                "repeat: set total_tokens (the training budget in tokens) — the repeated subset holds "
                "round(fraction * (total_tokens // seq_len) / repeats) sequences"
            )
        self.cfg = cfg
        self.base: TokenSource = cfg.base.build()
        self.vocab_size = self.base.vocab_size
        self._layouts: dict[int, RepeatLayout] = {}
        self._chunks: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    def layout(self, seq_len: int) -> RepeatLayout:
        """N, S and R at this sequence length; raises `DataError` if the subset would be empty."""
        if seq_len not in self._layouts:
            cfg = self.cfg
            n = cfg.total_tokens // seq_len
            subset = round(cfg.fraction * n / cfg.repeats)
            if subset < 1:
                raise DataError(
                    f"repeat: fraction * N / repeats = {cfg.fraction} * {n} / {cfg.repeats} rounds to 0 "
                    f"subset sequences (N = total_tokens // seq_len); raise total_tokens or fraction, or "
                    f"lower repeats"
                )
            if subset * cfg.repeats > n:
                raise DataError(
                    f"repeat: {subset} subset sequences x {cfg.repeats} repeats exceed the {n} training "
                    f"sequences of the budget; raise total_tokens or lower repeats"
                )
            self._layouts[seq_len] = RepeatLayout(n, subset, subset * cfg.repeats)
        return self._layouts[seq_len]

    def subset_ids(self, index: int, batch_size: int, seq_len: int) -> np.ndarray:
        """For each row of train batch `index`: the subset sequence it holds, or -1 if it is unique."""
        lay = self.layout(seq_len)
        g = index * batch_size + np.arange(batch_size, dtype=np.int64)
        ids = np.full(batch_size, -1, dtype=np.int64)
        inside = g < lay.sequences
        if inside.any():
            rank = _permute(g[inside], lay.sequences, derive_seed(self.cfg.seed, "repeat", lay.sequences))
            ids[inside] = np.where(rank < lay.repeated, rank % lay.subset, -1)
        return ids

    def subset_sequences(self, ids: np.ndarray, seq_len: int) -> np.ndarray:
        """Subset sequences `ids` as an int64 array ``(len(ids), seq_len)``, generated in cached chunks."""
        out = np.empty((len(ids), seq_len), dtype=np.int64)
        for row, k in enumerate(np.asarray(ids, dtype=np.int64)):
            out[row] = self._chunk(int(k) // SUBSET_CHUNK, seq_len)[int(k) % SUBSET_CHUNK]
        return out

    def _chunk(self, chunk: int, seq_len: int) -> np.ndarray:
        key = (seq_len, chunk)
        if key in self._chunks:
            self._chunks.move_to_end(key)
            return self._chunks[key]
        data = self.base.batch("train", SUBSET_INDEX_OFFSET + chunk, SUBSET_CHUNK, seq_len).numpy()
        self._chunks[key] = data
        while len(self._chunks) > max(1, CACHE_TOKENS // (SUBSET_CHUNK * seq_len)):
            self._chunks.popitem(last=False)
        return data

    def batch(self, split: str, index: int, batch_size: int, seq_len: int) -> torch.Tensor:
        """Batch `index` of `split`: ``train`` mixes unique and repeated sequences; ``val`` is the base's
        held-out split untouched; ``repeated`` walks through the subset."""
        import torch

        check_request(split, index, batch_size, seq_len, SPLITS)
        if split == "val":
            return self.base.batch("val", index, batch_size, seq_len)
        if split == "repeated":
            lay = self.layout(seq_len)
            ids = (index * batch_size + np.arange(batch_size)) % lay.subset
            return torch.from_numpy(self.subset_sequences(ids, seq_len))
        out = self.base.batch("train", index, batch_size, seq_len).clone()
        ids = self.subset_ids(index, batch_size, seq_len)
        rows = np.flatnonzero(ids >= 0)
        if len(rows):
            out[torch.from_numpy(rows)] = torch.from_numpy(self.subset_sequences(ids[rows], seq_len))
        return out

    def loss_floor(self, seq_len: int) -> float | None:
        """The base's floor: the held-out (``val``) data is the base's unique data."""
        return self.base.loss_floor(seq_len)

    def tokenizer(self) -> PreTrainedTokenizerFast:
        return self.base.tokenizer()


# --- keyed permutation ------------------------------------------------------------------------------------

_FEISTEL_ROUNDS = 6


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective avalanche of 64-bit words (wrapping uint64 arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _permute(x: np.ndarray, n: int, key: int) -> np.ndarray:
    """A keyed pseudo-random permutation of ``[0, n)`` applied to `x` (values in ``[0, n)``).

    A balanced Feistel network on ``2h`` bits (``4^h >= n``, so the domain is under ``4n``) is a
    bijection of ``[0, 4^h)``; cycle walking (re-apply until the value is below ``n``) restricts it to a
    bijection of ``[0, n)`` and needs under four applications on average.
    """
    h = max(1, -(-max(n - 1, 1).bit_length() // 2))
    mask = np.uint64((1 << h) - 1)
    keys = [np.uint64(derive_seed(key, "feistel", i)) for i in range(_FEISTEL_ROUNDS)]

    def once(v: np.ndarray) -> np.ndarray:
        left, right = v >> np.uint64(h), v & mask
        for k in keys:
            left, right = right, left ^ (_mix(right ^ k) & mask)
        return (left << np.uint64(h)) | right

    y = once(np.asarray(x, dtype=np.uint64))
    out_of_range = y >= np.uint64(n)
    while out_of_range.any():
        y[out_of_range] = once(y[out_of_range])
        out_of_range = y >= np.uint64(n)
    return y.astype(np.int64)
