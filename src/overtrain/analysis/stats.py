"""Rank statistics and percentile-bootstrap confidence intervals (numpy only).

Groups are the unit of resampling everywhere: a group is one independent replicate of a whole curve (a
seed, or a noise draw shared by every point of the curve). Resampling whole groups keeps the
correlation between points of one curve, which is what makes a CI for a statistic of the curve (its
trend, its argmin) honest.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A statistic with a percentile-bootstrap confidence interval.

    Attributes:
        value: the statistic on the data as given.
        low: lower end of the CI (equal to `value` when `degenerate`).
        high: upper end of the CI (equal to `value` when `degenerate`).
        level: nominal coverage of the CI, e.g. 0.95.
        n_boot: bootstrap replicates drawn (0 when `degenerate`).
        n_groups: independent units resampled.
        degenerate: True when there was nothing to resample (fewer than 2 groups): the CI is the point.
    """

    value: float
    low: float
    high: float
    level: float
    n_boot: int
    n_groups: int
    degenerate: bool = False

    def covers(self, x: float) -> bool:
        """Whether `x` lies in [low, high]."""
        return self.low <= x <= self.high


# --- ranks and Spearman --------------------------------------------------------------------------------


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis; tied values share the average of their ranks (scipy's default).

    Example: ``rankdata([10, 20, 20, 30]) == [1, 2.5, 2.5, 4]``.
    """
    x = np.asarray(x, dtype=np.float64)
    if np.isnan(x).any():
        raise ValueError("cannot rank NaN values")
    order = np.argsort(x, axis=-1, kind="stable")
    xs = np.take_along_axis(x, order, axis=-1)
    n = x.shape[-1]
    ranks_sorted = np.empty(x.shape, dtype=np.float64)
    flat_x = xs.reshape(-1, n)
    flat_r = ranks_sorted.reshape(-1, n)
    for row_x, row_r in zip(flat_x, flat_r):
        # a new tie block starts wherever the sorted value changes
        starts = np.flatnonzero(np.r_[True, row_x[1:] != row_x[:-1]])
        ends = np.r_[starts[1:], n]
        row_r[:] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # mean of ranks start+1..end
    ranks = np.empty_like(ranks_sorted)
    np.put_along_axis(ranks, order, ranks_sorted, axis=-1)
    return ranks


def spearman(x, y) -> float:
    """Spearman's rank correlation ρ: Pearson's correlation of the average ranks (ties handled).

    Args:
        x, y: equal-length 1-D sequences (at least 2 values).

    Returns:
        ρ in [−1, 1]; NaN when either input is constant (no ranking to correlate).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be 1-D of equal length, got shapes {x.shape} and {y.shape}")
    if x.size < 2:
        raise ValueError("need at least 2 points")
    rx, ry = rankdata(x), rankdata(y)
    rx -= rx.mean()
    ry -= ry.mean()
    denom = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry) / denom if denom > 0 else float("nan")


def _groups(values, what: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{what} must be 1-D or [groups, points], got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError(f"{what} contain NaN")
    return arr


def _check_level(level: float, n_boot: int) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")


def spearman_ci(
    x,
    y,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    of: Literal["mean_curve", "mean_rho"] = "mean_curve",
) -> Estimate:
    """Spearman's ρ between `x` and `y` with a percentile-bootstrap CI.

    Args:
        x: [P] the ordered variable (e.g. pre-training steps or tokens).
        y: [P] one curve — the CI then resamples the (x, y) pairs — or [G, P], one curve per group
            (seed, shared noise draw) — the CI then resamples whole groups.
        n_boot: bootstrap replicates.
        level: nominal coverage.
        seed: seed of the resampling.
        of: with groups, ``mean_curve`` is ρ(x, mean over groups of y) (the trend of the average);
            ``mean_rho`` is the mean over groups of ρ(x, y_g) (the typical per-group trend).

    Returns:
        An `Estimate`; degenerate (CI = point) for a single group. Replicates whose ρ is undefined (a
        constant resample) are dropped before taking percentiles.
    """
    _check_level(level, n_boot)
    x = np.asarray(x, dtype=np.float64)
    y_arr = np.asarray(y, dtype=np.float64)
    rng = np.random.default_rng(seed)
    if y_arr.ndim == 1:
        value = spearman(x, y_arr)
        n = x.size
        if n < 3:
            return Estimate(value, value, value, level, 0, n, degenerate=True)
        idx = rng.integers(0, n, size=(n_boot, n))
        reps = np.array([spearman(x[i], y_arr[i]) if np.unique(x[i]).size > 1 else np.nan for i in idx])
        return _percentile_estimate(value, reps, level, n_boot, n)
    groups = _groups(y_arr, "y")
    if groups.shape[1] != x.size:
        raise ValueError(f"y has {groups.shape[1]} points per group, x has {x.size}")

    def stat(g: np.ndarray) -> float:
        if of == "mean_curve":
            return spearman(x, g.mean(axis=0))
        return float(np.nanmean([spearman(x, row) for row in g]))

    if of not in ("mean_curve", "mean_rho"):
        raise ValueError(f"of must be 'mean_curve' or 'mean_rho', got {of!r}")
    return bootstrap_ci(groups, stat, n_boot=n_boot, level=level, seed=seed)


def bootstrap_ci(
    values,
    stat: Callable[[np.ndarray], float] = np.mean,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Estimate:
    """Percentile-bootstrap CI of ``stat(values)``, resampling the first axis (groups) with replacement.

    Args:
        values: [G] scalars or [G, ...] one row per group.
        stat: maps an array shaped like `values` (G rows, some repeated) to a number.
        n_boot: bootstrap replicates.
        level: nominal coverage; the CI is the (1−level)/2 and (1+level)/2 quantiles of the replicates.
        seed: seed of the resampling.

    Returns:
        An `Estimate`; degenerate (CI = point, n_boot 0) with fewer than 2 groups. Non-finite replicates
        are dropped before taking quantiles.
    """
    _check_level(level, n_boot)
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 0:
        arr = arr[None]
    n = arr.shape[0]
    if n == 0:
        raise ValueError("no values")
    value = float(stat(arr))
    if n < 2:
        return Estimate(value, value, value, level, 0, n, degenerate=True)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    reps = np.array([float(stat(arr[i])) for i in idx])
    return _percentile_estimate(value, reps, level, n_boot, n)


def _percentile_estimate(value: float, reps: np.ndarray, level: float, n_boot: int, n: int) -> Estimate:
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return Estimate(value, float("nan"), float("nan"), level, n_boot, n)
    alpha = (1 - level) / 2
    low, high = np.quantile(reps, [alpha, 1 - alpha])
    return Estimate(value, float(low), float(high), level, n_boot, n)
