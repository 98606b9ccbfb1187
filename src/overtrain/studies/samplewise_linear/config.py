"""The sample-wise linear-regression study's config (``overtrain samplewise-linear``) and its n grid."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from overtrain.config import BaseConfig, NotInId
from overtrain.models.grids import dense_grid

REFERENCE_RATIOS = (0.5, 0.9, 1.0, 1.1, 2.0, 4.0)
"""The ratios n/d at which docs/double_descent.md quotes reference medians; the default grid contains
them (rounded to whole examples)."""


class SamplewiseLinearConfig(BaseConfig):
    """Sample-wise sweep of min-norm isotropic linear regression: dimension, noise, n grid, trials."""

    schema_version: int = 1
    """Config schema version (older configs are upgraded on load)."""

    d: int = Field(100, ge=2, le=10_000)
    """Input dimension (the risk peaks at n = d)."""

    noise_std: float = Field(0.5, ge=0, le=100)
    """σ: standard deviation of the label noise (variance 0.25 at the default)."""

    n_grid: list[int] | None = None
    """Training-set sizes n. None: the default grid over n/d in [0.1, 4] (`ns()`): log-spaced, every second
    integer in [0.8 d, 1.2 d], n = d itself and the reference ratios 0.5, 0.9, 1.1, 2, 4."""

    trials: int = Field(50, ge=1, le=100_000)
    """Independent trials: each draws β and one nested sequence of training examples."""

    seed: int = Field(0, ge=0)
    """Root seed of every random stream."""

    threads: int = NotInId(1, ge=1, le=256)
    """BLAS threads while the run executes (restored afterwards). 1 by default: the matrices are at most
    400 x 100, too small to split (timings: docs/double_descent.md)."""

    @field_validator("n_grid")
    @classmethod
    def _n_grid(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("give at least one n (or leave n_grid out for the default grid)")
        if len(set(value)) != len(value):
            raise ValueError("n_grid values must be distinct")
        if min(value) < 1:
            raise ValueError("every n must be >= 1")
        if max(value) > 10_000_000:
            raise ValueError("every n must be <= 1e7")
        return sorted(value)

    @model_validator(mode="after")
    def _memory(self) -> SamplewiseLinearConfig:
        # All trials' examples are held at once (one batched solve).
        floats = self.trials * max(self.ns()) * self.d
        if floats > 50_000_000:
            raise ValueError(f"trials · max(n) · d = {floats:,} floats exceeds 5e7 (0.4 GB)")
        return self

    def ns(self) -> list[int]:
        """The training-set sizes, ascending: `n_grid`, or the default grid dense around n = d."""
        if self.n_grid is not None:
            return list(self.n_grid)
        lo, hi = max(1, round(0.1 * self.d)), 4 * self.d
        extra = {max(1, round(r * self.d)) for r in REFERENCE_RATIOS}
        return sorted(set(dense_grid(lo, hi, self.d)) | extra)
