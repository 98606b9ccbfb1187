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
