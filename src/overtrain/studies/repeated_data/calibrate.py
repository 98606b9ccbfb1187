"""Decision rules of the repeated-data findings and their calibration (`overtrain.analysis.calibration`):
each rule is re-run on null data and on data with the paper's effect planted, at the seed-to-seed noise
measured on the study's own runs, with the study's own number of seeds.

The effect size. Hernandez et al. (2022) report that repeating 0.1% of the data 100 times makes an 800M
model perform like a 400M one (a 2x smaller model). Through the loss-vs-size law of Kaplan et al. (2020),
L ∝ N^(−α_N) with α_N = 0.076, a 2x smaller model's loss is 2^0.076 = 1.054 times as high: `PAPER_EFFECT`
= +5.4% relative. It is planted as

- the interior peak over E (text loss at the peak 5.4% above the null's no-peak curve, `planted_peak`);
- the damage to copying (copying loss +5.4%) and to induction heads (max prefix-matching score −5.4%) at
  the worst E. The paper says repetition damages both *disproportionately* — more than the loss — without
  a number we can transfer, so the loss's own 5.4% is a conservative stand-in;
- the mid-training rise at the worst E: 5.4% more rise above the running minimum than at E = 1 (the paper
  shows the rise in its curves, with no number; the same stand-in), and a 5.4% bump of the worst E's loss
  relative to E = 1's through training (the gap L_E(t) / L_1(t) 5.4% higher mid-training than later);
- the effective size: the worst E's loss as high as a 2x smaller model's *through the study's own law*
  fitted on its E = 1 runs, L(N/2) / L(N) − 1 at the model's size (the paper's 2x in our units;
  `PAPER_EFFECT` where the law does not fall with size);
- the peak location vs size: the larger model's peak one grid step towards smaller E (a larger subset)
  than the smaller model's, both peaks of height 5.4%.

Rules that pick a location (the peak over E, the bump over training) pick it on the *other* seeds (leave one
seed out), so the measured quantity is not selected on its own noise; every rule needs a one-sided 97.5%
lower bound (`LEVEL`) over ≥ 4 seeds (`overtrain.analysis.rise.MIN_SEEDS_FOR_CI`), so it cannot pass with fewer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from overtrain.analysis.calibration import (
    Calibration,
    Rule,
    calibrate,
    no_peak,
    noise_and_mean,
    peak_null_and_effect,
    planted_peak,
    seed_sd,
)
from overtrain.analysis.rise import MIN_SEEDS_FOR_CI, held_out_peak

PAPER_ALPHA_N = 0.076
"""Kaplan et al. 2020: L(N) ∝ N^(−0.076) in non-embedding parameters."""

PAPER_EFFECT = 2.0**PAPER_ALPHA_N - 1
"""≈ 0.054: the relative loss increase of "behaves like a 2x smaller model" (Hernandez et al. 2022, 800M →
400M) under Kaplan's law: the planted effect of every finding (module docstring)."""

LEVEL = 0.975
"""One-sided coverage of every lower bound: a nominal 2.5% false-positive rate leaves room below the 5% a
finding may have for the calibration's Monte-Carlo error."""

RISE_LEVEL = 0.99
"""One-sided coverage of the mid-training rise's bound. Its per-seed rises are located on the other seeds,
which makes them correlated (ρ ≈ 0.25 between seeds on a flat null, simulated): at `LEVEL` the rule's fpr
was 0.05 at micro's measured noise (1,000 draws), at 0.99 it is 0.02 with the same power."""

N_SIM = 200
"""Simulated null and effect draws per finding (Monte-Carlo SE of a rate ≤ 0.035)."""


