"""Readouts of random features trained by torch-style optimisers at every width of a grid at once
(Liu & Flanigan 2023's optimiser axis).

**Feature normalisation** (per setting): ``none``; ``standardize`` — an intercept column plus columns
centred and scaled by the training set's mean and std (`standardize`). It removes the large common mean of
ReLU features, an outlier top singular value, so a step of 1/s_max² moves every bulk direction faster
((s/s_max)² grows); κ(F) itself does *not* drop (the smallest singular value shrinks too) — what sets the
loss reached in a budget is the whole spectrum relative to s_max, not κ alone (measured singular values:
docs/double_descent.md). ``sqrt_p`` — features divided by √P (NTK-style; leaves κ and ``edge`` learning
rates unchanged; rescales the effect of an absolute SGD step by 1/P and of an Adam step by 1/√P).

**Batched training.** All widths of a setting and all seeds train at once: the features of width P are
the first P columns of one draw of P_max columns, so every width's readout is a column of a padded
``[S, P_max, W·k]`` tensor whose rows ≥ P are masked. Predictions are one ``bmm`` of the mini-batch
features ``[S, B, P_max]`` with the readouts; the gradient is masked so padded rows stay exactly zero
(SGD and Adam update elementwise, so a zero gradient on a zero entry leaves it zero). Each column is
therefore exactly the model of its width trained alone (`tests/studies/test_optim_dd.py` checks this).
Every width and seed sees the same shuffled mini-batches — they are independent models, so sharing the
order costs nothing and keeps the loop to one Python iteration per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from overtrain.errors import ConfigError
from overtrain.seed import torch_generator
from overtrain.studies.dd_optimization.config import Normalization, OptimizerSetting


@dataclass
class ReadoutFit:
    """Readouts trained at every width of a grid, for every seed.

    Attributes:
        readouts: [S, P_max, W, k] trained readouts (rows ≥ P_w of width w are zero), in the
            parametrisation of the normalised features given to `train_readouts`.
        train_loss: [S, W] training mean squared error (summed over the k outputs).
        test_loss: [S, W] test mean squared error, or None without test data.
        norm: [S, W] Frobenius norm of each readout.
        lr: [S, W] the step size each width used (``edge`` units resolved).
    """

    readouts: np.ndarray
    train_loss: np.ndarray
    test_loss: np.ndarray | None
    norm: np.ndarray
    lr: np.ndarray


def width_mask(widths: Sequence[int], p_max: int) -> np.ndarray:
    """[P_max, W] 1.0 where row j < P_w belongs to width w's readout, else 0."""
    return (np.arange(p_max)[:, None] < np.asarray(widths)[None, :]).astype(np.float64)


def width_scales(widths: Sequence[int], normalization: Normalization) -> np.ndarray:
    """[W] the factor every feature of width P is multiplied by: 1/√P for ``sqrt_p``, else 1."""
    w = np.asarray(widths, dtype=np.float64)
    return 1 / np.sqrt(w) if normalization == "sqrt_p" else np.ones_like(w)


