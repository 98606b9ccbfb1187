"""The training loop for a group of models (`overtrain.models.grouped`): `train_segment` for K members.

Member k takes the steps its single run would take — the same batches, its own learning rate times the
shared schedule, its own gradient clip — so its losses and weights match a run trained alone to float
rounding. Members never mix: a member whose loss turns NaN leaves the others' numbers unchanged (each
member's loss, gradient norm and update depend on its own slice only).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from overtrain.models.grouped import GroupedLlama
from overtrain.training.grouped_optim import GroupedAdamW, clip_grad_norms_
from overtrain.training.loop import SegmentStats


@dataclass(frozen=True)
class GroupSegment:
    """What a segment did to each member: ``member(k)`` is that member's `SegmentStats`."""

    steps: int
    mean_loss: list[float]
    grad_norm: list[float]
    lr: list[float]
    first_nonfinite_step: list[int | None]

    def member(self, k: int) -> SegmentStats:
        return SegmentStats(
            self.steps, self.mean_loss[k], self.grad_norm[k], self.lr[k], self.first_nonfinite_step[k]
        )


def train_group_segment(
    group: GroupedLlama,
    optimizer: GroupedAdamW,
    batch_at: Callable[[int], torch.Tensor],
    lr_at: Callable[[int], torch.Tensor],
    start: int,
    stop: int,
    *,
    grad_clip: float | None = 1.0,
) -> GroupSegment:
    """Steps ``start .. stop-1`` for every member: step ``s`` trains on ``batch_at(s)`` (``[B, T]`` shared,
    or ``[K, B, T]``) at rates ``lr_at(s)`` (``[K]``). Losses are nats per token; one host sync at the end."""
    params = group.trainable()
    k = group.k
    device = params[0].device
    loss_sum = torch.zeros(k, device=device)
    grad_norm = torch.zeros(k, device=device)
    lr = torch.full((k,), math.nan, device=device)
    losses = []
    for step in range(start, stop):
        lr = lr_at(step)
        optimizer.set_lr(lr)
        loss = group.loss(batch_at(step))
        loss.sum().backward()
        if grad_clip:
            grad_norm = clip_grad_norms_(params, grad_clip)
        optimizer.step()
        optimizer.zero_grad()
        loss = loss.detach()
        loss_sum += loss
        losses.append(loss)
    n = max(1, stop - start)
    means = (loss_sum / n).tolist()
    first_bad: list[int | None] = [None] * k
    if losses and not all(math.isfinite(m) for m in means):
        bad = (~torch.isfinite(torch.stack(losses))).cpu()  # [steps, K]
        for member in range(k):
            rows = bad[:, member].nonzero()
            first_bad[member] = start + int(rows[0]) if len(rows) else None
    return GroupSegment(stop - start, means, grad_norm.tolist(), lr.tolist(), first_bad)
