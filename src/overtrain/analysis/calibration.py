"""Calibration of a finding's decision rule: how often it passes on null data at the measured noise (its
false-positive rate) and on a planted effect of the paper's size (its power).

A rule maps a ``[groups, points]`` matrix — one curve per seed over the budget grid — to pass or fail.
The data model is the one the rule is applied to, with its noise measured on the stored runs:

    y[g, p] = m[p] + ε[g, p],   ε ~ N(0, σ²) independent,

with σ the pooled seed-to-seed standard deviation of the study's own curves (`seed_sd`) and m the mean
curve: for the null, the measured mean curve with the effect removed (e.g. `no_rise`: no loss increase
after the minimum; or a constant); for the planted effect, the null with the paper's effect added (e.g.
`planted_rise`). ``fpr`` is the share of `n_sim` null draws the rule passes, ``power`` the share of
effect draws; both come from a fixed seed, so a stored calibration is reproducible, and their Monte-Carlo
standard error is √(p(1 − p)/n_sim) (≤ 0.035 at the default 200 draws).

Independent noise per budget is the simplest model the stored runs support with few seeds; a seed's
whole curve also shifts up or down together, which this model treats as noise per budget (so a rise
relative to the curve's own minimum is, if anything, noisier here than in the runs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Rule = Callable[[np.ndarray], bool]
"""A decision rule: ``rule(curves[groups, points]) -> passed``."""


@dataclass(frozen=True)
class Calibration:
    """A rule's pass rates on simulated null and planted-effect data.

    Attributes:
        fpr: share of null draws the rule passes.
        power: share of planted-effect draws the rule passes.
        n_sim: draws of each.
        sigma: the noise standard deviation used (units of the curve, e.g. nats of mean token loss).
        n_groups: curves (seeds) per draw, as in the study.
    """

    fpr: float
    power: float
    n_sim: int
    sigma: float
    n_groups: int

    def describe(self) -> str:
        return (
            f"fpr {self.fpr:.2f} / power {self.power:.2f} ({self.n_sim} simulations of {self.n_groups} "
            f"seeds at the measured σ = {self.sigma:.3g})"
        )


def seed_sd(curves: np.ndarray) -> float:
    """Pooled seed-to-seed standard deviation of a ``[groups, points]`` matrix:
    ``sqrt(mean over points of the unbiased variance across groups)``, NaN cells ignored; NaN with fewer
    than two groups (nothing to measure it from)."""
    curves = np.asarray(curves, dtype=float)
    if curves.ndim != 2 or curves.shape[0] < 2:
        return float("nan")
    with np.errstate(invalid="ignore"):
        var = np.nanvar(curves, axis=0, ddof=1)
    var = var[np.isfinite(var)]
    return float(np.sqrt(var.mean())) if var.size else float("nan")


def noise_and_mean(curves, min_points: int = 3) -> tuple[np.ndarray, float, np.ndarray] | None:
    """``(curves, σ, mean)`` of a ``[groups, points]`` matrix for a calibration: the matrix as floats, its
    `seed_sd` and its mean curve; None when there is nothing to calibrate on (fewer than 2 groups or
    `min_points` points, a non-finite σ or mean)."""
    y = np.asarray(curves, dtype=float)
    if y.ndim != 2 or y.shape[0] < 2 or y.shape[1] < min_points:
        return None
    sigma, mean = seed_sd(y), np.nanmean(y, axis=0)
    if not np.isfinite(sigma) or not np.all(np.isfinite(mean)):
        return None
    return y, sigma, mean


def no_rise(mean: np.ndarray) -> np.ndarray:
    """The curve with every rise removed: its running minimum (a loss that never gets worse again)."""
    return np.minimum.accumulate(np.asarray(mean, dtype=float))


def planted_rise(null: np.ndarray, rise: float, at: int | None = None) -> np.ndarray:
    """`null` with a U planted: from grid point `at` (default the middle) the curve leaves
    ``null[at]`` and rises linearly in the grid index (log budget) to ``(1 + rise)·null[at]`` at the last
    point; before `at` it is `null`. `rise` is relative (0.02: the last budget 2% worse than T*)."""
    null = np.asarray(null, dtype=float)
    n = len(null)
    at = n // 2 if at is None else at
    if not 0 < at < n - 1:
        raise ValueError(f"the planted minimum must be interior, got index {at} of {n} points")
    out = null.copy()
    ramp = (np.arange(n) - at) / (n - 1 - at)
    out[at + 1 :] = null[at] * (1 + rise * ramp[at + 1 :])
    return out


def planted_trend(first: float, factor: float, n: int) -> np.ndarray:
    """A curve rising linearly in the grid index (log budget) from `first` to ``factor·first``."""
    return first * (1 + (factor - 1) * np.linspace(0.0, 1.0, n))


def calibrate(
    rule: Rule,
    null_mean: np.ndarray,
    effect_mean: np.ndarray,
    sigma: float,
    n_groups: int,
    *,
    n_sim: int = 200,
    seed: int = 0,
) -> Calibration:
    """Pass rates of `rule` on `n_sim` draws of ``n_groups`` noisy copies of `null_mean` and of
    `effect_mean` (module docstring). The null and effect draws share their noise (common random
    numbers), so ``power − fpr`` is the effect's own contribution."""
    if not np.isfinite(sigma) or sigma < 0:
        raise ValueError(f"the noise standard deviation must be a finite number >= 0, got {sigma}")
    null_mean = np.asarray(null_mean, dtype=float)
    effect_mean = np.asarray(effect_mean, dtype=float)
    rng = np.random.default_rng(seed)
    passed_null = passed_effect = 0
    for _ in range(n_sim):
        noise = rng.normal(0.0, sigma, size=(n_groups, len(null_mean)))
        passed_null += bool(rule(null_mean + noise))
        passed_effect += bool(rule(effect_mean + noise))
    return Calibration(passed_null / n_sim, passed_effect / n_sim, n_sim, float(sigma), n_groups)


