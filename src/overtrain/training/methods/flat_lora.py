"""Flat-LoRA (Li et al., ICML 2025, arXiv 2409.14396): LoRA trained at merged weights perturbed by random
row-wise ("filter-wise") Gaussian noise scaled by each row's norm, ``ε_i ~ N(0, (σ²/d_in)·‖W'_i‖² I)``
with ``W' = W + s·B A`` — LoRA-GGPO's law with β = 0 (`overtrain.training.methods.lora_ggpo`, which
implements it; the two give identical noise and training for the same seed)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from overtrain.registry import FINETUNE_METHODS
from overtrain.training.methods.lora import LoraFinetune
from overtrain.training.methods.lora_ggpo import RowNoise


@FINETUNE_METHODS.register("flat_lora")
class FlatLoraFinetune(LoraFinetune):
    """Flat-LoRA: LoRA at merged weights perturbed by random row-wise noise scaled by the row norms."""

    name: Literal["flat_lora"] = "flat_lora"

    sigma: float = Field(0.05, ge=0)
    """σ: per-row noise std is σ·‖W'_i‖/√d."""

    norm_dim: Literal["in", "out"] = "in"
    """d: the row length d_in, or d_out."""

    def step_rule(self, model, optimizer, seed: int = 0):
        return RowNoise(model, sigma=self.sigma, beta=0.0, norm_dim=self.norm_dim, seed=seed)