def lower_bound(values: Sequence[float], level: float = LEVEL) -> float | None:
    """One-sided Student-t lower bound ``mean − t_{level, n−1}·sd/√n`` of `values` (NaN dropped); None with
    fewer than `MIN_SEEDS_FOR_CI` values."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < MIN_SEEDS_FOR_CI:
        return None
    return float(v.mean() - stats.t.ppf(level, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))


# --- the interior peak over E (text loss) ----------------------------------------------------------------


def in_sample_peak(m: np.ndarray) -> tuple[float, int]:
    """Largest ``m(i) / max(min m[:i], min m[i+1:]) − 1`` over interior i of one curve, and that i."""
    best = max((m[i] / max(np.nanmin(m[:i]), np.nanmin(m[i + 1 :])) - 1, i) for i in range(1, len(m) - 1))
    return float(best[0]), int(best[1])


def text_peak_rule(min_peak: float) -> Rule:
    """ "An interior E is worst" on ``[seeds, E]`` text losses: `overtrain.analysis.rise.held_out_peak` —
    the peak and its two valleys located on the other seeds — with its one-sided `LEVEL` lower bound
    above `min_peak` (≥ 4 seeds)."""

    def rule(curves: np.ndarray) -> bool:
        return held_out_peak(curves, LEVEL).exceeds(min_peak)

    return rule


def text_peak_calibration(text: np.ndarray, min_peak: float) -> Calibration | None:
    """fpr and power of `text_peak_rule` at the noise of `text` (null: `no_peak` of its seed mean; effect:
    a peak of `PAPER_EFFECT` planted where the mean peaks, else mid-grid). None with one seed."""

    def where(mean: np.ndarray) -> int:
        return in_sample_peak(mean)[1] if np.any(mean > no_peak(mean)) else len(mean) // 2

    setup = peak_null_and_effect(text, PAPER_EFFECT, where)
    if setup is None:
        return None
    sigma, null, effect = setup
    return calibrate(text_peak_rule(min_peak), null, effect, sigma, np.shape(text)[0], n_sim=N_SIM)


# --- paired change at the worst E vs E = 1 (copying, induction) ------------------------------------------


def paired_rule(min_change: float) -> Rule:
    """Damage on a ``[seeds, 1]`` matrix of per-seed signed relative changes d_s (worse = positive): the
    mean is at least `min_change` and its one-sided `LEVEL` lower bound is above 0 (≥ 4 seeds)."""

    def rule(d: np.ndarray) -> bool:
        lb = lower_bound(d[:, 0])
        return lb is not None and lb > 0 and float(np.nanmean(d[:, 0])) >= min_change

    return rule


def paired_calibration(changes: np.ndarray, min_change: float) -> Calibration | None:
    """fpr and power of `paired_rule` on per-seed changes like `changes`: null d_s ~ N(0, σ²), effect
    N(`PAPER_EFFECT`, σ²), σ their measured seed-to-seed SD. None with fewer than 2 finite changes."""
    d = np.asarray(changes, dtype=float)
    d = d[np.isfinite(d)]
    if d.size < 2:
        return None
    sigma = float(d.std(ddof=1))
    return calibrate(
        paired_rule(min_change), np.zeros(1), np.full(1, PAPER_EFFECT), sigma, d.size, n_sim=N_SIM
    )


# --- the mid-training rise (a bump above the running minimum) --------------------------------------------


@dataclass(frozen=True)
class HeldOutBump:
    """The leave-one-seed-out rise of a ``[seeds, steps]`` loss matrix above its running minimum.

    For seed s the step i* with the largest ``m(i) / min m[:i]`` and the minimum j* before it are located
    on the mean m of the *other* seeds; the seed contributes ``e_s = y_s(i*) / y_s(j*) − 1`` (relative:
    0.01 = 1% above the best loss so far). `excess` is the mean of e_s, `lower` its one-sided bound (None
    with < 4 seeds), `step_index` the i* per seed.
    """

    excess: float
    lower: float | None
    per_seed: tuple[float, ...]
    step_index: tuple[int, ...]


def _bump_at(m: np.ndarray) -> tuple[int, int]:
    ratio = [m[i] / np.nanmin(m[:i]) for i in range(1, len(m))]
    i = 1 + int(np.nanargmax(ratio))
    return i, int(np.nanargmin(m[:i]))


def held_out_bump(curves: np.ndarray) -> HeldOutBump:
    """`HeldOutBump` of a ``[seeds ≥ 2, steps ≥ 2]`` matrix of losses."""
    y = np.asarray(curves, dtype=float)
    if y.ndim != 2 or y.shape[0] < 2 or y.shape[1] < 2:
        raise ValueError(f"need a [seeds >= 2, steps >= 2] matrix, got shape {y.shape}")
    per, at = [], []
    for s in range(y.shape[0]):
        i, j = _bump_at(np.nanmean(np.delete(y, s, axis=0), axis=0))
        per.append(float(y[s, i] / y[s, j] - 1))
        at.append(i)
    return HeldOutBump(float(np.mean(per)), lower_bound(per), tuple(per), tuple(at))


def rise_rule(n_steps: int, min_rise: float) -> Rule:
    """ "The loss rises mid-training *because of the repetition*" on ``[seeds, 2·n_steps]``: the E = 1 text
    curves, then the worst E's. Per seed the `held_out_bump` rise at the worst E minus the one at E = 1
    (the induction phase change makes the text loss rise at E = 1 too, so the rise alone is no evidence);
    its mean is at least `min_rise` and its one-sided `RISE_LEVEL` lower bound above 0 (≥ 4 seeds)."""

    def rule(y: np.ndarray) -> bool:
        if y.shape[0] < 2:
            return False
        d = np.subtract(held_out_bump(y[:, n_steps:]).per_seed, held_out_bump(y[:, :n_steps]).per_seed)
        lb = lower_bound(d, RISE_LEVEL)
        return lb is not None and lb > 0 and float(d.mean()) >= min_rise

    return rule


def rise_calibration(base: np.ndarray, worst: np.ndarray, min_rise: float) -> Calibration | None:
    """fpr and power of `rise_rule` at the pooled noise of the ``[seeds, steps]`` text curves at E = 1
    (`base`) and at the worst E: null both equal to the E = 1 seed mean (the worst E rises no more than E = 1
    does); effect the worst E's with a `PAPER_EFFECT` bump planted where the E = 1 mean rises most. None
    with one seed, fewer than 3 steps or unequal shapes."""
    base, worst = np.asarray(base, dtype=float), np.asarray(worst, dtype=float)
    if base.shape != worst.shape or base.shape[0] < 2 or base.shape[1] < 3:
        return None
    sigma = float(np.sqrt((seed_sd(base) ** 2 + seed_sd(worst) ** 2) / 2))
    m = np.nanmean(base, axis=0)
    if not np.isfinite(sigma) or not np.all(np.isfinite(m)):
        return None
    null = np.concatenate([m, m])
    effect = np.concatenate([m, planted_peak(m, PAPER_EFFECT, _bump_at(m)[0])])
    return calibrate(rise_rule(len(m), min_rise), null, effect, sigma, base.shape[0], n_sim=N_SIM)


# --- the gap to E = 1 through training (a mid-training bump of L_E(t) / L_1(t)) --------------------------


def gap_bump(ratios: np.ndarray) -> HeldOutBump:
    """The leave-one-seed-out bump of a ``[seeds, steps]`` matrix of loss ratios r_s(t) = L_E(t) / L_1(t)
    (paired by seed) above their *later* minimum: for seed s the step i* where the other seeds' mean
    ratio stands highest above its minimum after i*, and that minimum's step j* > i*, are located on the
    other seeds; the seed contributes ``r_s(i*) / r_s(j*) − 1`` (0.01: the worst E's loss, relative to
    E = 1's, is 1% higher mid-training than it is later). `held_out_bump` on the reversed time axis;
    `step_index` counts forward."""
    r = np.asarray(ratios, dtype=float)
    rev = held_out_bump(r[:, ::-1])
    n = r.shape[1]
    return HeldOutBump(rev.excess, rev.lower, rev.per_seed, tuple(n - 1 - i for i in rev.step_index))


def gap_rule(min_rise: float) -> Rule:
    """ "The worst E's gap to E = 1 peaks mid-training" on a ``[seeds, steps]`` ratio matrix: the
    `gap_bump` mean at least `min_rise` and its one-sided `RISE_LEVEL` lower bound above 0 (≥ 4 seeds)."""

    def rule(y: np.ndarray) -> bool:
        if y.shape[0] < 2:
            return False
        bump = gap_bump(y)
        lb = lower_bound(bump.per_seed, RISE_LEVEL)
        return lb is not None and lb > 0 and bump.excess >= min_rise

    return rule


def gap_calibration(ratios: np.ndarray, min_rise: float) -> Calibration | None:
    """fpr and power of `gap_rule` at the seed-to-seed noise of the ratio curves: null, the seed-mean
    ratio's running maximum (a gap that never narrows again: no bump); effect, that null with a
    `PAPER_EFFECT` peak planted where the mean ratio stands highest above its later minimum. None with
    one seed or fewer than 3 steps."""
    got = noise_and_mean(ratios)
    if got is None:
        return None
    r, sigma, m = got
    at = min(len(m) - 2, max(1, len(m) - 1 - _bump_at(m[::-1])[0]))
    null = np.maximum.accumulate(m)
    effect = planted_peak(null, PAPER_EFFECT, at)
    return calibrate(gap_rule(min_rise), null, effect, sigma, r.shape[0], n_sim=N_SIM)


# --- effective size: the loss at the worst E against E = 1 -----------------------------------------------


def loo_damage(loss: np.ndarray) -> np.ndarray:
    """Per seed s of a ``[seeds ≥ 2, E]`` loss matrix (column 0: E = 1): ``d_s = L_s(E*) / L_s(1) − 1``, E* > 1
    the worst E of the *other* seeds' mean loss (so no seed picks the E of its own noise). Relative: 0.05 =
    5% higher loss than without repetition."""
    y = np.asarray(loss, dtype=float)
    if y.ndim != 2 or y.shape[0] < 2 or y.shape[1] < 2:
        raise ValueError(f"need a [seeds >= 2, E >= 2] matrix, got shape {y.shape}")
    out = []
    for s in range(y.shape[0]):
        i = 1 + int(np.nanargmax(np.nanmean(np.delete(y, s, axis=0), axis=0)[1:]))
        out.append(y[s, i] / y[s, 0] - 1)
    return np.array(out)


def shrink_rule() -> Rule:
    """ "Repetition makes the model behave like a smaller one" on ``[seeds, E]`` losses: the one-sided
    `RISE_LEVEL` lower bound of the mean `loo_damage` above 0 (≥ 4 seeds). Through a loss-vs-size law that
    falls with N, a higher loss is a smaller effective size, so this is the rule on N_eff(E*) / N_eff(1) < 1.
    99%, not 97.5%: seed t's choice of E* uses seed s's loss, which correlates the d_s (simulated on flat
    nulls, 4,000 draws: fpr 0.037–0.046 at 97.5% and 0.013–0.021 at 99% for 4–8 seeds and 4–6 E)."""

    def rule(loss: np.ndarray) -> bool:
        if loss.shape[0] < 2:
            return False
        lb = lower_bound(loo_damage(loss), RISE_LEVEL)
        return lb is not None and lb > 0

    return rule


def shrink_calibration(loss: np.ndarray, effect: float) -> Calibration | None:
    """fpr and power of `shrink_rule` at the seed-to-seed noise of the ``[seeds, E]`` losses: null, every E
    at the E = 1 seed mean (repetition costs nothing); effect, the seed mean's worst E > 1 `effect`
    (relative) above E = 1 and the other E at E = 1. None with one seed or fewer than 2 E."""
    got = noise_and_mean(loss, min_points=2)
    if got is None:
        return None
    y, sigma, m = got
    null = np.full_like(m, m[0])
    bumped = null.copy()
    bumped[1 + int(np.argmax(m[1:]))] *= 1 + effect
    return calibrate(shrink_rule(), null, bumped, sigma, y.shape[0], n_sim=N_SIM)


# --- the peak's location vs model size -------------------------------------------------------------------


def interior_peak(loss: np.ndarray) -> int:
    """Grid index of the highest interior seed mean of a ``[seeds, E]`` matrix."""
    return 1 + int(np.nanargmax(np.nanmean(loss, axis=0)[1:-1]))


def order_rule(n_e: int) -> Rule:
    """ "The larger model's peak is at a smaller E (a larger subset)" on ``[seeds, 2·n_e]``: the smaller
    model's text losses over E, then the larger's; the larger's interior peak at a lower grid index."""

    def rule(y: np.ndarray) -> bool:
        return interior_peak(y[:, n_e:]) < interior_peak(y[:, :n_e])

    return rule


def order_calibration(small: np.ndarray, big: np.ndarray) -> Calibration | None:
    """fpr and power of `order_rule` at the pooled noise of both sizes' ``[seeds, E]`` text losses. Each
    null is the size's `no_peak` seed mean with a `PAPER_EFFECT` peak planted at the *same* index k for
    both; the fpr is the largest over k (the least favourable common location). The effect plants the
    smaller model's peak at its measured location k and the larger's at k − 1. None with one seed, fewer
    than 2 interior points or unequal grids."""
    small, big = np.asarray(small, dtype=float), np.asarray(big, dtype=float)
    n_e = small.shape[1]
    if small.shape != big.shape or small.shape[0] < 2 or n_e < 4:
        return None
    sigma = float(np.sqrt((seed_sd(small) ** 2 + seed_sd(big) ** 2) / 2))
    if not np.isfinite(sigma):
        return None
    nulls = [no_peak(np.nanmean(x, axis=0)) for x in (small, big)]
    rule, seeds = order_rule(n_e), small.shape[0]

    def both(k_small: int, k_big: int) -> np.ndarray:
        return np.concatenate(
            [planted_peak(nulls[0], PAPER_EFFECT, k_small), planted_peak(nulls[1], PAPER_EFFECT, k_big)]
        )

    k = max(2, interior_peak(small))
    effect = both(k, k - 1)  # the same in every call, and so is its pass rate (same noise draws)
    cals = [calibrate(rule, both(j, j), effect, sigma, seeds, n_sim=N_SIM) for j in range(1, n_e - 1)]
    return Calibration(max(c.fpr for c in cals), cals[0].power, N_SIM, sigma, seeds)
