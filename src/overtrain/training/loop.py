"""The training loop: a segment of optimizer steps on indexed batches, and held-out evaluation.

Callers split training into segments between events (logging, evaluation, checkpoints, WSD branch
points), so the inner loop does nothing but the step itself: no per-step callbacks, no host syncs.
The mean training loss of a segment is accumulated on the device and read once at its end.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from overtrain import distributed
from overtrain.core.evaluate import autocast_context
from overtrain.training.schedules import LR
from overtrain.training.step_rules import StepRule

Batches = Callable[[int], torch.Tensor]


@dataclass(frozen=True)
class SegmentStats:
    """What a segment of steps did.

    Attributes:
        steps: optimizer steps taken.
        mean_loss: mean training loss over them, nats per token.
        grad_norm: global gradient norm before clipping at the last step.
        lr: learning rate of the last step.
        first_nonfinite_step: the first step whose loss was NaN or infinite (this process's), or None.
    """

    steps: int
    mean_loss: float
    grad_norm: float
    lr: float
    first_nonfinite_step: int | None = None


def divergence(stats: SegmentStats, start: int, stop: int, what: str = "training loss") -> str | None:
    """None while the segment's mean loss is finite; else the one-line reason a run stops, with the step:
    ``diverged: training loss became nan at step 13 (segment 10-20)``."""
    if math.isfinite(stats.mean_loss):
        return None
    where = (
        f"at step {stats.first_nonfinite_step}"
        if stats.first_nonfinite_step is not None
        else f"between steps {start} and {stop}"
    )
    return f"diverged: {what} became {stats.mean_loss} {where} (segment {start}-{stop})"


def build_optimizer(
    model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], eps: float
) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (embeddings included), none on norms and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def train_segment(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch_at: Batches,
    lr_at: LR,
    start: int,
    stop: int,
    *,
    grad_clip: float | None = 1.0,
    autocast_dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    step_rule: StepRule | None = None,
    after_step: Callable[[int], None] | None = None,
) -> SegmentStats:
    """Take steps ``start .. stop-1``: step ``s`` trains on ``batch_at(s)`` at rate ``lr_at(s)``.

    The loss is the mean next-token cross-entropy (nats) of the causal LM on the batch; `step_rule`
    turns it into gradients (default: one forward, one backward; `overtrain.training.step_rules`).
    `after_step(s)` runs after the optimizer step of step ``s`` (e.g. a running average of the weights).

    In a multi-process launch (`overtrain.distributed`) `model` is the DDP-wrapped model, each process
    trains on its share of ``batch_at(s)`` and the mean loss is averaged over the processes.
    """
    device = torch.device(device)
    if distributed.active() and not distributed.is_wrapped(model):
        raise RuntimeError("train_segment under a multi-process launch needs the model from distributed.wrap")
    model.train()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    loss_sum = torch.zeros((), device=device)
    grad_norm = torch.zeros((), device=device)
    lr = float("nan")
    rule = step_rule or StepRule(model)
    losses = []  # per-step losses, kept on the device; read only when the mean is not finite
    for step in range(start, stop):
        lr = lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x = distributed.shard(batch_at(step)).to(device, non_blocking=True)

        def loss_fn(x=x):
            # One autocast context per forward pass: autocast caches its low-precision copies of the
            # weights until the context exits, so a context spanning steps (or the perturbed and
            # unperturbed passes of a step rule) would keep using stale weights.
            with autocast_context(device, autocast_dtype):
                return model(input_ids=x, labels=x, use_cache=False).loss

        loss = rule.forward_backward(loss_fn)
        if grad_clip:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if after_step is not None:
            after_step(step)
        loss_sum += loss.detach().float()
        losses.append(loss.detach())
    n = max(1, stop - start)
    mean = distributed.all_mean(loss_sum / n).item()
    first_bad = None
    if not math.isfinite(mean) and losses:
        bad = (~torch.isfinite(torch.stack(losses).float())).nonzero()
        first_bad = start + int(bad[0]) if len(bad) else None
    return SegmentStats(stop - start, mean, float(grad_norm), lr, first_bad)
