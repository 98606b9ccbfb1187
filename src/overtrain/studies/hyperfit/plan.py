"""The hyperfitting study's runs: per seed, the base model's pre-training run (unless `base_model` names a
local checkpoint) and one ``hyperfit_train`` run per hyperfit-set size, main run first."""

from __future__ import annotations

import json

from overtrain.config import config_hash, to_plain, validate
from overtrain.core.weights import check_model_dir
from overtrain.errors import UserError
from overtrain.registry import RUN_KINDS
from overtrain.runs.kinds.audit import fingerprint
from overtrain.runs.plan import PlanItem
from overtrain.studies.hyperfit.config import HyperfitConfig
from overtrain.studies.hyperfit.train import HYPERFIT_TRAIN, HyperfitRunConfig
from overtrain.training.pretrain_config import PretrainConfig


def resolve(cfg: HyperfitConfig) -> HyperfitConfig:
    """`cfg` checked before any run starts (one-line `UserError`s), with `base_model` made absolute and
    fingerprinted (idempotent).

    Checks: the data is a text corpus (and the Shakespeare corpus is prepared: its one download is the
    explicit ``overtrain data prepare shakespeare``); a `base_model` is a checkpoint directory whose context
    holds a prompt and its continuation.
    """
    data = cfg.data if cfg.data is not None else (cfg.pretrain.data if cfg.base_model is None else None)
    if cfg.base_model is not None and data is None:
        raise UserError(
            "data: base_model needs a text source (e.g. data={name: text, train: [FILE], tokenizer: parent})"
        )
    if not hasattr(data, "documents"):
        raise UserError(
            f"data: hyperfitting needs a text corpus (shakespeare, text, jsonl, hf_dataset), got {data.name}"
        )
    if data.name == "shakespeare":
        data.documents()  # DataError naming the prepare command when it is not prepared
    if cfg.base_model is None:
        return cfg
    check_model_dir(cfg.base_model)
    path = cfg.base_model.resolve()
    context = json.loads((path / "config.json").read_text()).get("max_position_embeddings")
    _check_context(cfg, context, str(path))
    return cfg.model_copy(update={"base_model": path, "base_fingerprint": fingerprint(path)})


def _check_context(cfg: HyperfitConfig, context: int | None, what: str) -> None:
    need = cfg.eval.prompt_len + cfg.eval.new_tokens
    if context is not None and need > context:
        raise UserError(
            f"eval: prompt_len + new_tokens = {need} exceeds the base model's context of {context} ({what})"
        )


def pretrain_config(cfg: HyperfitConfig, seed: int) -> PretrainConfig:
    """The base model of `seed`: `cfg.pretrain` with ``seed`` and ``data.seed`` (batch windows) = `seed`."""
    plain = to_plain(cfg.pretrain)
    return validate(
        PretrainConfig, {**plain, "seed": seed, "data": {**plain["data"], "seed": seed}}, "pretrain"
    )


def base_of(cfg: HyperfitConfig, seed: int) -> dict:
    """The ``base`` field of the hyperfit runs of `seed` (`cfg` resolved)."""
    if cfg.base_model is None:
        return {"parent": config_hash(pretrain_config(cfg, seed)), "checkpoint": cfg.checkpoint}
    return {"model_dir": cfg.base_model, "fingerprint": cfg.base_fingerprint}


def run_configs(cfg: HyperfitConfig) -> dict[tuple[int, int], HyperfitRunConfig]:
    """The ``hyperfit_train`` config of every (seed, hyperfit-set size), seed by seed, main run first."""
    plain = to_plain(cfg)
    out = {}
    for seed in cfg.seeds:
        for n in cfg.sizes():
            train = {**plain["train"], "sequences": n}
            if n != cfg.train.sequences:
                train["eval_every"] = cfg.ablation_eval_every
            out[seed, n] = validate(
                HyperfitRunConfig,
                {
                    "base": base_of(cfg, seed),
                    "data": plain["data"],
                    "train": train,
                    "eval": plain["eval"],
                    "seed": seed,
                    "device": cfg.device,
                    "threads": cfg.threads,
                },
                "hyperfit_train",
            )
    return out


def train_ids(cfg: HyperfitConfig) -> dict[tuple[int, int], str]:
    """``{(seed, hyperfit-set size): hyperfit_train run id}`` (`cfg` resolved)."""
    return {key: HYPERFIT_TRAIN.run_id(c) for key, c in run_configs(cfg).items()}


def work(cfg: HyperfitConfig) -> list[PlanItem]:
    """Every run the analysis reads (`Study.plan` adds the analysis run); `cfg` is resolved first."""
    cfg = resolve(cfg)
    items: list[PlanItem] = []
    if cfg.base_model is None:
        for seed in cfg.seeds:
            pre = pretrain_config(cfg, seed)
            items.append(PlanItem.from_config(RUN_KINDS.get("pretrain"), pre, f"base model seed={seed}"))
    for (seed, n), run_cfg in run_configs(cfg).items():
        items.append(PlanItem.from_config(HYPERFIT_TRAIN, run_cfg, f"hyperfit seed={seed} n={n}"))
    return items
