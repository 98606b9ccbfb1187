"""The sample-wise sweep of isotropic linear regression (Nakkiran et al. 2020 §6):

    x ~ N(0, I_d),   β ~ N(0, I_d / d),   y = βᵀx + σ e,   e ~ N(0, 1)

The estimate from n training examples is the minimum-norm least-squares solution β̂_n = pinv(X_n) y_n
(what gradient descent from zero converges to), and its **test MSE** is exact, with no test sample: for a
fresh (x, y), E[(xᵀβ̂ − y)²] = ‖β̂ − β‖² + σ² (squared target units), since x is isotropic with unit
variance and the noise is independent.

The expected test MSE over X, β and the noise (E‖β‖² = 1) has a closed form away from n = d
(`expected_risk`; Wishart moments E[(XᵀX)⁻¹] = I/(n − d − 1) and E[(XXᵀ)⁻¹] = I/(d − n − 1)):

    n > d + 1:   σ² (1 + d / (n − d − 1))                         (variance only: β̂ is unbiased)
    n < d − 1:   (1 − n/d) + σ² (1 + n / (d − n − 1))             (bias: β's part outside the row space)

and is infinite for d − 1 ≤ n ≤ d + 1: the risk peaks at n = d, where *more data hurts* (measured
medians at the defaults: docs/double_descent.md).

Within a trial the training sets are **nested** (the first n rows of one draw of n_max examples), so the
curve of one trial over n is what adding data to one training set does; each n's marginal law is exactly
that of an independent sample of size n. One QR of the first d rows' transpose gives every n ≤ d
(β̂_n = Q_n R_n⁻ᵀ y_n), and the Gram matrix XᵀX accumulated over rows gives every n > d
(β̂_n = (X_nᵀX_n)⁻¹ X_nᵀ y_n); all trials are solved as one batch. Rows: ``record = 'risk'`` per
(trial, n) and ``'expected'`` (the closed form) per n.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from overtrain.seed import numpy_rng
from overtrain.studies.samplewise_linear.config import SamplewiseLinearConfig
from overtrain.threads import blas_threads


def expected_risk(n: int, d: int, noise_std: float) -> float:
    """Closed-form E[test MSE] of the min-norm estimate from n isotropic Gaussian examples, averaged over
    β with E‖β‖² = 1 (see the module docstring); ``inf`` for d − 1 ≤ n ≤ d + 1, where it diverges."""
    var = noise_std**2
    if n > d + 1:
        return var * (1 + d / (n - d - 1))
    if n < d - 1:
        return (1 - n / d) + var * (1 + n / (d - n - 1))
    return math.inf


def row_prefix_min_norm(x: np.ndarray, y: np.ndarray, ns: Sequence[int]) -> np.ndarray:
    """Minimum-norm least-squares coefficients from every row prefix ``x[..., :n, :]``, n in `ns`.

    For n ≤ d: Xᵀ_{≤n_max} = Q R (reduced QR of the transposed leading rows) gives X_n = R_nᵀ Q_nᵀ, so
    pinv(X_n) y_n = Q_n R_n⁻ᵀ y_n. For n > d: the normal equations with XᵀX and Xᵀy accumulated over
    row blocks between grid points. Both equal pinv(X_n) y_n when X_n has full rank min(n, d) (almost
    surely for Gaussian rows); the normal equations square κ(X_n), which is ~10 or less once n ≥ 1.1 d and
    at most ~10³ just above n = d.

    Args:
        x: [..., N, d] examples (leading dims are batch dims, e.g. trials).
        y: [..., N] targets.
        ns: training-set sizes, each in [1, N].

    Returns:
        [..., G, d] coefficients, G = len(ns) in the order given.
    """
    N, d = x.shape[-2:]
    ns = [int(n) for n in ns]
    if any(not 1 <= n <= N for n in ns):
        raise ValueError(f"every n must be in [1, {N}], got {ns}")
    out = np.zeros((*x.shape[:-2], len(ns), d))
    yc = y[..., None]
    small = [(g, n) for g, n in enumerate(ns) if n <= d]
    if small:
        rows = max(n for _, n in small)
        q, r = np.linalg.qr(np.swapaxes(x[..., :rows, :], -1, -2))  # q [..., d, rows], r [..., rows, rows]
        for g, n in small:
            coef = np.linalg.solve(np.swapaxes(r[..., :n, :n], -1, -2), yc[..., :n, :])
            out[..., g, :] = (q[..., :, :n] @ coef)[..., 0]
    gram = np.zeros((*x.shape[:-2], d, d))
    moment = np.zeros((*x.shape[:-2], d, 1))
    done = 0
    for n, g in sorted((n, g) for g, n in enumerate(ns) if n > d):
        block = x[..., done:n, :]
        gram = gram + np.swapaxes(block, -1, -2) @ block
        moment = moment + np.swapaxes(block, -1, -2) @ yc[..., done:n, :]
        done = n
        out[..., g, :] = np.linalg.solve(gram, moment)[..., 0]
    return out


@dataclass
class SamplewiseLinearResult:
    """Measurements of `run_samplewise_linear`.

    Attributes:
        ns: [G] training-set sizes, ascending.
        mse: [T, G] exact test MSE ‖β̂ − β‖² + σ² per (trial, n), squared target units.
        d: input dimension.
        noise_std: σ.
        wall_s: wall time of the run in seconds.
    """

    ns: np.ndarray
    mse: np.ndarray
    d: int
    noise_std: float
    wall_s: float | None = field(default=None, compare=False)

    def median(self) -> np.ndarray:
        """[G] median test MSE over trials."""
        return np.median(self.mse, axis=0)

    def expected(self) -> np.ndarray:
        """[G] closed-form expected test MSE (`expected_risk`; inf where it diverges)."""
        return np.array([expected_risk(int(n), self.d, self.noise_std) for n in self.ns])

    def at(self, n: int) -> int:
        """Index of training-set size `n` in `ns`."""
        hits = np.flatnonzero(self.ns == n)
        if hits.size == 0:
            raise KeyError(f"n = {n} not run; have {self.ns.tolist()}")
        return int(hits[0])

    def rows(self) -> list[dict[str, Any]]:
        """Long rows for ``evals.jsonl``: per (trial, n) a ``risk`` row (n, n_over_d, trial, risk) and per
        n an ``expected`` row (the closed form; risk None where it diverges, trial None)."""
        out: list[dict[str, Any]] = []
        for g, n in enumerate(self.ns.tolist()):
            base = {"n": n, "n_over_d": n / self.d}
            out += [
                {"record": "risk", **base, "trial": t, "risk": float(self.mse[t, g])}
                for t in range(self.mse.shape[0])
            ]
            exp = expected_risk(n, self.d, self.noise_std)
            out.append(
                {"record": "expected", **base, "trial": None, "risk": exp if math.isfinite(exp) else None}
            )
        return out


def run_samplewise_linear(
    cfg: SamplewiseLinearConfig, progress: Callable[[int, int], None] | None = None
) -> SamplewiseLinearResult:
    """Every trial's min-norm estimate at every n, all trials in one batch.

    Args:
        cfg: the experiment.
        progress: ``progress(1, 1)`` when done (the run is one batched solve).

    Returns:
        The measurements (`SamplewiseLinearResult`), with ``wall_s`` set.
    """
    with blas_threads(cfg.threads):
        return _run(cfg, progress)


def _run(cfg: SamplewiseLinearConfig, progress: Callable[[int, int], None] | None) -> SamplewiseLinearResult:
    t0 = time.perf_counter()
    ns = cfg.ns()
    T, d, N = cfg.trials, cfg.d, max(ns)
    x = np.empty((T, N, d))
    y = np.empty((T, N))
    beta = np.empty((T, d))
    for t in range(T):
        # Separate streams, drawn row by row: the first n examples do not depend on the grid's largest n.
        beta[t] = numpy_rng(cfg.seed, "samplewise_linear", d, t, "beta").standard_normal(d) / math.sqrt(d)
        x[t] = numpy_rng(cfg.seed, "samplewise_linear", d, t, "x").standard_normal((N, d))
        noise = numpy_rng(cfg.seed, "samplewise_linear", d, t, "noise").standard_normal(N)
        y[t] = x[t] @ beta[t] + cfg.noise_std * noise
    coef = row_prefix_min_norm(x, y, ns)  # [T, G, d]
    mse = np.sum((coef - beta[:, None, :]) ** 2, axis=-1) + cfg.noise_std**2
    if progress is not None:
        progress(1, 1)
    return SamplewiseLinearResult(
        ns=np.array(ns), mse=mse, d=d, noise_std=cfg.noise_std, wall_s=time.perf_counter() - t0
    )


def compute(cfg: SamplewiseLinearConfig, progress=lambda done, total: None) -> tuple[list[dict], dict]:
    """The study's run: every (trial, n) risk row and every n's closed-form row."""
    result = run_samplewise_linear(cfg, progress=progress)
    return result.rows(), {"wall_s": result.wall_s}
