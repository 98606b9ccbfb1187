"""The two-layer linear theory model of catastrophic overtraining (Springer et al. 2025, §theory).

A linear network ``x -> W2 W1 x`` with ``W1, W2`` in R^{d x d} learns a target map

    M = Q1 diag(s) Q2ᵀ,    s_i = scale · i^(-exponent),  i = 1..d,

with Q1, Q2 Haar-random orthogonal (one draw per seed). For whitened inputs the population loss is

    L(W) = ½ ‖W2 W1 − M‖²_F                                   (nats-free: a squared Frobenius error)

and pre-training is full-batch gradient descent on it from a small Gaussian initialisation
``W1, W2 ~ N(0, init_std²)`` entry-wise, at step size η (``lr``):

    R = W2 W1 − M,   W1 ← W1 − η W2ᵀ R,   W2 ← W2 − η R W1ᵀ     (both gradients at the old point).

Small initialisation makes the learning *incremental*: singular direction i is picked up after roughly
``ln(s_i / init²) / (η s_i)`` steps, largest first. With a slowly decaying spectrum (exponent 1.5) the
smallest directions are learned only late (~10⁴ steps at the defaults), so the weights keep growing long
after the loss is small; with s_i ∝ 1/i (exponent 1, the negative control) everything is learned early.

At each checkpoint T (a step count) the run measures, per seed:

- **base loss** L(W_T);
- **Gaussian perturbation** (absolute noise, the same law at every T): W1 + γ E1, W2 + γ E2 with
  E1, E2 entry-wise N(0, 1), K draws per γ; ``delta`` Δ(T, γ) = mean_k L(W_T + γ E_k) − L(W_T) and the
  perturbed loss itself. Exactly, E[Δ] = ½ γ² d (‖W1‖²_F + ‖W2‖²_F) + ½ γ⁴ d³ for any weights, so Δ
  tracks the weight norm (``weight_norm_sq``). The K noise matrices are drawn once per seed and reused at every T and γ
  (common random numbers): curves over T and γ differ only through the weights, not through fresh noise.
- **Fine-tuning**: from a *copy* of W_T, ``ft_steps`` GD steps at ``ft_lr`` on M_ft = M + U Vᵀ, where U,
  V (d x r) have orthonormal columns (r = ``ft_rank``; r = 1 is one new unit-norm rank-1 feature u vᵀ).
  Recorded: the pre-training loss after fine-tuning, ½‖W2'W1' − M‖²_F (forgetting; the paper's "base
  capability"), and the fine-tuning loss reached, ½‖W2'W1' − M_ft‖²_F.

Perturbation and fine-tuning act on copies: the pre-training trajectory is never touched, so W_T is the
same whatever is measured along the way.

Everything is float64 and batched over seeds (``torch.bmm`` on stacked ``[S, d, d]`` weights); the per-step
cost is three d x d x d matrix products per seed, so the default run (3 seeds, 10⁵ steps) is bound by
about 10⁵ x 3 x 3 small GEMMs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from overtrain.config import BaseConfig, Count, NotInId
from overtrain.seed import numpy_rng

DTYPE = torch.float64
"""Every tensor of the theory model is float64: the late singular values are ~1e-2 and the weights start
at 1e-4, and the reference test compares against a plain numpy loop to 1e-10."""


class LinearTheoryConfig(BaseConfig):
    """The two-layer linear theory model: target spectrum, pre-training, perturbation and fine-tuning."""

    schema_version: int = 1
    """Config schema version (older configs are upgraded on load)."""

    dim: int = Field(40, ge=2, le=1024)
    """d: input, hidden and output width (W1, W2 and M are d x d)."""

    spectrum_exponent: float = Field(1.5, ge=0, le=10)
    """Singular values of the target decay as s_i = spectrum_scale · i^(-exponent). 1.5 gives the long
    tail of small directions learned late (the U appears); 1.0 is the negative control (no U)."""

    spectrum_scale: float = Field(3.0, gt=0, le=100)
    """s_1, the largest singular value of the target M."""

    init_std: float = Field(1e-4, gt=0, le=1)
    """Standard deviation of every entry of W1 and W2 at initialisation (small: incremental learning)."""

    lr: float = Field(0.05, gt=0)
    """Pre-training step size η of full-batch gradient descent. Must satisfy η · spectrum_scale < 1."""

    min_steps: Count = 100
    """Smallest checkpoint (steps) of the log-spaced grid; ignored when `checkpoints` is given."""

    max_steps: Count = 100_000
    """Largest checkpoint (steps): pre-training length; ignored when `checkpoints` is given."""

    n_checkpoints: int = Field(13, ge=1, le=1000)
    """Number of log-spaced checkpoints in [min_steps, max_steps] (rounded to whole steps, duplicates
    dropped); ignored when `checkpoints` is given."""

    checkpoints: list[Count] | None = None
    """Explicit checkpoint step counts (e.g. ``[100, 1k, 10k]``), instead of min/max/n_checkpoints."""

    gammas: list[float] = [0.01, 0.03]
    """Perturbation scales γ: every entry of W1 and W2 gets γ · N(0, 1) noise (absolute, the same at
    every checkpoint)."""

    draws: int = Field(20, ge=1, le=10_000)
    """K: noise draws per (seed, checkpoint, γ); the same K draws are reused at every checkpoint and γ."""

    ft_steps: int = Field(100, ge=1, le=10_000_000)
    """Full-batch GD steps of fine-tuning on M_ft = M + U Vᵀ from each checkpoint."""

    ft_lr: float = Field(0.02, gt=0)
    """Fine-tuning step size (the same at every checkpoint: the paper's fixed-LR regime)."""

    ft_rank: int = Field(1, ge=1)
    """r: rank of the new fine-tuning feature U Vᵀ (orthonormal columns, each singular value 1)."""

    seeds: list[int] = [1, 2, 3]
    """Seeds; each draws its own target (Q1, Q2), initialisation, fine-tuning feature and noise."""

    threads: int = NotInId(1, ge=1, le=256)
    """torch intra-op threads while the run executes (restored afterwards). 1 by default: d x d GEMMs at
    d = 40 are too small to split, and on a busy 2-core machine 2 threads made them ~170x slower."""

    @field_validator("gammas")
    @classmethod
    def _gammas(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("give at least one gamma")
        if any(not (g > 0 and math.isfinite(g)) for g in value):
            raise ValueError("every gamma must be a positive finite number")
        if len(set(value)) != len(value):
            raise ValueError("gammas must be distinct")
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("give at least one seed")
        if len(set(value)) != len(value):
            raise ValueError("seeds must be distinct")
        if any(s < 0 for s in value):
            raise ValueError("seeds must be >= 0")
        return value

    @field_validator("checkpoints")
    @classmethod
    def _checkpoints(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("give at least one checkpoint (or leave it out for the log-spaced grid)")
        if len(set(value)) != len(value):
            raise ValueError("checkpoints must be distinct")
        return sorted(value)

    @model_validator(mode="after")
    def _consistent(self) -> LinearTheoryConfig:
        if self.checkpoints is not None:
            given = {"min_steps", "max_steps", "n_checkpoints"} & self.model_fields_set
            if given:
                raise ValueError(f"give either checkpoints or {', '.join(sorted(given))}, not both")
        elif self.min_steps > self.max_steps:
            raise ValueError(f"min_steps ({self.min_steps}) exceeds max_steps ({self.max_steps})")
        if self.ft_rank > self.dim:
            raise ValueError(f"ft_rank ({self.ft_rank}) exceeds dim ({self.dim})")
        # At a balanced fit the loss's sharpness is 2·s_1, so GD is stable only for η < 1/s_1; the
        # fine-tuning target's top singular value is at most s_1 + 1 (unit-norm new features).
        if self.lr * self.spectrum_scale >= 1:
            raise ValueError(
                f"lr · spectrum_scale = {self.lr * self.spectrum_scale:g} must be < 1 (GD diverges)"
            )
        if self.ft_lr * (self.spectrum_scale + 1) >= 1:
            raise ValueError(
                f"ft_lr · (spectrum_scale + 1) = {self.ft_lr * (self.spectrum_scale + 1):g} must be < 1 "
                "(fine-tuning GD diverges)"
            )
        return self

    def checkpoint_steps(self) -> list[int]:
        """The checkpoint step counts, ascending: `checkpoints`, or the rounded log-spaced grid."""
        if self.checkpoints is not None:
            return list(self.checkpoints)
        if self.n_checkpoints == 1:
            return [int(self.max_steps)]
        grid = np.logspace(math.log10(self.min_steps), math.log10(self.max_steps), self.n_checkpoints)
        return sorted({int(round(x)) for x in grid})

    def spectrum(self) -> np.ndarray:
        """The target's singular values s_i = scale · i^(-exponent), i = 1..dim (descending)."""
        i = np.arange(1, self.dim + 1, dtype=np.float64)
        return self.spectrum_scale * i ** (-self.spectrum_exponent)


def haar_orthogonal(rng: np.random.Generator, d: int, cols: int | None = None) -> np.ndarray:
    """A Haar-random d x d orthogonal matrix (or its first `cols` columns).

    QR of a Gaussian matrix with the signs of R's diagonal moved into Q (without that fix Q is not
    uniformly distributed).
    """
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    q = q * np.sign(np.diag(r))[None, :]
    return q if cols is None else q[:, :cols]


@dataclass(frozen=True)
class LinearProblem:
    """Everything random about one seed (numpy float64), each from its own named stream.

    Attributes:
        seed: the seed.
        target: M = Q1 diag(s) Q2ᵀ, [d, d].
        ft_target: M_ft = M + U Vᵀ, [d, d].
        w1: W1 at initialisation, [d, d].
        w2: W2 at initialisation, [d, d].
        noise1: E1, the K perturbation directions of W1, [K, d, d], entries N(0, 1).
        noise2: E2, those of W2, [K, d, d].
    """

    seed: int
    target: np.ndarray
    ft_target: np.ndarray
    w1: np.ndarray
    w2: np.ndarray
    noise1: np.ndarray
    noise2: np.ndarray


def make_problem(cfg: LinearTheoryConfig, seed: int) -> LinearProblem:
    """Draw one seed's target, initialisation, fine-tuning feature and noise.

    Streams are named (`overtrain.seed.numpy_rng`), so changing ``draws`` leaves the target and the
    initialisation alone, and noise draw k is the same whatever K is.
    """
    d = cfg.dim
    rng = numpy_rng(seed, "linear_theory", "target", d)
    q1, q2 = haar_orthogonal(rng, d), haar_orthogonal(rng, d)
    target = (q1 * cfg.spectrum()[None, :]) @ q2.T
    rng = numpy_rng(seed, "linear_theory", "init", d)
    w1 = cfg.init_std * rng.standard_normal((d, d))
    w2 = cfg.init_std * rng.standard_normal((d, d))
    rng = numpy_rng(seed, "linear_theory", "finetune", d)
    u, v = haar_orthogonal(rng, d, cfg.ft_rank), haar_orthogonal(rng, d, cfg.ft_rank)
    ft_target = target + u @ v.T
    noise = np.stack(
        [numpy_rng(seed, "linear_theory", "noise", d, k).standard_normal((2, d, d)) for k in range(cfg.draws)]
    )
    return LinearProblem(seed, target, ft_target, w1, w2, noise[:, 0], noise[:, 1])


def loss(w1: torch.Tensor, w2: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """½ ‖W2 W1 − M‖²_F over the last two dims (any leading batch dims broadcast)."""
    return 0.5 * (w2 @ w1 - target).square().sum(dim=(-2, -1))


def gd_(w1: torch.Tensor, w2: torch.Tensor, target: torch.Tensor, lr: float, steps: int) -> None:
    """`steps` full-batch GD steps on ½‖W2 W1 − M‖²_F, in place, batched over the leading dim.

    Args:
        w1: W1, [S, h, d_in], updated in place.
        w2: W2, [S, d_out, h], updated in place.
        target: M, [S, d_out, d_in].
        lr: step size η.
        steps: number of steps (0 does nothing).
    """
    r = torch.empty_like(target)
    g1 = torch.empty_like(w1)
    # Four fused in-place kernels per step and no allocations: at d = 40 the GEMMs are the cost.
    for _ in range(steps):
        torch.baddbmm(target, w2, w1, beta=-1, out=r)  # R = W2 W1 − M
        torch.bmm(w2.transpose(1, 2), r, out=g1)  # ∂L/∂W1 = W2ᵀ R, taken before W2 moves
        w2.baddbmm_(r, w1.transpose(1, 2), alpha=-lr)  # W2 ← W2 − η R W1ᵀ (W1 still the old one)
        w1.add_(g1, alpha=-lr)


def perturbed_losses(
    w1: torch.Tensor,
    w2: torch.Tensor,
    target: torch.Tensor,
    noise1: torch.Tensor,
    noise2: torch.Tensor,
    gammas: Sequence[float],
) -> torch.Tensor:
    """L(W + γE) for every seed, γ and draw, without touching W.

    Args:
        w1, w2: [S, d, d] weights.
        target: [S, d, d].
        noise1, noise2: [S, K, d, d] standard-normal directions.
        gammas: G noise scales.

    Returns:
        [S, G, K] perturbed losses. Memory: one [S, K, d, d] product per γ.
    """
    out = []
    for gamma in gammas:
        p = (w2[:, None] + gamma * noise2) @ (w1[:, None] + gamma * noise1)
        out.append(0.5 * (p - target[:, None]).square().sum(dim=(-2, -1)))
    return torch.stack(out, dim=1)
