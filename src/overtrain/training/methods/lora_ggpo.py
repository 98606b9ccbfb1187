"""LoRA-GGPO (Chang et al. 2025, arXiv 2502.14538 v1): LoRA trained at randomly perturbed merged weights,
the noise scaled row by row by the merged weight's norm and its gradient's norm (docs/lora_dd.md).

Each training step draws, for every adapted layer, ε (d_out x d_in) with independent rows
``ε_i ~ N(0, v_i I)``, adds it to the frozen W — so the forward pass sees ``W' + ε`` with
``W' = W + s·B A`` — runs forward and backward there, and restores W bit for bit
(`overtrain.core.perturb.perturbed`). The noise is fresh every step, shared by the batch, and never
enters the optimizer state. Per-row law:

- ``std_form="paper"`` (default; Eq. 6–8 as a third-party trainer implements them):
  ``v_i = (σ²/d)·(‖W'_i‖² + β‖∇_{W'_i}L‖²)``; β = 0 is Flat-LoRA (`flat_lora`) exactly;
- ``std_form="kohya"`` (kohya-ss/sd-scripts): ``std_i = (σ‖W'_i‖ + β‖∇_{W'_i}L‖²)/√d`` — with the exact
  merged row norm, where kohya approximates ‖W'_i‖² by w̄² + ‖(sBA)_i‖² (w̄ the mean row norm of W);

with ``d = d_in`` (``norm_dim="in"``, the row length; default) or ``d_out`` (``"out"``, kohya's).

**The gradient term** is the previous step's gradient w.r.t. the merged weight, taken at its perturbed
point: on the steps that refresh it, the base weight requires grad during the backward pass (one extra
weight-gradient product per adapted layer) and its row norms are kept, the gradient itself dropped. The
first step uses 0. ``grad_every = k`` refreshes it every k-th step and reuses it in between (kohya's
mitigation for its cost). ``grad_source="factors"`` is kohya's cheaper approximation from the LoRA
factors' own gradients, ``G ≈ s·(B ∇A + ∇B A)``, whose row norms ``‖G_i‖² = s²·c_i (D Dᵀ) c_iᵀ`` with
``c_i = [B_i, ∇B_i]`` and ``D = [∇A; A]`` cost O(r²·(d_in + d_out)) per layer and need no base-weight
gradient. It is not the merged gradient: since ``∇A = s·Bᵀ∇W'`` and ``∇B = s·∇W' Aᵀ`` it equals
``s²·(B Bᵀ ∇W' + ∇W' Aᵀ A)``, the merged gradient seen through the adapter's row and column spaces, so
its norms are smaller (and depend on the factors' scale). Units: ``v_i`` in weight units², ``‖∇W'_i‖`` in nats (mean token loss) per
weight unit, so β is not dimensionless: with β = 0.01 the gradient term can be a vanishing share of the
variance (measured in docs/lora_dd.md). The logged ``ggpo/grad_share`` — the mean over rows of the
gradient term's share of ``v_i`` (paper form) or of ``std_i`` (kohya form) — says how much it carries.

**Dimensionless β** (``beta_scale="relative"``): β is read as β̃ and each layer uses
``β_ℓ = β̃ · Σ_i u_i / Ḡ_ℓ`` with ``u_i = ‖W'_i‖²`` (paper form) or ``σ‖W'_i‖`` (kohya form) — the
weight term of each row — and ``Ḡ_ℓ`` a running mean (EMA with decay ``grad_ema``, started at the first
value) of ``Σ_i ‖∇_{W'_i}L‖²`` over refreshes. Summed over the layer's rows, the gradient term then
carries ``β̃ G/Ḡ`` times the weight term, i.e. a share ``β̃/(1 + β̃)`` of the noise variance (paper form;
of the summed std in kohya form) when the current gradient is at its running mean: β̃ = 1 gives half,
whatever the loss's and the weights' units. With ``grad_ema = 0`` the share is exact at every refresh.

Logged per training-loss record: ``noise/row_std`` (mean per-row std over every adapted row, weight
units) and, with β > 0, ``ggpo/grad_share``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from overtrain.config import InIdWhenSet
from overtrain.core.lora import LoraView, lora_layers, row_noise_generator, row_std, sample_row_noise
from overtrain.core.perturb import perturbed
from overtrain.registry import FINETUNE_METHODS
from overtrain.training.methods.lora import LoraFinetune
from overtrain.training.step_rules import StepRule

GRAD_EMA = 0.9
"""Default decay of the running mean of Σ‖∇W'_i‖² behind the relative β."""


