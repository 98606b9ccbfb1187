"""The optimisation-and-double-descent study's config (``overtrain dd-optimization``): the width grid, the
closed-form training lengths and the torch optimiser settings."""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from overtrain.config import BaseConfig, NotInId, Seeds
from overtrain.data.regression import RegressionDataConfig, TeacherConfig
from overtrain.models.random_features import FeatureConfig

Normalization = Literal["none", "standardize", "sqrt_p"]


DEFAULT_RATIOS = [0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 1.75, 2.0, 3.0]
"""Widths P/n: the threshold 1.0, its two neighbours 0.9 and 1.1, the peak-height windows
[0.5, 0.7] and [1.5, 2], and a few points beyond (the padded readouts cost W·P_max, so P_max stays 3n)."""


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
        return (
            f"{self.optimizer}{mom} b={self.batch_size} lr={lr} e={self.epochs} init={self.init_scale:g} "
            f"norm={self.normalization}"
        )

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
    _s(
        name="Adam b=32 lr=1e-3 e=100",
        optimizer="adam",
        lr_units="absolute",
        lr=1e-3,
        batch_size=32,
        epochs=100,
    ),
    _s(name="SGD b=8 lr=0.4 e=100", batch_size=8, lr=0.4, epochs=100),
    _s(name="SGD b=1 lr=0.2 e=50", batch_size=1, lr=0.2, epochs=50),
    _s(
        name="Adam lr=1e-2 e=1000 sqrtP",
        optimizer="adam",
        lr_units="absolute",
        lr=1e-2,
        epochs=1000,
        normalization="sqrt_p",
    ),
    _s(name="GD e=1000 std", epochs=1000, normalization="standardize"),
    _s(name="SGD b=8 lr=1 e=300", batch_size=8, lr=1.0, epochs=300),
    _s(
        name="Adam lr=1e-2 e=1000 init=0.3",
        optimizer="adam",
        lr_units="absolute",
        lr=1e-2,
        epochs=1000,
        init_scale=0.3,
    ),
    _s(name="Adam lr=1e-2 e=1000", optimizer="adam", lr_units="absolute", lr=1e-2, epochs=1000),
    _s(name="GD μ=0.99 e=1000", momentum=0.99, epochs=1000),
    _s(name="GD μ=0.99 e=3000", momentum=0.99, epochs=3000),
    _s(
        name="Adam lr=1e-2 e=3000 std",
        optimizer="adam",
        lr_units="absolute",
        lr=1e-2,
        epochs=3000,
        normalization="standardize",
    ),
    _s(name="GD μ=0.99 e=3000 std", momentum=0.99, epochs=3000, normalization="standardize"),
]
"""The default optimiser axis: 14 settings ordered roughly by the train MSE they reach at P = n, from plain
GD and large-batch SGD (the highest) through small-batch SGD and Adam to heavy-ball GD and Adam on
standardised features (the lowest). Reaching the loss of T ≈ 1e5–1e6 plain-GD steps in ~3,000 steps needs
momentum, Adam or standardisation (the losses each reaches, and the run time: docs/double_descent.md)."""


class OptimizationDDConfig(BaseConfig):
    """Model-wise double descent of random-feature regression under many optimiser settings."""

    schema_version: int = 1
    """Config schema version (older configs are upgraded on load)."""

    data: RegressionDataConfig = Field(default_factory=TeacherConfig)
    """The regression data (``{name: teacher}``: the tanh teacher of `TeacherConfig`, d = 20, n = 200,
    noise std 0.3; ``{name: digits, ...}`` also works, at k = 10 times the cost); each seed replaces the
    data's seed."""

    features: FeatureConfig = Field(default_factory=FeatureConfig)
    """The random feature map (ReLU by default); each seed replaces its seed."""

    width_ratios: list[float] = Field(default_factory=lambda: list(DEFAULT_RATIOS))
    """Widths as P/n, rounded to integers (1.0, the interpolation threshold, is always added)."""

    seeds: Seeds = [0, 1, 2, 3]
    """Seeds: each redraws the data sample, the features and the readout init (a finding needs at least 4
    to PASS, `overtrain.analysis.claims.MIN_SEEDS`). The mini-batch order is drawn once (from the first
    seed) and shared by every seed and width."""

    steps: list[float] = [1e2, 1e3, 1e4, 1e5, 1e6]
    """Training lengths T of the closed-form GD family (exact, η = 1/s_max², from zero); T = ∞ (the
    minimum-norm fit) is always added."""

    settings: list[OptimizerSetting] = Field(
        default_factory=lambda: [s.model_copy() for s in DEFAULT_SETTINGS]
    )
    """The torch-trained optimiser settings."""

    peak_windows: list[tuple[float, float]] = [(0.5, 0.7), (1.5, 2.0)]
    """Ranges of P/n (inclusive) whose grid widths form the baseline of the peak height."""

    dtype: Literal["float32", "float64"] = "float64"
    """Precision of torch training (closed forms are always float64). At these sizes float32 is not
    measurably faster on one thread."""

    spearman_boot: int = Field(2000, ge=10, le=100_000)
    """Bootstrap replicates of the CI of claim 4 (`analysis`)."""

    threads: int = NotInId(1, ge=1, le=256)
    """torch intra-op and numpy BLAS threads while the run executes (restored afterwards): the matrices
    are small, and on 2 shared cores one thread is fastest (timings: docs/double_descent.md)."""

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
            raise ValueError(
                f"width ratios collide after rounding to integers at n = {n}: {self.width_ratios}"
            )
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
