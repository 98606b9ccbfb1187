"""Full fine-tuning: every parameter trains."""

from __future__ import annotations

from typing import Literal

from overtrain.registry import FINETUNE_METHODS
from overtrain.training.methods import MethodConfig


@FINETUNE_METHODS.register("full")
class FullFinetune(MethodConfig):
    """Full fine-tuning: every parameter of the checkpoint trains."""

    name: Literal["full"] = "full"

    def apply(self, model):
        for p in model.parameters():
            p.requires_grad_(True)
        return model