@FINETUNE_METHODS.register("lora_ggpo")
class LoraGgpoFinetune(LoraFinetune):
    """LoRA-GGPO: LoRA at merged weights perturbed by row-wise noise scaled by weight and gradient norms."""

    name: Literal["lora_ggpo"] = "lora_ggpo"

    sigma: float = Field(0.05, ge=0)
    """σ: noise scale relative to the row norm (paper form: std_i = σ·‖W'_i‖/√d when β = 0)."""

    beta: float = Field(0.01, ge=0)
    """β: weight of the squared gradient row norm (0: Flat-LoRA); with ``beta_scale: relative`` the
    dimensionless β̃ (the gradient term's share of the variance is β̃/(1 + β̃))."""

    beta_scale: Literal["absolute", "relative"] | None = InIdWhenSet()
    """``absolute`` (or unset): β as given (units weight²/gradient²); ``relative``: β̃ scaled per layer by
    the weight term over the running mean of the squared gradient norm (module docstring). Unset leaves
    the run ids of runs from before the field existed unchanged."""

    grad_ema: float | None = InIdWhenSet(ge=0, lt=1)
    """Decay of the running mean of the squared gradient norm used by ``beta_scale: relative`` (unset:
    `GRAD_EMA`)."""

    std_form: Literal["paper", "kohya"] = "paper"
    """``paper``: variance (σ²/d)(‖W'_i‖² + β‖∇_i‖²); ``kohya``: std (σ‖W'_i‖ + β‖∇_i‖²)/√d."""

    norm_dim: Literal["in", "out"] = "in"
    """d in the law: the row length d_in (paper) or d_out (kohya)."""

    grad_every: int = Field(1, gt=0)
    """Refresh the gradient row norms every this many steps (1: every step, the paper's rule)."""

    grad_source: Literal["merged", "factors"] = "merged"
    """``merged``: the exact gradient w.r.t. W' (one extra weight-gradient product per layer on refresh
    steps); ``factors``: kohya's approximation s·(B∇A + ∇B A) from the LoRA gradients (no extra product)."""

    def step_rule(self, model, optimizer, seed: int = 0):
        return RowNoise(
            model,
            sigma=self.sigma,
            beta=self.beta,
            std_form=self.std_form,
            norm_dim=self.norm_dim,
            grad_every=self.grad_every,
            grad_source=self.grad_source,
            beta_scale=self.beta_scale or "absolute",
            grad_ema=GRAD_EMA if self.grad_ema is None else self.grad_ema,
            seed=seed,
        )


