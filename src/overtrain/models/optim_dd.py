"""The role of optimisation in model-wise double descent (Liu & Flanigan 2023; science.md §5).

Claim: model-wise double descent appears if and only if the optimiser reaches a low enough training loss.
Optimiser settings (training length, learning rate, batch size, SGD vs Adam, initialisation scale,
feature normalisation) change the loss reached at the interpolation threshold P = n — through the
condition number κ(F) of the features or through how well the optimiser copes with it — and hence the
height of the test-loss peak there.

**Model.** Random features φ(x) ∈ R^P (`overtrain.models.random_features`, ReLU by default), frozen; only
the linear readout a ∈ R^{P x k} trains, on the objective

    L(a) = ½ · mean_{i ∈ batch} ||φ̃(x_i)ᵀ a − y_i||²,        φ̃ = the normalised features (below).

The *reported* losses are plain mean squared errors, ``mean_i ||φ̃(x_i)ᵀa − y_i||²`` over the whole
training set (train loss, noisy targets) or the test set (test loss, clean targets) — the ``loss`` of
`sweep_widths`, in squared target units, so the two families of curves are comparable.

**Feature normalisation** (per setting): ``none``; ``standardize`` — an intercept column plus columns
centred and scaled by the training set's mean and std (`standardize`). It removes the large common mean of
ReLU features, an outlier top singular value (s_max at P = n: 82 → 53 at the defaults), so a step of
1/s_max² moves every bulk direction (s/s_max)² ≈ 2.4x faster; κ(F) itself does *not* drop (5.7e3 → 9.0e3:
the smallest singular value shrinks too) — what sets the loss reached in a budget is the whole spectrum
relative to s_max, not κ alone. ``sqrt_p`` — features divided by √P (NTK-style; leaves κ and ``edge``
learning rates unchanged; rescales the effect of an absolute SGD step by 1/P and of an Adam step by 1/√P).

**Two families of settings**, each swept over every width P of the grid:

- *closed form* (free): exact full-batch GD from a = 0 for T steps at η = 1/s_max² on ½||F a − y||²
  (science.md §0; `fits(steps=...)`), T in ``steps``, plus T = ∞ — the minimum-norm interpolant;
- *torch* (`OptimizerSetting`): SGD (batch 1 … full, optional heavy-ball momentum) or Adam, a learning
  rate (``edge`` units: a multiple of 1/λ_max of each width's Hessian; or absolute), an epoch budget, the
  readout init ``a_0 ~ N(0, init_scale²)`` entry-wise (0: zero init, which makes GD converge to the
  minimum-norm solution) and the feature normalisation.

**Batched training.** All widths of a setting and all seeds train at once: the features of width P are
the first P columns of one draw of P_max columns, so every width's readout is a column of a padded
``[S, P_max, W·k]`` tensor whose rows ≥ P are masked. Predictions are one ``bmm`` of the mini-batch
features ``[S, B, P_max]`` with the readouts; the gradient is masked so padded rows stay exactly zero
(SGD and Adam update elementwise, so a zero gradient on a zero entry leaves it zero). Each column is
therefore exactly the model of its width trained alone (`tests/models/test_optim_dd.py` checks this).
Every width and seed sees the same shuffled mini-batches — they are independent models, so sharing the
order costs nothing and keeps the loop to one Python iteration per step.

**Peak statistics** (per setting, on the median-over-seeds curves; `peak_statistics`):

- ``test_at_n``: the test loss at P = n;
- ``peak_height = test_at_n / median(test loss at the grid widths with P/n in any of `peak_windows`)``,
  by default P/n ∈ [0.5, 0.7] ∪ [1.5, 2] — near the threshold but outside its ill-conditioned zone; ≈ 1
  means no peak, ≫ 1 a sharp peak;
- ``train_at_n``: the (mean squared) training loss at P = n, and ``kappa_at_n`` = s_max/s_min of the
  (normalised) n x n feature matrix.

**Checks** (science.md §5, `OptimizationDDResult.claims`): (1) κ(F) and ||a|| of the minimum-norm fit peak
at P = n; (2) at P = n the closed-form test loss rises monotonically with T while the train loss falls to
0; (3) at the smallest T the curve has no interior peak (test loss at P = n within 10% of the mean of its
two grid neighbours); (4) across every setting (closed form and torch), Spearman(peak height,
−log train loss at P = n) ≥ 0.8, with a percentile-bootstrap CI over settings.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from overtrain.analysis.claims import Claim, check
from overtrain.analysis.stats import spearman, spearman_ci
from overtrain.config import BaseConfig, NotInId, Seeds, to_plain
from overtrain.data.regression import RegressionData, RegressionDataConfig, TeacherConfig
from overtrain.errors import ConfigError
from overtrain.models.random_features import FeatureConfig, fits, random_features, sweep_widths
from overtrain.seed import numpy_rng, torch_generator
from overtrain.threads import blas_threads

Normalization = Literal["none", "standardize", "sqrt_p"]

DEFAULT_RATIOS = [0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 1.75, 2.0, 3.0]
"""Widths P/n: the threshold 1.0, its two neighbours 0.9 and 1.1, the peak-height windows
[0.5, 0.7] and [1.5, 2], and a few points beyond (the padded readouts cost W·P_max, so P_max stays 3n)."""

NO_PEAK_TOLERANCE = 0.1
"""Check (3): the test loss at P = n is at most this much above the mean of its grid neighbours."""

SPEARMAN_THRESHOLD = 0.8
"""Check (4): Spearman(peak height, −log train loss at P = n) across settings must reach this."""

LOSS_FLOOR = 1e-300
"""Train losses are floored here before −log (the minimum-norm interpolant can reach exactly 0)."""


class OptimizerSetting(BaseConfig):
    """One way of training the readouts of every width (a point of the optimiser axis)."""

    name: str | None = None
    """Label of the setting in the records; None: built from the fields (`label`)."""

    optimizer: Literal["sgd", "adam"] = "sgd"
    """``sgd`` (plain or heavy-ball: `momentum`) or ``adam`` (torch's defaults: β = (0.9, 0.999),
    ε = 1e-8, bias corrected, no weight decay)."""

    lr: float = Field(1.0, gt=0, le=1e3)
    """Learning rate, in `lr_units`."""

    lr_units: Literal["edge", "absolute"] = "edge"
    """``edge``: a multiple of 1/λ_max(H_P), H_P = F̃_PᵀF̃_P / n the Hessian of the full-batch objective at
    width P and seed (λ_max = s_max²/n), so each width gets its own step and ``lr = 1`` with a full batch is
    the closed form's η = 1/s_max² (full-batch GD is stable for lr < 2); SGD only. ``absolute``: the step
    itself, the same for every width."""

    momentum: float = Field(0.0, ge=0, lt=1)
    """Heavy-ball momentum μ of SGD (torch's convention: v ← μ v + g, a ← a − η v); 0: plain SGD. It
    divides the convergence time of the slow directions by up to 1/(1 − μ); Adam ignores it."""

    batch_size: int | Literal["full"] = "full"
    """Examples per step (``full``: all n, i.e. gradient descent). Batches are a fresh shuffle every epoch,
    the last one smaller when B does not divide n."""

    epochs: int = Field(100, ge=1, le=10_000_000)
    """Passes over the training set; steps = epochs · ceil(n / B) (full batch: steps = epochs)."""

    init_scale: float = Field(0.0, ge=0, le=1e3)
    """Standard deviation of every readout entry at initialisation (0: zero init). Drawn once per seed at
    P_max, a width uses its first P rows."""

    normalization: Normalization = "none"
    """Feature normalisation: ``none``, ``standardize`` (an intercept column, then columns centred and
    scaled with the training set's statistics; `standardize`) or ``sqrt_p`` (features divided by √P)."""

    @model_validator(mode="after")
    def _units(self) -> OptimizerSetting:
        if self.optimizer == "adam" and self.lr_units == "edge":
            raise ValueError("Adam's step does not scale with the curvature: give lr_units 'absolute'")
        if isinstance(self.batch_size, int) and self.batch_size < 1:
            raise ValueError("batch_size must be >= 1 or 'full'")
        return self

    def label(self) -> str:
        """`name`, or e.g. ``sgd b=8 lr=0.5(edge) e=50 init=0 norm=none``."""
        if self.name:
            return self.name
        lr = f"{self.lr:g}" + ("(edge)" if self.lr_units == "edge" else "")
        mom = f" μ={self.momentum:g}" if self.momentum and self.optimizer == "sgd" else ""
        return (f"{self.optimizer}{mom} b={self.batch_size} lr={lr} e={self.epochs} init={self.init_scale:g} "
                f"norm={self.normalization}")

    def batch(self, n: int) -> int:
        """The batch size on `n` training examples."""
        return n if self.batch_size == "full" else min(int(self.batch_size), n)

    def steps(self, n: int) -> int:
        """Optimiser steps on `n` training examples."""
        return self.epochs * math.ceil(n / self.batch(n))


def _s(**kw: Any) -> OptimizerSetting:
    return OptimizerSetting(**kw)


DEFAULT_SETTINGS: list[OptimizerSetting] = [
    _s(name="GD lr=0.3 e=100", lr=0.3, epochs=100),
    _s(name="SGD b=32 lr=0.5 e=30", batch_size=32, lr=0.5, epochs=30),
    _s(name="Adam b=32 lr=1e-3 e=100", optimizer="adam", lr_units="absolute", lr=1e-3, batch_size=32,
       epochs=100),
    _s(name="SGD b=8 lr=0.4 e=100", batch_size=8, lr=0.4, epochs=100),
    _s(name="SGD b=1 lr=0.2 e=50", batch_size=1, lr=0.2, epochs=50),
    _s(name="Adam lr=1e-2 e=1000 sqrtP", optimizer="adam", lr_units="absolute", lr=1e-2, epochs=1000,
       normalization="sqrt_p"),
    _s(name="GD e=1000 std", epochs=1000, normalization="standardize"),
    _s(name="SGD b=8 lr=1 e=300", batch_size=8, lr=1.0, epochs=300),
    _s(name="Adam lr=1e-2 e=1000 init=0.3", optimizer="adam", lr_units="absolute", lr=1e-2, epochs=1000,
       init_scale=0.3),
    _s(name="Adam lr=1e-2 e=1000", optimizer="adam", lr_units="absolute", lr=1e-2, epochs=1000),
    _s(name="GD μ=0.99 e=1000", momentum=0.99, epochs=1000),
    _s(name="GD μ=0.99 e=3000", momentum=0.99, epochs=3000),
    _s(name="Adam lr=1e-2 e=3000 std", optimizer="adam", lr_units="absolute", lr=1e-2, epochs=3000,
       normalization="standardize"),
    _s(name="GD μ=0.99 e=3000 std", momentum=0.99, epochs=3000, normalization="standardize"),
]
"""The default optimiser axis: 14 settings whose reached train MSE at P = n spans 0.19 → 0.0016 (3 seeds,
measured: plain GD / large-batch SGD ≈ 0.19–0.14, Adam b=32 and SGD b=8, b=1 ≈ 0.09–0.05, standardised
GD, SGD b=8 lr=1 and Adam 1000 steps ≈ 0.03–0.016, heavy-ball GD and Adam on standardised features
≈ 0.01–0.0016), about 12 s on one thread in all. Reaching T ≈ 1e5–1e6 plain-GD equivalents in ~3,000 steps
needs momentum, Adam or standardisation; plain SGD at any batch size stays above ~0.03 in this budget."""


class OptimizationDDConfig(BaseConfig):
    """Model-wise double descent of random-feature regression under many optimiser settings."""

    schema_version: int = 1
    """Config schema version (older configs are upgraded on load)."""

    data: RegressionDataConfig = Field(default_factory=TeacherConfig)
    """The regression data (``{name: teacher}``: science.md §5, d = 20, n = 200, noise std 0.3;
    ``{name: digits, ...}`` also works, at k = 10 times the cost); each seed replaces the data's seed."""

    features: FeatureConfig = Field(default_factory=FeatureConfig)
    """The random feature map (ReLU by default); each seed replaces its seed."""

    width_ratios: list[float] = Field(default_factory=lambda: list(DEFAULT_RATIOS))
    """Widths as P/n, rounded to integers (1.0, the interpolation threshold, is always added)."""

    seeds: Seeds = [0, 1, 2]
    """Seeds: each redraws the data sample, the features and the readout init. The mini-batch order is
    drawn once (from the first seed) and shared by every seed and width."""

    steps: list[float] = [1e2, 1e3, 1e4, 1e5, 1e6]
    """Training lengths T of the closed-form GD family (exact, η = 1/s_max², from zero); T = ∞ (the
    minimum-norm fit) is always added."""

    settings: list[OptimizerSetting] = Field(
        default_factory=lambda: [s.model_copy() for s in DEFAULT_SETTINGS])
    """The torch-trained optimiser settings."""

    peak_windows: list[tuple[float, float]] = [(0.5, 0.7), (1.5, 2.0)]
    """Ranges of P/n (inclusive) whose grid widths form the baseline of the peak height."""

    dtype: Literal["float32", "float64"] = "float64"
    """Precision of torch training (closed forms are always float64). At these sizes float32 is not
    measurably faster on one thread."""

    spearman_boot: int = Field(2000, ge=10, le=100_000)
    """Bootstrap replicates of the CI of check (4)."""

    threads: int = NotInId(1, ge=1, le=256)
    """torch intra-op and numpy BLAS threads while the run executes (restored afterwards): the matrices
    are small, and on 2 shared cores one thread is fastest (2 BLAS threads made the closed-form sweep
    ~10x slower on a busy machine)."""

    @field_validator("width_ratios")
    @classmethod
    def _ratios(cls, value: list[float]) -> list[float]:
        if any(not (r > 0 and math.isfinite(r)) for r in value):
            raise ValueError("width ratios P/n must be positive and finite")
        return sorted(set(value) | {1.0})

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: list[float]) -> list[float]:
        if any(not (t >= 1 and math.isfinite(t)) for t in value):
            raise ValueError("closed-form steps T must be finite and >= 1")
        return sorted(set(value))

    @field_validator("peak_windows")
    @classmethod
    def _windows(cls, value: list[tuple[float, float]]) -> list[tuple[float, float]]:
        if not value or any(not 0 < lo <= hi for lo, hi in value):
            raise ValueError("give at least one window (lo, hi) with 0 < lo <= hi")
        if any(lo <= 1.0 <= hi for lo, hi in value):
            raise ValueError("a peak window must not contain P/n = 1 (the peak itself)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> OptimizationDDConfig:
        n = self.data.n_train
        widths = self.widths()
        if len(widths) != len(self.width_ratios):
            raise ValueError(f"width ratios collide after rounding to integers at n = {n}: "
                             f"{self.width_ratios}")
        ratios = np.array(widths) / n
        for lo, hi in self.peak_windows:
            if not ((ratios >= lo) & (ratios <= hi)).any():
                raise ValueError(f"peak window [{lo}, {hi}] holds no width of the grid")
        if widths.index(n) in (0, len(widths) - 1):
            raise ValueError("the grid needs widths on both sides of P = n")
        labels = [s.label() for s in self.settings]
        if len(set(labels)) != len(labels):
            raise ValueError(f"setting labels must be distinct: {labels}")
        for s in self.settings:
            if isinstance(s.batch_size, int) and s.batch_size > n:
                raise ValueError(f"setting {s.label()!r}: batch_size {s.batch_size} exceeds n = {n}")
        return self

    def widths(self) -> list[int]:
        """The integer widths P = round(ratio · n), ascending and distinct."""
        n = self.data.n_train
        return sorted({max(1, int(round(r * n))) for r in self.width_ratios})


# --- batched readout training --------------------------------------------------------------------------


@dataclass
class ReadoutFit:
    """Readouts trained at every width of a grid, for every seed.

    Attributes:
        readouts: [S, P_max, W, k] trained readouts (rows ≥ P_w of width w are zero), in the
            parametrisation of the normalised features given to `train_readouts`.
        train_loss: [S, W] training mean squared error (summed over the k outputs).
        test_loss: [S, W] test mean squared error, or None without test data.
        norm: [S, W] Frobenius norm of each readout.
        lr: [S, W] the step size each width used (``edge`` units resolved).
    """

    readouts: np.ndarray
    train_loss: np.ndarray
    test_loss: np.ndarray | None
    norm: np.ndarray
    lr: np.ndarray


def width_mask(widths: Sequence[int], p_max: int) -> np.ndarray:
    """[P_max, W] 1.0 where row j < P_w belongs to width w's readout, else 0."""
    return (np.arange(p_max)[:, None] < np.asarray(widths)[None, :]).astype(np.float64)


def width_scales(widths: Sequence[int], normalization: Normalization) -> np.ndarray:
    """[W] the factor every feature of width P is multiplied by: 1/√P for ``sqrt_p``, else 1."""
    w = np.asarray(widths, dtype=np.float64)
    return 1 / np.sqrt(w) if normalization == "sqrt_p" else np.ones_like(w)


def standardize(F: np.ndarray, F_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An intercept and standardised features: column 0 is the constant 1, column j ≥ 1 is feature j − 1
    centred and scaled by the training split's mean and std (along the examples axis, -2), so width P
    still has P parameters. A constant column (a dead ReLU feature) is only centred.

    Why the intercept: centred columns are all orthogonal to the all-ones vector, so n of them have rank
    n − 1 and the threshold would move off P = n; the constant column spans that direction with the same
    norm √n as a standardised column."""
    mean = F.mean(-2, keepdims=True)
    std = F.std(-2, keepdims=True)
    std = np.where(std > 0, std, 1.0)

    def apply(X: np.ndarray) -> np.ndarray:
        Z = (X - mean) / std
        return np.concatenate([np.ones_like(Z[..., :1]), Z[..., :-1]], axis=-1)

    return apply(F), apply(F_test)


def singular_range(F: np.ndarray, widths: Sequence[int],
                   scales: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """([S, W] s_max, [S, W] s_min) of the column prefixes ``F[s, :, :P]`` (times the width's scale);
    s_min is the smallest of the min(n, P) singular values, so s_max/s_min is κ(F_P)."""
    S = F.shape[0]
    smax, smin = np.empty((S, len(widths))), np.empty((S, len(widths)))
    for s in range(S):
        for w, P in enumerate(widths):
            sv = np.linalg.svd(F[s, :, :P], compute_uv=False)
            smax[s, w], smin[s, w] = sv[0], sv[-1]
    if scales is not None:
        smax, smin = smax * scales, smin * scales
    return smax, smin


def train_readouts(F: np.ndarray, Y: np.ndarray, widths: Sequence[int], setting: OptimizerSetting, *,
                   F_test: np.ndarray | None = None, Y_test: np.ndarray | None = None,
                   init: np.ndarray | None = None, order_seed: int = 0, s_max: np.ndarray | None = None,
                   dtype: torch.dtype = torch.float64) -> ReadoutFit:
    """Train the readout of every width on column prefixes of `F`, all widths and seeds in one loop.

    The features are used as given, except for the per-width factor of ``sqrt_p`` (`width_scales`):
    standardisation is the caller's (`standardize`), since it is the same for every width.

    Args:
        F: [S, n, P_max] training features per seed; Y: [S, n, k] targets.
        widths: W increasing widths P ≤ P_max.
        setting: optimiser, learning rate, batch size, epochs, init scale, normalisation.
        F_test, Y_test: [S, m, P_max] and [S, m, k] test data (optional).
        init: [S, P_max, k] standard-normal draws (times ``init_scale``: the init); None: zero init.
            Width w starts from its first P_w rows.
        order_seed: seed of the mini-batch order (shared by every width and seed).
        s_max: [S, W] largest singular value of each (scaled) width, for ``edge`` learning rates;
            None: computed.
        dtype: precision of training.

    Returns:
        A `ReadoutFit`. A setting that diverges (too large a step) is not stopped: its losses come back
        non-finite, and check (4) leaves it out.
    """
    S, n, p_max = F.shape
    k = Y.shape[-1]
    widths = [int(p) for p in widths]
    W = len(widths)
    if any(b <= a for a, b in zip(widths, widths[1:])) or widths[0] < 1 or widths[-1] > p_max:
        raise ConfigError(f"widths must increase within 1..{p_max}, got {widths}")
    scales = width_scales(widths, setting.normalization)
    if setting.lr_units == "edge":
        if s_max is None:
            s_max = singular_range(F, widths, scales)[0]
        lr = setting.lr * n / np.asarray(s_max) ** 2  # λ_max(F̃ᵀF̃ / n) = s_max² / n
    else:
        lr = np.full((S, W), setting.lr)
    # column w·k + j of the padded readouts is output j of width w
    mask = torch.tensor(np.repeat(width_mask(widths, p_max), k, axis=1), dtype=dtype)  # [P_max, W·k]
    scale = torch.tensor(np.repeat(scales, k), dtype=dtype)  # [W·k]
    lr_t = torch.tensor(np.repeat(lr, k, axis=1)[:, None, :], dtype=dtype)  # [S, 1, W·k]
    Ft = torch.tensor(F, dtype=dtype)
    Yt = torch.tensor(np.tile(Y, (1, 1, W)), dtype=dtype)  # [S, n, W·k]
    A = torch.zeros(S, p_max, W * k, dtype=dtype)
    if init is not None and setting.init_scale > 0:
        A += setting.init_scale * torch.tensor(np.tile(init, (1, 1, W)), dtype=dtype)
        A *= mask
    B = setting.batch(n)
    adam = setting.optimizer == "adam"
    momentum = setting.momentum if not adam else 0.0
    if momentum:
        velocity = torch.zeros_like(A)
    if adam:
        m1, m2 = torch.zeros_like(A), torch.zeros_like(A)
        beta1, beta2, eps = 0.9, 0.999, 1e-8
    gen = torch_generator("optim-dd-order", order_seed)
    step = 0
    for _ in range(setting.epochs):
        order = torch.randperm(n, generator=gen) if B < n else None
        for start in range(0, n, B):
            if order is None:
                Fb, Yb = Ft, Yt
            else:
                idx = order[start: start + B]
                Fb, Yb = Ft[:, idx], Yt[:, idx]
            b = Fb.shape[1]
            # ∂/∂a of ½·mean_b (s·f_bᵀa − y_b)² = s · F_bᵀ(s·F_b a − y) / b, masked to the width's rows
            R = torch.bmm(Fb, A).mul_(scale).sub_(Yb).mul_(scale / b)
            G = torch.bmm(Fb.transpose(1, 2), R).mul_(mask)
            step += 1
            if adam:
                m1.mul_(beta1).add_(G, alpha=1 - beta1)
                m2.mul_(beta2).addcmul_(G, G, value=1 - beta2)
                denom = (m2 / (1 - beta2**step)).sqrt_().add_(eps)
                A.addcdiv_(m1, denom, value=-setting.lr / (1 - beta1**step))
            elif momentum:
                velocity.mul_(momentum).add_(G)
                A.sub_(velocity * lr_t)
            else:
                A.sub_(G.mul_(lr_t))
    A64 = A.to(torch.float64)
    scale64 = torch.tensor(np.repeat(scales, k), dtype=torch.float64)

    def mse(Fx: np.ndarray, Yx: np.ndarray) -> np.ndarray:
        pred = torch.bmm(torch.tensor(Fx, dtype=torch.float64), A64) * scale64  # [S, m, W·k]
        err = (pred.numpy() - np.tile(Yx, (1, 1, W))) ** 2
        return err.reshape(S, -1, W, k).sum(-1).mean(1)

    readouts = A64.numpy().reshape(S, p_max, W, k)
    return ReadoutFit(
        readouts=readouts,
        train_loss=mse(F, Y),
        test_loss=None if F_test is None or Y_test is None else mse(F_test, Y_test),
        norm=np.sqrt((readouts**2).sum((1, 3))),
        lr=lr,
    )


# --- peak statistics -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeakStats:
    """The peak of one test-loss curve at P = n.

    Attributes:
        test_at_n: test loss at P = n.
        baseline: median test loss over the grid widths inside the peak windows.
        height: test_at_n / baseline (≈ 1: no peak).
        local_ratio: test_at_n / mean(test loss at the two grid neighbours of n) (check (3)).
    """

    test_at_n: float
    baseline: float
    height: float
    local_ratio: float


def peak_statistics(widths: Sequence[int], curve: Sequence[float], n: int,
                    windows: Sequence[tuple[float, float]] = ((0.5, 0.7), (1.5, 2.0))) -> PeakStats:
    """Peak height and local peak ratio of a test-loss `curve` over `widths` (which contain n).

    ``height = curve(n) / median{curve(P) : lo ≤ P/n ≤ hi for a window (lo, hi)}``;
    ``local_ratio = curve(n) / mean(curve at the grid widths just below and just above n)``.
    """
    widths = np.asarray(widths)
    curve = np.asarray(curve, dtype=np.float64)
    hits = np.flatnonzero(widths == n)
    if hits.size == 0:
        raise ValueError(f"the grid has no width P = n = {n}")
    i = int(hits[0])
    if i == 0 or i == len(widths) - 1:
        raise ValueError("P = n must have a grid neighbour on each side")
    ratios = widths / n
    inside = np.zeros(len(widths), dtype=bool)
    for lo, hi in windows:
        inside |= (ratios >= lo) & (ratios <= hi)
    if not inside.any():
        raise ValueError(f"no width inside the peak windows {list(windows)}")
    baseline = float(np.median(curve[inside]))
    at_n = float(curve[i])
    return PeakStats(at_n, baseline, at_n / baseline, at_n / float((curve[i - 1] + curve[i + 1]) / 2))


# --- the result ----------------------------------------------------------------------------------------


@dataclass
class SettingCurves:
    """Every width's losses under one optimiser setting.

    Attributes:
        name: the setting's label.
        family: ``closed_form`` (exact GD / min-norm) or ``torch``.
        spec: the setting's parameters (for the records); closed form: ``steps`` (None: T = ∞).
        train_loss, test_loss: [S, W] mean squared errors.
        norm: [S, W] readout norms.
        kappa: [S, W] κ of the (normalised) features of each width.
        wall_s: training time of the setting (all widths and seeds), seconds.
    """

    name: str
    family: str
    spec: dict[str, Any]
    train_loss: np.ndarray
    test_loss: np.ndarray
    norm: np.ndarray
    kappa: np.ndarray
    wall_s: float = 0.0

    def median(self, what: str) -> np.ndarray:
        """[W] median over seeds of ``train_loss``, ``test_loss``, ``norm`` or ``kappa``."""
        return np.median(getattr(self, what), axis=0)


@dataclass
class OptimizationDDResult:
    """Measurements of `run_optimization_dd`.

    Attributes:
        n: training examples.
        widths: [W] widths P.
        seeds: the seeds (rows of every [S, W] array).
        settings: the closed-form family (T ascending, then T = ∞), then the torch settings.
        peak_windows: the P/n windows of the peak-height baseline.
        spearman_boot: bootstrap replicates of check (4)'s CI.
        wall_s: wall time of the run in seconds.
    """

    n: int
    widths: np.ndarray
    seeds: list[int]
    settings: list[SettingCurves]
    peak_windows: list[tuple[float, float]]
    spearman_boot: int = 2000
    wall_s: float | None = field(default=None, compare=False)

    @property
    def n_index(self) -> int:
        return int(np.flatnonzero(self.widths == self.n)[0])

    def family(self, name: str) -> list[SettingCurves]:
        return [s for s in self.settings if s.family == name]

    def peak(self, setting: SettingCurves) -> PeakStats:
        return peak_statistics(self.widths, setting.median("test_loss"), self.n, self.peak_windows)

    def summary(self) -> list[dict[str, Any]]:
        """One dict per setting: name, family, peak_height, test_at_n, baseline, local_ratio,
        train_loss_at_n, kappa_at_n, norm_at_n (medians over seeds), wall_s and the spec."""
        i = self.n_index
        out = []
        for s in self.settings:
            p = self.peak(s)
            out.append({
                "setting": s.name, "family": s.family, "peak_height": p.height, "test_loss_at_n": p.test_at_n,
                "baseline_test_loss": p.baseline, "local_ratio": p.local_ratio,
                "train_loss_at_n": float(s.median("train_loss")[i]),
                "kappa_at_n": float(s.median("kappa")[i]), "norm_at_n": float(s.median("norm")[i]),
                "wall_s": s.wall_s, **s.spec})
        return out

    def rows(self) -> list[dict[str, Any]]:
        """Long rows for ``evals.jsonl``: ``curve`` rows per (setting, seed, width) — setting, family, seed,
        width, ratio (P/n), train_loss, test_loss, norm, kappa — and one ``setting`` row per setting
        (`summary`, with a ``description``)."""
        out: list[dict[str, Any]] = []
        for s in self.settings:
            for si, seed in enumerate(self.seeds):
                for w, P in enumerate(self.widths.tolist()):
                    out.append({"record": "curve", "setting": s.name, "family": s.family, "seed": seed,
                                "width": P, "ratio": P / self.n, "train_loss": float(s.train_loss[si, w]),
                                "test_loss": float(s.test_loss[si, w]), "norm": float(s.norm[si, w]),
                                "kappa": float(s.kappa[si, w])})
        for row in self.summary():
            out.append({"record": "setting", **row, "description": _describe(row)})
        return out

    def claims(self) -> list[Claim]:
        """science.md §5's checks (1)–(4) (see the module docstring); (1) is two claims (κ and ||a||)."""
        n, i = self.n, self.n_index
        widths = self.widths
        closed = self.family("closed_form")
        min_norm = [s for s in closed if s.spec.get("steps") is None]
        gd = sorted((s for s in closed if s.spec.get("steps") is not None), key=lambda s: s.spec["steps"])
        out: list[Claim] = []

        # (1) κ(F) and ||a|| of the min-norm fit peak at P = n
        for what, label in (("kappa", "κ(F) = s_max/s_min"), ("norm", "||a|| of the minimum-norm fit")):
            if not min_norm:
                out.append(check(f"{label} peaks at P = n", "P/n at the argmax", None, None,
                                 "argmax at P = n", detail="no closed-form run"))
                continue
            curve = min_norm[0].median(what)
            j = int(np.argmax(curve))
            others = np.delete(curve, i)
            out.append(check(
                f"{label} peaks at the interpolation threshold P = n",
                f"P/n of the argmax over the grid of the median over seeds of {what}", widths[j] / n, j == i,
                "argmax at the grid width P = n",
                detail=f"{what} at P = n: {curve[i]:.4g}; largest elsewhere {others.max():.4g}; "
                       f"grid P/n = {[round(x, 3) for x in (widths / n).tolist()]}"))

        # (2) at P = n the test loss rises monotonically with T as the train loss falls to 0
        chain = gd + min_norm
        if len(chain) < 2:
            out.append(check("test loss at P = n rises with GD steps T", "Spearman(T, test loss at n)", None,
                             None, "strictly increasing", detail="fewer than 2 closed-form lengths"))
        else:
            test = np.array([s.median("test_loss")[i] for s in chain])
            train = np.array([s.median("train_loss")[i] for s in chain])
            rho = spearman(np.arange(len(chain)), test)
            ok = bool(np.all(np.diff(test) > 0) and np.all(np.diff(train) < 0))
            table = ", ".join(f"T={_t(s)}: test {te:.3g} / train {tr:.3g}"
                              for s, te, tr in zip(chain, test, train))
            out.append(check(
                "at P = n the test loss rises monotonically with training length T as the train loss "
                "falls to 0",
                "Spearman(T, median test MSE at P = n) over the closed-form family (T = ∞: min-norm)",
                rho, ok,
                "test loss strictly increasing and train loss strictly decreasing in T", detail=table))

        # (3) with the smallest budget there is no interior peak
        if not gd:
            out.append(check("no peak at the smallest T", "local peak ratio", None, None,
                             f"<= {1 + NO_PEAK_TOLERANCE:g}", detail="no finite closed-form T"))
        else:
            p = self.peak(gd[0])
            out.append(check(
                "with the smallest training budget the interior peak is absent",
                f"test MSE at P = n / mean test MSE at its grid neighbours (P/n = {widths[i - 1] / n:g}, "
                f"{widths[i + 1] / n:g}), closed-form T = {_t(gd[0])}", p.local_ratio,
                p.local_ratio <= 1 + NO_PEAK_TOLERANCE, f"<= {1 + NO_PEAK_TOLERANCE:g} (within 10%)",
                detail=f"test at n {p.test_at_n:.4g}; peak height {p.height:.4g}; train loss at n "
                       f"{gd[0].median('train_loss')[i]:.4g}"))

        # (4) peak height is rank-correlated with −log(train loss at n) across settings
        rows = [r for r in self.summary()
                if math.isfinite(r["peak_height"]) and math.isfinite(r["train_loss_at_n"])]
        dropped = [r["setting"] for r in self.summary() if r not in rows]
        stat = "Spearman(peak height, −log train MSE at P = n) across settings (closed-form T family + torch)"
        thr = f">= {SPEARMAN_THRESHOLD:g}"
        if len(rows) < 3:
            out.append(check("peak height tracks the training loss reached", stat, None, None, thr,
                             detail="fewer than 3 settings with finite statistics"))
        else:
            x = -np.log(np.maximum([r["train_loss_at_n"] for r in rows], LOSS_FLOOR))
            y = np.array([r["peak_height"] for r in rows])
            est = spearman_ci(x, y, n_boot=self.spearman_boot, seed=0)
            torch_rows = [r for r in rows if r["family"] == "torch"]
            sub = ""
            if len(torch_rows) >= 3:
                xt = -np.log(np.maximum([r["train_loss_at_n"] for r in torch_rows], LOSS_FLOOR))
                rho_t = spearman(xt, [r["peak_height"] for r in torch_rows])
                sub = f"torch settings alone: ρ = {rho_t:.3f}. "
            listing = "; ".join(
                f"{r['setting']}: train {r['train_loss_at_n']:.3g}, peak {r['peak_height']:.3g}"
                for r in sorted(rows, key=lambda r: -r["train_loss_at_n"]))
            out.append(check(
                "model-wise double descent appears iff the optimiser reaches a low loss: peak height "
                "rank-correlates with −log train loss at P = n", stat, est.value,
                est.value >= SPEARMAN_THRESHOLD, thr, ci=(est.low, est.high),
                detail=f"{len(rows)} settings, 95% percentile bootstrap over settings "
                       f"({est.n_boot} replicates). "
                       + sub + (f"dropped (non-finite): {dropped}. " if dropped else "") + listing))
        return out


def _t(s: SettingCurves) -> str:
    t = s.spec.get("steps")
    return "∞" if t is None else f"{t:.0e}"


def _describe(row: dict[str, Any]) -> str:
    if row["family"] == "closed_form":
        t = row.get("steps")
        return ("minimum-norm least squares (GD from zero, T = ∞)" if t is None else
                f"exact full-batch GD from zero, T = {t:.0e} steps at η = 1/s_max²")
    lr = f"{row['lr']:g}" + (" x 1/λ_max(H_P)" if row["lr_units"] == "edge" else "")
    return (f"{row['optimizer']} batch {row['batch_size']}, lr {lr}, {row['epochs']} epochs "
            f"({row['steps']} steps), init std {row['init_scale']:g}, normalisation {row['normalization']}")


# --- the experiment ------------------------------------------------------------------------------------


@dataclass
class _Draws:
    """Every seed's data and features, stacked: F [S, n, P_max], Y [S, n, k], test likewise."""

    F: np.ndarray
    Y: np.ndarray
    F_test: np.ndarray
    Y_test: np.ndarray
    data: list[RegressionData]


def _draw(cfg: OptimizationDDConfig, p_max: int) -> _Draws:
    Fs, Fts, data = [], [], []
    for seed in cfg.seeds:
        d = type(cfg.data).model_validate({**to_plain(cfg.data), "seed": seed}).build()
        feat = FeatureConfig.model_validate({**to_plain(cfg.features), "seed": seed})
        F, Ft = random_features(feat, d.X, d.X_test, p_max)
        Fs.append(F)
        Fts.append(Ft)
        data.append(d)
    return _Draws(np.stack(Fs), np.stack([d.Y for d in data]), np.stack(Fts),
                  np.stack([d.Y_test for d in data]), data)


_CURVE_KEYS = ("train_loss", "test_loss", "norm", "kappa")


def closed_form_settings(cfg: OptimizationDDConfig, draws: _Draws,
                         widths: Sequence[int]) -> list[SettingCurves]:
    """The closed-form family from `sweep_widths`: GD at every T of ``cfg.steps``, then min-norm (T = ∞)."""
    n = draws.F.shape[1]
    fit_list = fits(steps=cfg.steps, n=n)
    per_fit: dict[tuple[str, float | None], dict[str, list[list[float]]]] = {}
    for s in range(len(cfg.seeds)):
        rows = sweep_widths(draws.F[s], draws.Y[s], draws.F_test[s], widths, fit_list, Y_test=draws.Y_test[s])
        for f in fit_list:
            got = [r for r in rows if r["solver"] == f.solver and r["value"] == f.value]
            bucket = per_fit.setdefault((f.solver, f.value), {k: [] for k in _CURVE_KEYS})
            for key in bucket:
                bucket[key].append([r[key] for r in got])
    out = []
    for f in fit_list[1:] + fit_list[:1]:  # T ascending, then T = ∞
        b = per_fit[(f.solver, f.value)]
        name = "min-norm (T=∞)" if f.solver == "min_norm" else f"closed-form GD T={f.value:.0e}"
        out.append(SettingCurves(name, "closed_form", {"steps": f.value}, *(np.array(b[k]) for k in b)))
    return out


def run_optimization_dd(cfg: OptimizationDDConfig,
                        progress: Callable[[int, int], None] | None = None) -> OptimizationDDResult:
    """The closed-form family and every torch setting at every width and seed.

    Args:
        cfg: the experiment.
        progress: ``progress(done, total)`` after the closed form and after each torch setting.

    Returns:
        The measurements (`OptimizationDDResult`), with ``wall_s`` set.
    """
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with blas_threads(cfg.threads):
            settings = _run(cfg, progress)
    finally:
        torch.set_num_threads(threads)
    return OptimizationDDResult(n=cfg.data.n_train, widths=np.array(cfg.widths()), seeds=list(cfg.seeds),
                                settings=settings, peak_windows=[tuple(w) for w in cfg.peak_windows],
                                spearman_boot=cfg.spearman_boot, wall_s=time.perf_counter() - t0)


def _run(cfg: OptimizationDDConfig, progress: Callable[[int, int], None] | None) -> list[SettingCurves]:
    widths = cfg.widths()
    n = cfg.data.n_train
    draws = _draw(cfg, widths[-1])
    total = 1 + len(cfg.settings)
    settings = closed_form_settings(cfg, draws, widths)
    if progress:
        progress(1, total)
    # normalised features and their singular ranges, shared by the settings that use them
    feats: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    init = np.stack([numpy_rng("optim-dd-init", seed).standard_normal((widths[-1], draws.Y.shape[-1]))
                     for seed in cfg.seeds])
    dtype = torch.float32 if cfg.dtype == "float32" else torch.float64
    for done, st in enumerate(cfg.settings, start=2):
        ts = time.perf_counter()
        base = "standardize" if st.normalization == "standardize" else "none"
        if base not in feats:
            F, Ft = standardize(draws.F, draws.F_test) if base == "standardize" else (draws.F, draws.F_test)
            feats[base] = (F, Ft, *singular_range(F, widths))
        F, Ft, smax, smin = feats[base]
        scales = width_scales(widths, st.normalization)
        fit = train_readouts(F, draws.Y, widths, st, F_test=Ft, Y_test=draws.Y_test, init=init,
                             order_seed=cfg.seeds[0], s_max=smax * scales, dtype=dtype)
        spec = {"optimizer": st.optimizer, "lr": st.lr, "lr_units": st.lr_units, "momentum": st.momentum,
                # the batch as a number ("full" = n): a text value would turn the store-wide column to text
                "batch_size": st.batch(n), "epochs": st.epochs, "steps": st.steps(n),
                "init_scale": st.init_scale, "normalization": st.normalization}
        settings.append(SettingCurves(st.label(), "torch", spec, fit.train_loss, fit.test_loss, fit.norm,
                                      smax / smin, time.perf_counter() - ts))
        if progress:
            progress(done, total)
    return settings
