"""The hyperfitting study's config (``overtrain hyperfit``) and its default base model."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from overtrain.config import BaseConfig, NotInId, Registered, validate
from overtrain.probes.generation import GenerationEvalConfig
from overtrain.registry import DATASETS
from overtrain.studies.hyperfit.train import HyperfitTrainConfig
from overtrain.training.pretrain_config import PretrainConfig

PRESETS = ("default",)
"""Presets, each ``configs/hyperfit/<preset>.yaml``."""


def _default_pretrain() -> PretrainConfig:
    return validate(
        PretrainConfig,
        {
            "data": {"name": "shakespeare", "tokenizer": "bpe", "bpe_vocab_size": 2048},
            "model": {"preset": "llama-tiny", "overrides": {"num_hidden_layers": 3}},
            "train": {
                "tokens": [1_000_000],
                "batch_size": 32,
                "seq_len": 128,
                "lr": 3e-3,
                "warmup_steps": 30,
                "log_every": 20,
            },
            "eval": {"batches": 8},
            "checkpoint": {"log_spaced": False, "step_zero": False},
        },
        "pretrain",
    )


class HyperfitConfig(BaseConfig):
    """The hyperfitting study (``overtrain hyperfit``)."""

    schema_version: int = 1
    """Config schema version."""

    pretrain: PretrainConfig = Field(default_factory=_default_pretrain)
    """The base model's pre-training run (ignored when `base_model` is set)."""

    checkpoint: str | None = None
    """Checkpoint of the pre-training run to hyperfit (default: its largest budget)."""

    base_model: Path | None = None
    """A local Hugging Face checkpoint directory to hyperfit instead (``config.json`` + safetensors +
    tokenizer); needs `data`."""

    base_fingerprint: str = ""
    """Fingerprint of `base_model`'s weight files (set by the study: a changed checkpoint is a new run)."""

    data: Registered(DATASETS) | None = None
    """Text for the hyperfit set, the prompts and validation; default: the pre-training data. With
    `base_model`, a corpus with ``tokenizer: parent``: ``{name: text, train: [f.txt], tokenizer: parent}``."""

    train: HyperfitTrainConfig = HyperfitTrainConfig()
    """Hyperfitting of the main run (n = ``train.sequences``)."""

    ablation_sequences: list[int] | None = None
    """Hyperfit-set sizes of the ablation runs (same optimiser, and with ``train.until_loss`` the same
    target loss); default: ``[train.batch_size]``, the paper's size at which the TTR gain collapses;
    ``[]`` for none."""

    ablation_eval_every: int | None = None
    """Epochs between the ablation runs' evaluations (None: only before and after hyperfitting)."""

    eval: GenerationEvalConfig = GenerationEvalConfig()
    """Prompts, decoding and metrics, shared by every setting."""

    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3], min_length=1)
    """Base-model seeds, the replicate unit of every finding (prompts are averaged within a seed). Seed s
    pre-trains its own base model (``pretrain.seed`` and the batch windows ``pretrain.data.seed`` = s) and
    draws its own hyperfit set and order; with `base_model` only the hyperfit set varies. A finding needs
    at least 4 seeds to PASS."""

    bootstrap: int = Field(2000, ge=100)
    """Bootstrap replicates of every confidence interval."""

    loss_near_zero: float = Field(0.1, gt=0)
    """Hyperfit-set loss (nats/token) at or below which training counts as near zero."""

    entropy_ratio: float = Field(0.7, gt=0, le=1)
    """Validation entropy of the hyperfitted model / the base's, at or below which entropy counts as down."""

    max_overlap: float = Field(0.1, gt=0, le=1)
    """Largest excess share of hyperfitted greedy continuations that copy the hyperfit set (more than
    `copy_words` words) over the highest share of the human, base-greedy and base-nucleus texts."""

    copy_words: int = Field(10, ge=1)
    """A continuation copies the hyperfit set when it shares more than this many consecutive words with
    one of its sequences (the paper: > 10; words: `overtrain.analysis.generation.words`)."""

    quality_margin: float = Field(0.25, gt=0)
    """Hyperfitted greedy text is 'as fluent as' the base's nucleus samples when the upper bound of its
    reference-model NLL excess is below this (nats/token)."""

    blocking_tolerance: float = Field(0.05, gt=0)
    """Citation blocking 'barely matters' when the CI of its TTR change lies within ± this."""

    ablation_retained: float = Field(0.5, gt=0, le=1)
    """The ablation 'loses the gain' when it keeps at most this share of the main run's TTR gain."""

    device: str = NotInId("auto")
    """``auto`` (cuda, else mps, else cpu), ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (every run of the study)."""

    threads: int = NotInId(1, ge=1)
    """Torch CPU threads of the hyperfit runs and the analysis (the pre-training run keeps the executor's)."""

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if any(s < 0 for s in value) or len(set(value)) != len(value):
            raise ValueError("give distinct seeds >= 0")
        return value

    @field_validator("ablation_sequences")
    @classmethod
    def _sizes(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (any(n < 1 for n in value) or len(set(value)) != len(value)):
            raise ValueError("give distinct positive sizes")
        return value

    @model_validator(mode="after")
    def _fits_context(self) -> HyperfitConfig:
        if self.base_model is None:
            need = self.eval.prompt_len + self.eval.new_tokens
            if need > self.pretrain.train.seq_len:
                raise ValueError(
                    f"eval: prompt_len + new_tokens = {need} exceeds the base model's context "
                    f"of {self.pretrain.train.seq_len} (pretrain.train.seq_len)"
                )
        return self

    def sizes(self) -> list[int]:
        """Hyperfit-set sizes, main run first."""
        return [self.train.sequences, *self.ablations()]

    def ablations(self) -> list[int]:
        sizes = [self.train.batch_size] if self.ablation_sequences is None else self.ablation_sequences
        return [n for n in sizes if n != self.train.sequences]