class RowNoise(StepRule):
    """Row-wise Gaussian noise on the merged weight of every LoRA layer (module docstring)."""

    def __init__(
        self,
        model,
        *,
        sigma: float,
        beta: float = 0.0,
        std_form: str = "paper",
        norm_dim: str = "in",
        grad_every: int = 1,
        grad_source: str = "merged",
        beta_scale: str = "absolute",
        grad_ema: float = GRAD_EMA,
        seed: int = 0,
    ):
        super().__init__(model)
        self.layers = lora_layers(model)
        self.sigma, self.beta, self.grad_every, self.grad_source = sigma, beta, grad_every, grad_source
        self.std_form, self.norm_dim = std_form, norm_dim
        self.beta_scale, self.grad_ema = beta_scale, grad_ema
        self.grad_sq: dict[str, torch.Tensor] = {}
        """‖∇_{W'_i} L‖² per row from the last refresh, by base weight name."""
        self.grad_mean: dict[str, torch.Tensor] = {}
        """Running mean of Σ_i ‖∇_{W'_i} L‖² over refreshes, by base weight name (relative β only)."""
        self.generator = row_noise_generator(self.layers, seed)
        self.steps = 0
        self.last_noise: dict[str, torch.Tensor] = {}
        """The noise of the last perturbed step, by base weight name (for inspection and tests)."""

    def row_std(self, layer: LoraView) -> tuple[torch.Tensor, torch.Tensor]:
        """(std_i, the gradient term's share) for every row of `layer`, float32."""
        return row_std(
            layer,
            sigma=self.sigma,
            beta=self.layer_beta(layer),
            grad_sq=self.grad_sq.get(layer.weight_name),
            std_form=self.std_form,
            norm_dim=self.norm_dim,
        )

    def layer_beta(self, layer: LoraView) -> float | torch.Tensor:
        """β of `layer`: as given, or (relative) ``β̃ · Σ_i u_i / Ḡ`` (module docstring); 0 before the
        first gradient is known."""
        if self.beta_scale == "absolute" or self.beta == 0:
            return self.beta
        mean = self.grad_mean.get(layer.weight_name)
        if mean is None:
            return 0.0
        w_sq = layer.merged().float().pow(2).sum(1)
        weight = w_sq.sum() if self.std_form == "paper" else self.sigma * w_sq.sqrt().sum()
        return self.beta * weight / mean.clamp_min(1e-30)

    def keep_grad(self, name: str, grad_sq: torch.Tensor) -> None:
        """Store a refresh's squared gradient row norms and update their running mean."""
        self.grad_sq[name] = grad_sq
        total = grad_sq.sum()
        old = self.grad_mean.get(name)
        self.grad_mean[name] = total if old is None else self.grad_ema * old + (1 - self.grad_ema) * total

    def sample(self) -> dict[str, torch.Tensor]:
        """One draw of ε for every adapted layer (base weight name -> d_out x d_in), recording its stats."""
        noise, stds, shares = {}, [], []
        for layer in self.layers:
            std, share = self.row_std(layer)
            noise[layer.weight_name] = sample_row_noise(layer, std, self.generator)
            stds.append(std)
            shares.append(share)
        self.record(**{"noise/row_std": torch.cat(stds).mean()})
        if self.beta > 0:
            self.record(**{"ggpo/grad_share": torch.cat(shares).mean()})
        return noise

    def forward_backward(self, loss_fn):
        if not self.perturbing():
            return super().forward_backward(loss_fn)
        refresh = self.beta > 0 and self.steps % self.grad_every == 0
        exact = refresh and self.grad_source == "merged"
        self.last_noise = noise = self.sample()
        bases = [layer.base.weight for layer in self.layers]
        with perturbed(self.model, noise):
            try:
                if exact:
                    for w in bases:
                        w.requires_grad_(True)
                loss = loss_fn()
                loss.backward()
                if exact:
                    for layer in self.layers:
                        g = layer.base.weight.grad
                        if g is not None:
                            self.keep_grad(layer.weight_name, g.detach().float().pow(2).sum(1))
            finally:
                if exact:
                    for w in bases:
                        w.grad = None
                        w.requires_grad_(False)
        if refresh and not exact:
            for layer in self.layers:
                if layer.A.grad is not None and layer.B.grad is not None:
                    self.keep_grad(layer.weight_name, factor_grad_sq(layer))
        self.steps += 1
        return loss.detach()


@torch.no_grad()
def factor_grad_sq(layer: LoraView) -> torch.Tensor:
    """Row norms² of kohya's approximate merged gradient ``G = s·(B ∇A + ∇B A)`` without forming it:
    ``‖G_i‖² = s²·c_i (D Dᵀ) c_iᵀ`` with ``c_i = [B_i, ∇B_i]`` (1 x 2r) and ``D = [∇A; A]`` (2r x d_in)."""
    C = torch.cat([layer.B, layer.B.grad], 1).float()
    D = torch.cat([layer.A.grad, layer.A], 0).float()
    return (C @ (D @ D.T) * C).sum(1).mul_(layer.scaling**2)
