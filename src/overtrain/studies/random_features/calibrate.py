"""Decision rules of the random-features findings and their calibration (`overtrain.analysis.calibration`):
each rule is re-run on null curves and on curves with a planted effect, at the seed-to-seed noise measured
on the study's own stored curves, with the study's own number of seeds.

Every rule works on **log** values. Near P = n a test loss spreads over orders of magnitude between
seeds (measured at the defaults: SD of the log loss up to 1.7 at P = n, 0.02–0.4 elsewhere), so its spread is
multiplicative; the per-seed ratio of a peak to its valleys ranges over 50–13,000, and a t bound on raw
ratios that skewed has little meaning. Noise is therefore measured (`seed_sd`) and simulated on log values,
and every rule is applied to ``exp`` of the simulated draws exactly as it is to the data.

- **Peak at P = n** (`log_peak`): `overtrain.analysis.rise.held_out_peak` locates the peak and its two
  valleys on the *other* seeds (no winner's curse); seed s contributes ``l_s = log(y_s(peak) /
  max(y_s(valleys)))``. The rule passes when every seed's held-out peak lies within ±tolerance of the
  target P/n and the one-sided `LEVEL` Student-t lower bound of mean l_s is above 0. Null: the seed-mean
  log curve with every interior peak removed (`no_peak`); effect: a peak of `PAPER_PEAK` planted at P = n.
- **Paired comparison of two fixed grid points** (`paired_rule`: second descent, sample-wise "more data
  hurts"): per seed ``d_s = log y_s(a) − log y_s(b)``, passing when the lower bound of mean d_s is above 0.
  The points are fixed before looking, so nothing is selected on the data. Null: d ~ N(0, σ²) with σ the
  SD of the measured d_s; effect: d ~ N(log(1 + `PAPER_GAP`), σ²).
- **Trend over label noise** (`trend_rule`): per seed the least-squares slope of the log 0-1 error at
  P = n on the noise level; lower bound of the mean slope above 0. Null: the error constant over noise;
  effect: rising by `PAPER_NOISE_RISE` (relative) over the noise range.

A claim over several curves ("every curve peaks at P = n") passes when every curve's rule passes. Its
false-positive rate is that of the least favourable null — one curve without the effect while all the
others have it — which is at most the largest of the curves' own rates: `joint` reports that maximum as
the fpr, and the product of the curves' powers (independent curves) as the power.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from overtrain.analysis import bounds
from overtrain.analysis.bounds import t_lower
from overtrain.analysis.calibration import (
    Calibration,
    Rule,
    calibrate,
    peak_null_and_effect,
    seed_sd,
)
from overtrain.analysis.rise import PEAK_LEVEL, held_out_peak

LEVEL = PEAK_LEVEL
"""One-sided coverage of every bound here (97.5%: a nominal 2.5% false-positive rate leaves room for the
Monte-Carlo error of the calibration, ±0.015 at 200 draws, below the 5% a finding may have)."""

PAPER_PEAK = 0.2
"""Planted peak height: the test loss (or error) at P = n 20% above the higher of its valleys. Belkin et
al. 2019 and Nakkiran et al. 2020 show peaks of several times the valleys but state no number; 20% is a
conservative stand-in (the smallest peak a reader would call one)."""

PAPER_GAP = 0.2
"""Planted paired difference: one fixed grid point 20% above the other (the widest model 20% below P = n/2
for the second descent; n = P 20% above n = P/2 for "more data hurts"). A conservative stand-in: the
papers report larger gaps but give no number."""

PAPER_NOISE_RISE = 0.05
"""Planted label-noise effect: the 0-1 test error at P = n 5% (relative) higher at the largest noise level
than without noise. A conservative stand-in: Nakkiran et al. 2020 show the peak rising with label noise
without a number for it, and at P = n the error is already near chance (0.8–0.9 on ten classes)."""

N_SIM = 200
"""Simulated null and effect draws per peak calibration (Monte-Carlo SE of a rate ≤ 0.035)."""

N_SIM_T = 1000
"""Draws per paired or trend calibration: their rules cost microseconds, so the fpr is pinned to ±0.005
around its nominal 2.5%."""


@dataclass(frozen=True)
class LogPeak:
    """The held-out peak of one ``[seeds, grid]`` curve matrix, on log values.

    Attributes:
        excess: mean over seeds of l_s = log(peak / higher valley) (0.18 = a peak 20% above).
        lower: its one-sided `LEVEL` lower bound (None with < 4 seeds).
        peak_x: per seed, the grid value (P/n) of the peak located on the other seeds.
        located: every `peak_x` within the tolerance of the target.
    """

    excess: float
    lower: float | None
    peak_x: tuple[float, ...]
    located: bool

    @property
    def passed(self) -> bool:
        return self.located and self.lower is not None and self.lower > 0


def log_peak(curves: np.ndarray, x: Sequence[float], target: float, tol: float) -> LogPeak:
    """`LogPeak` of positive ``[seeds, grid]`` `curves` over the grid values `x` (module docstring): the
    peak counts as at `target` when ``|x − target| ≤ tol``."""
    held = held_out_peak(np.asarray(curves, dtype=float))
    logs = np.log1p(held.per_seed)
    peak_x = tuple(float(x[i]) for i in held.peak_index)
    located = all(abs(p - target) <= tol for p in peak_x)
    return LogPeak(float(logs.mean()), t_lower(logs, LEVEL), peak_x, located)


def log_peak_calibration(
    curves: np.ndarray, x: Sequence[float], target: float, tol: float, *, height: float = PAPER_PEAK
) -> Calibration | None:
    """fpr and power of `log_peak` on curves like `curves`: null `no_peak` of the seed-mean log curve,
    effect that null with a peak of relative `height` at the grid point nearest `target`, noise the pooled
    seed-to-seed SD of the log curves. None when it cannot be measured (one seed, a value ≤ 0)."""
    at = int(np.argmin(np.abs(np.asarray(x, dtype=float) - target)))
    setup = peak_null_and_effect(curves, height, at, log=True)
    if setup is None:
        return None
    sigma, null, effect = setup

    def rule(sim: np.ndarray) -> bool:
        return log_peak(np.exp(sim), x, target, tol).passed

    return calibrate(rule, null, effect, sigma, np.shape(curves)[0], n_sim=N_SIM)


def paired_calibration(diffs: Sequence[float], *, gap: float = PAPER_GAP) -> Calibration | None:
    """`overtrain.analysis.bounds.paired_calibration` of log differences, effect log(1 + `gap`)."""
    return bounds.paired_calibration(diffs, float(np.log1p(gap)), level=LEVEL, n_sim=N_SIM_T)


def slopes(x: Sequence[float], logs: np.ndarray) -> np.ndarray:
    """Per row of ``[seeds, points]`` `logs`, the least-squares slope on `x`."""
    xc = np.asarray(x, dtype=float) - np.mean(x)
    return (np.asarray(logs) - np.mean(logs, axis=1, keepdims=True)) @ xc / float(xc @ xc)


def trend_rule(x: Sequence[float]) -> Rule:
    """The trend rule over grid values `x` on ``[seeds, points]`` log values: lower bound of the mean
    per-seed slope above 0."""

    def rule(sim: np.ndarray) -> bool:
        lower = t_lower(slopes(x, sim), LEVEL)
        return lower is not None and lower > 0

    return rule


def trend_calibration(
    x: Sequence[float], logs: np.ndarray, *, rise: float = PAPER_NOISE_RISE
) -> Calibration | None:
    """fpr and power of `trend_rule` on ``[seeds, points]`` log values like `logs`: null constant at their
    mean, effect rising linearly in `x` by log(1 + `rise`) over its range; noise their seed-to-seed SD."""
    z = np.asarray(logs, dtype=float)
    sigma = seed_sd(z)
    if not np.isfinite(sigma) or len(x) < 2:
        return None
    xs = np.asarray(x, dtype=float)
    null = np.full(len(xs), z.mean())
    effect = null + np.log1p(rise) * (xs - xs.min()) / (xs.max() - xs.min())
    return calibrate(trend_rule(x), null, effect, sigma, z.shape[0], n_sim=N_SIM_T)


def joint(cals: Sequence[Calibration | None]) -> Calibration | None:
    """The calibration of "every curve's rule passes" from the curves' own (module docstring): fpr the
    largest, power the product; σ the largest, seeds the fewest. None if any curve has none."""
    if not cals or any(c is None for c in cals):
        return None
    return Calibration(
        fpr=max(c.fpr for c in cals),
        power=float(np.prod([c.power for c in cals])),
        n_sim=min(c.n_sim for c in cals),
        sigma=max(c.sigma for c in cals),
        n_groups=min(c.n_groups for c in cals),
    )
