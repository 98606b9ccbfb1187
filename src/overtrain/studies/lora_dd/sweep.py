"""One cell of a LoRA rank sweep: adapt a frozen base with one (method, rank, seed), train it to
convergence, then measure it.

Shared by the study's parts (`mlp_part`, `lm_part`): the base and the loss differ, the procedure does
not. The adapter is PEFT LoRA with scale s = `SweepSettings.scale` (rsLoRA α/√r by default; PEFT's
``lora_alpha`` is set to s·r) on `targets`, trained by the method's step rule
(`overtrain.training.step_rules`) with Adam at the rank's learning rate, full batch, no weight decay.

**Convergence** (`stop_reason`): every `curve_every` steps the training loss is evaluated at the
unperturbed weights (eval mode); the cell stops when it is ≤ `fit_loss` (interpolation), when the best
of it improved by less than `plateau_tol` (relative) over the last `plateau_steps` steps, or at
`max_steps`. The row records the steps used and why it stopped.

**Learning rate per rank** (`tune_lr`): plain LoRA is trained at each rate of the grid with an adapter
seed of its own, and the rate with the lowest final *training* loss is kept for every method and seed at
that rank — the study's axis is how well each rank can fit, and the test set is never looked at. All
methods share it so that their comparison at a rank is paired.

Measured at the end, in eval mode: the part's own metrics (`evaluate`), the row-noise sharpness of the
training loss (`overtrain.probes.lora_sharpness.row_noise_sharpness`, with the same noise seed in every
cell: common random numbers across ranks and methods) and the top eigenvalue of the training loss's
Hessian over the merged weights (`merged_hessian_top`: no method trains against it).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from overtrain.probes.lora_sharpness import merged_hessian_top, row_noise_sharpness
from overtrain.registry import FINETUNE_METHODS
from overtrain.seed import derive_seed


@dataclass(frozen=True)
class SweepSettings:
    """What every cell of one sweep shares (see `RankSweepConfig` for the meaning of each field)."""

    max_steps: int
    fit_loss: float
    plateau_steps: int
    plateau_tol: float
    curve_every: int
    sharpness_rho: float
    sharpness_draws: int
    hessian_iterations: int
    sharpness_seed: int
    """Noise seed of the sharpness proxy: the same for every cell."""
    scale: Callable[[int], float]
    """s of ``W' = W + s·B A`` at a rank."""


def settings_of(cfg, sharpness_seed: int) -> SweepSettings:
    """The `SweepSettings` of a part's config (a `RankSweepConfig`)."""
    return SweepSettings(
        cfg.max_steps,
        cfg.fit_loss,
        cfg.plateau_steps,
        cfg.plateau_tol,
        cfg.curve_every,
        cfg.sharpness_rho,
        cfg.sharpness_draws,
        cfg.hessian_iterations,
        sharpness_seed,
        cfg.scale,
    )


def stop_reason(
    steps: list[int], losses: list[float], fit_loss: float, plateau_steps: int, plateau_tol: float
) -> str | None:
    """Why training stops after the last check, or None to go on. `steps`/`losses`: the checks so far
    (training loss at the unperturbed weights). ``fit``: the last loss ≤ `fit_loss`; ``diverged``: it is
    not finite; ``plateau``: the best loss so far is above ``(1 − plateau_tol)`` times the best loss at
    least `plateau_steps` steps before the last check (less than that relative improvement since)."""
    last = losses[-1]
    if not math.isfinite(last):
        return "diverged"
    if last <= fit_loss:
        return "fit"
    earlier = [v for t, v in zip(steps, losses) if t <= steps[-1] - plateau_steps]
    if earlier and min(losses) > (1 - plateau_tol) * min(earlier):
        return "plateau"
    return None


