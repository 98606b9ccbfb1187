"""The two-layer-network double-descent study's config (``overtrain mlp-double-descent``): the model-wise
width sweep and the epoch-wise run, each a sweep of networks trained together, and the claims' settings."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from overtrain.config import BaseConfig, Count, NotInId
from overtrain.data.regression import DigitsConfig

DEFAULT_WIDTHS = [2, 4, 8, 12, 16, 24, 32, 40, 48, 56, 64, 80, 96, 128, 192, 256]
"""Hidden widths of the model-wise sweep: from far below to far above the squared-loss threshold
(P = n·k = 5,000 parameters at H ≈ 67), with steps of 8-16 units around it so that a ±30% window in
parameters holds more than one grid point."""


DEFAULT_DATA: dict[str, Any] = {"n_train": 500, "label_noise": 0.2}
"""The study's data defaults (Nakkiran et al. 2020's setting scaled down: n = 500, 20% label noise); a
partial ``data`` mapping in a
config is merged over them."""


CLAIM_SETTINGS = (
    "interpolation_error",
    "interpolation_loss",
    "peak_tolerance",
    "min_rise",
    "early_step",
    "early_memorised",
)
"""Config fields that the claims read (`analysis`); a result carries them (and `from_rows` takes them)."""


class MLPSweepConfig(BaseConfig):
    """A sweep of two-layer ReLU networks over hidden widths (and seeds), all trained together.

    The defaults are the model-wise study (Nakkiran et al. 2020's width sweep, with Belkin et al. 2019's
    squared loss); `MLPEpochwiseConfig` holds the epoch-wise one.
    """

    schema_version: int = 1
    """Config schema version (older configs are upgraded on load)."""

    study: Literal["modelwise", "epochwise"] = "modelwise"
    """Which claims `analysis.sweep_claims` checks: double descent over widths, or over steps (of the
    widest width)."""

    data: DigitsConfig = DigitsConfig(**DEFAULT_DATA)
    """Digits split and label noise (the noisy labels are the training targets; test labels are clean).
    Keys left out keep this study's defaults (500 training images, label noise 0.2), not DigitsConfig's."""

    widths: list[int] = list(DEFAULT_WIDTHS)
    """Hidden widths H, strictly increasing."""

    steps: Count = 4000
    """Full-batch Adam steps (= epochs) for every model."""

    lr: float = Field(1e-3, gt=0, le=1)
    """Adam learning rate (constant; betas 0.9, 0.999, eps 1e-8, no weight decay)."""

    loss: Literal["mse", "ce"] = "mse"
    """Training loss: mean squared error against one-hot targets (averaged over examples and classes), or
    mean cross-entropy (nats). Squared loss by default: with cross-entropy the test error rises to the
    threshold but does not come down again within 4,000 steps (no second descent; docs/double_descent.md)."""

    eval_every: int = Field(50, ge=1)
    """Steps between measurements (step 0 and the last step are always measured)."""

    seeds: list[int] = [0, 1, 2, 3, 4, 5]
    """Initialisation seeds (the data and its label noise are fixed by `data.seed`): the replicates of the
    claims, which need at least 4 to PASS (`overtrain.analysis.claims.MIN_SEEDS`)."""

    init_scale: float = Field(1.0, gt=0, le=100)
    """Multiplier on PyTorch's default ``nn.Linear`` init: every weight and bias of a layer with fan-in f
    is drawn from U(-s/√f, s/√f)."""

    dtype: Literal["float32", "float64"] = "float32"
    """Floating-point type of training (float64 for exactness tests, slower)."""

    interpolation_error: float = Field(0.0, ge=0, lt=1)
    """Cross-entropy runs: a width *interpolates* when its seed-mean training error on the noisy labels
    is ≤ this (fraction). 0: every training label fitted (the wide models reach exactly 0)."""

    interpolation_loss: float = Field(0.01, gt=0, lt=1)
    """Squared-loss runs: a width *interpolates* when its seed-mean training loss is ≤ this fraction of
    the loss of the zero predictor (1/k = 0.1 for one-hot targets): 0.01 means the targets are fitted to
    ~3% rms. (Zero training *error* comes much earlier, at ~0.7·n·k parameters; the claim reports both.)"""

    peak_tolerance: float = Field(0.3, gt=0)
    """Model-wise claim: the peak's parameter count (the most common held-out peak width over seeds) must
    lie within this relative distance of the threshold width's parameter count (±30% by default)."""

    min_rise: float = Field(0.02, gt=0, lt=1)
    """Smallest rise of the test error (fraction: 0.02 = 2 points) that counts: the epoch-wise rise over
    the first minimum and the drop a second descent needs must clear it (their lower bounds), and "no peak"
    far from interpolation means a rise below it (its upper bound). The model-wise peak needs only a held-out
    excess whose lower bound is above 0 (`overtrain.analysis.rise.peak_rule`)."""

    early_step: int | None = Field(None, ge=0)
    """Measured step at which the model-wise curve is read for the "no interpolation, no peak" check.
    None: the last measured step at which no width has memorised more than `early_memorised` of the
    label-corrupted examples."""

    early_memorised: float = Field(0.5, gt=0, lt=1)
    """See `early_step`: "far from interpolation" means every width still gets most corrupted labels
    wrong (at the defaults this is step 100 of 4,000)."""

    threads: int = NotInId(1, ge=1, le=256)
    """torch intra-op threads while the run executes (restored afterwards). The matrices are small: on 2
    shared cores one thread is fastest."""

    @field_validator("data", mode="before")
    @classmethod
    def _data(cls, value: Any) -> Any:
        # `data: {seed: 4}` must not silently drop the label noise back to DigitsConfig's default of 0
        return {**DEFAULT_DATA, **value} if isinstance(value, Mapping) else value

    @field_validator("widths")
    @classmethod
    def _widths(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("give at least one width")
        if any(w < 1 for w in value):
            raise ValueError("widths must be >= 1")
        if any(b <= a for a, b in zip(value, value[1:])):
            raise ValueError("widths must be strictly increasing")
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

    @model_validator(mode="after")
    def _consistent(self) -> MLPSweepConfig:
        if self.eval_every > self.steps:
            raise ValueError(f"eval_every ({self.eval_every}) exceeds steps ({self.steps})")
        if self.early_step is not None and self.early_step not in self.eval_steps():
            raise ValueError(f"early_step {self.early_step} is not a measured step (multiples of eval_every)")
        return self

    def eval_steps(self) -> list[int]:
        """Measured steps: 0, eval_every, 2·eval_every, ..., and `steps`."""
        out = list(range(0, self.steps + 1, self.eval_every))
        return out if out[-1] == self.steps else [*out, self.steps]


class MLPEpochwiseConfig(MLPSweepConfig):
    """The epoch-wise study (Nakkiran et al. 2020's epoch-wise double descent): one wide network, many steps.

    Adam at lr 1e-4 rather than 1e-3: at 1e-3 the wide network fits the clean labels and starts memorising
    before the first measurement; at 1e-4 the descent, the first minimum and the memorisation are resolved
    by the measurements (the steps at which each happens: docs/double_descent.md).
    """

    study: Literal["modelwise", "epochwise"] = "epochwise"
    """Which claims `analysis.sweep_claims` checks (here: over steps, for the widest width)."""

    widths: list[int] = [512]
    """Hidden widths H, strictly increasing (the claims read the widest)."""

    steps: Count = 10_000
    """Full-batch Adam steps (= epochs)."""

    lr: float = Field(1e-4, gt=0, le=1)
    """Adam learning rate (constant; betas 0.9, 0.999, eps 1e-8, no weight decay)."""

    seeds: list[int] = [0, 1, 2, 3]
    """Initialisation seeds: the replicates of the epoch-wise claims (at least 4 to PASS)."""


class MLPDoubleDescentConfig(BaseConfig):
    """The two-layer-network double-descent study (``overtrain mlp-double-descent``)."""

    schema_version: int = 1
    """Config schema version."""

    modelwise: MLPSweepConfig | None = Field(default_factory=MLPSweepConfig)
    """The width sweep (None: skip)."""

    epochwise: MLPEpochwiseConfig | None = Field(default_factory=MLPEpochwiseConfig)
    """The wide network trained for many steps (None: skip)."""
