"""The random-features study's config (``overtrain random-features``) and its width grid."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from overtrain.config import BaseConfig, Seeds
from overtrain.data.regression import DigitsConfig, RegressionDataConfig, TeacherConfig

DEFAULT_RATIOS = [
    0.1,
    0.2,
    0.3,
    0.4,
    0.5,
    0.6,
    0.7,
    0.8,
    0.85,
    0.9,
    0.95,
    0.98,
    1.0,
    1.02,
    1.05,
    1.1,
    1.15,
    1.2,
    1.3,
    1.5,
    1.75,
    2.0,
    2.5,
    3.0,
    4.0,
    5.0,
    7.0,
    10.0,
    15.0,
    20.0,
]
"""Widths P/n: dense around the threshold, log-spaced beyond it."""


class SamplewiseConfig(BaseConfig):
    """Sample-wise sweep: P fixed, the training set grows (nested subsets of one draw)."""

    width: int = Field(250, ge=2)
    """Features P (digits has 797 training images besides a 1,000-image test set: keep n ≤ 797)."""

    n_ratios: list[float] = [0.25, 0.5, 0.75, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 3.0]
    """Training-set sizes n/P."""

    @field_validator("n_ratios")
    @classmethod
    def _ratios(cls, value: list[float]) -> list[float]:
        if not value or any(r <= 0 for r in value):
            raise ValueError("give positive ratios n/P")
        return sorted(set(value))


class RandomFeaturesConfig(BaseConfig):
    """The random-features double-descent study (``overtrain random-features``)."""

    schema_version: int = 1
    """Config schema version."""

    datasets: list[RegressionDataConfig] = Field(
        default_factory=lambda: [
            TeacherConfig(),
            DigitsConfig(label_noise=0.0),
            DigitsConfig(label_noise=0.1),
            DigitsConfig(label_noise=0.2),
        ]
    )
    """Datasets (``{name: teacher, ...}`` or ``{name: digits, label_noise: 0.1, ...}``); each seed replaces
    the dataset's own seed."""

    features: list[Literal["relu", "tanh", "fourier"]] = ["relu", "fourier"]
    """Feature maps (`overtrain.models.random_features.FeatureConfig.kind`)."""

    width_ratios: list[float] = Field(default_factory=lambda: list(DEFAULT_RATIOS))
    """Model-wise widths as P/n (1.0, the interpolation threshold, is always added)."""

    ridges: list[float] = [1e-3, 1e-2, 1e-1, 1.0]
    """Ridge λ per example (``min (1/n)‖Fa − Y‖² + λ‖a‖²``), each one more curve."""

    steps: list[float] = [1e2, 1e4]
    """Lengths T of exact full-batch GD from zero (step 1/s_max²), each one more curve."""

    seeds: Seeds = [0, 1, 2, 3]
    """Seeds: each redraws the features and the dataset (split, label noise, teacher sample). A finding
    needs at least 4 to PASS (`overtrain.analysis.claims.MIN_SEEDS`)."""

    samplewise: SamplewiseConfig | None = SamplewiseConfig()
    """The sample-wise sweep on every dataset (None: skip)."""

    peak_tolerance: float = Field(0.1, gt=0, lt=1)
    """A peak counts as "at P = n" when its P/n is within ±this (Belkin et al. 2019, Nakkiran et al. 2020: ±10%)."""

    @field_validator("width_ratios")
    @classmethod
    def _width_ratios(cls, value: list[float]) -> list[float]:
        if any(r <= 0 for r in value):
            raise ValueError("width ratios P/n must be positive")
        return sorted(set(value) | {1.0})
