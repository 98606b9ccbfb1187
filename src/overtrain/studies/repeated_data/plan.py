"""The repeated-data study's runs: per (model size, E, seed) a pre-training run on the `repeat` mixer and
two probe runs on its final checkpoint (induction; loss on the repeated subset)."""

from __future__ import annotations

from typing import Any

from overtrain.config import config_hash, identity, validate
from overtrain.data.repeat import RepeatConfig
from overtrain.models.presets import ModelConfig, build_hf_config
from overtrain.registry import RUN_KINDS
from overtrain.runs.kinds.probe import ProbeRunConfig
from overtrain.runs.plan import PlanItem
from overtrain.studies.repeated_data.config import VOCAB, RepeatedDataConfig
from overtrain.training.pretrain_config import PretrainConfig


def pretrain_config(cfg: RepeatedDataConfig, size: str, repeats: int, seed: int) -> PretrainConfig:
    """The pre-training run of one (size, E, seed)."""
    budget = cfg.train.budgets()[0]
    data = RepeatConfig(
        base=cfg.data,
        fraction=cfg.fraction,
        repeats=repeats,
        seed=seed,
        total_tokens=budget.steps * cfg.train.tokens_per_step,
    )
    return PretrainConfig(
        seed=seed,
        data=data,
        model=cfg.models[size],
        train=cfg.train,
        eval=cfg.eval,
        checkpoint=cfg.checkpoint,
        dtype=cfg.dtype,
        device=cfg.device,
    )


def _flops_per_token(model: ModelConfig) -> int:
    """Matrix parameters per token of the model's blocks (attention 4d², MLP 3·d·ffn per layer): the
    order in which the plan starts runs, largest first, so the longest runs do not finish last."""
    hf = build_hf_config(model, vocab_size=VOCAB, max_positions=8)
    d, ffn = hf.hidden_size, getattr(hf, "intermediate_size", 4 * hf.hidden_size)
    return hf.num_hidden_layers * (4 * d * d + 3 * d * ffn)


def cells(cfg: RepeatedDataConfig) -> list[dict[str, Any]]:
    """Every (size, E, seed) with the run ids of its pre-training run and its two probe runs, the
    largest model first."""
    out = []
    ckpt = cfg.train.budgets()[0].name
    for size in sorted(cfg.models, key=lambda s: -_flops_per_token(cfg.models[s])):
        for e in cfg.repeats:
            for seed in cfg.seeds:
                pre = pretrain_config(cfg, size, e, seed)
                pre_id = config_hash(pre)
                probes = {
                    name: validate(
                        ProbeRunConfig,
                        {
                            "parent": pre_id,
                            "checkpoint": ckpt,
                            "probe": probe,
                            "settings": identity(settings),
                            "dtype": cfg.dtype,
                            "device": cfg.device,
                        },
                        "probe",
                    )
                    for name, probe, settings in (
                        ("induction", "induction", cfg.induction),
                        ("memorisation", "reference_loss", cfg.memorisation),
                    )
                }
                out.append(
                    {
                        "size": size,
                        "repeats": e,
                        "seed": seed,
                        "pretrain": pre,
                        "pretrain_id": pre_id,
                        "probes": probes,
                        "probe_ids": {k: config_hash(v) for k, v in probes.items()},
                    }
                )
    return out


def work(cfg: RepeatedDataConfig) -> list[PlanItem]:
    """Every run the analysis reads, in dependency order (`Study.plan` adds the analysis run)."""
    items: list[PlanItem] = []
    for c in cells(cfg):
        label = f"{c['size']} E={c['repeats']} seed={c['seed']}"
        items.append(PlanItem.from_config(RUN_KINDS.get("pretrain"), c["pretrain"], label))
        for name, probe in c["probes"].items():
            items.append(PlanItem.from_config(RUN_KINDS.get("probe"), probe, f"{label} {name}"))
    return items
