"""One-sided confidence bounds over replicates (seeds or trials), and the split-half interior peak, shared by
the studies' decision rules (each calibrated with `overtrain.analysis.calibration`).

A bound over S replicates x_1..x_S is the Student-t one: ``mean ± t_{level, S−1} · sd / √S`` (sd with
S − 1 degrees of freedom). None below `MIN_SEEDS` replicates: with two or three the bound is so wide, and
its coverage so dependent on normality, that no finding may rest on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import stats

from overtrain.analysis.calibration import Calibration, Rule, calibrate, peak_null_and_effect
from overtrain.analysis.claims import MIN_SEEDS

LEVEL = 0.975
"""Default one-sided coverage: a nominal 2.5% false-positive rate leaves room for the calibration's
Monte-Carlo error below the 5% a finding may have."""


@lru_cache(maxsize=256)
def t_quantile(level: float, df: int) -> float:
    """The Student-t quantile (cached: rules run thousands of times in a calibration)."""
    return float(stats.t.ppf(level, df))


def t_lower(values, level: float = LEVEL):
    """One-sided lower bound(s) of the mean over axis 0 of `values` (``[replicates, ...]``): a float for a
    1-D input, an array otherwise; None with fewer than `MIN_SEEDS` replicates or any non-finite value."""
    x = np.asarray(values, dtype=float)
    if x.shape[0] < MIN_SEEDS or not np.all(np.isfinite(x)):
        return None
    out = x.mean(axis=0) - t_quantile(level, x.shape[0] - 1) * x.std(axis=0, ddof=1) / np.sqrt(x.shape[0])
    return float(out) if np.ndim(out) == 0 else out


def t_upper(values, level: float = LEVEL):
    """One-sided upper bound(s) of the mean over axis 0 (`t_lower` of the negated values, negated)."""
    low = t_lower(-np.asarray(values, dtype=float), level)
    return None if low is None else -low


def paired_rule(level: float = LEVEL) -> Rule:
    """On a ``[replicates, 1]`` matrix of paired differences: their mean's lower bound is above 0."""

    def rule(sim: np.ndarray) -> bool:
        lower = t_lower(sim[:, 0], level)
        return lower is not None and lower > 0

    return rule


def paired_calibration(
    diffs: Sequence[float], effect: float, *, level: float = LEVEL, n_sim: int = 1000
) -> Calibration | None:
    """fpr and power of `paired_rule` at the SD of the measured differences `diffs`: null mean 0, effect mean
    `effect` (in the differences' units). None with fewer than two finite differences."""
    d = np.asarray(diffs, dtype=float)
    if d.size < 2 or not np.all(np.isfinite(d)):
        return None
    return calibrate(
        paired_rule(level), np.zeros(1), np.full(1, effect), float(d.std(ddof=1)), d.size, n_sim=n_sim
    )


def locate_peak(m: np.ndarray) -> tuple[int, int, int]:
    """``(i, left, right)`` of the largest interior peak of a curve `m`: i maximises ``m[i] −
    max(min m[:i], min m[i+1:])`` (on log values: the largest ratio), left and right are the (first)
    minimisers either side."""
    before = np.minimum.accumulate(m)
    after = np.minimum.accumulate(m[::-1])[::-1]
    i = 1 + int(np.argmax(m[1:-1] - np.maximum(before[:-2], after[2:])))
    return i, int(np.argmin(m[:i])), i + 1 + int(np.argmin(m[i + 1 :]))


@dataclass(frozen=True)
class SplitPeak:
    """The peak of a ``[replicates, grid]`` matrix of positive values located on the first half of the
    replicates (their mean log curve) and measured on the second: ``l_t = log y_t(peak) −
    max(log y_t(valleys))``. On a held-out half the bound is exact; leave-one-out locations with many
    replicates are nearly the full-sample one, which makes a bound over them optimistic.

    Attributes:
        excess: mean over the held-out replicates of l_t (log units: 0.18 = a peak 20% above its valley).
        lower: its one-sided lower bound (None with < 4 held-out replicates).
        peak_x: the grid value of the located peak.
        held_out: replicates it is measured on.
        located: `peak_x` within the tolerance of the target.
    """

    excess: float
    lower: float | None
    peak_x: float
    held_out: int
    located: bool

    @property
    def passed(self) -> bool:
        return self.located and self.lower is not None and self.lower > 0


def split_peak(
    curves: np.ndarray, x: Sequence[float], target: float, tol: float, level: float = LEVEL
) -> SplitPeak:
    """`SplitPeak` of positive ``[replicates, grid]`` `curves` over the grid values `x`, its peak expected
    within ±`tol` of `target`."""
    z = np.log(np.asarray(curves, dtype=float))
    half = z.shape[0] // 2
    i, left, right = locate_peak(z[:half].mean(axis=0))
    logs = z[half:, i] - np.maximum(z[half:, left], z[half:, right])
    located = abs(float(x[i]) - target) <= tol
    return SplitPeak(float(logs.mean()), t_lower(logs, level), float(x[i]), len(logs), located)


def split_peak_calibration(
    curves: np.ndarray,
    x: Sequence[float],
    target: float,
    tol: float,
    *,
    height: float,
    level: float = LEVEL,
    n_sim: int = 200,
) -> Calibration | None:
    """fpr and power of `split_peak` on curves like `curves`: null `no_peak` of the mean log curve, effect
    that null with a peak of relative `height` at the grid point nearest `target`, noise the pooled
    replicate-to-replicate SD of the log curves. None when it cannot be measured (< 2 replicates, < 3 grid
    points, a value ≤ 0)."""
    at = int(np.argmin(np.abs(np.asarray(x, dtype=float) - target)))
    setup = peak_null_and_effect(curves, height, at, log=True)
    if setup is None:
        return None
    sigma, null, effect = setup

    def rule(sim: np.ndarray) -> bool:
        return split_peak(np.exp(sim), x, target, tol, level).passed

    return calibrate(rule, null, effect, sigma, np.shape(curves)[0], n_sim=n_sim)
