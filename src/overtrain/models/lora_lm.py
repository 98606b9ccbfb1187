"""LoRA on a tiny pre-trained language model: the rank-wise sweep of the lora-dd study, part (b)
(science.md §2).

**Base.** A model preset (`model`, default ``llama-micro``: d = 32, 2 layers) pre-trained from scratch
in the run by AdamW (lr 3e-3, weight decay 0.1, constant) on an HMM language (`overtrain.data.hmm`, seed
`data_seed`, V = `vocab_size`), batches of 32 x `seq_len` tokens, then frozen.

**Task.** A second HMM on the same vocabulary (seed `data_seed` + 1): a language the base has not seen.
`n_train` training sequences of `seq_len` tokens — few, so the adapter can memorise them — and
`n_test` fresh test sequences. The targets are samples of a stochastic process, so memorising the
training sequences is fitting noise: the language-model analogue of label noise. Its Bayes floor (the
HMM's exact mean next-token loss, `loss_floor`) is the best any model can do on the test set.

**Adaptation.** LoRA on `target_modules` of every layer (default the query and value projections,
``2·layers·2d`` trainable parameters per rank at α = r), trained and measured by
`overtrain.models.lora_sweep.adapt_cell`: the method's step rule, Adam at `lr`, full batch (all
training sequences), `steps` steps. Nominal threshold rank: parameters = training targets,
``r* = n_train·(seq_len − 1) / params_per_rank``; with cross-entropy on stochastic targets this only
says where the adapter *can* start memorising, not where it does.

**Per cell**: training loss every `curve_every` steps; at the end, train/test loss (mean next-token
cross-entropy, nats/token), top-1 next-token accuracy on both, the row-noise sharpness of the training
loss and the top Hessian eigenvalue over the LoRA factors.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from pydantic import Field, field_validator
from torch import nn

from overtrain.config import BaseConfig, Registered, Seeds
from overtrain.errors import ConfigError
from overtrain.models.lora_sweep import (
    SweepSettings,
    adapt_cell,
    check_lora_methods,
    check_ranks,
    default_lora_methods,
)
from overtrain.models.presets import ModelConfig, build_model
from overtrain.registry import FINETUNE_METHODS
from overtrain.seed import derive_seed

PRETRAIN_BATCH = 32


class LoraLmConfig(BaseConfig):
    """The rank-wise LoRA sweep on a tiny pre-trained LM (part (b) of ``overtrain lora-dd``)."""

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

    ranks: list[int] = [1, 2, 4, 8, 16, 32]
    """LoRA ranks r (α = r)."""

    methods: list[Registered(FINETUNE_METHODS)] = Field(default_factory=default_lora_methods)
    """Fine-tuning methods with their settings; their rank, alpha and target modules are set per cell."""

    seeds: Seeds = [0, 1]
    """Seeds of the adapter initialisation and the methods' noise (the base and the data are fixed)."""

    steps: int = Field(300, ge=1)
    """Full-batch Adam steps per cell."""

    lr: float = Field(1e-2, gt=0)
    """Adam learning rate."""

    curve_every: int = Field(10, ge=1)
    """Steps between training-loss records."""

    sharpness_rho: float = Field(0.05, ge=0)
    """ρ of the row-noise sharpness proxy."""

    sharpness_draws: int = Field(10, ge=1)
    """Noise draws of the sharpness proxy."""

    hessian_iterations: int = Field(10, ge=1)
    """Lanczos steps (Hessian-vector products) for the top Hessian eigenvalue."""

    data_seed: int = Field(0, ge=0)
    """Seed of the base's HMM (the task's is this + 1) and of the base's initialisation."""

    @field_validator("ranks")
    @classmethod
    def _ranks(cls, ranks: list[int]) -> list[int]:
        return check_ranks(ranks)

    @field_validator("methods")
    @classmethod
    def _methods(cls, methods: list) -> list:
        return check_lora_methods(methods)

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, targets: list[str]) -> list[str]:
        if not targets:
            raise ValueError("target_modules must name at least one module")
        return targets


