"""Hyperfitting (Carlsson et al. 2025, science.md §6): over-fitting a language model on a few sequences until
its training loss is near zero makes its greedy continuations less repetitive — is it more than sharpening?

The study expands into runs:

1. ``pretrain``: the base model (Shakespeare, byte-level BPE: no unknown token), unless `base_model` names a
   local Hugging Face checkpoint directory;
2. ``hyperfit_train``: the base hyperfitted on `train.sequences` sequences, and one run per ablation size
   (default: as many sequences as the batch size), each evaluated at epoch 0, every `train.eval_every`
   epochs and at the end (`overtrain.training.hyperfit`);
3. ``hyperfit``: this study's analysis. It decodes the base model with nucleus sampling and with pure
   temperature sampling at the τ whose validation entropy matches the hyperfitted model's (the sharpening
   control), scores every setting on the same held-out prompts (TTR, distinct-n, Self-BLEU, copies of the
   hyperfit set, and the base model's loss on the continuations as a fluency proxy), and checks the claims
   with paired bootstrap CIs over prompts (or over validation / hyperfit windows;
   `overtrain.analysis.hyperfit`). Rows go to its
   ``evals.jsonl`` (``record``: ``comparison``, ``temperature``, ``claim``) and ``probes.jsonl``
   (``generation`` rows of the base's sampled settings); the report only reads them.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from overtrain.config import BaseConfig, NotInId, Registered, build_config, config_hash, to_plain, validate
from overtrain.errors import UserError
from overtrain.paths import repo_root
from overtrain.probes.generation import GenerationEvalConfig
from overtrain.registry import DATASETS, RUN_KINDS, STUDIES
from overtrain.runs.kinds import RunKind
from overtrain.runs.plan import Plan, PlanItem
from overtrain.training.hyperfit import (
    HyperfitRunConfig,
    HyperfitTrainConfig,
    base_parents,
    run_hyperfit,
    total_steps,
)
from overtrain.training.pretrain import PretrainConfig

PRESETS = ("default",)

SETTINGS = {
    "human": "human continuation",
    "base_greedy": "base, greedy",
    "base_nucleus": "base, nucleus sampling",
    "base_matched": "base, entropy-matched temperature",
    "hyperfit": "hyperfitted, greedy",
    "blocked": "hyperfitted, greedy, citation blocked",
}
"""Keys and labels of the compared settings (ablations add ``ablation_<n>``)."""


def _default_pretrain() -> PretrainConfig:
    return validate(PretrainConfig, {
        "data": {"name": "shakespeare", "tokenizer": "bpe", "bpe_vocab_size": 2048},
        "model": {"preset": "llama-tiny", "overrides": {"num_hidden_layers": 3}},
        "train": {"tokens": [1_000_000], "batch_size": 32, "seq_len": 128, "lr": 3e-3, "warmup_steps": 30,
                  "log_every": 20},
        "eval": {"batches": 8},
        "checkpoint": {"log_spaced": False, "step_zero": False},
    }, "pretrain")


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
    """Hyperfit-set sizes of the ablation runs (same epochs and LR); default: ``[train.batch_size]``, the
    paper's size at which the TTR gain collapses; ``[]`` for none."""

    eval: GenerationEvalConfig = GenerationEvalConfig()
    """Prompts, decoding and metrics, shared by every setting."""

    seed: int = 0
    """Seed of the hyperfit set and its order."""

    bootstrap: int = Field(2000, ge=100)
    """Bootstrap replicates of every confidence interval."""

    loss_near_zero: float = Field(0.1, gt=0)
    """Hyperfit-set loss (nats/token) at or below which training counts as near zero."""

    entropy_ratio: float = Field(0.7, gt=0, le=1)
    """Validation entropy of the hyperfitted model / the base's, at or below which entropy counts as down."""

    max_overlap: float = Field(0.1, gt=0, le=1)
    """Largest share of greedy continuations that may copy a long span of the hyperfit set."""

    blocking_tolerance: float = Field(0.05, gt=0)
    """Citation blocking 'barely matters' when the CI of its TTR change lies within ± this."""

    ablation_retained: float = Field(0.5, gt=0, le=1)
    """The ablation 'loses the gain' when it keeps at most this share of the main run's TTR gain."""

    device: str = NotInId("cpu")
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (every run of the study)."""

    threads: int = NotInId(1, ge=1)
    """Torch CPU threads of the hyperfit runs and the analysis (the pre-training run keeps the executor's)."""

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
                raise ValueError(f"eval: prompt_len + new_tokens = {need} exceeds the base model's context "
                                 f"of {self.pretrain.train.seq_len} (pretrain.train.seq_len)")
        return self

    def ablations(self) -> list[int]:
        sizes = [self.train.batch_size] if self.ablation_sequences is None else self.ablation_sequences
        return [n for n in sizes if n != self.train.sequences]


# --- expansion into runs -----------------------------------------------------------------------------------


def resolve(cfg: HyperfitConfig) -> HyperfitConfig:
    """`cfg` checked before any run starts (one-line `UserError`s), with `base_model` made absolute and
    fingerprinted.

    Checks: the data is a text corpus (and the Shakespeare corpus is prepared: its one download is the
    explicit ``overtrain data prepare shakespeare``); a `base_model` is a checkpoint directory whose context
    holds a prompt and its continuation.
    """
    data = cfg.data if cfg.data is not None else (cfg.pretrain.data if cfg.base_model is None else None)
    if cfg.base_model is not None and data is None:
        raise UserError("data: base_model needs a text source (e.g. data={name: text, train: [FILE], "
                        "tokenizer: parent})")
    if not hasattr(data, "documents"):
        raise UserError(f"data: hyperfitting needs a text corpus (shakespeare, text, jsonl, hf_dataset), "
                        f"got {data.name}")
    if data.name == "shakespeare":
        data.documents()  # DataError naming the prepare command when it is not prepared
    if cfg.base_model is None:
        return cfg
    from overtrain.core.weights import check_model_dir
    from overtrain.runs.kinds.audit import fingerprint

    check_model_dir(cfg.base_model)
    path = cfg.base_model.resolve()
    context = json.loads((path / "config.json").read_text()).get("max_position_embeddings")
    _check_context(cfg, context, str(path))
    return cfg.model_copy(update={"base_model": path, "base_fingerprint": fingerprint(path)})


def _check_context(cfg: HyperfitConfig, context: int | None, what: str) -> None:
    need = cfg.eval.prompt_len + cfg.eval.new_tokens
    if context is not None and need > context:
        raise UserError(f"eval: prompt_len + new_tokens = {need} exceeds the base model's context of "
                        f"{context} ({what})")


def run_configs(cfg: HyperfitConfig) -> dict[int, HyperfitRunConfig]:
    """The ``hyperfit_train`` config of every hyperfit-set size, main run first."""
    if cfg.base_model is None:
        base = {"parent": config_hash(cfg.pretrain), "checkpoint": cfg.checkpoint}
    else:
        base = {"model_dir": cfg.base_model, "fingerprint": cfg.base_fingerprint}
    plain = to_plain(cfg)
    out = {}
    for n in [cfg.train.sequences, *cfg.ablations()]:
        out[n] = validate(HyperfitRunConfig, {
            "base": base, "data": plain["data"], "train": {**plain["train"], "sequences": n},
            "eval": plain["eval"], "seed": cfg.seed, "device": cfg.device, "threads": cfg.threads},
            "hyperfit_train")
    return out


def plan(cfg: HyperfitConfig) -> Plan:
    """Every run of the study (`base_model` fingerprinted first), its analysis run last."""
    return _plan(resolve(cfg))


def _plan(cfg: HyperfitConfig) -> Plan:
    items: list[PlanItem] = []
    if cfg.base_model is None:
        items.append(PlanItem.from_config(RUN_KINDS.get("pretrain"), cfg.pretrain, "base model"))
    for n, run_cfg in run_configs(cfg).items():
        items.append(PlanItem.from_config(RUN_KINDS.get("hyperfit_train"), run_cfg, f"hyperfit n={n}"))
    items.append(PlanItem("hyperfit", cfg, config_hash(cfg), [item.run_id for item in items], "analysis"))
    return Plan(items)


def load_config(config: str | Path | None = None, preset: str | None = None, overrides=()) -> HyperfitConfig:
    """The study config: a preset from ``configs/hyperfit/<preset>.yaml`` (default: default) or a file."""
    if config is None:
        preset = preset or PRESETS[0]
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r} of hyperfit; choose from: {', '.join(PRESETS)}")
        config = (repo_root() or Path.cwd()) / "configs" / "hyperfit" / f"{preset}.yaml"
        if not config.is_file():  # installed without the repo: the preset is the config's defaults
            config = None
    return build_config(HyperfitConfig, config, overrides)


