"""LoRA through PEFT: W' = W + (alpha / r) B A with A (r x in), B (out x r), B initialised to zero."""

from __future__ import annotations

import warnings
from typing import Literal

from pydantic import Field

from overtrain.registry import FINETUNE_METHODS
from overtrain.training.methods import MethodConfig


@FINETUNE_METHODS.register("lora")
class LoraFinetune(MethodConfig):
    """LoRA (PEFT): low-rank adapters on the linear layers; the base weights stay frozen."""

    name: Literal["lora"] = "lora"

    rank: int = Field(8, gt=0)
    """Adapter rank r."""

    alpha: float = Field(16.0, gt=0)
    """Scaling numerator: the update is (alpha / rank) B A."""

    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the adapter input."""

    target_modules: str | list[str] = "all-linear"
    """Modules to adapt: PEFT's ``all-linear`` (every linear layer but the output head) or a list of names."""

    def apply(self, model):
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=self.target_modules
        )
        with warnings.catch_warnings():
            # PEFT asks transformers a deprecated question (is_gradient_checkpointing): not ours to fix
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(model, config)