def no_peak(mean: np.ndarray) -> np.ndarray:
    """The curve with every interior peak removed: each interior point lowered to at most the higher of the
    best point before it and the best point after it, until nothing changes — a curve that falls and then
    rises at most once (no second descent), equal to `mean` wherever `mean` has no peak."""
    y = np.array(mean, dtype=float)
    for _ in range(len(y)):
        changed = False
        for i in range(1, len(y) - 1):
            cap = max(y[:i].min(), y[i + 1 :].min())
            if y[i] > cap:
                y[i], changed = cap, True
        if not changed:
            break
    return y


def planted_peak(null: np.ndarray, height: float, at: int, width: int = 1) -> np.ndarray:
    """`null` with a peak planted at grid index `at`: multiplied by ``1 + height·max(0, 1 − |i − at| / width)``,
    so point `at` is ``(1 + height)`` times the null (relative: 0.2 = 20% above) and the bump falls linearly
    to nothing `width` grid points either side."""
    null = np.asarray(null, dtype=float)
    i = np.arange(len(null))
    return null * (1 + height * np.clip(1 - np.abs(i - at) / width, 0, None))


def paired_share_calibration(
    diffs: np.ndarray, share: float, effect: float, *, n_sim: int = 200, seed: int = 0
) -> Calibration | None:
    """fpr and power of "at least `share` of the paired differences are ≤ 0" (one method's value minus
    another's, per cell). Null: differences ~ N(0, σ²) (the methods exchangeable), σ the standard deviation
    of the measured `diffs` around their mean; effect: differences ~ N(−effect, σ²). None with fewer than
    three differences (no σ)."""
    d = np.asarray(diffs, dtype=float)
    d = d[np.isfinite(d)]
    if d.size < 3:
        return None
    sigma = float(d.std(ddof=1))

    def rule(x: np.ndarray) -> bool:
        return float(np.mean(x[0] <= 0)) >= share

    return calibrate(rule, np.zeros(d.size), np.full(d.size, -effect), sigma, 1, n_sim=n_sim, seed=seed)


def peak_null_and_effect(
    curves: np.ndarray, height: float, at: int | Callable[[np.ndarray], int], *, log: bool = False
) -> tuple[float, np.ndarray, np.ndarray] | None:
    """What a peak rule is calibrated on, from ``[groups, grid]`` `curves`: ``(σ, null, effect)`` — σ the
    pooled group-to-group SD, null `no_peak` of the group-mean curve, effect that null with a peak of
    relative `height` planted at grid index `at` (or ``at(mean)``). With `log` all three are on log values
    (σ of the log curves; the peak still `height` above the null in the curves' own units). None with one
    group, fewer than 3 grid points, a non-finite mean, or (with `log`) a value ≤ 0."""
    y = np.asarray(curves, dtype=float)
    if y.ndim != 2 or y.shape[0] < 2 or y.shape[1] < 3 or (log and not np.all(y > 0)):
        return None
    z = np.log(y) if log else y
    sigma, mean = seed_sd(z), np.nanmean(z, axis=0)
    if not np.isfinite(sigma) or not np.all(np.isfinite(mean)):
        return None
    null = no_peak(mean)
    i = at(mean) if callable(at) else at
    if log:
        return sigma, null, np.log(planted_peak(np.exp(null), height, i))
    return sigma, null, planted_peak(null, height, i)
