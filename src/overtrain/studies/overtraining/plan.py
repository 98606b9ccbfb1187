"""The overtraining study's runs: a pre-training run per seed, and per budget checkpoint the fine-tuning
grid and the sensitivity probe, plus the theory model and its control."""

from __future__ import annotations

from overtrain.config import (
    config_hash,
    identity,
    to_plain,
    validate,
)
from overtrain.registry import RUN_KINDS
from overtrain.runs.kinds.probe import ProbeRunConfig
from overtrain.runs.plan import PlanItem
from overtrain.studies.overtraining.config import OvertrainingConfig
from overtrain.studies.overtraining.theory import LinearTheoryConfig
from overtrain.studies.overtraining.theory_run import LINEAR_THEORY
from overtrain.training.finetune import FinetuneConfig
from overtrain.training.pretrain_config import PretrainConfig


def pretrain_configs(cfg: OvertrainingConfig) -> list[PretrainConfig]:
    return [validate(PretrainConfig, {**to_plain(cfg.pretrain), "seed": s}, "pretrain") for s in cfg.seeds]


def work(cfg: OvertrainingConfig) -> list[PlanItem]:
    """Every run the analysis reads (`Study.plan` adds the analysis run)."""
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
                    ft = validate(
                        FinetuneConfig,
                        {
                            "parent": pre_id,
                            "checkpoint": b.name,
                            "data": ft_plain["data"],
                            "method": method,
                            "train": {**ft_plain["train"], "lr": lr},
                            "seed": pre.seed,
                            "dtype": pre.dtype,
                            "device": pre.device,
                            "ood_data": ft_plain["ood"],
                            "selection_batches": cfg.finetune.selection_batches,
                        },
                        "finetune",
                    )
                    items.append(
                        PlanItem.from_config(
                            RUN_KINDS.get("finetune"),
                            ft,
                            f"seed={pre.seed} {b.name} {method['name']} lr={lr:g}",
                        )
                    )
            probe = validate(
                ProbeRunConfig,
                {
                    "parent": pre_id,
                    "checkpoint": b.name,
                    "probe": "noise",
                    "settings": settings,
                    "dtype": pre.dtype,
                    "device": pre.device,
                },
                "probe",
            )
            items.append(
                PlanItem.from_config(RUN_KINDS.get("probe"), probe, f"seed={pre.seed} {b.name} noise")
            )
    items.append(PlanItem.from_config(LINEAR_THEORY, cfg.theory, "theory"))
    items.append(PlanItem.from_config(LINEAR_THEORY, cfg.theory_control, "theory control"))
    for key, theory in forecast_theories(cfg).items():
        items.append(PlanItem.from_config(LINEAR_THEORY, theory, key.replace("_", " ")))
    return items


def forecast_theories(cfg: OvertrainingConfig) -> dict[str, LinearTheoryConfig]:
    """The forecaster's validation runs: the theory model as configured and its negative control."""
    return {
        "forecast_theory": cfg.forecast_theory,
        "forecast_theory_control": cfg.forecast_theory.model_copy(update={"spectrum_exponent": 1.0}),
    }


def child_ids(cfg: OvertrainingConfig) -> dict[str, list[str]]:
    """Run ids of the study's runs by kind (what the analysis and the report read)."""
    out: dict[str, list[str]] = {}
    for item in work(cfg):
        out.setdefault(item.kind, []).append(item.run_id)
    out["theory"] = [config_hash(cfg.theory)]
    out["theory_control"] = [config_hash(cfg.theory_control)]
    for key, theory in forecast_theories(cfg).items():
        out[key] = [config_hash(theory)]
    return out
