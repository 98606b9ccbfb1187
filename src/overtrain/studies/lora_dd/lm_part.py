"""Part (b) of the lora-dd study: the rank-wise LoRA sweep on a tiny pre-trained language model
(`docs/lora_dd.md`, part (b)).

**Base.** A model preset (`model`, default ``llama-micro``: d = 32, 2 layers) pre-trained from scratch
in the run by AdamW (lr 3e-3, weight decay 0.1, constant) on an HMM language (`overtrain.data.hmm`, seed
`data_seed`, V = `vocab_size`), batches of 32 x `seq_len` tokens, then frozen.

**Task.** A second HMM on the same vocabulary (seed `data_seed` + 1): a language the base has not seen.
`n_train` training sequences of `seq_len` tokens — few, so the adapter can memorise them — and
`n_test` fresh test sequences. The targets are samples of a stochastic process, so memorising the
training sequences is fitting noise: the language-model analogue of label noise. Its Bayes floor (the
HMM's exact mean next-token loss, `loss_floor`) is the best any model can do on the test set.

**Adaptation.** LoRA on `target_modules` of every layer (default the query and value projections,
``2·layers·2d`` trainable parameters per rank), scale s = α/√r by default, trained to convergence and
measured by `overtrain.studies.lora_dd.sweep.adapt_cell`: the method's step rule, Adam at the rank's
learning rate (`sweep.tune_lr`), full batch (all training sequences). Nominal threshold rank: parameters = training targets,
``r* = n_train·(seq_len − 1) / params_per_rank``; with cross-entropy on stochastic targets this only
says where the adapter *can* start memorising, not where it does.

**Per cell**: training loss every `curve_every` steps; at the end, train/test loss (mean next-token
cross-entropy, nats/token), top-1 next-token accuracy on both, the row-noise sharpness of the training
loss and the top eigenvalue of its Hessian over the merged weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from overtrain.data.hmm import HMMConfig
from overtrain.errors import ConfigError
from overtrain.models.presets import build_model
from overtrain.seed import derive_seed
from overtrain.studies.lora_dd.config import LoraLmConfig
from overtrain.studies.lora_dd.sweep import adapt_cell, settings_of, tune_lr

PRETRAIN_BATCH = 32
"""Sequences per pre-training batch."""


def _sources(cfg: LoraLmConfig):
    return (
        HMMConfig(seed=cfg.data_seed, vocab_size=cfg.vocab_size).build(),
        HMMConfig(seed=cfg.data_seed + 1, vocab_size=cfg.vocab_size).build(),
    )


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
    return sum(
        m.in_features + m.out_features
        for name, m in base.named_modules()
        if isinstance(m, nn.Linear) and name.split(".")[-1] in targets
    )


def run_lora_lm(
    cfg: LoraLmConfig, progress: Callable[[int, int], None] = lambda d, t: None
) -> tuple[list[dict], dict]:
    """Every cell of the sweep: rows ``record='cell'`` and ``record='train_curve'`` (``task='lm'``), and
    run info (``lm_*``)."""
    started = time.perf_counter()
    pre, task = _sources(cfg)
    base, base_loss = pretrain_base(cfg, pre)
    x, x_test = (
        task.batch("train", 0, cfg.n_train, cfg.seq_len),
        task.batch("val", 0, cfg.n_test, cfg.seq_len),
    )
    per_rank = params_per_rank(base, cfg.target_modules)
    if per_rank == 0:
        names = sorted({n.split(".")[-1] for n, m in base.named_modules() if isinstance(m, nn.Linear)})
        raise ConfigError(
            f"lm.target_modules {cfg.target_modules} match no linear layer of {cfg.model.preset}; "
            f"choose from {names}"
        )
    with torch.no_grad():
        base_test = float(_loss(base, x_test))

    def evaluate(model: nn.Module) -> dict[str, float]:
        return {
            "train_loss": float(_loss(model, x)),
            "train_acc": _top1(model, x),
            "test_loss": float(_loss(model, x_test)),
            "test_acc": _top1(model, x_test),
        }

    def loss(model: nn.Module) -> torch.Tensor:
        return _loss(model, x)

    settings = settings_of(cfg, derive_seed(cfg.data_seed, "lora-lm-sharpness"))
    cells = [(m, r, s) for m in cfg.methods for r in cfg.ranks for s in cfg.seeds]
    total, rows, lrs = len(cells) + len(cfg.ranks), [], {}
    for i, rank in enumerate(cfg.ranks):
        lrs[rank], tuned = tune_lr(base, rank, cfg.lrs, cfg.target_modules, loss, settings, "lora-lm")
        rows += [{"task": "lm", **t} for t in tuned]
        progress(i + 1, total)
    for i, (method, rank, seed) in enumerate(cells):
        row, curve = adapt_cell(
            base, method, rank, seed, lrs[rank], cfg.target_modules, loss, evaluate, settings, "lora-lm"
        )
        rows.append({"record": "cell", "task": "lm", **row})
        rows += [
            {"record": "train_curve", "task": "lm", "method": method.name, "rank": rank, "seed": seed, **c}
            for c in curve
        ]
        progress(len(cfg.ranks) + i + 1, total)
    targets = cfg.n_train * (cfg.seq_len - 1)
    info = {
        "lm_wall_s": time.perf_counter() - started,
        "lm_base_pretrain_loss": base_loss,
        "lm_pretrain_floor": pre.loss_floor(cfg.seq_len),
        "lm_task_floor": task.loss_floor(cfg.seq_len),
        "lm_base_task_test_loss": base_test,
        "lm_params_per_rank": per_rank,
        "lm_train_targets": targets,
        "lm_threshold_rank": targets / per_rank,
        "lm_lr_per_rank": {str(r): lr for r, lr in lrs.items()},
    }
    return rows, info
