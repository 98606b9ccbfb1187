"""Fine-tuning methods. Each module registers a method config class in `FINETUNE_METHODS`.

A method config has ``name`` and ``apply(model) -> model``: it returns the model to train (the model
itself for full fine-tuning, a PEFT wrapper for LoRA). Adding a method is adding a module here.
"""

from __future__ import annotations

from overtrain.config import BaseConfig


class MethodConfig(BaseConfig):
    """Base of every fine-tuning method config."""

    name: str
    """Registered method name (``overtrain ls methods``)."""

    def apply(self, model):
        """Return the module to train; parameters it does not train have ``requires_grad=False``."""
        raise NotImplementedError(f"{type(self).__name__} must implement apply()")
