"""Step rules: how one training step turns a loss into the gradients the optimizer applies.

The training loop (`overtrain.training.loop.train_segment`) hands a rule a closure that runs the forward
pass and returns the loss; the rule runs it (once, or twice for SAM), calls ``backward`` and leaves the
gradients in ``.grad``. The plain rule does exactly that. Weight-perturbation methods (Flat-LoRA,
LoRA-GGPO, LoRA-MGPO, SAM on the LoRA factors) evaluate the gradient at perturbed weights: they perturb
in place and restore bit for bit through `overtrain.core.perturb.perturbed`, the mechanism the noise
probe uses, so PEFT's modules are used as they are, unforked.

Rules perturb only in training mode (``model.training``): evaluation, the probes and the saved weights
never see noise.

`StepRule.stats` returns the means of the rule's own statistics since the last call, and only those that
apply: a rule with none (plain LoRA), or one that took no step since, returns ``{}`` — never NaN (a
logging bug users hit in another implementation, kohya-ss/sd-scripts#2063).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

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