def run(cfg: HyperfitConfig, store=None, *, workers: int = 1, progress: bool = True):
    """Execute the study (finished runs are skipped). Returns ``(PlanResult, study_run_id)``."""
    from overtrain.executors.local import run_plan
    from overtrain.runs.store import Store

    store = store or Store()
    the_plan = plan(cfg)
    return run_plan(the_plan, store, workers=workers, progress=progress), the_plan.items[-1].run_id


# --- the analysis --------------------------------------------------------------------------------------


def run_analysis(cfg: HyperfitConfig, run) -> None:
    """The ``hyperfit`` run kind: base-model controls, the comparison table and the claims."""
    from overtrain.analysis.hyperfit import analyse
    from overtrain.training.hyperfit import torch_threads

    run.truncate("evals", 0)
    run.truncate("probes", 0)
    with torch_threads(cfg.threads):
        result = analyse(cfg, run.store, {n: config_hash(c) for n, c in run_configs(cfg).items()})
    for row in result["probes"]:
        run.log_probe(row)
    for row in result["evals"]:
        run.log_eval(row)
    claims = [r for r in result["evals"] if r.get("record") == "claim"]
    run.set_info(claims_passed=sum(c["verdict"] == "PASS" for c in claims), claims_total=len(claims),
                 temperature=result["temperature"])


