"""SAM restricted to the LoRA factors (Foret et al. 2021): two passes per step.

The first forward/backward gives g = ∇L(θ) over the LoRA factors θ (every A and B); the factors move to
``θ + ρ g/‖g‖₂`` (‖·‖ over all factors together), the second forward/backward there gives the gradient the
optimizer applies, and the factors are restored bit for bit before it steps
(`overtrain.core.perturb.perturbed`). The frozen weights are never perturbed. About 2x the cost of a
LoRA step. The training loss reported is the first pass's, at θ.

Logged per training-loss record: ``sam/loss_increase`` = L(θ + ε) − L(θ) on the step's batch (nats).
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


@FINETUNE_METHODS.register("lora_sam")
class LoraSamFinetune(LoraFinetune):
    """SAM on the LoRA factors: the gradient at θ + ρ g/‖g‖ (two passes per step)."""

    name: Literal["lora_sam"] = "lora_sam"

    rho: float = Field(0.05, ge=0)
    """ρ: L2 radius of the ascent step over all LoRA factors, in weight units."""

    def step_rule(self, model, optimizer, seed: int = 0):
        return SamStep(model, rho=self.rho)


class SamStep(StepRule):
    """Sharpness-aware step over the LoRA factors (module docstring)."""

    def __init__(self, model, *, rho: float):
        super().__init__(model)
        self.rho = rho
        self.factors = {}
        for layer in lora_layers(model):
            self.factors[layer.a_name], self.factors[layer.b_name] = layer.A, layer.B

    def forward_backward(self, loss_fn):
        loss = loss_fn()
        loss.backward()
        if not self.perturbing():
            return loss.detach()
        grads = {name: p.grad for name, p in self.factors.items() if p.grad is not None}
        if not grads:
            return loss.detach()
        norm = torch.stack([g.norm() for g in grads.values()]).norm()
        eps = {name: g * (self.rho / norm.clamp_min(1e-12)) for name, g in grads.items()}
        with perturbed(self.model, eps):
            for p in self.factors.values():
                p.grad = None
            ascended = loss_fn()
            ascended.backward()
        self.record(**{"sam/loss_increase": ascended.detach() - loss.detach()})
        return loss.detach()
