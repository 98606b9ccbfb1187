"""Step rules: how one training step turns a loss into the gradients the optimizer applies.

The training loop (`overtrain.training.loop.train_segment`) hands a rule a closure that runs the forward
pass and returns the loss; the rule runs it (once, or twice for SAM), calls ``backward`` and leaves the
gradients in ``.grad``. The plain rule does exactly that. Weight-perturbation methods (Flat-LoRA,
LoRA-GGPO, LoRA-MGPO, SAM on the LoRA factors) evaluate the gradient at perturbed weights: they perturb
in place and restore bit for bit through `overtrain.probes.perturb.perturbed`, the mechanism the noise
probe uses, so PEFT's modules are used as they are, unforked.

Rules perturb only in training mode (``model.training``): evaluation, the probes and the saved weights
never see noise.

`StepRule.stats` returns the means of the rule's own statistics since the last call, and only those that
apply: a rule with none (plain LoRA), or one that took no step since, returns ``{}`` — never NaN (a
logging bug users hit in another implementation, kohya-ss/sd-scripts#2063).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from overtrain.errors import ConfigError

LossFn = Callable[[], torch.Tensor]
"""Runs the forward pass on the step's batch and returns the scalar loss (with its graph)."""


class StepRule:
    """The plain step: one forward, one backward."""

    def __init__(self, model: nn.Module | None = None):
        self.model = model
        self._sums: dict[str, float | torch.Tensor] = {}
        self._counts: dict[str, int] = {}

    def forward_backward(self, loss_fn: LossFn) -> torch.Tensor:
        """Run `loss_fn`, backpropagate, return the (detached) loss at the unperturbed weights if the rule
        computes it there, else at the weights the gradient was taken."""
        loss = loss_fn()
        loss.backward()
        return loss.detach()

    def perturbing(self) -> bool:
        """Whether this step perturbs: only in training mode."""
        return self.model is not None and self.model.training

    def record(self, **values: float | torch.Tensor) -> None:
        """Add one value per statistic (tensors stay on their device: no host sync until `stats`)."""
        for key, value in values.items():
            value = value.detach().float() if isinstance(value, torch.Tensor) else float(value)
            self._sums[key] = self._sums[key] + value if key in self._sums else value
            self._counts[key] = self._counts.get(key, 0) + 1

    def stats(self) -> dict[str, float]:
        """Mean of each recorded statistic since the last call (``{}`` if nothing was recorded)."""
        out = {key: float(self._sums[key]) / self._counts[key] for key in self._sums}
        self._sums.clear()
        self._counts.clear()
        return out


@dataclass(frozen=True)
class LoraView:
    """One LoRA-adapted linear layer of a PEFT model: ``W' = W + s·B A``.

    Attributes:
        name: the module's name in the model.
        weight_name: the frozen base weight's parameter name (W, d_out x d_in).
        base: the frozen ``nn.Linear``; A, B: ``lora_A`` (r x d_in) and ``lora_B`` (d_out x r) weights.
        scaling: s = alpha / r.
    """

    name: str
    weight_name: str
    base: nn.Linear
    A: nn.Parameter
    B: nn.Parameter
    a_name: str
    b_name: str
    scaling: float

    @torch.no_grad()
    def merged(self) -> torch.Tensor:
        """W' = W + s·B A (d_out x d_in), in the base weight's dtype."""
        return torch.addmm(self.base.weight, self.B, self.A, alpha=self.scaling)


def lora_layers(model: nn.Module) -> list[LoraView]:
    """Every LoRA-adapted ``nn.Linear`` of a PEFT model (its active adapter). A model without one is a
    `ConfigError` (a weight-perturbation method needs LoRA layers to perturb)."""
    from peft.tuners.lora import LoraLayer

    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        base = module.get_base_layer()
        adapter = module.active_adapters[0]
        plain = isinstance(base, nn.Linear) and not getattr(module, "fan_in_fan_out", False)
        if not plain or adapter not in module.lora_A:
            raise ConfigError(f"method: LoRA layer {name} is not a plain nn.Linear adapter; only those are supported")
        A, B = module.lora_A[adapter].weight, module.lora_B[adapter].weight
        out.append(LoraView(name, names[id(base.weight)], base, A, B, names[id(A)], names[id(B)],
                            float(module.scaling[adapter])))
    if not out:
        raise ConfigError("method: the model has no LoRA layer to perturb (apply LoRA first)")
    return out
