"""Fine-tuning methods. Each module registers a method config class in `FINETUNE_METHODS`.

A method config has ``name``, ``apply(model) -> model`` — the model to train (the model itself for full
fine-tuning, a PEFT wrapper for LoRA) — and ``step_rule(model, optimizer, seed)`` — how a training step
computes its gradients (`overtrain.training.step_rules`: plain, or at perturbed weights for Flat-LoRA,
LoRA-GGPO, LoRA-MGPO and SAM). Adding a method is adding a module here.
"""

from __future__ import annotations

from overtrain.config import BaseConfig
from overtrain.training.step_rules import StepRule


class MethodConfig(BaseConfig):
    """Base of every fine-tuning method config."""

    name: str
    """Registered method name (``overtrain ls methods``)."""

    def apply(self, model):
        """Return the module to train; parameters it does not train have ``requires_grad=False``."""
        raise NotImplementedError(f"{type(self).__name__} must implement apply()")

    def step_rule(self, model, optimizer, seed: int = 0):
        """The step rule for `model` (as `apply` returned it) trained by `optimizer`; `seed` seeds any noise.
        Default: the plain step."""
        return StepRule(model)
