"""One cell of a LoRA rank sweep: adapt a frozen base with one (method, rank, seed), then measure it.

Shared by the study's parts (`mlp_part`, `lm_part`): the base and the loss differ, the procedure does
not. The adapter is PEFT LoRA with α = r (s = 1) on `targets`, trained by the method's step rule
(`overtrain.training.step_rules`) with Adam at `lr`, full batch, no weight decay. Measured at the end, in
eval mode: the part's own metrics (`evaluate`), the row-noise sharpness of the training loss
(`overtrain.probes.lora_sharpness.row_noise_sharpness`, with the same noise seed in every cell: common
random numbers across ranks and methods) and the top Hessian eigenvalue of the training loss over the
LoRA factors.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from overtrain.probes.lora_sharpness import lora_hessian_top, row_noise_sharpness
from overtrain.seed import derive_seed


@dataclass(frozen=True)
class SweepSettings:
    """What every cell of one sweep shares (see the parts' configs for the meaning of each field)."""

    steps: int
    lr: float
    curve_every: int
    sharpness_rho: float
    sharpness_draws: int
    hessian_iterations: int
    sharpness_seed: int
    """Noise seed of the sharpness proxy: the same for every cell."""


def adapt_cell(
    base: nn.Module,
    method,
    rank: int,
    seed: int,
    targets: list[str],
    loss: Callable[[nn.Module], torch.Tensor],
    evaluate: Callable[[nn.Module], dict[str, float]],
    settings: SweepSettings,
    tag: str,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fine-tune one cell; returns its final row and its training-loss curve.

    Args:
        base: the frozen base model (copied, never changed).
        method: a LoRA fine-tuning method config; its rank, alpha (= rank) and targets are set here.
        loss: the training loss of a model on the full training set (a scalar tensor).
        evaluate: final metrics of the adapted model (called under ``torch.no_grad`` in eval mode).
        tag: names the random streams of this sweep (adapter init, method noise).
    """
    torch.manual_seed(derive_seed(seed, f"{tag}-adapter", rank))
    method = method.model_copy(update={"rank": rank, "alpha": float(rank), "target_modules": targets})
    model = method.apply(copy.deepcopy(base))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    rule = method.step_rule(model, optimizer, derive_seed(seed, f"{tag}-noise", rank))
    curve, started = [], time.perf_counter()
    model.train()
    for step in range(1, settings.steps + 1):
        value = rule.forward_backward(lambda: loss(model))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % settings.curve_every == 0 or step == 1:
            curve.append({"step": step, "train_loss": float(value), **rule.stats()})
    seconds = time.perf_counter() - started
    model.eval()
    with torch.no_grad():
        metrics = evaluate(model)
    sharp = row_noise_sharpness(
        model,
        lambda: loss(model),
        settings.sharpness_rho,
        settings.sharpness_draws,
        seed=settings.sharpness_seed,
    )
    hess = lora_hessian_top(model, lambda: loss(model), settings.hessian_iterations, seed=seed)
    row = {
        "method": method.name,
        "rank": rank,
        "seed": seed,
        "trainable_params": sum(p.numel() for p in params),
        **metrics,
        "sharpness": sharp.mean,
        "sharpness_se": sharp.stderr,
        "hessian_top": hess,
        "train_seconds": seconds,
    }
    return row, curve
