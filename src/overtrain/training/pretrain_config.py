"""The pre-training run's config (`PretrainConfig`): data, model, training budgets and schedule,
evaluation, checkpoints and the optional early-warning monitor."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from overtrain.config import BaseConfig, Count, InIdWhenSet, NotInId, Registered
from overtrain.models.presets import ModelConfig
from overtrain.registry import DATASETS
from overtrain.training.monitor import MonitorConfig
from overtrain.training.schedules import (
    Budget,
    plan_budgets,
)


def _default_data() -> Any:
    return DATASETS.get("hmm").model_validate({"name": "hmm"})


class TrainConfig(BaseConfig):
    """Optimisation and budgets."""

    tokens: list[Count] = [262_144, 524_288]
    """Token budgets (``2e6`` or ``2M`` accepted); one checkpoint per budget, after exactly that many tokens
    (rounded to whole steps of batch_size x seq_len)."""

    schedule: Literal["wsd", "cosine", "constant"] = "wsd"
    """``wsd``: branch a decay per budget off one warmup-stable line; ``cosine``: one run per budget;
    ``constant``: no decay."""

    batch_size: int = Field(32, gt=0)
    """Sequences per optimizer step."""

    seq_len: int = Field(64, ge=2)
    """Tokens per sequence (the model's context length)."""

    lr: float = Field(3e-3, gt=0)
    """Peak learning rate."""

    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    """Learning rate at the end of each decay, as a fraction of `lr`."""

    warmup_steps: int = Field(100, ge=0)
    """Linear warmup length in steps (shared by every budget)."""

    decay_fraction: float = Field(0.1, gt=0, le=1)
    """WSD: fraction of each budget's steps spent in its linear cool-down."""

    weight_decay: float = Field(0.1, ge=0)
    """AdamW decoupled weight decay on matrices (not on norms or biases)."""

    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW (beta1, beta2)."""

    eps: float = Field(1e-8, gt=0)
    """AdamW epsilon."""

    grad_clip: float = Field(1.0, ge=0)
    """Clip the global gradient norm to this value (0 disables)."""

    log_every: int = Field(10, gt=0)
    """Steps between training-loss records (the mean over those steps)."""

    @field_validator("tokens", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        if value is None or value == []:
            raise ValueError("give at least one token budget")
        return value if isinstance(value, (list, tuple)) else [value]

    @field_validator("betas")
    @classmethod
    def _betas(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in value):
            raise ValueError("betas must lie in [0, 1)")
        return value

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def budgets(self) -> list[Budget]:
        return plan_budgets(list(self.tokens), self.tokens_per_step, self.schedule, self.decay_fraction)


class EvalConfig(BaseConfig):
    """Held-out evaluation, at every checkpoint and optionally every `every` steps."""

    batches: int = Field(8, gt=0)
    """Validation batches per evaluation (fixed: the same batches every time)."""

    batch_size: int | None = Field(None, gt=0)
    """Sequences per validation batch (default: the training batch size)."""

    every: int | None = Field(None, gt=0)
    """Also evaluate every this many steps on the main line (default: only at checkpoints)."""

    extra: dict[str, Registered(DATASETS)] = {}
    """More sources to evaluate on, by metric prefix, e.g. ``{task: {name: hmm, seed: 1}}`` logs ``task/loss``."""

    @field_validator("extra")
    @classmethod
    def _prefixes(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if not key.replace("_", "").isalnum() or key in ("train", "val"):
                raise ValueError(f"extra eval name {key!r} must be a word other than train/val")
        return value


class CheckpointConfig(BaseConfig):
    """Which model checkpoints to keep besides one per budget, and how often to save resumable state."""

    log_spaced: bool = True
    """Save at steps 1, 2, 4, 8, ... along the longest trajectory (Pythia's schedule)."""

    every: int | None = Field(None, gt=0)
    """Also save every this many steps (Pythia: 1000)."""

    step_zero: bool = True
    """Save the initialisation as ``step_00000000``."""

    resume_every: int = Field(200, gt=0)
    """Steps between resumable trainer states (optimizer + RNG), the most work a crash can lose."""

    dense_every: int | None = InIdWhenSet(gt=0)
    """Also save every this many steps up to `dense_until`: a finer grid where something changes fast
    (an induction head forming); unset, no extra checkpoints (and the run id is unchanged)."""

    dense_until: int | None = InIdWhenSet(gt=0)
    """Last step of the `dense_every` grid (needs `dense_every`)."""

    @model_validator(mode="after")
    def _dense(self) -> CheckpointConfig:
        if (self.dense_every is None) != (self.dense_until is None):
            raise ValueError("give dense_every and dense_until together")
        return self

    def dense_steps(self, last: int) -> set[int]:
        """The `dense_every` grid up to ``min(dense_until, last)``."""
        if self.dense_every is None:
            return set()
        return set(range(self.dense_every, min(self.dense_until, last) + 1, self.dense_every))


class PretrainConfig(BaseConfig):
    """One model pre-trained to a list of token budgets (``overtrain pretrain``)."""

    schema_version: int = 1
    """Config schema version (older configs are upgraded on load)."""

    seed: int = 0
    """Seed of the model initialisation (the data's own seed lives in `data`)."""

    data: Registered(DATASETS, "hmm") = Field(default_factory=_default_data)
    """Training data source by name (``overtrain ls datasets``) with its settings; ``val`` split for eval."""

    model: ModelConfig = ModelConfig()
    """Model preset and overrides."""

    train: TrainConfig = TrainConfig()
    """Budgets, schedule and optimiser."""

    eval: EvalConfig = EvalConfig()
    """Held-out evaluation."""

    checkpoint: CheckpointConfig = CheckpointConfig()
    """Checkpoint schedule."""

    monitor: MonitorConfig | None = InIdWhenSet()
    """Early-warning monitor on the main line (`overtrain.training.monitor`): a cheap sensitivity check at
    log-spaced steps that warns once the perturbed loss has passed its minimum. None: off."""

    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute precision (bf16 autocast; weights stay fp32). On a CPU it pays off only for the larger
    presets (bench/README.md, `pretrain_throughput.py`)."""

    device: str = NotInId("auto")
    """``auto`` (cuda, else mps, else cpu), ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (not part of the run id: moving device resumes the run)."""

    compile: bool = NotInId(False)
    """``torch.compile`` the model (a one-off compile time, bench/README.md; worth it for long runs)."""

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        base, _, index = value.partition(":")
        if base not in ("cpu", "cuda", "mps", "auto") or (index and not (base == "cuda" and index.isdigit())):
            raise ValueError("device must be cpu, cuda, cuda:N, mps or auto")
        return value

    @model_validator(mode="after")
    def _budgets_distinct(self) -> PretrainConfig:
        self.train.budgets()  # raises ConfigError when two budgets round to one step count
        return self
