"""Two-layer ReLU networks on digits trained to interpolation: model-wise and epoch-wise double descent
(Nakkiran et al. 2020; Belkin et al. 2019; Liu & Flanigan 2023).

A network with one hidden layer of width H,

    f(x) = W2 · relu(W1 x + b1) + b2,      W1: H x d,  b1: H,  W2: k x H,  b2: k,

has ``P(H) = (d + 1)·H + (H + 1)·k`` parameters (d = 64 pixels, k = 10 classes for digits). It is trained
full-batch with Adam (no weight decay, no early stopping) on n = 500 digits whose training labels carry
20% label noise (Nakkiran et al.: a corrupted label is a uniformly drawn *incorrect* class, drawn once) to
minimise either the mean squared error against one-hot targets, averaged over examples and classes
(``loss="mse"``, Belkin et al.'s choice, the default), or the mean cross-entropy (``loss="ce"``, nats).

- **Model-wise** (Nakkiran et al.; Belkin et al.): the test error as a function of H first falls, then
  rises to a peak near the first width that *interpolates* the noisy training set (the interpolation
  threshold), then falls again ("second descent"). For the squared loss, interpolating means fitting the
  n·k targets (train loss ≈ 0; Belkin's threshold P ≈ n·k); for cross-entropy, fitting the n labels
  (train error 0; the loss itself never reaches 0).
- **Epoch-wise** (Nakkiran et al.): for a wide network the test error over training steps falls to a first
  minimum (the clean signal is learned first), rises while the network memorises the noisy labels, and may
  fall again.
- **No interpolation, no peak** (Liu & Flanigan): the peak appears only when the optimiser reaches a low
  enough training loss; the same sweep read at an early step, before the noise is fitted, has none.

All widths and seeds of a sweep train at once as one model (`network`: exactly as if separately). The
claims are `analysis`'; the measured curves at the defaults are in docs/double_descent.md.

Units: losses in nats (ce) or squared one-hot units (mse); errors are fractions in [0, 1] (claims speak of
"points" = 0.01 of error); steps are Adam updates (one full-batch step = one epoch). Rows: ``record =
'curve'`` per (part, seed, width, step) and ``'sweep'`` per part (n, k and the label-noise rate realised).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from overtrain.data.regression import RegressionData
from overtrain.errors import RunFailed
from overtrain.studies.mlp_double_descent.config import CLAIM_SETTINGS, MLPDoubleDescentConfig, MLPSweepConfig
from overtrain.studies.mlp_double_descent.network import (
    Backprop,
    BatchedMLP,
    init_mlp,
    n_params,
    per_model_loss,
)

METRICS = ("train_loss", "train_error", "train_error_clean", "memorised", "test_loss", "test_error")
"""Per (seed, width, step) measurements of a sweep, in the order of `MLPSweepResult.rows`."""


@dataclass
class MLPSweepResult:
    """Measurements of `run_mlp_sweep`: arrays indexed [seed, width, measured step].

    Attributes:
        study: ``"modelwise"`` or ``"epochwise"``: which claims `analysis.sweep_claims` checks.
        seeds: [S] seeds.
        widths: [M] hidden widths, increasing.
        n_params: [M] parameters per network, (d + 1)·H + (H + 1)·k.
        steps: [C] measured steps, from 0 to the last.
        train_loss: [S, M, C] training loss on the (noisy) training labels (the objective).
        train_error: [S, M, C] fraction of training examples misclassified w.r.t. the noisy labels.
        train_error_clean: [S, M, C] the same w.r.t. the true classes of the training images.
        memorised: [S, M, C] fraction of the label-corrupted examples predicted as their corrupted label
            (NaN without label noise).
        test_loss: [S, M, C] loss on the clean test set.
        test_error: [S, M, C] fraction of test examples misclassified.
        loss: the training loss (``"mse"`` or ``"ce"``).
        n_train, classes: n and k (for Belkin's threshold n·k).
        label_noise: fraction of training labels the noise actually changed.
        interpolation_error, interpolation_loss, peak_tolerance, min_rise, early_step, early_memorised:
            the claim settings of the config (`CLAIM_SETTINGS`).
        wall_s: wall time of the run in seconds (None when rebuilt from records).
    """

    study: str
    seeds: np.ndarray
    widths: np.ndarray
    n_params: np.ndarray
    steps: np.ndarray
    train_loss: np.ndarray
    train_error: np.ndarray
    train_error_clean: np.ndarray
    memorised: np.ndarray
    test_loss: np.ndarray
    test_error: np.ndarray
    loss: str = "mse"
    n_train: int = 500
    classes: int = 10
    label_noise: float = float("nan")
    interpolation_error: float = 0.0
    interpolation_loss: float = 0.01
    peak_tolerance: float = 0.3
    min_rise: float = 0.02
    early_step: int | None = None
    early_memorised: float = 0.5
    wall_s: float | None = field(default=None, compare=False)

    def mean(self, metric: str) -> np.ndarray:
        """[M, C] seed mean of one of `METRICS` (NaN where every seed is NaN)."""
        if metric not in METRICS:
            raise KeyError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
        values = getattr(self, metric)
        out = np.full(values.shape[1:], np.nan)
        seen = ~np.isnan(values).all(axis=0)
        out[seen] = np.nanmean(values[:, seen], axis=0)
        return out

    def interpolating(self) -> np.ndarray:
        """[M, C] whether each width interpolates the noisy training set at each measured step (seed means):
        squared loss ≤ `interpolation_loss`/k (fraction of the zero predictor's loss 1/k), or for
        cross-entropy train error ≤ `interpolation_error`."""
        if self.loss == "mse":
            return self.mean("train_loss") <= self.interpolation_loss / self.classes
        return self.mean("train_error") <= self.interpolation_error + 1e-12

    def rows(self) -> list[dict[str, Any]]:
        """Long rows for ``evals.jsonl``, one per (seed, width, step): seed, width, n_params, step, loss_kind
        (``mse`` or ``ce``), and every one of `METRICS` (None where undefined)."""
        out = []
        for s, seed in enumerate(self.seeds.tolist()):
            for m, width in enumerate(self.widths.tolist()):
                for c, step in enumerate(self.steps.tolist()):
                    row: dict[str, Any] = {
                        "seed": seed,
                        "width": width,
                        "n_params": int(self.n_params[m]),
                        "step": step,
                        # not "loss": other runs' evals hold a numeric loss in that column
                        "loss_kind": self.loss,
                    }
                    for name in METRICS:
                        row[name] = _num(getattr(self, name)[s, m, c])
                    out.append(row)
        return out

    @classmethod
    def from_rows(
        cls, rows: Sequence[Mapping[str, Any]], study: str = "modelwise", **settings: Any
    ) -> MLPSweepResult:
        """Rebuild a result from `rows()` (e.g. read back from a run directory).

        Args:
            rows: rows of `rows()`; others (without ``width`` and ``test_error``) are ignored.
            study: which claims the result checks.
            settings: n_train, classes, label_noise and any of `CLAIM_SETTINGS` (else the defaults).

        A (seed, width, step) cell without a row is NaN.
        """
        rows = [r for r in rows if "width" in r and "test_error" in r]
        if not rows:
            raise ValueError("no MLP sweep rows")
        seeds = np.array(
            list(dict.fromkeys(int(r["seed"]) for r in rows))
        )  # as run: the seed mean sums in this order
        widths = np.array(sorted({int(r["width"]) for r in rows}))
        steps = np.array(sorted({int(r["step"]) for r in rows}))
        si = {v: i for i, v in enumerate(seeds.tolist())}
        wi = {v: i for i, v in enumerate(widths.tolist())}
        ci = {v: i for i, v in enumerate(steps.tolist())}
        arrays = {name: np.full((len(seeds), len(widths), len(steps)), np.nan) for name in METRICS}
        params = np.zeros(len(widths), dtype=np.int64)
        for r in rows:
            s, m, c = si[int(r["seed"])], wi[int(r["width"])], ci[int(r["step"])]
            params[m] = int(r["n_params"])
            for name in METRICS:
                if r.get(name) is not None:
                    arrays[name][s, m, c] = r[name]
        return cls(
            study,
            seeds,
            widths,
            params,
            steps,
            **arrays,
            loss=str(rows[0].get("loss_kind", "mse")),
            **settings,
        )


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def run_mlp_sweep(cfg: MLPSweepConfig, progress: Callable[[int, int], None] | None = None) -> MLPSweepResult:
    """Train every (seed, width) network of `cfg` together, measuring them every `eval_every` steps.

    Args:
        cfg: the sweep.
        progress: ``progress(steps_done, total_steps)`` after each measurement.

    Returns:
        The measurements (`MLPSweepResult`), with ``wall_s`` set.

    Raises:
        RunFailed: a training loss became non-finite.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _tensors(data: RegressionData, clean: np.ndarray, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {
        "xt": torch.from_numpy(data.X.T.copy()).to(dtype),
        "xt_test": torch.from_numpy(data.X_test.T.copy()).to(dtype),
        "y": torch.from_numpy(data.labels).long(),
        "y_clean": torch.from_numpy(clean).long(),
        "y_test": torch.from_numpy(data.labels_test).long(),
        "noisy": torch.from_numpy(data.noisy),
    }


def _measure(model: BatchedMLP, t: dict[str, torch.Tensor], kind: str) -> dict[str, np.ndarray]:
    """[S, M] metrics of every model (no gradients)."""
    with torch.no_grad():
        logits = model.logits(t["xt"])  # [M, S, k, n]
        pred = logits.argmax(2)
        noisy = t["noisy"]
        memorised = (
            (pred[..., noisy] == t["y"][noisy]).double().mean(-1)
            if bool(noisy.any())
            else torch.full(pred.shape[:2], float("nan"))
        )
        test_logits = model.logits(t["xt_test"])
        out = {
            "train_loss": per_model_loss(logits, t["y"], kind),
            "train_error": (pred != t["y"]).double().mean(-1),
            "train_error_clean": (pred != t["y_clean"]).double().mean(-1),
            "memorised": memorised,
            "test_loss": per_model_loss(test_logits, t["y_test"], kind),
            "test_error": (test_logits.argmax(2) != t["y_test"]).double().mean(-1),
        }
        return {name: value.double().T.numpy() for name, value in out.items()}


def _run(cfg: MLPSweepConfig, progress: Callable[[int, int], None] | None) -> MLPSweepResult:
    t0 = time.perf_counter()
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    data = cfg.data.build()
    # The true classes of the training images: the same split without label noise (the split and the
    # noise draw use separate streams, so only the labels differ).
    clean = cfg.data.model_copy(update={"label_noise": 0.0}).build().labels
    t = _tensors(data, clean, dtype)
    model = init_mlp(cfg.seeds, cfg.widths, data.d, data.classes, cfg.init_scale, dtype)
    backprop = Backprop(model, torch.from_numpy(data.X).to(dtype), t["y"], cfg.loss)
    # Adam's update is elementwise, so one optimiser over the concatenated tensors is one Adam per model.
    opt = torch.optim.Adam(model.params, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    eval_steps = cfg.eval_steps()
    S, M, C = len(cfg.seeds), len(cfg.widths), len(eval_steps)
    arrays = {name: np.empty((S, M, C)) for name in METRICS}

    def record(c: int, step: int) -> None:
        for name, value in _measure(model, t, cfg.loss).items():
            arrays[name][:, :, c] = value
        if not np.isfinite(arrays["train_loss"][:, :, c]).all():
            raise RunFailed(f"training loss is not finite at step {step}: lower the learning rate")
        if progress is not None:
            progress(step, cfg.steps)

    record(0, 0)
    c = 1
    with torch.no_grad():
        for step in range(1, cfg.steps + 1):
            backprop()  # p.grad = ∂ Σ_models loss / ∂p: each model's parameters get their own gradient
            opt.step()
            if c < C and step == eval_steps[c]:
                record(c, step)
                c += 1

    return MLPSweepResult(
        study=cfg.study,
        seeds=np.array(cfg.seeds),
        widths=np.array(cfg.widths),
        n_params=np.array([n_params(w, data.d, data.classes) for w in cfg.widths]),
        steps=np.array(eval_steps),
        **arrays,
        loss=cfg.loss,
        n_train=data.n,
        classes=data.classes,
        label_noise=float(data.noisy.mean()),
        **{name: getattr(cfg, name) for name in CLAIM_SETTINGS},
        wall_s=time.perf_counter() - t0,
    )


def compute(cfg: MLPDoubleDescentConfig, progress=lambda done, total: None) -> tuple[list[dict], dict]:
    """The study's run: the model-wise and the epoch-wise sweeps (those configured), each as ``curve`` rows
    (`MLPSweepResult.rows`, with the part's name as ``study``) and one ``sweep`` row (n, k and the rate of
    labels the noise changed, which the claims quote)."""
    parts = [(name, sub) for name, sub in (("modelwise", cfg.modelwise), ("epochwise", cfg.epochwise)) if sub]
    rows, info = [], {}
    for i, (name, sub) in enumerate(parts):
        result = run_mlp_sweep(
            sub, progress=lambda done, total, i=i: progress(i * total + done, len(parts) * total)
        )
        rows += [{"record": "curve", "study": name, **r} for r in result.rows()]
        rows.append(
            {
                "record": "sweep",
                "study": name,
                "n_train": result.n_train,
                "classes": result.classes,
                "label_noise": result.label_noise,
            }
        )
        info[f"{name}_wall_s"] = result.wall_s
    return rows, {"wall_s": sum(info.values()), **info}
