"""Sharpness of a LoRA fine-tune, for any loss closure (an MLP's MSE, an LM's cross-entropy).

- **Row-noise sharpness** (docs/lora_dd.md): ``S = E_ε[L(W' + ε)] − L(W')`` with
  ``W' = W + s·B A`` of every adapted layer and independent rows ``ε_i ~ N(0, (ρ²/d_in)·‖W'_i‖² I)`` —
  Flat-LoRA's law, so the proxy measures what Flat-LoRA and GGPO train against. Mean over `draws` draws,
  with its standard error; units of the loss (nats for cross-entropy, squared target units for MSE).
  Draw k is the same for every model with the same layer shapes and seed (common random numbers across
  ranks and methods: W' differs, z does not). The weights are restored bit for bit.
- **Top Hessian eigenvalue** of L over the LoRA factors (every A and B), by Lanczos on exact
  Hessian-vector products (double backward; `overtrain.probes.spectrum.lanczos`), in loss units per unit
  factor².
- **Top merged-weight Hessian eigenvalue**: λ_max of ∂²L/∂W'² over the merged weights
  ``W' = W + s·B A`` of every adapted layer together (Lanczos as above), in loss units per unit weight².
  Since the forward pass computes ``W x + s·B(A x) = W' x``, derivatives w.r.t. the frozen base weight W
  at fixed factors are derivatives w.r.t. W': the products run on W. Unlike the factor Hessian it does not
  depend on how the update is factored (B A = (B c)(A / c) gives the same value), and unlike the row-noise
  proxy no training method trains against it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from overtrain.core.lora import lora_layers, row_noise_generator, row_std, sample_row_noise
from overtrain.core.perturb import perturbed
from overtrain.models.attention import eager_attention
from overtrain.probes.spectrum import lanczos


@dataclass(frozen=True)
class RowNoiseSharpness:
    """``mean`` ± ``stderr`` of L(W' + ε) − L(W') over ``draws`` draws; ``base`` = L(W')."""

    mean: float
    stderr: float
    base: float
    draws: int


@torch.no_grad()
def row_noise_sharpness(
    model: nn.Module, loss_fn: Callable[[], torch.Tensor], rho: float = 0.05, draws: int = 20, seed: int = 0
) -> RowNoiseSharpness:
    """Expected loss increase under Flat-LoRA's row-wise noise on every LoRA layer (module docstring).
    `loss_fn` evaluates the loss of `model` on fixed data; the model is put in eval mode meanwhile."""
    was_training = model.training
    model.eval()
    try:
        layers = lora_layers(model)
        generator = row_noise_generator(layers, seed)
        base = float(loss_fn())
        deltas = []
        for _ in range(draws):
            noise = {
                layer.weight_name: sample_row_noise(layer, row_std(layer, sigma=rho)[0], generator)
                for layer in layers
            }
            with perturbed(model, noise):
                deltas.append(float(loss_fn()) - base)
    finally:
        model.train(was_training)
    t = torch.tensor(deltas, dtype=torch.float64)
    stderr = float(t.std() / math.sqrt(draws)) if draws > 1 else math.nan
    return RowNoiseSharpness(float(t.mean()), stderr, base, draws)


def _top_eigenvalue(
    model: nn.Module,
    loss_fn: Callable[[], torch.Tensor],
    params: list[torch.Tensor],
    iterations: int,
    seed: int,
) -> float:
    """Largest eigenvalue of the Hessian of `loss_fn` w.r.t. `params` (Lanczos on exact Hessian-vector
    products, double backward), in eval mode and with eager attention meanwhile."""
    was_training = model.training
    model.eval()
    try:
        with eager_attention(model):  # the fused sdpa kernels have no double backward
            grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
            flat_grad = torch.cat([g.reshape(-1) for g in grads])

            def matvec(v: torch.Tensor) -> torch.Tensor:
                hv = torch.autograd.grad(
                    flat_grad, params, grad_outputs=v.to(flat_grad.dtype), retain_graph=True
                )
                return torch.cat([h.reshape(-1) for h in hv]).to(torch.float64)

            est = lanczos(
                matvec,
                flat_grad.numel(),
                1,
                iterations=iterations,
                generator=torch.Generator().manual_seed(seed),
            )
    finally:
        model.train(was_training)
    return est.values[0]


def lora_hessian_top(
    model: nn.Module, loss_fn: Callable[[], torch.Tensor], iterations: int = 20, seed: int = 0
) -> float:
    """Largest eigenvalue of the Hessian of `loss_fn` w.r.t. the LoRA factors (Lanczos, `iterations`
    Hessian-vector products). A `transformers` model runs with eager attention meanwhile."""
    factors = [t for layer in lora_layers(model) for t in (layer.A, layer.B)]
    return _top_eigenvalue(model, loss_fn, factors, iterations, seed)


def merged_hessian_top(
    model: nn.Module, loss_fn: Callable[[], torch.Tensor], iterations: int = 20, seed: int = 0
) -> float:
    """Largest eigenvalue of the Hessian of `loss_fn` w.r.t. the merged weights W' of every LoRA layer
    (module docstring; Lanczos, `iterations` Hessian-vector products). The base weights require grad only
    meanwhile and come back frozen; a `transformers` model runs with eager attention meanwhile."""
    weights = [layer.base.weight for layer in lora_layers(model)]
    try:
        for w in weights:
            w.requires_grad_(True)
        return _top_eigenvalue(model, loss_fn, weights, iterations, seed)
    finally:
        for w in weights:
            w.grad = None
            w.requires_grad_(False)
