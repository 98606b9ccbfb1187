"""The lora-dd study's config (``overtrain lora-dd``): its two parts, each a rank sweep over LoRA
fine-tuning methods and seeds, and the checks both parts share."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from overtrain.config import BaseConfig, Registered, Seeds
from overtrain.models.presets import ModelConfig
from overtrain.registry import FINETUNE_METHODS

TASKS = {"mlp": "digits MLP", "lm": "tiny LM"}
"""Parts of the study: config field / ``task`` column -> the name claims and figures use."""

INPUT_DIM, CLASSES = 64, 5
"""Part (a): digits have 8 x 8 = 64 pixels; task B reads the base MLP's first 5 outputs."""


def default_lora_methods() -> list:
    """LoRA, Flat-LoRA (σ 0.05) and LoRA-GGPO with the dimensionless β̃ = 1 (its gradient term carries half
    the noise variance) at σ = 0.035 ≈ 0.05/√2, so its total noise variance is Flat-LoRA's: the two differ
    only in how the noise is spread over the rows."""
    get = FINETUNE_METHODS.get
    return [
        get("lora")(),
        get("flat_lora")(sigma=0.05),
        get("lora_ggpo")(sigma=0.035, beta=1.0, beta_scale="relative", grad_ema=0.9),
    ]


def check_ranks(ranks: list[int]) -> list[int]:
    """Ranks of a sweep: positive, sorted, without repeats."""
    if not ranks or any(r < 1 for r in ranks):
        raise ValueError("ranks must be a non-empty list of positive integers")
    return sorted(set(ranks))


def check_lora_methods(methods: list) -> list:
    """Methods of a sweep: LoRA methods, at least one, each once."""
    names = [m.name for m in methods]
    if not methods or len(set(names)) != len(names):
        raise ValueError(f"methods must be a non-empty list without repeats, got {names}")
    if "full" in names:
        raise ValueError("methods: 'full' is not a LoRA method")
    return methods


Scaling = Literal["rslora", "fixed", "rank"]
"""How the LoRA update is scaled with rank (`lora_scale`)."""


def lora_scale(scaling: Scaling, alpha: float, rank: int) -> float:
    """The factor s of ``W' = W + s·B A``: α/√r (``rslora``, Kalajdzievski 2023: the update's scale stays
    rank-independent at init and under Adam, so high ranks neither vanish nor blow up), α/r (``fixed``:
    a fixed α) or 1 (``rank``: α = r, the LoRA paper's common choice, which lets high ranks diverge at
    a learning rate tuned for low ones)."""
    if scaling == "rslora":
        return alpha / math.sqrt(rank)
    if scaling == "fixed":
        return alpha / rank
    return 1.0


class RankSweepConfig(BaseConfig):
    """What both parts' rank sweeps share: ranks x methods x seeds, each cell trained to convergence."""

    ranks: list[int] = [1, 2, 4, 8, 16, 32]
    """LoRA ranks r."""

    methods: list[Registered(FINETUNE_METHODS)] = Field(default_factory=default_lora_methods)
    """Fine-tuning methods with their settings; their rank, alpha and target modules are set per cell."""

    seeds: Seeds = [0, 1, 2, 3, 4]
    """Seeds of the adapter initialisation and the methods' noise (the base and the data are fixed)."""

    scaling: Scaling = "rslora"
    """Update scale s per rank (`lora_scale`): ``rslora`` α/√r, ``fixed`` α/r, ``rank`` 1 (α = r)."""

    alpha: float = Field(1.0, gt=0)
    """α of the scaling (unused with ``scaling: rank``)."""

    lrs: list[float] = [3e-3, 1e-2]
    """Adam learning rates tried per rank: plain LoRA is trained at each on the training set (its own
    adapter seed) and the one with the lowest final training loss is used for every method and seed at
    that rank. One value: no tuning."""

    max_steps: int = Field(4000, ge=1)
    """Step cap of a cell (full-batch Adam steps)."""

    fit_loss: float = Field(1e-2, ge=0)
    """Training loss counted as ~0 (interpolation): a cell stops when it gets there, and the measured
    threshold rank r* is the smallest rank whose LoRA cells reach it (median over seeds)."""

    plateau_steps: int = Field(500, ge=1)
    """A cell also stops when its training loss improved by less than `plateau_tol` (relative) over the
    last this many steps."""

    plateau_tol: float = Field(0.05, ge=0, lt=1)
    """Relative improvement below which the training loss counts as converged (see `plateau_steps`)."""

    curve_every: int = Field(25, ge=1)
    """Steps between training-loss records and convergence checks."""

    sharpness_rho: float = Field(0.05, ge=0)
    """ρ of the row-noise sharpness proxy."""

    sharpness_draws: int = Field(20, ge=1)
    """Noise draws of the sharpness proxy."""

    hessian_iterations: int = Field(20, ge=1)
    """Lanczos steps (Hessian-vector products) for the top merged-weight Hessian eigenvalue."""

    @field_validator("ranks")
    @classmethod
    def _ranks(cls, ranks: list[int]) -> list[int]:
        return check_ranks(ranks)

    @field_validator("methods")
    @classmethod
    def _methods(cls, methods: list) -> list:
        return check_lora_methods(methods)

    @field_validator("lrs")
    @classmethod
    def _lrs(cls, lrs: list[float]) -> list[float]:
        if not lrs or any(not (lr > 0 and math.isfinite(lr)) for lr in lrs):
            raise ValueError("lrs must be a non-empty list of positive learning rates")
        return sorted(set(lrs))

    def scale(self, rank: int) -> float:
        """s at `rank` (`lora_scale`)."""
        return lora_scale(self.scaling, self.alpha, rank)


