"""LoRA layer helpers: a view of every adapted linear layer of a PEFT model, and the row-wise noise law
of Flat-LoRA / LoRA-GGPO on its merged weight.

Below probes and training: the weight-perturbation fine-tuning methods train against this noise and the
LoRA sharpness probe measures with it, so both import it from here.

Row-noise law (Flat-LoRA, Li et al. 2025; LoRA-GGPO, Chang et al. 2025). For a layer with merged weight
``W' = W + s·B A`` (d_out x d_in), row i gets ``ε_i ~ N(0, std_i² I)`` with

- ``paper``: ``std_i² = (σ²/d)(‖W'_i‖² + β‖∇_i‖²)``;
- ``kohya``: ``std_i = (σ‖W'_i‖ + β‖∇_i‖²)/√d``;

where ``∇_i`` is the gradient of the loss w.r.t. row i of W' and d is d_in (``norm_dim="in"``, the
paper) or d_out. β = 0 is Flat-LoRA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from overtrain.errors import ConfigError
from overtrain.seed import derive_seed


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
            raise ConfigError(
                f"method: LoRA layer {name} is not a plain nn.Linear adapter; only those are supported"
            )
        A, B = module.lora_A[adapter].weight, module.lora_B[adapter].weight
        out.append(
            LoraView(
                name,
                names[id(base.weight)],
                base,
                A,
                B,
                names[id(A)],
                names[id(B)],
                float(module.scaling[adapter]),
            )
        )
    if not out:
        raise ConfigError("method: the model has no LoRA layer to perturb (apply LoRA first)")
    return out


def row_std(
    layer: LoraView,
    *,
    sigma: float,
    beta: float = 0.0,
    grad_sq: torch.Tensor | None = None,
    std_form: str = "paper",
    norm_dim: str = "in",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(std_i, the gradient term's share of it) for every row of `layer`, float32 (module docstring).

    `grad_sq` is ``‖∇_i‖²`` per row (None: zero, as before the first gradient is known)."""
    w_sq = layer.merged().float().pow(2).sum(1)
    g_sq = torch.zeros_like(w_sq) if grad_sq is None else grad_sq
    d = layer.base.in_features if norm_dim == "in" else layer.base.out_features
    if std_form == "paper":
        var = w_sq + beta * g_sq
        return sigma * (var / d).sqrt(), beta * g_sq / var.clamp_min(1e-30)
    weight_term, grad_term = sigma * w_sq.sqrt(), beta * g_sq
    return (weight_term + grad_term) / math.sqrt(d), grad_term / (weight_term + grad_term).clamp_min(1e-30)


def row_noise_generator(layers: list[LoraView], seed: int) -> torch.Generator:
    """The generator of the row noise, seeded by (seed, "lora-row-noise") on the layers' device."""
    device = layers[0].base.weight.device
    return torch.Generator(device=device).manual_seed(derive_seed(seed, "lora-row-noise"))


def sample_row_noise(layer: LoraView, std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw of ε for `layer` (d_out x d_in, the base weight's dtype): row i scaled by ``std[i]``."""
    W = layer.base.weight
    eps = torch.randn(W.shape, generator=generator, device=W.device, dtype=W.dtype)
    return eps.mul_(std.to(W.dtype)[:, None])