def standardize(F: np.ndarray, F_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An intercept and standardised features: column 0 is the constant 1, column j ≥ 1 is feature j − 1
    centred and scaled by the training split's mean and std (along the examples axis, -2), so width P
    still has P parameters. A constant column (a dead ReLU feature) is only centred.

    Why the intercept: centred columns are all orthogonal to the all-ones vector, so n of them have rank
    n − 1 and the threshold would move off P = n; the constant column spans that direction with the same
    norm √n as a standardised column."""
    mean = F.mean(-2, keepdims=True)
    std = F.std(-2, keepdims=True)
    std = np.where(std > 0, std, 1.0)

    def apply(X: np.ndarray) -> np.ndarray:
        Z = (X - mean) / std
        return np.concatenate([np.ones_like(Z[..., :1]), Z[..., :-1]], axis=-1)

    return apply(F), apply(F_test)


def singular_range(
    F: np.ndarray, widths: Sequence[int], scales: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """([S, W] s_max, [S, W] s_min) of the column prefixes ``F[s, :, :P]`` (times the width's scale);
    s_min is the smallest of the min(n, P) singular values, so s_max/s_min is κ(F_P)."""
    S = F.shape[0]
    smax, smin = np.empty((S, len(widths))), np.empty((S, len(widths)))
    for s in range(S):
        for w, P in enumerate(widths):
            sv = np.linalg.svd(F[s, :, :P], compute_uv=False)
            smax[s, w], smin[s, w] = sv[0], sv[-1]
    if scales is not None:
        smax, smin = smax * scales, smin * scales
    return smax, smin


def train_readouts(
    F: np.ndarray,
    Y: np.ndarray,
    widths: Sequence[int],
    setting: OptimizerSetting,
    *,
    F_test: np.ndarray | None = None,
    Y_test: np.ndarray | None = None,
    init: np.ndarray | None = None,
    order_seed: int = 0,
    s_max: np.ndarray | None = None,
    dtype: torch.dtype = torch.float64,
) -> ReadoutFit:
    """Train the readout of every width on column prefixes of `F`, all widths and seeds in one loop.

    The features are used as given, except for the per-width factor of ``sqrt_p`` (`width_scales`):
    standardisation is the caller's (`standardize`), since it is the same for every width.

    Args:
        F: [S, n, P_max] training features per seed; Y: [S, n, k] targets.
        widths: W increasing widths P ≤ P_max.
        setting: optimiser, learning rate, batch size, epochs, init scale, normalisation.
        F_test, Y_test: [S, m, P_max] and [S, m, k] test data (optional).
        init: [S, P_max, k] standard-normal draws (times ``init_scale``: the init); None: zero init.
            Width w starts from its first P_w rows.
        order_seed: seed of the mini-batch order (shared by every width and seed).
        s_max: [S, W] largest singular value of each (scaled) width, for ``edge`` learning rates;
            None: computed.
        dtype: precision of training.

    Returns:
        A `ReadoutFit`. A setting that diverges (too large a step) is not stopped: its losses come back
        non-finite, and claim 4 of `analysis` leaves it out.
    """
    S, n, p_max = F.shape
    k = Y.shape[-1]
    widths = [int(p) for p in widths]
    W = len(widths)
    if any(b <= a for a, b in zip(widths, widths[1:])) or widths[0] < 1 or widths[-1] > p_max:
        raise ConfigError(f"widths must increase within 1..{p_max}, got {widths}")
    scales = width_scales(widths, setting.normalization)
    if setting.lr_units == "edge":
        if s_max is None:
            s_max = singular_range(F, widths, scales)[0]
        lr = setting.lr * n / np.asarray(s_max) ** 2  # λ_max(F̃ᵀF̃ / n) = s_max² / n
    else:
        lr = np.full((S, W), setting.lr)
    # column w·k + j of the padded readouts is output j of width w
    mask = torch.tensor(np.repeat(width_mask(widths, p_max), k, axis=1), dtype=dtype)  # [P_max, W·k]
    scale = torch.tensor(np.repeat(scales, k), dtype=dtype)  # [W·k]
    lr_t = torch.tensor(np.repeat(lr, k, axis=1)[:, None, :], dtype=dtype)  # [S, 1, W·k]
    Ft = torch.tensor(F, dtype=dtype)
    Yt = torch.tensor(np.tile(Y, (1, 1, W)), dtype=dtype)  # [S, n, W·k]
    A = torch.zeros(S, p_max, W * k, dtype=dtype)
    if init is not None and setting.init_scale > 0:
        A += setting.init_scale * torch.tensor(np.tile(init, (1, 1, W)), dtype=dtype)
        A *= mask
    B = setting.batch(n)
    adam = setting.optimizer == "adam"
    momentum = setting.momentum if not adam else 0.0
    if momentum:
        velocity = torch.zeros_like(A)
    if adam:
        m1, m2 = torch.zeros_like(A), torch.zeros_like(A)
        beta1, beta2, eps = 0.9, 0.999, 1e-8
    gen = torch_generator("optim-dd-order", order_seed)
    step = 0
    for _ in range(setting.epochs):
        order = torch.randperm(n, generator=gen) if B < n else None
        for start in range(0, n, B):
            if order is None:
                Fb, Yb = Ft, Yt
            else:
                idx = order[start : start + B]
                Fb, Yb = Ft[:, idx], Yt[:, idx]
            b = Fb.shape[1]
            # ∂/∂a of ½·mean_b (s·f_bᵀa − y_b)² = s · F_bᵀ(s·F_b a − y) / b, masked to the width's rows
            R = torch.bmm(Fb, A).mul_(scale).sub_(Yb).mul_(scale / b)
            G = torch.bmm(Fb.transpose(1, 2), R).mul_(mask)
            step += 1
            if adam:
                m1.mul_(beta1).add_(G, alpha=1 - beta1)
                m2.mul_(beta2).addcmul_(G, G, value=1 - beta2)
                denom = (m2 / (1 - beta2**step)).sqrt_().add_(eps)
                A.addcdiv_(m1, denom, value=-setting.lr / (1 - beta1**step))
            elif momentum:
                velocity.mul_(momentum).add_(G)
                A.sub_(velocity * lr_t)
            else:
                A.sub_(G.mul_(lr_t))
    A64 = A.to(torch.float64)
    scale64 = torch.tensor(np.repeat(scales, k), dtype=torch.float64)

    def mse(Fx: np.ndarray, Yx: np.ndarray) -> np.ndarray:
        pred = torch.bmm(torch.tensor(Fx, dtype=torch.float64), A64) * scale64  # [S, m, W·k]
        err = (pred.numpy() - np.tile(Yx, (1, 1, W))) ** 2
        return err.reshape(S, -1, W, k).sum(-1).mean(1)

    readouts = A64.numpy().reshape(S, p_max, W, k)
    return ReadoutFit(
        readouts=readouts,
        train_loss=mse(F, Y),
        test_loss=None if F_test is None or Y_test is None else mse(F_test, Y_test),
        norm=np.sqrt((readouts**2).sum((1, 3))),
        lr=lr,
    )