class LoraMlpConfig(RankSweepConfig):
    """The rank-wise LoRA sweep on a frozen digits MLP (part (a) of ``overtrain lora-dd``; `mlp_part`)."""

    hidden: int = Field(64, ge=4)
    """Width H of the two hidden layers of the base MLP (64: the threshold rank falls mid-grid)."""

    pretrain_steps: int = Field(400, ge=1)
    """Full-batch Adam steps (lr 1e-3) pre-training the base on classes 0–4."""

    n_train: int = Field(256, ge=10, le=700)
    """Task-B training examples (classes 5–9); the other examples of those classes are the test set."""

    label_noise: float = Field(0.2, ge=0, lt=1)
    """Fraction of task-B training labels replaced by another class."""

    ranks: list[int] = [1, 2, 4, 6, 8, 12, 16, 32]
    """LoRA ranks r."""

    data_seed: int = 0
    """Seed of the base's initialisation and of the task-B split and label noise."""

    def threshold_rank(self) -> float:
        """r* = 5n / (64 + 3H): the rank whose trainable parameters equal the training equations."""
        return CLASSES * self.n_train / (INPUT_DIM + 3 * self.hidden)


class LoraLmConfig(RankSweepConfig):
    """The rank-wise LoRA sweep on a tiny pre-trained LM (part (b) of ``overtrain lora-dd``; `lm_part`)."""

    model: ModelConfig = Field(default_factory=lambda: ModelConfig(preset="llama-micro"))
    """Base model: a preset (``overtrain ls models``) and optional overrides."""

    vocab_size: int = Field(64, ge=2)
    """Vocabulary V of the pre-training and task HMMs."""

    seq_len: int = Field(32, ge=4)
    """Tokens per sequence, pre-training and task."""

    pretrain_steps: int = Field(600, ge=1)
    """AdamW steps of 32 x seq_len tokens pre-training the base."""

    n_train: int = Field(32, ge=1)
    """Task training sequences."""

    n_test: int = Field(128, ge=1)
    """Task test sequences."""

    target_modules: list[str] = ["q_proj", "v_proj"]
    """Modules LoRA adapts in every layer (names in the preset's HF model)."""

    curve_every: int = Field(10, ge=1)
    """Steps between training-loss records and convergence checks."""

    sharpness_draws: int = Field(10, ge=1)
    """Noise draws of the sharpness proxy."""

    hessian_iterations: int = Field(10, ge=1)
    """Lanczos steps (Hessian-vector products) for the top merged-weight Hessian eigenvalue."""

    data_seed: int = Field(0, ge=0)
    """Seed of the base's HMM (the task's is this + 1) and of the base's initialisation."""

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, targets: list[str]) -> list[str]:
        if not targets:
            raise ValueError("target_modules must name at least one module")
        return targets


class LoraDDConfig(BaseConfig):
    """The LoRA double-descent study (``overtrain lora-dd``)."""

    schema_version: int = 1
    """Config schema version."""

    mlp: LoraMlpConfig | None = Field(default_factory=LoraMlpConfig)
    """Part (a): the rank sweep on a frozen digits MLP (null: skip)."""

    lm: LoraLmConfig | None = Field(default_factory=LoraLmConfig)
    """Part (b): the rank sweep on a tiny pre-trained language model (null: skip)."""

    @model_validator(mode="after")
    def _some_part(self) -> LoraDDConfig:
        if self.mlp is None and self.lm is None:
            raise ValueError("mlp and lm are both null: nothing to run")
        return self

    def parts(self) -> dict[str, LoraMlpConfig | LoraLmConfig]:
        """The parts to run, by task name."""
        return {task: part for task in TASKS if (part := getattr(self, task)) is not None}
