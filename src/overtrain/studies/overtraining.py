"""Catastrophic overtraining (Springer et al. 2025): pre-train at many budgets, fine-tune and perturb
every budget checkpoint, find the budget past which more pre-training hurts.

The study expands into runs (science.md §1):

1. ``pretrain``: one run per seed, one checkpoint per token budget (WSD branches by default);
2. ``finetune``: every budget checkpoint x method x learning rate, on a task that differs from
   pre-training (a second HMM on the same vocabulary by default); records the in-distribution (task)
   loss and the pre-training loss after fine-tuning (forgetting);
3. ``probe``: Gaussian-perturbation sensitivity of every budget checkpoint, init-scale (canonical) and
   relative noise, K draws;
4. ``linear_theory``: the paper's two-layer linear model and its negative control (seconds);
5. ``overtraining``: this study's own run, which depends on all of the above and writes the analysis —
   inflection points T* with bootstrap CIs, Spearman(T, Δ), the claims table, the recommendation — into
   its ``evals.jsonl`` (``record`` column: ``claim``, ``inflection``, ``trend``). The report only reads them.

Rerunning the study reuses every finished run (content-addressed), so a second ``make demo`` takes
seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from overtrain.config import (
    BaseConfig,
    Registered,
    Seeds,
    build_config,
    config_hash,
    identity,
    to_plain,
    validate,
)
from overtrain.models.linear import LinearTheoryConfig
from overtrain.paths import repo_root
from overtrain.probes.noise import NoiseSensitivityConfig
from overtrain.registry import DATASETS, FINETUNE_METHODS, RUN_KINDS, STUDIES
from overtrain.runs.kinds.probe import ProbeRunConfig
from overtrain.runs.plan import Plan, PlanItem
from overtrain.training.finetune import FinetuneConfig, FinetuneTrainConfig
from overtrain.training.pretrain import PretrainConfig

PRESETS = ("demo", "small", "english", "paper-like")


def _default_task() -> Any:
    return DATASETS.get("hmm").model_validate({"name": "hmm", "seed": 1, "vocab_size": 64})


class FinetuneGridConfig(BaseConfig):
    """The fine-tuning grid applied to every budget checkpoint."""

    data: Registered(DATASETS, "hmm") = Field(default_factory=_default_task)
    """The task: must share the pre-training vocabulary (default: a second HMM, seed 1)."""

    methods: list[Registered(FINETUNE_METHODS)] = Field(default_factory=lambda: [FINETUNE_METHODS.get("full")()])
    """Fine-tuning methods (``overtrain ls methods``), e.g. ``[{name: full}, {name: lora, rank: 4}]``."""

    lrs: list[float] = [1e-4, 3e-4, 1e-3]
    """Learning-rate grid; each replaces ``train.lr``. Fixed-LR regime: one curve per LR; tuned regime:
    per checkpoint the LR with the best task loss."""

    method_lrs: dict[str, list[float]] = {}
    """Learning-rate grid of one method by name, replacing `lrs` for it, e.g. ``{lora: [1e-3, 3e-3,
    1e-2]}``: LoRA's adapters start at zero and usually want a ~10x larger LR than full fine-tuning."""

    train: FinetuneTrainConfig = FinetuneTrainConfig()
    """Steps, batch size, schedule (``lr`` is set from `lrs`)."""

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

    bootstrap: int = Field(2000, ge=100)
    """Bootstrap replicates for every confidence interval."""

    min_rise: float = Field(0.005, ge=0)
    """Relative rise (final / minimum − 1) below which a curve does not count as rising: 0.5% is about
    0.02 nats at these losses, the noise level science.md reports between single runs."""


# --- expansion into runs -----------------------------------------------------------------------------


def pretrain_configs(cfg: OvertrainingConfig) -> list[PretrainConfig]:
    return [validate(PretrainConfig, {**to_plain(cfg.pretrain), "seed": s}, "pretrain") for s in cfg.seeds]


