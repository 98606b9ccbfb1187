"""Decision rules of the sample-wise findings and their calibration (`overtrain.analysis.calibration`): each
rule is re-run on null curves and on curves with a planted effect, at the trial-to-trial noise measured on
the study's own stored risks, with the study's own number of trials (the trials are the replicates).

The rules work on **log** test MSE: at n = d the risk has no finite mean (inverse-Wishart moments) and its
spread is multiplicative (measured at the defaults: SD of the log risk 2.6 at n = d, 0.04–1.3 elsewhere).

- **Peak at n = d** (`split_peak`): the peak and its two valleys are located on the geometric-mean curve of
  the first half of the trials, and each trial of the second half contributes ``l_t = log risk_t(peak) −
  max(log risk_t(valleys))``; the rule passes when the peak lies within ±tolerance of d and the one-sided
  `LEVEL` Student-t lower bound of mean l_t is above 0. Split rather than leave-one-out: with 50 trials
  every leave-one-out location is nearly the full-sample one, so the l_t share their selection and a t
  bound over them is optimistic (measured: 4% false positives at a nominal 2.5% on the flat-topped null
  of the default curve); on a held-out half the l_t are independent given the location, and the bound is
  exact. Null: the seed-mean log curve with every interior peak removed (`no_peak`); effect: a peak of
  `PAPER_PEAK` planted at n = d.
- **More data hurts** (`paired_rule`): per trial ``d_t = log risk_t(d) − log risk_t(≈ d/2)`` (nested
  training sets, so paired), passing when the lower bound of mean d_t is above 0; both sizes are fixed in
  advance, so every trial is used. Null: d ~ N(0, σ²), σ the SD of the measured d_t; effect
  d ~ N(log(1 + `PAPER_GAP`), σ²).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import stats

from overtrain.analysis.calibration import Calibration, calibrate, no_peak, planted_peak, seed_sd
from overtrain.analysis.rise import MIN_SEEDS_FOR_CI, PEAK_LEVEL

LEVEL = PEAK_LEVEL
"""One-sided coverage of every bound here (97.5%: a nominal 2.5% false-positive rate leaves room for the
calibration's Monte-Carlo error below the 5% a finding may have)."""

PAPER_PEAK = 0.2
"""Planted peak height: the test MSE at n = d 20% above the higher of its valleys. Nakkiran et al. 2020 §6
derive a risk that diverges at n = d and give no finite height; 20% is a conservative stand-in."""

PAPER_GAP = 0.2
"""Planted "more data hurts" effect: the test MSE at n = d 20% above the one at n = d/2 (a conservative
stand-in for the paper's divergence; measured here: 68x)."""

N_SIM = 200
"""Simulated null and effect draws per peak calibration (Monte-Carlo SE of a rate ≤ 0.035)."""

N_SIM_T = 1000
"""Draws per paired calibration: its rule costs microseconds, so the fpr is pinned to ±0.005."""


@lru_cache(maxsize=64)
def _t_quantile(level: float, df: int) -> float:
    return float(stats.t.ppf(level, df))


def t_lower(values: Sequence[float], level: float = LEVEL) -> float | None:
    """One-sided Student-t lower confidence bound of the mean of `values` (one per trial); None with fewer
    than `MIN_SEEDS_FOR_CI` values or any non-finite one."""
    x = np.asarray(values, dtype=float)
    if x.size < MIN_SEEDS_FOR_CI or not np.all(np.isfinite(x)):
        return None
    return float(x.mean() - _t_quantile(level, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))


def locate_peak(m: np.ndarray) -> tuple[int, int, int]:
    """``(i, left, right)`` of the largest interior peak of a log curve `m`: i maximises ``m[i] −
    max(min m[:i], min m[i+1:])``, left and right are the (first) minimisers either side."""
    before = np.minimum.accumulate(m)
    after = np.minimum.accumulate(m[::-1])[::-1]
    i = 1 + int(np.argmax(m[1:-1] - np.maximum(before[:-2], after[2:])))
    return i, int(np.argmin(m[:i])), i + 1 + int(np.argmin(m[i + 1 :]))


@dataclass(frozen=True)
class SplitPeak:
    """The peak of a ``[trials, grid]`` risk matrix located on the first half of the trials and measured on
    the second.

    Attributes:
        excess: mean over the held-out trials of l_t (log units: 0.18 = a peak 20% above its valley).
        lower: its one-sided `LEVEL` lower bound (None with < 4 held-out trials).
        peak_x: the grid value of the located peak.
        held_out: trials it is measured on.
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


def split_peak(curves: np.ndarray, x: Sequence[float], target: float, tol: float) -> SplitPeak:
    """`SplitPeak` of positive ``[trials, grid]`` `curves` over the grid values `x` (module docstring)."""
    z = np.log(np.asarray(curves, dtype=float))
    half = z.shape[0] // 2
    i, left, right = locate_peak(z[:half].mean(axis=0))
    logs = z[half:, i] - np.maximum(z[half:, left], z[half:, right])
    located = abs(float(x[i]) - target) <= tol
    return SplitPeak(float(logs.mean()), t_lower(logs), float(x[i]), len(logs), located)


def split_peak_calibration(
    curves: np.ndarray, x: Sequence[float], target: float, tol: float, *, height: float = PAPER_PEAK
) -> Calibration | None:
    """fpr and power of `split_peak` on curves like `curves`: null `no_peak` of the mean log curve, effect
    that null with a peak of relative `height` at the grid point nearest `target`, noise the pooled
    trial-to-trial SD of the log curves. None when it cannot be measured (< 2 trials, a value ≤ 0)."""
    y = np.asarray(curves, dtype=float)
    if y.shape[0] < 2 or y.shape[1] < 3 or not np.all(y > 0):
        return None
    z = np.log(y)
    sigma, null = seed_sd(z), no_peak(z.mean(axis=0))
    at = int(np.argmin(np.abs(np.asarray(x, dtype=float) - target)))
    effect = np.log(planted_peak(np.exp(null), height, at))

    def rule(sim: np.ndarray) -> bool:
        return split_peak(np.exp(sim), x, target, tol).passed

    return calibrate(rule, null, effect, sigma, y.shape[0], n_sim=N_SIM)


def paired_rule(sim: np.ndarray) -> bool:
    """The paired rule on a ``[trials, 1]`` matrix of log differences: lower bound of their mean above 0."""
    lower = t_lower(sim[:, 0])
    return lower is not None and lower > 0


def paired_calibration(diffs: Sequence[float], *, gap: float = PAPER_GAP) -> Calibration | None:
    """fpr and power of `paired_rule` at the SD of the measured log differences `diffs`: null mean 0,
    effect mean log(1 + `gap`). None with fewer than two differences."""
    d = np.asarray(diffs, dtype=float)
    if d.size < 2 or not np.all(np.isfinite(d)):
        return None
    return calibrate(
        paired_rule, np.zeros(1), np.full(1, np.log1p(gap)), float(d.std(ddof=1)), d.size, n_sim=N_SIM_T
    )
