"""Held-out evaluation and the autocast context every component shares.

Below probes and training: a probe evaluates a checkpoint's loss the same way the training loop does,
without importing the loop.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

import torch


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate_loss(
    model: torch.nn.Module,
    batches: Iterable[torch.Tensor],
    *,
    autocast_dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> float:
    """Mean next-token cross-entropy in nats over every predicted token of `batches`."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with autocast_context(device, autocast_dtype):
        for x in batches:
            x = x.to(device)
            logits = model(input_ids=x, use_cache=False).logits[:, :-1].float()
            target = x[:, 1:]
            total += torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), target.reshape(-1), reduction="sum"
            ).item()
            count += target.numel()
    model.train(was_training)
    return total / count if count else math.nan
