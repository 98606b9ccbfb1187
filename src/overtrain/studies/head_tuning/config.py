"""The head-tuning study's config (``overtrain head-tuning``): the HMM, the sizes, the p grid and the
SNR multipliers."""

from __future__ import annotations

import math

from pydantic import Field, field_validator, model_validator

from overtrain.config import BaseConfig, NotInId
from overtrain.models.grids import dense_grid

PAPER_SNR = 1.0
"""The signal multiplier s of the paper's setting (Luo et al. 2024)."""


class HeadTuningConfig(BaseConfig):
    """Head tuning on linear-Gaussian HMM representations: the generative model, sizes, grid and SNRs."""

    schema_version: int = 1
    """Config schema version (older configs are upgraded on load)."""

    latent_dim: int = Field(20, ge=1, le=10_000)
    """m: dimension of the latent tokens z_t."""

    spectral_radius: float = Field(0.9, gt=0, le=10)
    """ρ: the transition matrix A is a Gaussian matrix rescaled so that max |eigenvalue| = ρ."""

    latent_noise: float = Field(0.5, ge=0, le=100)
    """ℓ: standard deviation of the latent transition noise (z_{t+1} = A z_t + ℓ ε_t)."""

    seq_len: int = Field(8, ge=1, le=10_000)
    """T: the representation reads z_T (after T − 1 transitions from z_1); the target reads z_{T+1}."""

    repr_dim: int = Field(600, ge=1, le=100_000)
    """D: dimension of the representation x = C z_T + r u, and the largest head width p."""

    repr_noise: float = Field(1.0, gt=0, le=100)
    """r: standard deviation of the representation noise u. Must be > 0: without it x has rank m and
    least squares on more than m coordinates is rank-deficient."""

    target_noise: float = Field(0.5, gt=0, le=100)
    """σ: standard deviation of the target noise (variance σ² = 0.25 at the default)."""

    n_train: int = Field(100, ge=1, le=100_000)
    """n: training examples of the head (the risk peaks at p = n)."""

    n_test: int = Field(2000, ge=1, le=10_000_000)
    """Test examples per trial on which the risk (test MSE) is measured."""

    p_grid: list[int] | None = None
    """Head widths p (coordinates of x used), each in [1, repr_dim]. None: the default grid, log-spaced
    over [1, repr_dim] plus every second integer in [0.8 n, 1.2 n] and n itself (`ps()`)."""

    trials: int = Field(20, ge=1, le=100_000)
    """Independent trials: each redraws A, C, θ, the coordinate order and both samples."""

    seed: int = Field(0, ge=0)
    """Root seed of every random stream."""

    snrs: list[float] = [PAPER_SNR]
    """Signal multipliers s of the SNR study: y = s θᵀ z_{T+1} + σ e, so the signal-to-noise ratio
    Var(s θᵀ z_{T+1}) / σ² scales as s². 1.0 is the paper's setting; the actual SNR of every setting is
    reported (`HeadTuningResult.snr_actual`; its measured values: docs/double_descent.md)."""

    @field_validator("p_grid")
    @classmethod
    def _p_grid(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("give at least one p (or leave p_grid out for the default grid)")
        if len(set(value)) != len(value):
            raise ValueError("p_grid values must be distinct")
        if min(value) < 1:
            raise ValueError("every p must be >= 1")
        return sorted(value)

    @field_validator("snrs")
    @classmethod
    def _snrs(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("give at least one SNR multiplier")
        if any(not (s > 0 and math.isfinite(s)) for s in value):
            raise ValueError("every SNR multiplier must be a positive finite number")
        if len(set(value)) != len(value):
            raise ValueError("SNR multipliers must be distinct")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> HeadTuningConfig:
        if self.p_grid is not None and max(self.p_grid) > self.repr_dim:
            raise ValueError(f"p_grid value {max(self.p_grid)} exceeds repr_dim ({self.repr_dim})")
        # One trial holds its n_test x repr_dim test representations in memory at once.
        if self.n_test * self.repr_dim > 50_000_000:
            raise ValueError(
                f"n_test · repr_dim = {self.n_test * self.repr_dim:,} floats exceeds 5e7 (0.4 GB per trial)"
            )
        return self

    threads: int = NotInId(1, ge=1, le=256)
    """BLAS threads while the run executes (restored afterwards). 1 by default: the matrices are ~100 x 600,
    too small to split (timings: docs/double_descent.md)."""

    def ps(self) -> list[int]:
        """The head widths p, ascending: `p_grid`, or the default grid dense around p = n."""
        if self.p_grid is not None:
            return list(self.p_grid)
        return dense_grid(1, self.repr_dim, self.n_train)