def _sources(cfg: LoraLmConfig):
    from overtrain.data.hmm import HMMConfig

    return (HMMConfig(seed=cfg.data_seed, vocab_size=cfg.vocab_size).build(),
            HMMConfig(seed=cfg.data_seed + 1, vocab_size=cfg.vocab_size).build())


def pretrain_base(cfg: LoraLmConfig, source) -> tuple[nn.Module, float]:
    """The frozen base LM and its mean training loss over the last 10 steps (nats/token)."""
    torch.manual_seed(derive_seed(cfg.data_seed, "lora-lm-base"))
    model = build_model(cfg.model, vocab_size=cfg.vocab_size, max_positions=cfg.seq_len)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    last = []
    model.train()
    for i in range(cfg.pretrain_steps):
        x = source.batch("train", i, PRETRAIN_BATCH, cfg.seq_len)
        loss = model(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        last = (last + [loss.item()])[-10:]
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), sum(last) / len(last)


def _loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(input_ids=x, labels=x, use_cache=False).loss


def _top1(model: nn.Module, x: torch.Tensor) -> float:
    logits = model(input_ids=x, use_cache=False).logits[:, :-1]
    return float((logits.argmax(-1) == x[:, 1:]).float().mean())


def params_per_rank(base: nn.Module, targets: list[str]) -> int:
    """Trainable LoRA parameters per unit rank: Σ over adapted linears of (d_in + d_out)."""
    return sum(m.in_features + m.out_features for name, m in base.named_modules()
               if isinstance(m, nn.Linear) and name.split(".")[-1] in targets)


def run_lora_lm(cfg: LoraLmConfig,
                progress: Callable[[int, int], None] = lambda d, t: None) -> tuple[list[dict], dict]:
    """Every cell of the sweep: rows ``record='cell'`` and ``record='train_curve'`` (``task='lm'``), and
    run info (``lm_*``)."""
    started = time.perf_counter()
    pre, task = _sources(cfg)
    base, base_loss = pretrain_base(cfg, pre)
    x, x_test = task.batch("train", 0, cfg.n_train, cfg.seq_len), task.batch("val", 0, cfg.n_test, cfg.seq_len)
    per_rank = params_per_rank(base, cfg.target_modules)
    if per_rank == 0:
        names = sorted({n.split(".")[-1] for n, m in base.named_modules() if isinstance(m, nn.Linear)})
        raise ConfigError(f"lm.target_modules {cfg.target_modules} match no linear layer of {cfg.model.preset}; "
                         f"choose from {names}")
    with torch.no_grad():
        base_test = float(_loss(base, x_test))

    def evaluate(model: nn.Module) -> dict[str, float]:
        return {"train_loss": float(_loss(model, x)), "train_acc": _top1(model, x),
                "test_loss": float(_loss(model, x_test)), "test_acc": _top1(model, x_test)}

    settings = SweepSettings(cfg.steps, cfg.lr, cfg.curve_every, cfg.sharpness_rho, cfg.sharpness_draws,
                             cfg.hessian_iterations, derive_seed(cfg.data_seed, "lora-lm-sharpness"))
    cells = [(m, r, s) for m in cfg.methods for r in cfg.ranks for s in cfg.seeds]
    rows: list[dict[str, Any]] = []
    for i, (method, rank, seed) in enumerate(cells):
        row, curve = adapt_cell(base, method, rank, seed, cfg.target_modules, lambda m: _loss(m, x), evaluate,
                                settings, "lora-lm")
        rows.append({"record": "cell", "task": "lm", **row})
        rows += [{"record": "train_curve", "task": "lm", "method": method.name, "rank": rank, "seed": seed, **c}
                 for c in curve]
        progress(i + 1, len(cells))
    targets = cfg.n_train * (cfg.seq_len - 1)
    info = {"lm_wall_s": time.perf_counter() - started, "lm_base_pretrain_loss": base_loss,
            "lm_pretrain_floor": pre.loss_floor(cfg.seq_len), "lm_task_floor": task.loss_floor(cfg.seq_len),
            "lm_base_task_test_loss": base_test, "lm_params_per_rank": per_rank, "lm_train_targets": targets,
            "lm_threshold_rank": targets / per_rank}
    return rows, info
