"""Loss on a reference text set: the forgetting probe.

Springer et al. (2025) measure what fine-tuning costs the base model as the pre-training
distribution's loss after fine-tuning minus before; this probe measures one side of that difference
on one checkpoint. The reference set is the probe run's data: the parent's pre-training source by
default, or the run's ``data`` (e.g. ``{name: text, train: [my.txt]}``, a user's own text; its
tokenizer must give the model's ids, so for a byte-level model a ``byte`` text source).

Estimator. With ``n`` equal-sized batches of the ``split`` and ``ℓ_b`` the mean next-token
cross-entropy (nats/token) of batch b:

    loss   = Σ_b ℓ_b·N_b / Σ_b N_b      (N_b predicted tokens of batch b; = mean_b ℓ_b for equal N_b)
    stderr = sd_b(ℓ_b) / √n             (sample sd, n − 1 degrees of freedom; NaN for n = 1)

``loss`` is `overtrain.core.evaluate.evaluate_loss` over all the batches (to float64 rounding: it is
combined from per-batch calls). The standard error treats the batches as independent draws of windows
from the split: it is the sampling error of the reference set, which a before/after comparison on the
same batches largely cancels (use paired differences there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import Field
from torch import nn

from overtrain.config import BaseConfig
from overtrain.core.evaluate import evaluate_loss
from overtrain.errors import DataError
from overtrain.registry import PROBES


class ReferenceLossConfig(BaseConfig):
    """Mean token loss on a reference text set, with its standard error over batches."""

    eval_batches: int = Field(8, ge=1)
    """Batches of the reference split the loss averages over (the standard error needs >= 2)."""

    batch_size: int = Field(64, ge=1)
    """Sequences per batch (each of the probe run's sequence length)."""

    split: str = Field("val", min_length=1)
    """Split of the reference data the batches come from (``val``: held out from pre-training)."""


@dataclass(frozen=True)
class ReferenceLossResult:
    """What the reference-loss probe measured.

    Attributes:
        loss: mean next-token cross-entropy over every predicted token, nats/token.
        stderr: standard error of `loss` over batches (NaN for one batch).
        batch_losses: mean loss of each batch, in order.
        tokens: predicted tokens averaged over.
        split: the data split of the batches, if known.
    """

    loss: float
    stderr: float
    batch_losses: tuple[float, ...]
    tokens: int
    split: str | None = None

    def rows(self, **extra: Any) -> list[dict[str, Any]]:
        """One row per batch for ``probes.jsonl``: ``probe`` (``reference_loss``), ``split``, ``batch``,
        ``loss`` (nats/token), then `extra`."""
        return [
            {"probe": "reference_loss", "split": self.split, "batch": b, "loss": loss, **extra}
            for b, loss in enumerate(self.batch_losses)
        ]

    def summary_rows(self, **extra: Any) -> list[dict[str, Any]]:
        """One row: ``probe``, ``split``, ``loss``, ``stderr``, ``ppl`` (= exp(loss)), ``batches``,
        ``tokens``, then `extra`."""
        return [
            {
                "probe": "reference_loss",
                "split": self.split,
                "loss": self.loss,
                "stderr": self.stderr,
                "ppl": math.exp(self.loss),
                "batches": len(self.batch_losses),
                "tokens": self.tokens,
                **extra,
            }
        ]


def reference_loss(
    model: nn.Module,
    batches: Sequence[torch.Tensor],
    *,
    autocast_dtype: torch.dtype | None = None,
    split: str | None = None,
) -> ReferenceLossResult:
    """Mean token loss of `model` on `batches` and its standard error over batches (module docstring).

    Args:
        model: a causal LM on its device; left unchanged (training flag restored).
        batches: int64 token batches ``(B, T)``, T >= 2.
        autocast_dtype: evaluate under autocast to this dtype (None: the parameters' dtype).
        split: the split the batches come from, recorded in the rows.

    Raises:
        ValueError: no batch, or batches that predict no token.
        DataError: a token id outside the model's vocabulary (the data's tokenizer is not the model's).
    """
    batches = list(batches)
    if not batches:
        raise ValueError("reference_loss: no evaluation batches")
    if any(x.dim() != 2 or x.shape[1] < 2 for x in batches):
        raise ValueError("reference_loss: batches must be (B, T) with T >= 2 (a next token to predict)")
    vocab = getattr(model.get_input_embeddings(), "num_embeddings", None)
    top = max(int(x.max()) for x in batches if x.numel())
    if vocab is not None and top >= vocab:
        raise DataError(
            f"reference_loss: the data has token id {top}, outside the model's vocabulary of {vocab}: "
            f"the reference data's tokenizer is not the model's"
        )
    device = next(model.parameters()).device
    losses = [evaluate_loss(model, [x], autocast_dtype=autocast_dtype, device=device) for x in batches]
    counts = [x[:, 1:].numel() for x in batches]
    tokens = sum(counts)
    loss = math.fsum(loss * count for loss, count in zip(losses, counts)) / tokens
    n = len(losses)
    if n < 2:
        stderr = math.nan
    else:
        mean = math.fsum(losses) / n
        stderr = math.sqrt(math.fsum((x - mean) ** 2 for x in losses) / (n - 1) / n)
    return ReferenceLossResult(loss, stderr, tuple(losses), tokens, split)


@PROBES.register("reference_loss")
class ReferenceLossProbe:
    """Mean token loss (nats) on a reference set, by default the pre-training val split (forgetting)."""

    name = "reference_loss"
    config_cls = ReferenceLossConfig

    def __init__(self, cfg: ReferenceLossConfig | None = None) -> None:
        self.cfg = cfg or ReferenceLossConfig()

    def batches(self, source, seq_len: int) -> list[torch.Tensor]:
        """``eval_batches`` batches ``(batch_size, seq_len)`` of the config's split of `source`."""
        cfg = self.cfg
        return [source.batch(cfg.split, i, cfg.batch_size, seq_len) for i in range(cfg.eval_batches)]

    def run(
        self,
        model: nn.Module,
        batches: Sequence[torch.Tensor],
        *,
        init_state: Any = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> ReferenceLossResult:
        """`reference_loss` on `batches` (`init_state` is not used)."""
        return reference_loss(model, batches, autocast_dtype=autocast_dtype, split=self.cfg.split)
