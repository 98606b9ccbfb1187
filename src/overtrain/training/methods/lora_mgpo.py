"""LoRA-MGPO (Chang et al., arXiv 2502.14538 v2/v3): LoRA trained at factors perturbed along the optimizer's
momentum (the MGPO algorithm of the paper's v2; docs/lora_dd.md).

Before each training step's forward pass every LoRA factor θ (each A and each B separately) is moved to
``θ + ε`` with ``ε = ρ · m / ĝ``: m is the optimizer's first moment of θ (Adam's ``exp_avg``, not bias-
corrected; zero before the first step, so the first step is unperturbed) and ĝ an EMA of θ's gradient
norm, ``ĝ ← β ĝ + (1 − β)‖∇_θ L‖`` after each backward pass, ĝ₀ = 1. The gradient is taken at θ + ε;
the factors are restored bit for bit before the optimizer steps (`overtrain.core.perturb.perturbed`).
No second backward pass (unlike SAM). Defaults ρ = 0.05, β = 0.9 (kohya-ss/sd-scripts#2180).

Logged per training-loss record: ``mgpo/perturbation_norm`` (‖ε‖₂ over all factors, weight units), on
steps that perturb.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from overtrain.core.lora import lora_layers
from overtrain.core.perturb import perturbed
from overtrain.registry import FINETUNE_METHODS
from overtrain.training.methods.lora import LoraFinetune
from overtrain.training.step_rules import StepRule


@FINETUNE_METHODS.register("lora_mgpo")
class LoraMgpoFinetune(LoraFinetune):
    """LoRA-MGPO: LoRA at factors perturbed along the optimizer's momentum, normalised by a gradient-norm EMA."""

    name: Literal["lora_mgpo"] = "lora_mgpo"

    rho: float = Field(0.05, ge=0)
    """ρ: perturbation size in units of momentum / gradient norm."""

    ema_beta: float = Field(0.9, ge=0, lt=1)
    """β of the EMA of each factor's gradient norm."""

    def step_rule(self, model, optimizer, seed: int = 0):
        return MomentumPerturbation(model, optimizer, rho=self.rho, beta=self.ema_beta)


class MomentumPerturbation(StepRule):
    """ε = ρ·m/ĝ on every LoRA factor (module docstring)."""

    def __init__(self, model, optimizer, *, rho: float, beta: float):
        super().__init__(model)
        self.optimizer, self.rho, self.beta = optimizer, rho, beta
        self.factors = {}
        for layer in lora_layers(model):
            self.factors[layer.a_name], self.factors[layer.b_name] = layer.A, layer.B
        self.ema = {name: torch.ones((), device=p.device) for name, p in self.factors.items()}

    def perturbation(self) -> dict[str, torch.Tensor]:
        """``{factor name: ρ m / ĝ}`` for every factor the optimizer holds a first moment of."""
        out = {}
        for name, p in self.factors.items():
            m = self.optimizer.state.get(p, {}).get("exp_avg")
            if m is not None:
                out[name] = m * (self.rho / self.ema[name])
        return out

    def forward_backward(self, loss_fn):
        if not self.perturbing():
            return super().forward_backward(loss_fn)
        eps = self.perturbation()
        with perturbed(self.model, eps):
            loss = loss_fn()
            loss.backward()
        with torch.no_grad():
            for name, p in self.factors.items():
                if p.grad is not None:
                    self.ema[name].mul_(self.beta).add_(p.grad.norm(), alpha=1 - self.beta)
        if eps:
            self.record(**{"mgpo/perturbation_norm": torch.stack([e.norm() for e in eps.values()]).norm()})
        return loss.detach()
