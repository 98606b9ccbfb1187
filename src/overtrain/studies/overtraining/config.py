"""The overtraining study's config (``overtrain overtraining``): pre-training, seeds, the fine-tuning
grid, the sensitivity probe, the theory model and the decision thresholds."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from overtrain.config import (
    BaseConfig,
    Registered,
    Seeds,
)
from overtrain.probes.noise import NoiseSensitivityConfig
from overtrain.registry import DATASETS, FINETUNE_METHODS
from overtrain.studies.overtraining.theory import LinearTheoryConfig
from overtrain.training.finetune import FinetuneTrainConfig
from overtrain.training.pretrain_config import PretrainConfig

PRESETS = ("demo", "small", "english", "paper-like")


def _default_task() -> Any:
    return DATASETS.get("hmm").model_validate({"name": "hmm", "seed": 1, "vocab_size": 64})


class FinetuneGridConfig(BaseConfig):
    """The fine-tuning grid applied to every budget checkpoint."""

    data: Registered(DATASETS, "hmm") = Field(default_factory=_default_task)
    """The task: must share the pre-training vocabulary (default: a second HMM, seed 1)."""

    methods: list[Registered(FINETUNE_METHODS)] = Field(
        default_factory=lambda: [FINETUNE_METHODS.get("full")()]
    )
    """Fine-tuning methods (``overtrain ls methods``), e.g. ``[{name: full}, {name: lora, rank: 4}]``."""

    lrs: list[float] = [1e-4, 3e-4, 1e-3]
    """Learning-rate grid; each replaces ``train.lr``. Fixed-LR regime: one curve per LR; tuned regime:
    per checkpoint the LR with the best task loss."""

    method_lrs: dict[str, list[float]] = {}
    """Learning-rate grid of one method by name, replacing `lrs` for it, e.g. ``{lora: [1e-3, 3e-3,
    1e-2]}``: LoRA's adapters start at zero and usually want a ~10x larger LR than full fine-tuning."""

    train: FinetuneTrainConfig = FinetuneTrainConfig()
    """Steps, batch size, schedule (``lr`` is set from `lrs`); ``train.converge`` fine-tunes every run to a
    plateau of the selection loss instead of a fixed number of steps."""

    ood: Registered(DATASETS) | None = None
    """A held-out capability probe: a language in neither the pre-training nor the task data (e.g. a third
    HMM with the same vocabulary), its loss measured before and after every fine-tuning run — a stand-in
    for the generalist benchmarks Springer et al. 2025 score after fine-tuning. None: not measured."""

    selection_batches: int = Field(8, gt=0)
    """Task validation batches, disjoint from the reported ones, on which the tuned LR of each checkpoint
    is chosen (and a converging run stops), so the reported task loss is not the one selected on."""

    @field_validator("lrs")
    @classmethod
    def _lrs(cls, value: list[float]) -> list[float]:
        return _check_lrs(value)

    @field_validator("method_lrs")
    @classmethod
    def _method_lrs(cls, value: dict[str, list[float]], info) -> dict[str, list[float]]:
        names = [m.name for m in info.data.get("methods", [])]
        for name in value:
            if name not in names:
                raise ValueError(f"method_lrs names {name!r}, which is not in methods ({', '.join(names)})")
        return {name: _check_lrs(lrs) for name, lrs in value.items()}

    def lrs_for(self, method: str) -> list[float]:
        """The learning-rate grid of `method`, ascending."""
        return self.method_lrs.get(method, self.lrs)


def _check_lrs(value: list[float]) -> list[float]:
    if not value or any(lr <= 0 for lr in value) or len(set(value)) != len(value):
        raise ValueError("give distinct positive learning rates")
    return sorted(value)


class OvertrainingConfig(BaseConfig):
    """The catastrophic-overtraining study (``overtrain overtraining``)."""

    schema_version: int = 1
    """Config schema version."""

    pretrain: PretrainConfig = PretrainConfig()
    """The pre-training run of every seed (its ``seed`` is replaced by each of `seeds`)."""

    seeds: Seeds = [0, 1]
    """Model seeds: one pre-training run each; T* confidence intervals resample them."""

    finetune: FinetuneGridConfig = FinetuneGridConfig()
    """Fine-tuning of every budget checkpoint."""

    sensitivity: NoiseSensitivityConfig = NoiseSensitivityConfig(gammas=[1.0, 2.0, 4.0], draws=4)
    """Gaussian-perturbation probe of every budget checkpoint (the paper's Δ(T, γ))."""

    theory: LinearTheoryConfig = LinearTheoryConfig()
    """The two-layer linear theory model (slow spectrum, s_i ∝ i^-1.5)."""

    theory_control: LinearTheoryConfig = LinearTheoryConfig(spectrum_exponent=1.0)
    """The negative control (fast spectrum, s_i ∝ 1/i): no U expected."""

    forecast_theory: LinearTheoryConfig = LinearTheoryConfig(
        n_checkpoints=41, seeds=list(range(1, 9)), draws=8, gammas=[0.01, 0.03], ft_steps=1
    )
    """Validation of the T* forecaster where T* is known: the theory model checked 4 times per doubling of
    steps, 8 seeds, run as given (s_i ∝ i^-1.5) and as the negative control (s_i ∝ 1/i); at γ = 0.03 the
    perturbed loss has a U (lead, error, coverage), at γ = 0.01 it has none (false alarms)."""

    bootstrap: int = Field(2000, ge=100)
    """Bootstrap replicates for every confidence interval."""

    min_rise: float = Field(0.005, ge=0)
    """Relative rise (final / minimum − 1) below which a curve does not count as rising: 0.5% is about
    0.02 nats at these losses, the run-to-run noise measured at this scale (docs/overtraining.md)."""

    forecast_horizon: float = Field(1.0, gt=0)
    """Horizon H of the T* forecaster replayed on the monitor's checks, doublings of tokens: it warns at
    the first check where P(T* ≤ now · 2^H) ≥ 0.9 (`overtrain.analysis.forecast`)."""
