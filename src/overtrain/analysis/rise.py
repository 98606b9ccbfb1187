"""The rise after the minimum of a loss curve over budgets, without the winner's curse.

The naive statistic ``mean(L_last) / min_p mean(L_p) − 1`` takes the minimum on the same noisy curve it
then compares against, so it is biased upward: on a flat curve it is positive whenever noise makes some
budget look best. Here the minimiser is chosen on *other* seeds than the ones the rise is measured on
(leave one seed out):

    T*_(−s) = argmin_p  mean_{g ≠ s} L_g(T_p),       r_s = L_s(T_last) / L_s(T*_(−s)) − 1,

so each r_s is an unbiased estimate of the rise at a budget chosen without seeing seed s (under noise
independent across seeds). The statistic is the mean of r_s over the S seeds, with a one-sided Student-t
lower bound ``mean − t_{level, S−1} · sd / √S``; the rise is real when that bound exceeds a threshold.
The seeds' r_s are not fully independent (each seed helps choose the others' T*), which makes the bound
slightly optimistic; `overtrain.analysis.calibration` measures the rule's actual false-positive rate.

With fewer than `MIN_SEEDS_FOR_CI` seeds no bound is given (None): one or two seeds cannot support one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from overtrain.analysis.calibration import Calibration, Rule, calibrate, no_peak, peak_null_and_effect

MIN_SEEDS_FOR_CI = 4
"""Seeds below which the rise gets no confidence bound."""


@dataclass(frozen=True)
class HeldOutRise:
    """The leave-one-seed-out rise of a ``[seeds, budgets]`` loss matrix.

    Attributes:
        rise: mean over seeds of r_s (relative: 0.02 = the last budget 2% worse than T*).
        lower: one-sided lower confidence bound of `rise` at `level` (None with < `MIN_SEEDS_FOR_CI` seeds).
        per_seed: r_s per seed, in input order.
        t_star_index: per seed, the grid index of T*_(−s).
        level: the bound's one-sided coverage.
    """

    rise: float
    lower: float | None
    per_seed: tuple[float, ...]
    t_star_index: tuple[int, ...]
    level: float

    def exceeds(self, threshold: float) -> bool:
        """Whether the lower bound clears `threshold` (False without a bound)."""
        return self.lower is not None and self.lower > threshold


def held_out_rise(curves: Sequence[Sequence[float]], level: float = 0.95) -> HeldOutRise:
    """`HeldOutRise` of a ``[seeds, budgets]`` matrix of losses (module docstring). Needs ≥ 2 seeds and
    ≥ 2 budgets; NaN cells are ignored in the means."""
    y = np.asarray(curves, dtype=float)
    if y.ndim != 2 or y.shape[0] < 2 or y.shape[1] < 2:
        raise ValueError(f"need a [seeds >= 2, budgets >= 2] matrix, got shape {y.shape}")
    n = y.shape[0]
    rises, stars = [], []
    for s in range(n):
        others = np.nanmean(np.delete(y, s, axis=0), axis=0)
        j = int(np.nanargmin(others))
        stars.append(j)
        rises.append(float(y[s, -1] / y[s, j] - 1.0))
    r = np.array(rises)
    mean = float(r.mean())
    lower = None
    if n >= MIN_SEEDS_FOR_CI:
        se = float(r.std(ddof=1) / np.sqrt(n))
        lower = mean - float(stats.t.ppf(level, n - 1)) * se
    return HeldOutRise(mean, lower, tuple(rises), tuple(stars), level)


PEAK_LEVEL = 0.975
"""The peak bound's one-sided coverage. Each seed's valleys and peak are located on the others, which makes
the seeds' excesses slightly dependent and a 95% bound optimistic: measured on a flat-topped null (a peak
removed by `no_peak`, σ = 0.03, 1000 draws) a 95% bound passes 4.9–6.1% of the time at 4–8 seeds, a 97.5%
bound 2.3–2.9%."""


@dataclass(frozen=True)
class HeldOutPeak:
    """The leave-one-seed-out interior peak of a ``[seeds, grid]`` curve matrix (a second descent).

    For seed s the peak and the two valleys are located on the mean of the *other* seeds:
    ``i* = argmax_i  m(i) / max(min m[:i], min m[i+1:])`` over interior i, ``jL`` / ``jR`` the argmins
    before / after it, and seed s contributes ``e_s = y_s(i*) / max(y_s(jL), y_s(jR)) − 1`` — how far
    its value at the peak stands above the higher of its two valleys (relative: 0.1 = 10%).

    Attributes:
        excess: mean of e_s over seeds.
        lower: one-sided lower confidence bound of `excess` at `level` (None with < 4 seeds).
        per_seed: e_s per seed.
        peak_index: per seed, the grid index i* chosen on the other seeds.
        level: the bound's one-sided coverage.
    """

    excess: float
    lower: float | None
    per_seed: tuple[float, ...]
    peak_index: tuple[int, ...]
    level: float

    def exceeds(self, threshold: float) -> bool:
        """Whether the lower bound clears `threshold` (False without a bound)."""
        return self.lower is not None and self.lower > threshold


def _peak_at(m: np.ndarray) -> tuple[int, int, int]:
    peaks, left, right = _peaks(m[None, :])
    return int(peaks[0]), int(left[0]), int(right[0])


def _peaks(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``[rows, grid]`` `m`: the interior peak i* maximising ``m[i] / max(min m[:i], min m[i+1:])``
    (the first such) and the first minimisers either side of it, vectorised (calibrations run this
    thousands of times)."""
    g = m.shape[1]
    before = np.minimum.accumulate(m, axis=1)
    after = np.minimum.accumulate(m[:, ::-1], axis=1)[:, ::-1]
    peak = 1 + np.argmax(m[:, 1:-1] / np.maximum(before[:, :-2], after[:, 2:]), axis=1)
    cols = np.arange(g)
    left = np.argmin(np.where(cols < peak[:, None], m, np.inf), axis=1)
    right = np.argmin(np.where(cols > peak[:, None], m, np.inf), axis=1)
    return peak, left, right