def train_cell(
    base: nn.Module,
    method,
    rank: int,
    seed: int,
    lr: float,
    targets: list[str],
    loss: Callable[[nn.Module], torch.Tensor],
    settings: SweepSettings,
    tag: str,
) -> tuple[nn.Module, list[dict[str, Any]], dict[str, Any]]:
    """Fine-tune one cell to convergence (module docstring).

    Returns the adapted model (eval mode), its training-loss curve (``step``, ``train_loss`` — the loss the
    step's gradient was taken at —, ``clean_loss`` at the unperturbed weights, and the rule's own
    statistics) and its run facts (``steps``, ``stop``, ``lr``, ``scale``, ``trainable_params``,
    ``train_seconds``)."""
    torch.manual_seed(derive_seed(seed, f"{tag}-adapter", rank))
    scale = settings.scale(rank)
    method = method.model_copy(update={"rank": rank, "alpha": scale * rank, "target_modules": targets})
    model = method.apply(copy.deepcopy(base))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr)
    rule = method.step_rule(model, optimizer, derive_seed(seed, f"{tag}-noise", rank))
    curve, steps, losses, started, stop, step = [], [], [], time.perf_counter(), "cap", 0
    model.train()
    for step in range(1, settings.max_steps + 1):
        value = rule.forward_backward(lambda: loss(model))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % settings.curve_every == 0 or step == 1 or step == settings.max_steps:
            model.eval()
            with torch.no_grad():
                clean = float(loss(model))
            model.train()
            curve.append({"step": step, "train_loss": float(value), "clean_loss": clean, **rule.stats()})
            steps.append(step)
            losses.append(clean)
            reason = stop_reason(
                steps, losses, settings.fit_loss, settings.plateau_steps, settings.plateau_tol
            )
            if reason is not None:
                stop = reason
                break
    model.eval()
    facts = {
        "steps": step,
        "stop": stop,
        "lr": lr,
        "scale": scale,
        "trainable_params": sum(p.numel() for p in params),
        "train_seconds": time.perf_counter() - started,
    }
    return model, curve, facts


def tune_lr(
    base: nn.Module,
    rank: int,
    lrs: list[float],
    targets: list[str],
    loss: Callable[[nn.Module], torch.Tensor],
    settings: SweepSettings,
    tag: str,
) -> tuple[float, list[dict[str, Any]]]:
    """The learning rate of `rank` (module docstring) and one ``record='lr_tune'`` row per rate tried
    (``rank``, ``lr``, ``train_loss`` final at the unperturbed weights, ``steps``, ``stop``)."""
    if len(lrs) == 1:
        return lrs[0], []
    lora, rows = FINETUNE_METHODS.get("lora")(), []
    for lr in lrs:
        model, curve, facts = train_cell(base, lora, rank, 0, lr, targets, loss, settings, f"{tag}-tune")
        final = curve[-1]["clean_loss"]
        rows.append(
            {
                "record": "lr_tune",
                "rank": rank,
                "lr": lr,
                "train_loss": final if math.isfinite(final) else None,
                "steps": facts["steps"],
                "stop": facts["stop"],
            }
        )
    finite = [r for r in rows if r["train_loss"] is not None]
    best = min(finite, key=lambda r: r["train_loss"]) if finite else rows[0]
    return best["lr"], rows


def adapt_cell(
    base: nn.Module,
    method,
    rank: int,
    seed: int,
    lr: float,
    targets: list[str],
    loss: Callable[[nn.Module], torch.Tensor],
    evaluate: Callable[[nn.Module], dict[str, float]],
    settings: SweepSettings,
    tag: str,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fine-tune one cell (`train_cell`) and measure it; returns its final row and its training-loss curve.

    Args:
        base: the frozen base model (copied, never changed).
        method: a LoRA fine-tuning method config; its rank, alpha (s·r) and targets are set here.
        lr: Adam's learning rate.
        loss: the training loss of a model on the full training set (a scalar tensor).
        evaluate: final metrics of the adapted model (called under ``torch.no_grad`` in eval mode).
        tag: names the random streams of this sweep (adapter init, method noise).
    """
    model, curve, facts = train_cell(base, method, rank, seed, lr, targets, loss, settings, tag)
    with torch.no_grad():
        metrics = evaluate(model)
    sharp = row_noise_sharpness(
        model,
        lambda: loss(model),
        settings.sharpness_rho,
        settings.sharpness_draws,
        seed=settings.sharpness_seed,
    )
    hess = merged_hessian_top(model, lambda: loss(model), settings.hessian_iterations, seed=seed)
    shares = [c["ggpo/grad_share"] for c in curve if "ggpo/grad_share" in c]
    row = {
        "method": method.name,
        "rank": rank,
        "seed": seed,
        **facts,
        **metrics,
        "sharpness": sharp.mean,
        "sharpness_se": sharp.stderr,
        "merged_hessian_top": hess,
        **({"grad_share": sum(shares) / len(shares)} if shares else {}),
    }
    return row, curve
