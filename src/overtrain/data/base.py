"""The data-source interface every study trains and evaluates on.

A `TokenSource` serves *indexed* batches: batch ``i`` of a split is a pure function of the source's
config and ``(split, i)``. Training reads batch ``step`` of ``train``, so the data position after a
restart is just the step counter, and a decay branch of a warmup-stable-decay run sees exactly the
tokens the main line would have seen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from overtrain.config import BaseConfig

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerFast

SPLITS = ("train", "val")


@runtime_checkable
class TokenSource(Protocol):
    """A tokenised data source with deterministic indexed batches."""

    vocab_size: int
    """Number of token ids the source emits (ids are in ``[0, vocab_size)``)."""

    def batch(self, split: str, index: int, batch_size: int, seq_len: int) -> torch.Tensor:
        """Batch `index` of `split`: an int64 tensor of shape (batch_size, seq_len).

        Deterministic in (config, split, index, batch_size, seq_len). Splits are ``train`` and ``val``;
        the two never share sequences.
        """
        ...

    def loss_floor(self, seq_len: int) -> float | None:
        """Bayes-optimal mean next-token loss in nats over positions 1..seq_len-1, if known.

        This is the loss a perfect model reaches on sequences of this length (the entropy-rate floor for
        an HMM, averaged over context lengths); ``None`` for natural text.
        """
        ...

    def tokenizer(self) -> PreTrainedTokenizerFast:
        """A Hugging Face tokenizer for these ids, saved beside every checkpoint."""
        ...


class DataConfig(BaseConfig):
    """Base of every data-source config. Subclasses set ``name: Literal[...]`` and implement `build`."""

    name: str
    """Registered dataset name (``overtrain ls datasets``)."""

    def build(self) -> TokenSource:
        raise NotImplementedError(f"{type(self).__name__} must implement build()")
