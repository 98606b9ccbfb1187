"""Decision rules of the optimisation-and-double-descent findings and their calibration
(`overtrain.analysis.calibration`): each rule is re-run on null data and on data with a planted effect, at
the seed-to-seed noise measured on the study's own stored curves, with the study's own number of seeds.

All rules work on **log** losses and peak heights: their spread between seeds is multiplicative (measured
at the defaults: the min-norm peak height is 33, 79 and 761 on three seeds).

- **The test loss at P = n rises with the training length T** (`trend_rule`): per seed the least-squares
  slope of log test loss at P = n on the position of T in the closed-form family (T = 10², …, 10⁶, ∞);
  the one-sided `LEVEL` Student-t lower bound of the mean slope must be above 0. Null: the loss constant
  in T; effect: rising by `PAPER_RISE` (relative) from the first T to the last.
- **No peak at the smallest T** (`no_peak_rule`): per seed ``l_s = log(test(n) / mean(test at the two grid
  neighbours of n))``; the one-sided upper bound of mean l_s must be below log(1 + tolerance). A claim of
  absence, so its null is the boundary of the claim — a local peak of exactly the tolerance — and its
  effect is no peak at all (l = 0, Liu & Flanigan 2023's curve for an under-trained model).
- **Peak height tracks the training loss reached** (`spearman_rule`): across settings, Spearman(−log train
  loss at P = n, median over seeds of the log peak height) ≥ the threshold. Null: the peak height the same
  for every setting; effect: the log height rising linearly in the rank of −log train loss from no peak
  (height 1) to a peak of `PAPER_PEAK` (relative) at the lowest train loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from overtrain.analysis.bounds import t_lower
from overtrain.analysis.calibration import Calibration, Rule, calibrate, seed_sd
from overtrain.analysis.rise import PEAK_LEVEL
from overtrain.analysis.stats import rankdata, spearman

LEVEL = PEAK_LEVEL
"""One-sided coverage of every bound here (97.5%: a nominal 2.5% false-positive rate leaves room for the
calibration's Monte-Carlo error below the 5% a finding may have)."""

PAPER_RISE = 0.2
"""Planted growth of the test loss at P = n over the closed-form T range: 20%. A conservative stand-in:
Liu & Flanigan 2023 show the peak emerging as training converges without a number (measured here:
0.15 → 60, 400x)."""

PAPER_PEAK = 0.2
"""Planted peak height at the lowest train loss: 20% above the baseline (the smallest peak a reader would
call one; a conservative stand-in for the paper's, which give no number)."""

N_SIM = 1000
"""Simulated null and effect draws per calibration: the rules cost microseconds to milliseconds, so the
fpr is pinned to ±0.005 around its nominal 2.5%."""


def slopes(logs: np.ndarray) -> np.ndarray:
    """Per row of ``[seeds, points]`` `logs`, the least-squares slope on the point's position 0, 1, …"""
    x = np.arange(logs.shape[1], dtype=float)
    x -= x.mean()
    return (logs - logs.mean(axis=1, keepdims=True)) @ x / float(x @ x)


def trend_rule(sim: np.ndarray) -> bool:
    """The rise rule on ``[seeds, T]`` log test losses at P = n: lower bound of the mean slope above 0."""
    lower = t_lower(slopes(sim), LEVEL)
    return lower is not None and lower > 0


def trend_calibration(logs: np.ndarray, *, rise: float = PAPER_RISE) -> Calibration | None:
    """fpr and power of `trend_rule` on ``[seeds, T]`` log losses like `logs`: null constant at their mean,
    effect rising linearly by log(1 + `rise`) over the T positions; noise their seed-to-seed SD."""
    z = np.asarray(logs, dtype=float)
    sigma = seed_sd(z)
    if not np.isfinite(sigma) or z.shape[1] < 2:
        return None
    null = np.full(z.shape[1], z.mean())
    effect = null + np.log1p(rise) * np.linspace(0.0, 1.0, z.shape[1])
    return calibrate(trend_rule, null, effect, sigma, z.shape[0], n_sim=N_SIM)


def no_peak_rule(tolerance: float) -> Rule:
    """The absent-peak rule on a ``[seeds, 1]`` matrix of local log peak ratios: the upper bound of their
    mean below log(1 + `tolerance`)."""

    def rule(sim: np.ndarray) -> bool:
        lower = t_lower(-sim[:, 0], LEVEL)
        return lower is not None and -lower < np.log1p(tolerance)

    return rule


def no_peak_calibration(local: Sequence[float], tolerance: float) -> Calibration | None:
    """fpr and power of `no_peak_rule` at the SD of the measured local log ratios `local`: null mean
    log(1 + `tolerance`) (the claim's boundary), effect mean 0 (no peak). None below two seeds."""
    d = np.asarray(local, dtype=float)
    if d.size < 2 or not np.all(np.isfinite(d)):
        return None
    null = np.full(1, np.log1p(tolerance))
    return calibrate(no_peak_rule(tolerance), null, np.zeros(1), float(d.std(ddof=1)), d.size, n_sim=N_SIM)


def spearman_rule(x: Sequence[float], threshold: float) -> Rule:
    """The tracking rule on ``[seeds, settings]`` log peak heights: Spearman(x, median over seeds) ≥
    `threshold`."""

    def rule(sim: np.ndarray) -> bool:
        return spearman(x, np.median(sim, axis=0)) >= threshold

    return rule


def spearman_calibration(
    x: Sequence[float], log_heights: np.ndarray, threshold: float, *, peak: float = PAPER_PEAK
) -> Calibration | None:
    """fpr and power of `spearman_rule` on ``[seeds, settings]`` log peak heights like `log_heights` at
    their seed-to-seed SD: null every setting at their mean; effect log(1 + `peak`) times the rank of `x`
    scaled to [0, 1] (module docstring). None below two seeds or three settings."""
    z = np.asarray(log_heights, dtype=float)
    sigma = seed_sd(z)
    if not np.isfinite(sigma) or z.shape[1] < 3:
        return None
    rank = (rankdata(np.asarray(x, dtype=float)) - 1) / (z.shape[1] - 1)
    null = np.zeros(z.shape[1])
    return calibrate(spearman_rule(x, threshold), null, np.log1p(peak) * rank, sigma, z.shape[0], n_sim=N_SIM)
