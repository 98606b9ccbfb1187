"""Part (a) of the lora-dd study: the rank-wise LoRA sweep on a frozen pre-trained MLP
(`docs/lora_dd.md`, part (a)).

**Base.** A 64-H-H-10 GELU MLP (H = `hidden`) pre-trained by full-batch Adam on scikit-learn's digits of
classes 0–4 (cross-entropy), then frozen, head included.

**Task B.** Digits of classes 5–9 relabelled 0–4: `n_train` training examples with a fraction
`label_noise` of labels replaced by another class (drawn once), the rest of classes 5–9 as a clean test
set. The model reads its first 5 outputs; the loss is the mean squared error against one-hot targets
(with cross-entropy the noise sharpness falls to ~0 once the data are fitted: `docs/lora_dd.md`).
Inputs are standardised with task B's training statistics.

**Adaptation.** For each (method, rank r, seed): LoRA on both hidden layers (scale s = α/√r by
default; ``r·(64 + H) + r·(H + H) = r·(64 + 3H)`` trainable parameters) trained to convergence and
measured by `overtrain.studies.lora_dd.sweep.adapt_cell` (the method's step rule, Adam at the rank's
learning rate from `sweep.tune_lr`, full batch). The nominal interpolation threshold in parameters is
n·5 (one equation per training example and output): ``r* = 5n / (64 + 3H)``; the measured one is the
smallest rank whose LoRA training loss reaches `fit_loss` (`analysis.fit_rank`).

**Per cell**: the training loss every `curve_every` steps; at the end, train/test loss (MSE summed over
the 5 outputs, mean over examples), test accuracy, the row-noise sharpness
(`overtrain.probes.lora_sharpness.row_noise_sharpness`, ρ = `sharpness_rho`, on the training loss)
and the top eigenvalue of the training loss's Hessian over the merged weights. Rows ``record='lr_tune'``
hold the learning-rate tuning.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from overtrain.data.regression import _digits
from overtrain.seed import derive_seed, numpy_rng
from overtrain.studies.lora_dd.config import CLASSES, INPUT_DIM, LoraMlpConfig
from overtrain.studies.lora_dd.sweep import adapt_cell, settings_of, tune_lr


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(a, dtype=torch.float32)


def task_data(cfg: LoraMlpConfig) -> dict[str, torch.Tensor]:
    """Pre-training data (classes 0–4) and task B (classes 5–9 → 0–4, noisy train, clean test)."""
    X, y = _digits()
    pre = y < 5
    Xp, yp = X[pre], y[pre]
    Xb, yb = X[~pre], y[~pre] - 5
    order = numpy_rng("lora-mlp-split", cfg.data_seed).permutation(len(yb))
    tr, te = order[: cfg.n_train], order[cfg.n_train :]
    labels = yb[tr].copy()
    rng = numpy_rng("lora-mlp-noise", cfg.data_seed)
    flip = rng.random(len(labels)) < cfg.label_noise
    labels[flip] = (labels[flip] + rng.integers(1, CLASSES, flip.sum())) % CLASSES
    mean_p, std_p = Xp.mean(0), Xp.std(0) + 1e-6
    mean_b, std_b = Xb[tr].mean(0), Xb[tr].std(0) + 1e-6
    eye = np.eye(CLASSES)
    return {
        "pre_x": _tensor((Xp - mean_p) / std_p),
        "pre_y": torch.as_tensor(yp),
        "x": _tensor((Xb[tr] - mean_b) / std_b),
        "y": _tensor(eye[labels]),
        "labels": torch.as_tensor(labels),
        "x_test": _tensor((Xb[te] - mean_b) / std_b),
        "y_test": _tensor(eye[yb[te]]),
        "labels_test": torch.as_tensor(yb[te]),
        "noisy": torch.as_tensor(flip),
    }


def pretrain_base(cfg: LoraMlpConfig, data: dict[str, torch.Tensor]) -> tuple[nn.Module, float]:
    """The frozen base MLP and its training accuracy on classes 0–4."""
    torch.manual_seed(derive_seed(cfg.data_seed, "lora-mlp-base"))
    H = cfg.hidden
    model = nn.Sequential(nn.Linear(INPUT_DIM, H), nn.GELU(), nn.Linear(H, H), nn.GELU(), nn.Linear(H, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(cfg.pretrain_steps):
        loss = nn.functional.cross_entropy(model(data["pre_x"]), data["pre_y"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        acc = float((model(data["pre_x"]).argmax(1) == data["pre_y"]).float().mean())
    for p in model.parameters():
        p.requires_grad_(False)
    return model, acc


def _mse(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared error summed over the 5 task outputs, mean over examples."""
    return (model(x)[:, :CLASSES] - y).pow(2).sum(1).mean()


def evaluator(data: dict[str, torch.Tensor]) -> Callable[[nn.Module], dict[str, float]]:
    """The final metrics of an adapted model on task B: train/test loss and accuracy."""
    x, y = data["x"], data["y"]

    def evaluate(model: nn.Module) -> dict[str, float]:
        test_out = model(data["x_test"])[:, :CLASSES]
        return {
            "train_loss": float(_mse(model, x, y)),
            "train_acc": float((model(x)[:, :CLASSES].argmax(1) == data["labels"]).float().mean()),
            "test_loss": float((test_out - data["y_test"]).pow(2).sum(1).mean()),
            "test_acc": float((test_out.argmax(1) == data["labels_test"]).float().mean()),
        }

    return evaluate


def run_lora_mlp(
    cfg: LoraMlpConfig, progress: Callable[[int, int], None] = lambda d, t: None
) -> tuple[list[dict], dict]:
    """Every cell of the sweep: rows ``record='cell'`` and ``record='train_curve'``, and run info."""
    started = time.perf_counter()
    data = task_data(cfg)
    base, base_acc = pretrain_base(cfg, data)
    x, y = data["x"], data["y"]

    def loss(model: nn.Module) -> torch.Tensor:
        return _mse(model, x, y)

    settings = settings_of(cfg, derive_seed(cfg.data_seed, "lora-mlp-sharpness"))
    evaluate, targets = evaluator(data), ["0", "2"]
    rows, lrs = [], {}
    cells = [(m, r, s) for m in cfg.methods for r in cfg.ranks for s in cfg.seeds]
    total = len(cells) + len(cfg.ranks)
    for i, rank in enumerate(cfg.ranks):
        lrs[rank], tuned = tune_lr(base, rank, cfg.lrs, targets, loss, settings, "lora-mlp")
        rows += [{"task": "mlp", **t} for t in tuned]
        progress(i + 1, total)
    for i, (method, rank, seed) in enumerate(cells):
        row, curve = adapt_cell(
            base, method, rank, seed, lrs[rank], targets, loss, evaluate, settings, "lora-mlp"
        )
        rows.append({"record": "cell", "task": "mlp", **row})
        rows += [
            {"record": "train_curve", "task": "mlp", "method": method.name, "rank": rank, "seed": seed, **c}
            for c in curve
        ]
        progress(len(cfg.ranks) + i + 1, total)
    info = {
        "mlp_wall_s": time.perf_counter() - started,
        "mlp_base_train_acc": base_acc,
        "mlp_n_train": int(len(data["y"])),
        "mlp_n_test": int(len(data["y_test"])),
        "mlp_noisy_labels": int(data["noisy"].sum()),
        "mlp_threshold_rank": cfg.threshold_rank(),
        "mlp_lr_per_rank": {str(r): lr for r, lr in lrs.items()},
    }
    return rows, info
