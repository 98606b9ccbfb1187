"""Loss-vs-parameters scaling laws and their inversion: the *effective model size* of a damaged model.

Hernandez et al. (2022) fit the held-out loss of models trained without repetition
against their (non-embedding) parameter count N and invert the fit: a model of size N whose loss is L
after training with repeated data "behaves like" a model of size

    N_eff = L⁻¹(L),        reported as the ratio N_eff / N   (1: no damage; 0.5: "2x smaller").

Two forms:

- ``offset``: ``L(N) = a·N^(−b) + c`` (Kaplan-style, with an irreducible loss c). Three parameters, so it
  needs at least 4 distinct sizes; fitted by profiling c: for each c in ``[0, min L)`` the best (a, b)
  is the least-squares line of ``log(L − c)`` on ``log N``, and c minimises the squared error in L.
  Inverse: ``N = (a / (L − c))^(1/b)`` for ``L > c`` (a loss at or below c has no finite size).
- ``power``: ``L(N) = a·N^(−b)``, a straight line in log-log (c = 0). Used with 2–3 sizes, where the
  offset form would interpolate exactly or not be identified. Inverse ``N = (a / L)^(1/b)``.

A loss outside the fitted range of losses is inverted by extrapolation: `EffectiveSize.extrapolated`
says so. A fit whose loss does not fall with N (b ≤ 0) cannot be inverted (`ScalingFit.invertible`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

Form = Literal["auto", "offset", "power"]

MIN_SIZES_FOR_OFFSET = 4
"""Distinct model sizes below which ``auto`` fits the pure power law (c = 0)."""


@dataclass(frozen=True)
class ScalingFit:
    """A fitted ``L(N) = a·N^(−b) + c``.

    Attributes:
        form: ``offset`` (c fitted) or ``power`` (c = 0).
        a, b, c: the law's parameters (b > 0 when loss falls with size).
        n_min, n_max: smallest and largest N fitted.
        loss_min, loss_max: lowest and highest fitted loss (the law's value at n_max and n_min).
        rmse: root-mean-square residual of the fitted points, in loss units.
        points: number of (N, loss) points fitted.
        sizes: number of distinct N among them.
    """

    form: str
    a: float
    b: float
    c: float
    n_min: float
    n_max: float
    loss_min: float
    loss_max: float
    rmse: float
    points: int
    sizes: int

    @property
    def invertible(self) -> bool:
        """Whether loss falls with size (b > 0), so a loss names one size."""
        return self.b > 0 and self.a > 0

    def loss(self, n) -> np.ndarray:
        """L(N)."""
        return self.a * np.asarray(n, dtype=np.float64) ** -self.b + self.c

    def size(self, loss) -> np.ndarray:
        """L⁻¹: the size whose predicted loss is `loss` (inf where ``loss <= c``; NaN if the fit is not
        invertible)."""
        loss = np.asarray(loss, dtype=np.float64)
        if not self.invertible:
            return np.full(loss.shape, np.nan)
        excess = loss - self.c
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(excess > 0, (self.a / excess) ** (1.0 / self.b), np.inf)

    def row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EffectiveSize:
    """What a loss means in model size under a `ScalingFit`.

    Attributes:
        n: the model's own size.
        loss: its measured loss.
        n_eff: the size the fit gives that loss (NaN if the fit is not invertible).
        ratio: ``n_eff / n``.
        extrapolated: the loss lies outside the fitted losses, so `n_eff` is outside ``[n_min, n_max]``.
    """

    n: float
    loss: float
    n_eff: float
    ratio: float
    extrapolated: bool


def _power_line(log_n: np.ndarray, y: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Least squares ``y = α − b·log N``: returns (log a, b, residuals)."""
    A = np.stack([np.ones_like(log_n), -log_n], axis=1)
    (log_a, b), *_ = np.linalg.lstsq(A, y, rcond=None)
    return float(log_a), float(b), y - A @ np.array([log_a, b])


def fit_scaling_law(n, loss, form: Form = "auto") -> ScalingFit:
    """Fit ``L(N) = a·N^(−b) + c`` to points (several seeds per size are fine).

    Args:
        n: model sizes (> 0).
        loss: their losses (> 0), same length.
        form: ``offset``, ``power``, or ``auto`` (offset with at least `MIN_SIZES_FOR_OFFSET` distinct
            sizes, else power).

    Returns:
        A `ScalingFit`.

    Raises:
        ValueError: fewer than 2 distinct sizes, non-positive values, or ``offset`` with < 4 sizes.
    """
    n = np.asarray(n, dtype=np.float64).ravel()
    loss = np.asarray(loss, dtype=np.float64).ravel()
    if n.shape != loss.shape or n.size == 0:
        raise ValueError(f"n and loss must be equal-length and non-empty, got {n.size} and {loss.size}")
    if not (np.all(n > 0) and np.all(loss > 0) and np.all(np.isfinite(loss))):
        raise ValueError("sizes and losses must be positive and finite")
    sizes = len(np.unique(n))
    if sizes < 2:
        raise ValueError("a scaling law needs at least 2 distinct model sizes")
    if form == "auto":
        form = "offset" if sizes >= MIN_SIZES_FOR_OFFSET else "power"
    if form == "offset" and sizes < MIN_SIZES_FOR_OFFSET:
        raise ValueError(
            f"the offset form has 3 parameters: give at least {MIN_SIZES_FOR_OFFSET} distinct sizes"
        )
    log_n = np.log(n)
    if form == "power":
        log_a, b, resid = _power_line(log_n, np.log(loss))
        a, c = float(np.exp(log_a)), 0.0
    else:
        a, b, c = _fit_offset(log_n, loss)
    fit = ScalingFit(form, a, b, c, float(n.min()), float(n.max()), 0.0, 0.0, 0.0, int(n.size), sizes)
    pred = fit.loss(n)
    ends = fit.loss(np.array([n.max(), n.min()]))
    return ScalingFit(
        form,
        a,
        b,
        c,
        float(n.min()),
        float(n.max()),
        float(ends.min()),
        float(ends.max()),
        float(np.sqrt(np.mean((pred - loss) ** 2))),
        int(n.size),
        sizes,
    )


def _fit_offset(log_n: np.ndarray, loss: np.ndarray) -> tuple[float, float, float]:
    """Profile least squares over c ∈ [0, min L): (a, b) from the log-log line of ``L − c``, c from
    the squared error in L (a grid, then a bounded scalar refinement around its best point)."""
    from scipy.optimize import minimize_scalar

    top = float(loss.min())

    def sse(c: float) -> float:
        log_a, b, _ = _power_line(log_n, np.log(loss - c))
        return float(np.sum((np.exp(log_a - b * log_n) + c - loss) ** 2))

    grid = top * (1 - np.geomspace(1.0, 1e-6, 400))  # dense near min L, where the optimum often is
    errors = [sse(c) for c in grid]
    i = int(np.argmin(errors))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    c = float(minimize_scalar(sse, bounds=(lo, hi), method="bounded", options={"xatol": 1e-12 * top}).x)
    if sse(c) > errors[i]:
        c = float(grid[i])
    log_a, b, _ = _power_line(log_n, np.log(loss - c))
    return float(np.exp(log_a)), b, c


def effective_size(fit: ScalingFit, n: float, loss: float) -> EffectiveSize:
    """`EffectiveSize` of a model of size `n` with measured `loss` under `fit`."""
    n_eff = float(fit.size(loss))
    extrapolated = not (fit.loss_min <= loss <= fit.loss_max)
    return EffectiveSize(float(n), float(loss), n_eff, n_eff / float(n), extrapolated)