def held_out_peak(curves: Sequence[Sequence[float]], level: float = PEAK_LEVEL) -> HeldOutPeak:
    """`HeldOutPeak` of a ``[seeds, grid]`` matrix of positive values (losses, errors). Needs ≥ 2 seeds and
    ≥ 3 grid points."""
    y = np.asarray(curves, dtype=float)
    if y.ndim != 2 or y.shape[0] < 2 or y.shape[1] < 3:
        raise ValueError(f"need a [seeds >= 2, grid >= 3] matrix, got shape {y.shape}")
    n = y.shape[0]
    # row s: the mean of the other seeds (np.delete, so ties round exactly as in the definition)
    others = np.stack([np.nanmean(np.delete(y, s, axis=0), axis=0) for s in range(n)])
    peak, left, right = _peaks(others)
    rows = np.arange(n)
    e = y[rows, peak] / np.maximum(y[rows, left], y[rows, right]) - 1.0
    lower = None
    if n >= MIN_SEEDS_FOR_CI:
        lower = float(e.mean()) - float(stats.t.ppf(level, n - 1)) * float(e.std(ddof=1) / np.sqrt(n))
    return HeldOutPeak(float(e.mean()), lower, tuple(float(v) for v in e), tuple(int(i) for i in peak), level)


def peak_rule(min_excess: float = 0.0, level: float = PEAK_LEVEL) -> Rule:
    """The decision rule "a second descent": `held_out_peak`'s one-sided lower bound above `min_excess`."""

    def rule(curves: np.ndarray) -> bool:
        return held_out_peak(curves, level).exceeds(min_excess)

    return rule


def peak_calibration(
    curves: np.ndarray, height: float, *, at: int | None = None, min_excess: float = 0.0, n_sim: int = 200
) -> Calibration | None:
    """fpr and power of `peak_rule` on ``[seeds, grid]`` curves like `curves`, at their measured seed-to-seed
    noise: null `no_peak` of the seed mean, effect that null with a peak of relative `height` planted at
    grid index `at` (default: where the seed mean peaks, else the middle). None with one seed or < 3 points."""

    def where(mean: np.ndarray) -> int:
        return _peak_at(mean)[0] if np.any(mean > no_peak(mean)) else len(mean) // 2

    setup = peak_null_and_effect(curves, height, where if at is None else at)
    if setup is None:
        return None
    sigma, null, effect = setup
    return calibrate(peak_rule(min_excess), null, effect, sigma, np.shape(curves)[0], n_sim=n_sim)
