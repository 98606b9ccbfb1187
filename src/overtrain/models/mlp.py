"""Two-layer ReLU networks on digits trained to interpolation: model-wise and epoch-wise double descent.

Science (science.md §7 tiny reproductions 3 and 4, §8, §5): a network with one hidden layer of width H,

    f(x) = W2 · relu(W1 x + b1) + b2,      W1: H x d,  b1: H,  W2: k x H,  b2: k,

has ``P(H) = (d + 1)·H + (H + 1)·k`` parameters (d = 64 pixels, k = 10 classes for digits). It is trained
full-batch with Adam (no weight decay, no early stopping) on n = 500 digits whose training labels carry
20% label noise (science.md §0: a corrupted label is a uniformly drawn *incorrect* class, drawn once) to
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

Measured at the defaults (one core; numbers also in tests/models/test_mlp.py):

- model-wise (squared loss, 3 seeds, 4,000 steps, ~36 s): test error 24.0% at H=24 (classical minimum),
  a peak of 38.2% at H=80 (P = 6,010 = 1.2·n·k), the first width with train MSE ≤ 1% of 1/k; then
  28.6% at H=128 and 22.4% at H=256. Zero train *error* comes earlier (H=48, P(peak)/P = 1.66). At step
  100 (nothing memorised yet) test error falls monotonically with width (best ~8%). With cross-entropy
  (``loss=ce``) the wide nets fit every label from H=12 on and the test error just falls with width
  (51% → 17%): the peak shows in the test *loss* (3.3 nats at H=8 vs 1.5 at H=4 and 1.05 at H=256), not
  in the error.
- epoch-wise (H=512, lr 1e-4, 10,000 steps, 1 seed, ~17 s): 8.0% at step 400, rising to 19.4% by step
  2,850 as the corrupted labels are memorised, 19.3% at the end: no second descent (nor at H=4096).

**Batching.** All widths and all seeds of a sweep are trained at once as one model. The hidden units of
every width are concatenated into one hidden layer of ``ΣH`` units (``W1`` is ``[S, ΣH, d]`` over S seeds),
and the readout is block-structured: width m's logits use only its own ``H_m`` hidden units
(``W2`` is ``[S, k, ΣH]``, split into per-width blocks ``[S, k, H_m]`` and applied by one ``torch.bmm``
per width). The objective is the *sum* of the per-(seed, width) losses. Each parameter belongs to exactly
one model, so its gradient is the gradient of that model's own loss, and Adam is elementwise (its moment
estimates and its update of a parameter depend only on that parameter's gradients and the shared step
count): training the concatenated model is *exactly* training every (seed, width) separately with Adam
(tests/models/test_mlp.py checks it in float64). Each model's initialisation is drawn from its own
``(seed, width)`` stream, so a width starts from the same weights whatever else is in the sweep.
The gradients are written by hand into preallocated buffers (`Backprop`; ~1.3x faster than autograd,
which allocates fresh [S, ΣH, n] activations every step). The cost of a step is the first layer's two
GEMMs, proportional to S·ΣH whatever the batching: measured, the batched sweep is 1.1x faster than a loop
over widths (seeds batched) and 1.9x faster than a loop over every (seed, width).

Units: losses in nats (ce) or squared one-hot units (mse); errors are fractions in [0, 1] (claims speak of
"points" = 0.01 of error); steps are Adam updates (one full-batch step = one epoch).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from overtrain.analysis.claims import Claim, check
from overtrain.config import BaseConfig, Count, NotInId
from overtrain.data.regression import DigitsConfig, RegressionData
from overtrain.errors import RunFailed
from overtrain.seed import torch_generator

METRICS = ("train_loss", "train_error", "train_error_clean", "memorised", "test_loss", "test_error")
"""Per (seed, width, step) measurements of a sweep, in the order of `MLPSweepResult.rows`."""

DEFAULT_WIDTHS = [2, 4, 8, 12, 16, 24, 32, 40, 48, 56, 64, 80, 96, 128, 192, 256]
"""Hidden widths of the model-wise sweep: from far below to far above the squared-loss threshold
(P = n·k = 5,000 parameters at H ≈ 67), with steps of 8-16 units around it so that a ±30% window in
parameters holds more than one grid point."""

DEFAULT_DATA: dict[str, Any] = {"n_train": 500, "label_noise": 0.2}
"""The study's data defaults (science.md §7: n = 500, 20% label noise); a partial ``data`` mapping in a
config is merged over them."""

CLAIM_SETTINGS = (
    "interpolation_error",
    "interpolation_loss",
    "peak_tolerance",
    "min_rise",
    "early_step",
    "early_memorised",
)
"""Config fields that the claims read; a result carries them (and `from_rows` takes them)."""


class MLPSweepConfig(BaseConfig):
    """A sweep of two-layer ReLU networks over hidden widths (and seeds), all trained together.

    The defaults are the model-wise study (science.md §7 tiny reproduction 3, with Belkin's squared loss);
    `MLPEpochwiseConfig` holds the epoch-wise one (reproduction 4).
    """

    schema_version: int = 1
    """Config schema version (older configs are upgraded on load)."""

    study: Literal["modelwise", "epochwise"] = "modelwise"
    """Which claims `MLPSweepResult.claims` checks: double descent over widths, or over steps (of the
    widest width)."""

    data: DigitsConfig = DigitsConfig(**DEFAULT_DATA)
    """Digits split and label noise (the noisy labels are the training targets; test labels are clean).
    Keys left out keep this study's defaults (500 training images, label noise 0.2), not DigitsConfig's."""

    widths: list[int] = list(DEFAULT_WIDTHS)
    """Hidden widths H, strictly increasing."""

    steps: Count = 4000
    """Full-batch Adam steps (= epochs) for every model."""

    lr: float = Field(1e-3, gt=0, le=1)
    """Adam learning rate (constant; betas 0.9, 0.999, eps 1e-8, no weight decay)."""

    loss: Literal["mse", "ce"] = "mse"
    """Training loss: mean squared error against one-hot targets (averaged over examples and classes), or
    mean cross-entropy (nats). Squared loss by default: with cross-entropy the test error rises to the
    threshold but does not come down again within 4,000 steps (no second descent); see the module tests."""

    eval_every: int = Field(50, ge=1)
    """Steps between measurements (step 0 and the last step are always measured)."""

    seeds: list[int] = [0, 1, 2]
    """Initialisation seeds (the data and its label noise are fixed by `data.seed`, science.md §0)."""

    init_scale: float = Field(1.0, gt=0, le=100)
    """Multiplier on PyTorch's default ``nn.Linear`` init: every weight and bias of a layer with fan-in f
    is drawn from U(-s/√f, s/√f)."""

    dtype: Literal["float32", "float64"] = "float32"
    """Floating-point type of training (float64 for exactness tests: ~2x slower)."""

    interpolation_error: float = Field(0.0, ge=0, lt=1)
    """Cross-entropy runs: a width *interpolates* when its seed-mean training error on the noisy labels
    is ≤ this (fraction). 0: every training label fitted (the wide models reach exactly 0)."""

    interpolation_loss: float = Field(0.01, gt=0, lt=1)
    """Squared-loss runs: a width *interpolates* when its seed-mean training loss is ≤ this fraction of
    the loss of the zero predictor (1/k = 0.1 for one-hot targets): 0.01 means the targets are fitted to
    ~3% rms. (Zero training *error* comes much earlier, at ~0.7·n·k parameters; the claim reports both.)"""

    peak_tolerance: float = Field(0.3, gt=0)
    """Model-wise claim: the peak's parameter count must lie within this relative distance of the
    threshold width's parameter count (science.md §7: ±30%)."""

    min_rise: float = Field(0.02, gt=0, lt=1)
    """Smallest rise of the test error (fraction: 0.02 = 2 points) that counts as a peak, model-wise (over
    the classical minimum) and epoch-wise (over the first minimum); also the drop a second descent needs."""

    early_step: int | None = Field(None, ge=0)
    """Measured step at which the model-wise curve is read for the "no interpolation, no peak" check.
    None: the last measured step at which no width has memorised more than `early_memorised` of the
    label-corrupted examples."""

    early_memorised: float = Field(0.5, gt=0, lt=1)
    """See `early_step`: "far from interpolation" means every width still gets most corrupted labels
    wrong (at the defaults this is step 100 of 4,000)."""

    threads: int = NotInId(1, ge=1, le=256)
    """torch intra-op threads while the run executes (restored afterwards). The matrices are small: on 2
    shared cores one thread is fastest."""

    @field_validator("data", mode="before")
    @classmethod
    def _data(cls, value: Any) -> Any:
        # `data: {seed: 4}` must not silently drop the label noise back to DigitsConfig's default of 0
        return {**DEFAULT_DATA, **value} if isinstance(value, Mapping) else value

    @field_validator("widths")
    @classmethod
    def _widths(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("give at least one width")
        if any(w < 1 for w in value):
            raise ValueError("widths must be >= 1")
        if any(b <= a for a, b in zip(value, value[1:])):
            raise ValueError("widths must be strictly increasing")
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("give at least one seed")
        if len(set(value)) != len(value):
            raise ValueError("seeds must be distinct")
        if any(s < 0 for s in value):
            raise ValueError("seeds must be >= 0")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MLPSweepConfig:
        if self.eval_every > self.steps:
            raise ValueError(f"eval_every ({self.eval_every}) exceeds steps ({self.steps})")
        if self.early_step is not None and self.early_step not in self.eval_steps():
            raise ValueError(f"early_step {self.early_step} is not a measured step (multiples of eval_every)")
        return self

    def eval_steps(self) -> list[int]:
        """Measured steps: 0, eval_every, 2·eval_every, ..., and `steps`."""
        out = list(range(0, self.steps + 1, self.eval_every))
        return out if out[-1] == self.steps else [*out, self.steps]


class MLPEpochwiseConfig(MLPSweepConfig):
    """The epoch-wise study (science.md §7 tiny reproduction 4): one wide network, many steps.

    Adam at lr 1e-4 rather than 1e-3: at 1e-3 the width-512 network fits the clean labels and starts
    memorising within the first 50 steps (its first minimum is the first measurement); at 1e-4 the
    descent, the minimum (~step 400) and the memorisation (to ~step 2,000) are resolved by 40 measurements.
    """

    study: Literal["modelwise", "epochwise"] = "epochwise"
    """Which claims `MLPSweepResult.claims` checks (here: over steps, for the widest width)."""

    widths: list[int] = [512]
    """Hidden widths H, strictly increasing (the claims read the widest)."""

    steps: Count = 10_000
    """Full-batch Adam steps (= epochs)."""

    lr: float = Field(1e-4, gt=0, le=1)
    """Adam learning rate (constant; betas 0.9, 0.999, eps 1e-8, no weight decay)."""

    seeds: list[int] = [0]
    """Initialisation seeds (one: the rise is ~11 points, far above seed noise)."""


def n_params(width: int, d: int = 64, k: int = 10) -> int:
    """Parameters of a d -> width -> k network with biases: (d + 1)·width + (width + 1)·k."""
    return (d + 1) * width + (width + 1) * k


# --- the batched model ------------------------------------------------------------------------------


@dataclass
class BatchedMLP:
    """Every (seed, width) network of a sweep as one set of tensors (see the module docstring).

    Shapes use S seeds, M widths, ΣH = sum of the widths, d inputs, k classes, n examples.

    Attributes:
        widths: [M] hidden widths; width m owns hidden units ``offsets[m]:offsets[m+1]``.
        w1: [S, ΣH, d] first-layer weights (row j: hidden unit j's input weights).
        b1: [S, ΣH, 1] first-layer biases.
        w2: [S, k, ΣH] readout weights; width m's block is ``w2[:, :, offsets[m]:offsets[m+1]]``.
        b2: [M, S, k, 1] readout biases.
    """

    widths: list[int]
    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor

    @property
    def params(self) -> list[torch.Tensor]:
        return [self.w1, self.b1, self.w2, self.b2]

    @property
    def offsets(self) -> list[int]:
        return [0, *np.cumsum(self.widths).tolist()]

    def logits(self, xt: torch.Tensor) -> torch.Tensor:
        """[M, S, k, n] logits of every model on inputs ``xt`` ([d, n], examples in columns).

        Plain torch ops (autograd works through them: the reference for `Backprop`). Examples sit in the
        last axis so the softmax over the k = 10 classes reduces a short strided axis (on CPU 3x faster
        than over a contiguous last axis of size 10).
        """
        S = self.w1.shape[0]
        hidden = torch.relu(torch.baddbmm(self.b1, self.w1, xt.expand(S, -1, -1)))  # [S, ΣH, n]
        blocks = zip(hidden.split(self.widths, dim=1), self.w2.split(self.widths, dim=2))
        return torch.stack([torch.bmm(w, h) for h, w in blocks]) + self.b2

    def block(self, seed_index: int, width_index: int) -> dict[str, torch.Tensor]:
        """One network's weights as ``nn.Linear``-shaped tensors: w1 [H, d], b1 [H], w2 [k, H], b2 [k]."""
        a, b = self.offsets[width_index], self.offsets[width_index + 1]
        s = seed_index
        return {
            "w1": self.w1[s, a:b].detach().clone(),
            "b1": self.b1[s, a:b, 0].detach().clone(),
            "w2": self.w2[s, :, a:b].detach().clone(),
            "b2": self.b2[width_index, s, :, 0].detach().clone(),
        }


def init_mlp(
    seeds: Sequence[int],
    widths: Sequence[int],
    d: int,
    k: int,
    init_scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> BatchedMLP:
    """PyTorch's default ``nn.Linear`` init times `init_scale`, from a stream of its own per (seed, width).

    Each weight and bias of a layer with fan-in f is U(-a, a) with a = init_scale/√f (f = d for the
    hidden layer, f = H for the readout). Drawn in float64 and cast, so float32 and float64 runs start
    from the same (rounded) weights.
    """
    S, M, total = len(seeds), len(widths), int(sum(widths))
    w1 = torch.empty(S, total, d, dtype=torch.float64)
    b1 = torch.empty(S, total, 1, dtype=torch.float64)
    w2 = torch.empty(S, k, total, dtype=torch.float64)
    b2 = torch.empty(M, S, k, 1, dtype=torch.float64)
    offsets = [0, *np.cumsum(widths).tolist()]
    for s, seed in enumerate(seeds):
        for m, width in enumerate(widths):
            g = torch_generator("mlp-init", seed, width)
            a, b = offsets[m], offsets[m + 1]
            hidden_bound, readout_bound = init_scale / math.sqrt(d), init_scale / math.sqrt(width)
            w1[s, a:b] = _uniform(g, hidden_bound, width, d)
            b1[s, a:b, 0] = _uniform(g, hidden_bound, width)
            w2[s, :, a:b] = _uniform(g, readout_bound, k, width)
            b2[m, s, :, 0] = _uniform(g, readout_bound, k)
    return BatchedMLP(list(widths), *(t.to(dtype) for t in (w1, b1, w2, b2)))


def _uniform(g: torch.Generator, bound: float, *shape: int) -> torch.Tensor:
    return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * bound


def per_model_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """[M, S] mean loss of each model: cross-entropy (nats) or squared error against one-hot targets.

    Args:
        logits: [M, S, k, n].
        labels: [n] integer classes.
        kind: ``"ce"`` (mean over examples of logsumexp − true logit) or ``"mse"`` (mean over examples and
            classes of (f_c(x) − 1[c = y])²).
    """
    M, S, k, n = logits.shape
    if kind == "ce":
        true = logits.gather(2, labels.view(1, 1, 1, n).expand(M, S, 1, n)).squeeze(2)
        return (logits.logsumexp(2) - true).mean(-1)
    target = torch.nn.functional.one_hot(labels, k).T.to(logits.dtype)  # [k, n]
    return (logits - target).square().mean(dim=(2, 3))


class Backprop:
    """The gradient of Σ_{seed, width} loss(seed, width) on one fixed training set, by hand.

    Written out (instead of autograd) to reuse preallocated [S, ΣH, n] buffers: on CPU the allocation
    and page faults of fresh activations cost as much as the arithmetic. Per model, with Z = W1 X + b1,
    A = relu(Z), F = W2 A + b2 and G = ∂loss/∂F:

        G = (softmax(F) − Y)/n            (ce)        G = 2 (F − Y)/(n k)       (mse)
        ∂b2 = Σ_i G,  ∂W2 = G Aᵀ,  ∂A = W2ᵀ G,  ∂Z = ∂A ⊙ 1[A > 0],  ∂b1 = Σ_i ∂Z,  ∂W1 = ∂Z Xᵀ

    (Y the one-hot targets, examples in columns). The gradients are written into ``p.grad`` of every
    parameter of the model, ready for ``optimizer.step()``. tests/models/test_mlp.py checks them
    against autograd through `BatchedMLP.logits`.
    """

    def __init__(self, model: BatchedMLP, x: torch.Tensor, labels: torch.Tensor, kind: str):
        S, total, d = model.w1.shape
        k, n, M = model.w2.shape[1], x.shape[0], len(model.widths)
        self.model, self.kind = model, kind
        self.x = x.contiguous()  # [n, d]
        self.xt = self.x.T  # [d, n]: a view, addmm reads it transposed
        self.onehot = torch.nn.functional.one_hot(labels, k).T.to(x.dtype).contiguous()  # [k, n]
        self.hidden = x.new_empty(S, total, n)
        self.ghidden = x.new_empty(S, total, n)
        self.logits = x.new_empty(M, S, k, n)
        for p in model.params:
            p.grad = torch.zeros_like(p)

    def __call__(self) -> None:
        m = self.model
        S, total, d = m.w1.shape
        n = self.x.shape[0]
        k = m.w2.shape[1]
        # forward: all seeds' hidden layers in one GEMM (the data are shared across seeds)
        torch.addmm(
            m.b1.view(S * total, 1), m.w1.view(S * total, d), self.xt, out=self.hidden.view(S * total, n)
        ).relu_()
        blocks = list(zip(self.model.offsets, self.model.offsets[1:]))
        for j, (a, b) in enumerate(blocks):
            torch.bmm(m.w2[:, :, a:b], self.hidden[:, a:b], out=self.logits[j])
        self.logits.add_(m.b2)
        # G = ∂loss/∂F, in place of the logits
        if self.kind == "ce":
            g = torch.softmax(self.logits, dim=2).sub_(self.onehot).div_(n)
        else:
            g = self.logits.sub_(self.onehot).mul_(2.0 / (n * k))
        gw1, gb1, gw2, gb2 = (p.grad for p in m.params)
        torch.sum(g, dim=-1, keepdim=True, out=gb2)
        for j, (a, b) in enumerate(blocks):
            torch.bmm(m.w2[:, :, a:b].transpose(1, 2), g[j], out=self.ghidden[:, a:b])
            gw2[:, :, a:b] = torch.bmm(g[j], self.hidden[:, a:b].transpose(1, 2))
        # relu': ∂Z = ∂A where A > 0 (autograd's convention at 0 too), in place
        torch.ops.aten.threshold_backward.grad_input(self.ghidden, self.hidden, 0, grad_input=self.ghidden)
        torch.sum(self.ghidden, dim=-1, keepdim=True, out=gb1)
        torch.mm(self.ghidden.view(S * total, n), self.x, out=gw1.view(S * total, d))


# --- the result ---------------------------------------------------------------------------------------


@dataclass
class MLPSweepResult:
    """Measurements of `run_mlp_sweep`: arrays indexed [seed, width, measured step].

    Attributes:
        study: ``"modelwise"`` or ``"epochwise"``: which claims `claims` checks.
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
        seeds = np.array(sorted({int(r["seed"]) for r in rows}))
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
            study, seeds, widths, params, steps, **arrays, loss=str(rows[0].get("loss_kind", "mse")), **settings
        )

    def claims(self) -> list[Claim]:
        """The study's claims (`modelwise_claims` or `epochwise_claims`, per `study`)."""
        return modelwise_claims(self) if self.study == "modelwise" else epochwise_claims(self)


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


# --- claim logic (pure functions of curves, unit-tested on synthetic curves) ------------------------


def max_rise(curve: Sequence[float]) -> tuple[float, int, int]:
    """The largest rise of a curve read left to right: max over i < j of curve[j] − curve[i].

    Returns ``(rise, i, j)``: j is the peak and i the minimum before it (the classical sweet spot of a
    model-wise curve, the first minimum of an epoch-wise one). A curve that never rises gives
    ``(0.0, 0, 0)``. Ties keep the earliest peak.
    """
    y = np.asarray(curve, dtype=np.float64)
    best, bi, bj, low = 0.0, 0, 0, 0
    for j in range(1, y.size):
        if y[j - 1] < y[low]:
            low = j - 1
        if y[j] - y[low] > best:
            best, bi, bj = float(y[j] - y[low]), low, j
    return best, bi, bj


def _percent(widths: np.ndarray, values: np.ndarray) -> str:
    return ", ".join(f"H={w}: {v * 100:.1f}" for w, v in zip(widths.tolist(), values))


def modelwise_claims(r: MLPSweepResult) -> list[Claim]:
    """Nakkiran/Belkin model-wise double descent and Liu & Flanigan's "no interpolation, no peak".

    On seed means at the last measured step:

    1. *Peak near the interpolation threshold*: the peak is the top j of the largest rise of test error
       over widths (`max_rise`); the threshold is the first width that interpolates
       (`MLPSweepResult.interpolating`). Statistic P(peak)/P(threshold) in parameters; PASS when within
       ±`peak_tolerance` and the rise is ≥ `min_rise`.
    2. *Second descent*: test error at the peak minus at the largest width (points); PASS when ≥
       `min_rise` (a drop as large as the rise a peak needs).
    3. *No interpolation, no peak*: at `early_step` (default: the last measured step at which no width has
       memorised more than `early_memorised` of the corrupted labels) the largest rise of test error over
       widths (points); PASS when < `min_rise` and no width interpolates there.
    """
    pts = 100.0
    tol = r.peak_tolerance
    c1 = "test error peaks near the interpolation threshold (model-wise double descent)"
    c2 = "second descent: test error at the largest width is below the peak"
    c3 = "no interpolation, no peak (Liu & Flanigan): with far fewer steps the peak is absent"
    s1, t1 = (
        "P(peak)/P(threshold) (parameter counts)",
        f"within ±{tol:.0%} and rise ≥ {r.min_rise * pts:g} points",
    )
    s2, t2 = "test error drop peak → largest width (points)", f"≥ {r.min_rise * pts:g} points"
    if len(r.widths) < 3:
        why = f"needs at least 3 widths; have {len(r.widths)}"
        return [
            check(c1, s1, None, None, t1, detail=why),
            check(c2, s2, None, None, t2, detail=why),
            check(
                c3,
                "largest rise of test error over widths (points)",
                None,
                None,
                f"< {r.min_rise * pts:g} points",
                detail=why,
            ),
        ]
    test = r.mean("test_error")[:, -1]
    train = r.mean("train_error")[:, -1]
    rise, lo, peak = max_rise(test)
    hits = np.flatnonzero(r.interpolating()[:, -1])
    thr = int(hits[0]) if hits.size else None
    zero = np.flatnonzero(train == 0)
    criterion = (
        f"train loss ≤ {r.interpolation_loss:g}/k"
        if r.loss == "mse"
        else f"train error ≤ {r.interpolation_error:g}"
    )
    nk = r.n_train * r.classes
    curves = (
        f"At step {int(r.steps[-1])}, test error (%): {_percent(r.widths, test)}; train error (%, noisy "
        f"labels): {_percent(r.widths, train)}; train loss: "
        + ", ".join(f"H={w}: {v:.2g}" for w, v in zip(r.widths.tolist(), r.mean("train_loss")[:, -1]))
    )
    out = []
    if thr is None:
        out.append(
            check(
                c1, s1, None, None, t1, detail=f"no width interpolates ({criterion}): train longer. " + curves
            )
        )
    elif rise <= 0:
        # a FAIL without a value (the ratio is undefined): `check` would call a missing value N/A
        out.append(
            Claim(
                c1, s1, None, None, None, t1, "FAIL", "test error never rises with width: no peak. " + curves
            )
        )
    else:
        ratio = float(r.n_params[peak] / r.n_params[thr])
        ok = abs(ratio - 1) <= tol + 1e-12 and rise >= r.min_rise - 1e-12
        first_zero = (
            f"first width with zero train error H={r.widths[zero[0]]} (P={r.n_params[zero[0]]}, "
            f"P(peak)/P = {r.n_params[peak] / r.n_params[zero[0]]:.2f})"
            if zero.size
            else "no width reaches zero train error"
        )
        out.append(
            check(
                c1,
                s1,
                ratio,
                ok,
                t1,
                detail=(
                    f"peak H={r.widths[peak]} (P={r.n_params[peak]}, test error {test[peak] * pts:.1f}%), "
                    f"{rise * pts:.1f} points above the classical minimum at H={r.widths[lo]}; "
                    f"first interpolating width ({criterion}) H={r.widths[thr]} (P={r.n_params[thr]}); "
                    f"{first_zero}; "
                    f"P(peak)/(n·k) = {r.n_params[peak] / nk:.2f}. " + curves
                ),
            )
        )
    if rise <= 0:
        out.append(check(c2, s2, None, None, t2, detail="no peak: nothing to descend from"))
    elif peak == len(r.widths) - 1:
        out.append(check(c2, s2, 0.0, False, t2, detail="the peak is the largest width"))
    else:
        drop = float(test[peak] - test[-1])
        out.append(
            check(
                c2,
                s2,
                drop * pts,
                drop >= r.min_rise - 1e-12,
                t2,
                detail=(
                    f"{test[peak] * pts:.1f}% at H={r.widths[peak]} → {test[-1] * pts:.1f}% "
                    f"at H={r.widths[-1]}; classical minimum {test[lo] * pts:.1f}% at H={r.widths[lo]}"
                ),
            )
        )
    out.append(_early_claim(r, c3))
    return out


def _early_claim(r: MLPSweepResult, claim: str) -> Claim:
    pts = 100.0
    stat = "largest rise of test error over widths at the early step (points)"
    threshold = f"< {r.min_rise * pts:g} points, no width interpolating"
    interpolating = r.interpolating().any(axis=0)  # [C]
    if r.early_step is not None:
        hits = np.flatnonzero(r.steps == r.early_step)
        if hits.size == 0:
            return check(claim, stat, None, None, threshold, detail=f"step {r.early_step} was not measured")
        c = int(hits[0])
    else:
        memorised = r.mean("memorised")
        if np.isnan(memorised).all():
            return check(claim, stat, None, None, threshold, detail="needs label noise (nothing to memorise)")
        # step 0 is the untrained initialisation: not a training budget
        far = np.flatnonzero((memorised[:, 1:] <= r.early_memorised).all(axis=0)) + 1
        if far.size == 0:
            return check(
                claim,
                stat,
                None,
                None,
                threshold,
                detail=(
                    f"some width memorised > {r.early_memorised:.0%} of the corrupted labels by the first "
                    f"measured step: measure earlier (eval_every)"
                ),
            )
        c = int(far[-1])
    test = r.mean("test_error")[:, c]
    rise, lo, peak = max_rise(test)
    train = r.mean("train_error")[:, c]
    most = np.nanmax(r.mean("memorised")[:, c])
    return check(
        claim,
        stat,
        rise * pts,
        rise < r.min_rise and not interpolating[c],
        threshold,
        detail=(
            f"step {int(r.steps[c])} of {int(r.steps[-1])}: lowest train error {np.nanmin(train) * pts:.1f}% "
            f"(label noise {r.label_noise * pts:.1f}%), most memorised {most * pts:.0f}% "
            f"of the corrupted labels; test error (%): {_percent(r.widths, test)}"
        ),
    )


def epochwise_claims(r: MLPSweepResult) -> list[Claim]:
    """Nakkiran's epoch-wise double descent, on the seed-mean curves of the widest width.

    1. *Rise after the first minimum*: the largest rise of the test error over measured steps
       (`max_rise`; its start is the first minimum); PASS when ≥ `min_rise` and the train error on the
       noisy labels at the peak is below that at the minimum (it kept falling).
    2. *Second descent over epochs* (a bonus, science.md §7): test error at the peak minus at the last
       step (points); PASS when ≥ `min_rise`; FAIL when the peak is the last step; N/A without a rise.
    """
    pts = 100.0
    m = len(r.widths) - 1
    test, train = r.mean("test_error")[m], r.mean("train_error")[m]
    c1 = (
        f"epoch-wise: after its first minimum test error rises while train error falls (H={int(r.widths[m])})"
    )
    c2 = f"epoch-wise second descent: test error falls again after its peak (H={int(r.widths[m])})"
    s1, t1 = (
        "test error rise after its first minimum (points)",
        f"≥ {r.min_rise * pts:g} points, train error falling",
    )
    s2, t2 = "test error drop from its peak to the last step (points)", f"≥ {r.min_rise * pts:g} points"
    rise, lo, peak = max_rise(test)
    every = max(1, len(r.steps) // 12)
    trajectory = "train/test error (%) by step: " + ", ".join(
        f"{int(s)}: {a * pts:.1f}/{b * pts:.1f}"
        for s, a, b in zip(r.steps[::every], train[::every], test[::every])
    )
    if rise <= 0:
        return [
            check(c1, s1, 0.0, False, t1, detail="test error never rises. " + trajectory),
            check(c2, s2, None, None, t2, detail="no rise: no peak to descend from"),
        ]
    head = (
        f"first minimum {test[lo] * pts:.1f}% at step {int(r.steps[lo])} "
        f"(train error {train[lo] * pts:.1f}%), "
        f"peak {test[peak] * pts:.1f}% at step {int(r.steps[peak])} (train error {train[peak] * pts:.1f}%), "
        f"last {test[-1] * pts:.1f}% at step {int(r.steps[-1])} (train error {train[-1] * pts:.1f}%). "
    )
    falling = bool(train[peak] < train[lo])
    out = [check(c1, s1, rise * pts, rise >= r.min_rise - 1e-12 and falling, t1, detail=head + trajectory)]
    if peak == len(r.steps) - 1:
        out.append(check(c2, s2, 0.0, False, t2, detail="test error is highest at the last step. " + head))
    else:
        drop = float(test[peak] - test[-1])
        out.append(check(c2, s2, drop * pts, drop >= r.min_rise - 1e-12, t2, detail=head))
    return out


# --- the experiment -----------------------------------------------------------------------------------


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
