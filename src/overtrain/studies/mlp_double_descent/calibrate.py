"""Decision rules of the two-layer-network findings and their calibration (`overtrain.analysis.calibration`):
each rule reads a ``[seeds, grid]`` matrix of test errors (grid: widths at one step, or measured steps of
one width), locates what it measures on the *other* seeds (leave one seed out, so no winner's curse), and
decides with a one-sided Student-t bound over the seeds (no bound, so no pass, below 4 seeds). Each is
re-run on null curves and on curves with an effect planted, at the seed-to-seed noise σ of the study's own
curves (`seed_sd`, pooled over the grid), with the study's number of seeds.

- **Peak** (model-wise double descent): `peak_rule` of `overtrain.analysis.rise` (the held-out interior
  peak's excess over the higher of its two valleys has a lower bound above 0) and the peak located within
  the tolerance of the interpolation threshold. Null `no_peak`; effect a peak of `PAPER_PEAK` planted at
  the threshold.
- **Rise** (epoch-wise: test error rises after its first minimum): `held_out_max_rise`, lower bound above
  `min_rise`. Null `no_rise` (never worse than the running minimum); effect a rise of `PAPER_RISE`
  planted after the mean curve's first minimum.
- **Fall** (a second descent, model-wise to the largest width and epoch-wise to the last step):
  `held_out_drop`, lower bound above `min_rise`. Null `no_fall` (flat after its peak); effect a fall of
  `PAPER_FALL` planted after the peak.
- **Absence** (Liu & Flanigan: far from interpolation, no peak): at the early step, the test error at the
  late curve's peak width minus at its classical-minimum width (`fixed_rise`: both widths located on the
  late curve, none on the early one), its *upper* bound (at `ABSENCE_LEVEL`) below `min_rise`. The roles
  swap for a claim of absence: its false positive is passing while a peak is there, so ``fpr`` is its pass
  rate on the peak-free early curve with a rise of exactly `min_rise` planted at the peak width (the
  boundary of what counts as "no peak"), ``power`` its pass rate on the peak-free early curve.

Effects are in points of error (0.05 = 5 points). The papers show their peaks and rises in figures, not as
numbers; 5 points is a conservative stand-in, 2.5 times the smallest rise the claims count (`min_rise`,
2 points) and a third of this study's own model-wise peak (~15 points; docs/double_descent.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from overtrain.analysis.bounds import t_lower, t_upper
from overtrain.analysis.calibration import (
    Calibration,
    Rule,
    calibrate,
    no_peak,
    no_rise,
    noise_and_mean,
    planted_peak,
    planted_rise,
)
from overtrain.analysis.rise import held_out_peak, peak_rule

PAPER_PEAK = 0.05
"""Planted model-wise peak: test error at the threshold 5 points above the peak-free curve there (module
docstring: a conservative stand-in for the papers' figures)."""

PAPER_RISE = 0.05
"""Planted epoch-wise rise: test error at the last step 5 points above its first minimum."""

PAPER_FALL = 0.05
"""Planted second descent: test error at the end of the grid 5 points below the peak."""

LEVEL = 0.95
"""One-sided coverage of the held-out bounds of the rise and fall rules."""

ABSENCE_LEVEL = 0.975
"""One-sided coverage of the absence rule's upper bound: on its boundary null (a rise of exactly
`min_rise`) a t bound at coverage c passes with probability 1 − c, so 0.975 keeps its fpr near 0.025,
clear of `MAX_FPR` by more than the Monte-Carlo error of the calibration."""

N_SIM = 400
"""Simulated null and effect draws per finding (Monte-Carlo SE of a rate ≤ 0.025; 0.008 at a rate of 0.025)."""


def max_rise(curve) -> tuple[float, int, int]:
    """The largest rise of a curve read left to right: max over i < j of curve[j] − curve[i].

    Returns ``(rise, i, j)``: j is the peak and i the minimum before it (the classical sweet spot of a
    model-wise curve, the first minimum of an epoch-wise one). A curve that never rises gives
    ``(0.0, 0, 0)``. Ties keep the earliest peak.
    """
    y = np.asarray(curve, dtype=np.float64)
    best, bi, bj, low = 0.0, 0, 0, 0
    for j in range(1, y.size):
        if y[j - 1] < y[low]:
            low = j - 1
        if y[j] - y[low] > best:
            best, bi, bj = float(y[j] - y[low]), low, j
    return best, bi, bj


@dataclass(frozen=True)
class HeldOut:
    """A leave-one-seed-out statistic of a ``[seeds, grid]`` matrix, in points (0.01 of error).

    Attributes:
        value: mean over seeds of the per-seed values.
        lower, upper: one-sided `level` bounds of `value` (Student t over seeds; None with < 4 seeds).
        per_seed: each seed's value, measured at grid points chosen on the other seeds.
        where: per seed, the grid indices ``(i, j)`` chosen on the other seeds.
    """

    value: float
    lower: float | None
    upper: float | None
    per_seed: tuple[float, ...]
    where: tuple[tuple[int, int], ...]

    def exceeds(self, threshold: float) -> bool:
        """Whether the lower bound clears `threshold` (False without a bound)."""
        return self.lower is not None and self.lower > threshold

    def below(self, threshold: float) -> bool:
        """Whether the upper bound is under `threshold` (False without a bound)."""
        return self.upper is not None and self.upper < threshold


def _held_out(y: np.ndarray, pick, level: float) -> HeldOut:
    if y.ndim != 2 or y.shape[0] < 2 or y.shape[1] < 2:
        raise ValueError(f"need a [seeds >= 2, grid >= 2] matrix, got shape {y.shape}")
    values, where = [], []
    for s in range(y.shape[0]):
        i, j = pick(np.nanmean(np.delete(y, s, axis=0), axis=0))
        where.append((i, j))
        values.append(float(y[s, j] - y[s, i]) if i != j else 0.0)
    e = np.array(values)
    return HeldOut(float(e.mean()), t_lower(e, level), t_upper(e, level), tuple(values), tuple(where))


def held_out_max_rise(curves, level: float = LEVEL) -> HeldOut:
    """The rise after the first minimum: per seed s, ``y_s[j] − y_s[i]`` with ``(i, j)`` the minimum and the
    peak of the largest rise (`max_rise`) of the *other* seeds' mean curve (0 where it never rises)."""
    return _held_out(np.asarray(curves, dtype=float), lambda m: max_rise(m)[1:], level)


def held_out_drop(curves, level: float = LEVEL) -> HeldOut:
    """The second descent: per seed s, ``y_s[j] − y_s[last]`` with j the peak of the largest rise of the
    *other* seeds' mean curve (0 where it never rises: no peak to descend from)."""

    def pick(m: np.ndarray) -> tuple[int, int]:
        j = max_rise(m)[2]
        return (len(m) - 1, j) if j > 0 else (0, 0)

    return _held_out(np.asarray(curves, dtype=float), pick, level)


def peak_location(curves) -> int:
    """The grid index of the model-wise peak: the most common of `held_out_peak`'s per-seed peak indices
    (each chosen on the other seeds; ties: the smaller index)."""
    return int(np.bincount(held_out_peak(curves).peak_index).argmax())


def located_peak_rule(n_params, threshold: int, tolerance: float) -> Rule:
    """`peak_rule` and the peak's parameter count within ±`tolerance` (relative) of the parameter count at
    grid index `threshold` (the interpolation threshold)."""
    n_params = np.asarray(n_params, dtype=float)
    rule = peak_rule()

    def located(curves: np.ndarray) -> bool:
        if not rule(curves):
            return False
        return abs(n_params[peak_location(curves)] / n_params[threshold] - 1) <= tolerance + 1e-12

    return located


def rise_rule(min_rise: float) -> Rule:
    """`held_out_max_rise`'s lower bound above `min_rise` (points as fractions: 0.02 = 2 points)."""
    return lambda curves: held_out_max_rise(curves).exceeds(min_rise)


def fall_rule(min_rise: float) -> Rule:
    """`held_out_drop`'s lower bound above `min_rise`."""
    return lambda curves: held_out_drop(curves).exceeds(min_rise)


def fixed_rise(curves, valley: int, peak: int, level: float = ABSENCE_LEVEL) -> HeldOut:
    """Per seed s, ``y_s[peak] − y_s[valley]`` at grid indices fixed in advance (located on other data)."""
    return _held_out(np.asarray(curves, dtype=float), lambda m: (valley, peak), level)


def absence_rule(min_rise: float, valley: int, peak: int) -> Rule:
    """`fixed_rise`'s upper bound below `min_rise`: no rise as large as `min_rise` from `valley` to `peak`."""
    return lambda curves: fixed_rise(curves, valley, peak).below(min_rise)


def no_fall(mean, at: int) -> np.ndarray:
    """`mean` with every fall after grid index `at` removed: from `at` on, its running maximum."""
    y = np.array(mean, dtype=float)
    y[at:] = np.maximum.accumulate(y[at:])
    return y


def planted_fall(null, fall: float, at: int) -> np.ndarray:
    """`null` falling linearly in the grid index from ``null[at]`` to ``(1 − fall)·null[at]`` at the last
    point (relative: 0.2 = 20% below the peak)."""
    y = np.array(null, dtype=float)
    n = len(y)
    ramp = (np.arange(n) - at) / max(n - 1 - at, 1)
    y[at + 1 :] = y[at] * (1 - fall * ramp[at + 1 :])
    return y


def planted_step(null, height: float, valley: int, peak: int) -> np.ndarray:
    """`null` with grid point `peak` set `height` (absolute, in the curve's units) above grid point
    `valley`: a rise of exactly `height` between them."""
    y = np.array(null, dtype=float)
    y[peak] = y[valley] + height
    return y


def peak_calibration(curves, n_params, threshold: int, tolerance: float) -> Calibration | None:
    """fpr and power of `located_peak_rule`: null `no_peak` of the seed mean, effect a peak of
    `PAPER_PEAK` planted at the threshold. None with one seed or fewer than 3 widths, or a threshold at
    the edge of the grid (no interior peak there)."""
    got = noise_and_mean(curves)
    if got is None or not 0 < threshold < len(n_params) - 1:
        return None
    y, sigma, mean = got
    null = no_peak(mean)
    effect = planted_peak(null, PAPER_PEAK / null[threshold], threshold)
    rule = located_peak_rule(n_params, threshold, tolerance)
    return calibrate(rule, null, effect, sigma, y.shape[0], n_sim=N_SIM)


def rise_calibration(curves, min_rise: float) -> Calibration | None:
    """fpr and power of `rise_rule`: null `no_rise` of the seed mean, effect a rise of `PAPER_RISE` planted
    after its first minimum (the start of its largest rise; the middle when that is at an edge)."""
    got = noise_and_mean(curves)
    if got is None:
        return None
    y, sigma, mean = got
    null = no_rise(mean)
    at = max_rise(mean)[1]
    at = at if 0 < at < len(mean) - 1 else len(mean) // 2
    effect = planted_rise(null, PAPER_RISE / null[at], at)
    return calibrate(rise_rule(min_rise), null, effect, sigma, y.shape[0], n_sim=N_SIM)


def fall_calibration(curves, min_rise: float) -> Calibration | None:
    """fpr and power of `fall_rule`: null `no_fall` after the seed mean's peak (the end of its largest
    rise; the middle when it never rises or peaks last), effect a fall of `PAPER_FALL` planted there."""
    got = noise_and_mean(curves)
    if got is None:
        return None
    y, sigma, mean = got
    at = max_rise(mean)[2]
    at = at if 0 < at < len(mean) - 1 else len(mean) // 2
    null = no_fall(mean, at)
    effect = planted_fall(null, PAPER_FALL / null[at], at)
    return calibrate(fall_rule(min_rise), null, effect, sigma, y.shape[0], n_sim=N_SIM)


def absence_calibration(curves, min_rise: float, valley: int, peak: int) -> Calibration | None:
    """fpr and power of `absence_rule` (module docstring: the roles swap): ``fpr`` on `no_peak` of the
    seed mean with a rise of exactly `min_rise` planted from `valley` to `peak`, ``power`` on `no_peak`
    of the seed mean. None with one seed or fewer than 3 grid points."""
    got = noise_and_mean(curves)
    if got is None or valley == peak:
        return None
    y, sigma, mean = got
    flat = no_peak(mean)
    boundary = planted_step(flat, min_rise, valley, peak)
    return calibrate(absence_rule(min_rise, valley, peak), boundary, flat, sigma, y.shape[0], n_sim=N_SIM)
