"""The repeated-data study's config (``overtrain repeated-data``): the unique language, the repeated
fraction f, the repeat counts E, the model sizes and the claim thresholds."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from overtrain.config import BaseConfig, NotInId, Registered, Seeds
from overtrain.data.copy import CopyConfig
from overtrain.data.mixture import MixtureConfig
from overtrain.models.presets import ModelConfig
from overtrain.probes.induction import InductionConfig
from overtrain.probes.reference_loss import ReferenceLossConfig
from overtrain.registry import DATASETS
from overtrain.training.pretrain_config import CheckpointConfig, EvalConfig, TrainConfig

PRESETS = ("default", "small", "wsd", "fraction")
VOCAB = 64


def _default_models() -> dict[str, ModelConfig]:
    d48 = {"hidden_size": 48, "intermediate_size": 192}
    return {
        "nano": ModelConfig(preset="llama-nano"),
        "micro": ModelConfig(preset="llama-micro"),
        "d48": ModelConfig(preset="llama-micro", overrides=d48),
    }


def _default_eval() -> EvalConfig:
    return EvalConfig(
        batches=8,
        every=100,
        extra={
            "copy": CopyConfig(mode="repeat", vocab_size=VOCAB),
            "spans": CopyConfig(mode="spans", vocab_size=VOCAB),
        },
    )


class RepeatedDataConfig(BaseConfig):
    """The repeated-data study (``overtrain repeated-data``)."""

    schema_version: int = 1
    """Config schema version."""

    data: Registered(DATASETS) = Field(default_factory=lambda: MixtureConfig())
    """The unique language, base of the `repeat` mixer (default: copied-spans text mixed 3:1 with [random
    block; same block] sequences, vocabulary 64)."""

    fraction: float = Field(0.1, gt=0, lt=1)
    """Fraction f of the training sequences that are repeats of the subset (fixed across E)."""

    repeats: list[int] = [1, 16, 128, 1024]
    """Repeat counts E (log-spaced, must include 1: the no-repetition baseline). The subset holds
    round(f·N/E) sequences."""

    models: dict[str, ModelConfig] = Field(default_factory=_default_models)
    """Model sizes by label, e.g. ``{micro: {preset: llama-micro}}`` (at least 2 for the scaling law)."""

    seeds: Seeds = [0]
    """Seeds: each sets the model initialisation and where the repeats are placed; CIs resample them."""

    train: TrainConfig = TrainConfig(
        tokens=[3_072_000],
        schedule="cosine",
        batch_size=32,
        seq_len=64,
        lr=3e-3,
        warmup_steps=100,
        log_every=50,
    )
    """Optimisation; exactly one token budget (the fixed total tokens of every run)."""

    eval: EvalConfig = Field(default_factory=_default_eval)
    """Held-out evaluation during training (``eval.every`` gives the loss curves; ``extra`` sources log
    ``<name>/loss`` and must use the data's vocabulary: default ``copy`` and ``spans`` at 64 tokens)."""

    checkpoint: CheckpointConfig = CheckpointConfig(
        log_spaced=False, every=250, step_zero=False, resume_every=500
    )
    """Checkpoints along training: the analysis evaluates the repeated subset on them (worst E, E = 1) and
    the induction scores on them (every run)."""

    induction: InductionConfig = InductionConfig(sequences=64, batch_size=32, ablate_top=1)
    """Induction probe on every final checkpoint: prefix-matching score per head, copying loss, and the
    copying loss with the top head ablated (``ablate_top``); the analysis also scores every checkpoint
    (the phase change and the mean score over training)."""

    memorisation: ReferenceLossConfig = ReferenceLossConfig(split="repeated", eval_batches=4, batch_size=32)
    """Loss on the repeated subset (``split: repeated``) on every final checkpoint."""

    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute precision of every run (bf16 autocast)."""

    device: str = NotInId("auto")
    """``auto`` (cuda, else mps, else cpu), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""

    bootstrap: int = Field(2000, ge=100)
    """Bootstrap replicates for every confidence interval (over seeds)."""

    min_peak: float = Field(0.01, ge=0)
    """Relative height of the interior peak over the higher end needed to pass (1%: the gate at this
    scale, docs/repeated_data.md)."""

    min_change: float = Field(0.05, ge=0)
    """Relative change of the copying loss (up) or the max prefix-matching score (down) at the worst E
    against E = 1 needed to count as damage (5%); with several seeds the CI must also exclude 0."""

    induction_threshold: float = Field(0.3, gt=0, le=1)
    """Max prefix-matching score above which a model has an induction head (the 0.3–0.5 convention)."""

    min_rise: float = Field(0.005, ge=0)
    """Relative rise of the held-out loss above its running minimum that counts as a mid-training rise."""

    @field_validator("repeats")
    @classmethod
    def _repeats(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value) or any(e < 1 for e in value):
            raise ValueError(f"give distinct repeat counts >= 1, got {value}")
        if 1 not in value or len(value) < 3:
            raise ValueError("include E = 1 (the no-repetition baseline) and at least 2 more repeat counts")
        return sorted(value)

    @field_validator("models")
    @classmethod
    def _models(cls, value: dict[str, ModelConfig]) -> dict[str, ModelConfig]:
        if not value:
            raise ValueError("give at least one model size")
        return value

    @model_validator(mode="after")
    def _budget(self) -> RepeatedDataConfig:
        if len(self.train.tokens) != 1:
            raise ValueError(
                f"train.tokens: give exactly one token budget (the fixed total), got {len(self.train.tokens)}"
            )
        n = self.sequences
        for e in self.repeats:
            subset = round(self.fraction * n / e)
            if subset < 1:
                raise ValueError(
                    f"repeats: E = {e} leaves round({self.fraction} x {n} / {e}) = 0 subset "
                    f"sequences (N = {n} training sequences); lower E or raise train.tokens "
                    "or fraction"
                )
        return self

    @property
    def sequences(self) -> int:
        """N: training sequences of the budget."""
        return self.train.budgets()[0].steps * self.train.batch_size

    def subset(self, repeats: int) -> int:
        """Distinct subset sequences at E = `repeats`."""
        return round(self.fraction * self.sequences / repeats)