def plan(cfg: OvertrainingConfig) -> Plan:
    """Every run of the study, the study's own analysis run last."""
    items: list[PlanItem] = []
    budgets = cfg.pretrain.train.budgets()
    settings = identity(cfg.sensitivity)
    ft_plain = to_plain(cfg.finetune)
    for pre in pretrain_configs(cfg):
        pre_id = config_hash(pre)
        items.append(PlanItem.from_config(RUN_KINDS.get("pretrain"), pre, f"seed={pre.seed}"))
        for b in budgets:
            for method in ft_plain["methods"]:
                for lr in cfg.finetune.lrs_for(method["name"]):
                    ft = validate(FinetuneConfig, {
                        "parent": pre_id, "checkpoint": b.name, "data": ft_plain["data"], "method": method,
                        "train": {**ft_plain["train"], "lr": lr}, "seed": pre.seed,
                        "dtype": pre.dtype, "device": pre.device,
                    }, "finetune")
                    items.append(PlanItem.from_config(
                        RUN_KINDS.get("finetune"), ft, f"seed={pre.seed} {b.name} {method['name']} lr={lr:g}"))
            probe = validate(ProbeRunConfig, {
                "parent": pre_id, "checkpoint": b.name, "probe": "noise", "settings": settings,
                "dtype": pre.dtype, "device": pre.device,
            }, "probe")
            items.append(PlanItem.from_config(RUN_KINDS.get("probe"), probe, f"seed={pre.seed} {b.name} noise"))
    items.append(PlanItem.from_config(RUN_KINDS.get("linear_theory"), cfg.theory, "theory"))
    items.append(PlanItem.from_config(RUN_KINDS.get("linear_theory"), cfg.theory_control, "theory control"))
    # built by hand: the study kind's parents() is this very plan
    items.append(PlanItem("overtraining", cfg, config_hash(cfg), [item.run_id for item in items], "analysis"))
    return Plan(items)


def child_ids(cfg: OvertrainingConfig) -> dict[str, list[str]]:
    """Run ids of the study's runs by kind (what the analysis and the report read)."""
    out: dict[str, list[str]] = {}
    for item in plan(cfg).items:
        if item.kind != "overtraining":
            out.setdefault(item.kind, []).append(item.run_id)
    out["theory"] = [config_hash(cfg.theory)]
    out["theory_control"] = [config_hash(cfg.theory_control)]
    return out


def load_config(config: str | Path | None = None, preset: str | None = None, overrides=()) -> OvertrainingConfig:
    """The study config: a preset from ``configs/overtraining/<preset>.yaml`` or a file, then overrides."""
    if preset is not None:
        if preset not in PRESETS:
            from overtrain.errors import UserError

            raise UserError(f"unknown preset {preset!r}; choose from: {', '.join(PRESETS)}")
        root = repo_root() or Path.cwd()
        config = root / "configs" / "overtraining" / f"{preset}.yaml"
    return build_config(OvertrainingConfig, config, overrides)


def run(cfg: OvertrainingConfig, store=None, *, workers: int = 1, progress: bool = True):
    """Execute the study: every run it needs (finished ones are skipped), then its analysis.

    Returns:
        ``(PlanResult, study_run_id)``.
    """
    from overtrain.executors.local import run_plan
    from overtrain.runs.store import Store

    store = store or Store()
    return run_plan(plan(cfg), store, workers=workers, progress=progress), config_hash(cfg)


def run_analysis(cfg: OvertrainingConfig, run) -> None:
    from overtrain.analysis.overtraining import analyse

    result = analyse(cfg, run.store, child_ids(cfg))
    for row in result.rows():
        run.log_eval(row)
    run.set_info(recommendation=result.recommendation, claims_passed=result.passed, claims_total=len(result.claims))


def _report(store) -> list:
    from overtrain.studies.overtraining_report import report_sections

    return report_sections(store)


class _Study:
    """Catastrophic overtraining (Springer et al. 2025): T* past which more pre-training hurts fine-tuning."""

    name = "overtraining"
    config_cls = OvertrainingConfig
    load_config = staticmethod(load_config)
    plan = staticmethod(plan)
    run = staticmethod(run)
    report = staticmethod(_report)


STUDIES.register("overtraining", _Study())