def _parents(cfg: HyperfitConfig) -> list[tuple[str, str]]:
    return [(item.kind, item.run_id) for item in _plan(cfg).items if item.kind != "hyperfit"]


def _train_parents(cfg: HyperfitRunConfig) -> list[tuple[str, str]]:
    return base_parents(cfg.base)


def _report(store) -> list:
    from overtrain.studies.hyperfit_report import report_sections

    return report_sections(store)


class _Study:
    """Hyperfitting (Carlsson et al. 2025): over-fit a few sequences; greedy text gets less repetitive."""

    name = "hyperfit"
    config_cls = HyperfitConfig
    load_config = staticmethod(load_config)
    plan = staticmethod(plan)
    run = staticmethod(run)
    report = staticmethod(_report)


RUN_KINDS.register("hyperfit_train", RunKind(
    name="hyperfit_train", config_cls=HyperfitRunConfig, run=run_hyperfit,
    parents=_train_parents, total_steps=total_steps,
    help="hyperfit one model on a few sequences; evaluates generation, entropy and perplexity along the way"))
RUN_KINDS.register("hyperfit", RunKind(
    name="hyperfit", config_cls=HyperfitConfig, run=run_analysis, parents=_parents,
    help="the hyperfit study's analysis: base-model controls (nucleus, entropy-matched τ), claims"))
STUDIES.register("hyperfit", _Study(),
                 help="Hyperfitting (Carlsson et al. 2025): over-fit a few sequences; more than sharpening?")
