"""Decision rules of the lora-dd findings and their calibration (`overtrain.analysis.calibration`): each rule
is re-run on null data and on a planted effect at the seed-to-seed noise measured on the part's own cells.

The paper (Chang et al. 2025, LoRA-GGPO, arXiv 2502.14538) gives no effect sizes we could retrieve for these
toy settings, so each planted effect is a stated stand-in (the constants below), chosen as the smallest effect
a reader would call the paper's claim:

- **flatter (λ_max)**: GGPO's top Hessian eigenvalue 10% below LoRA's in every cell (`FLATTER`), on log
  ratios at their within-rank seed noise;
- **lower peak**: GGPO's highest test loss over the ranks around the threshold 5% below LoRA's (`PEAK_CUT`);

Test losses and accuracies are simulated at each rank's own seed noise (`rank_sd`, `calibrate_per_rank`).
- **no worse accuracy**: the non-inferiority margin is the claim's 1 point (`ACC_MARGIN`); null at the
  margin (GGPO 1 point worse), effect at equality;
- **rank-wise double descent**: a test-loss peak at the measured threshold rank r* 10% above the higher of
  its two valleys (`RANK_PEAK`; `peak_at_rule`: the peak's place is fixed by the training losses, not
  searched for in the test losses);
- **converges, diverges, stabilises**: a transient rise of the training loss 25% above where it had
  converged (`TRANSIENT`), decided against a 10% gate (`TRANSIENT_GATE`).
"""

from __future__ import annotations

import numpy as np

from overtrain.analysis.bounds import t_lower, t_upper
from overtrain.analysis.calibration import (
    Calibration,
    Rule,
    calibrate,
    no_peak,
    paired_share_calibration,
    seed_sd,
)
from overtrain.analysis.rise import PEAK_LEVEL, held_out_peak

N_SIM = 200
FLATTER = 0.10
PEAK_CUT = 0.05
ACC_MARGIN = 0.01
RANK_PEAK = 0.10
TRANSIENT = 0.25
TRANSIENT_GATE = 0.10


def lower_peak_rule(curves: np.ndarray) -> bool:
    """``[seeds, 2·ranks]``: GGPO's test-loss curve, then LoRA's. Passes when the upper bound of the mean
    over seeds of log(max_r GGPO / max_r LoRA) is below 0 — GGPO's peak lower, paired by seed."""
    g, lo = np.split(curves, 2, axis=1)
    bound = t_upper(np.log(g.max(axis=1) / lo.max(axis=1)))
    return bound is not None and bound < 0


def no_worse_rule(curves: np.ndarray) -> bool:
    """``[seeds, 2·ranks]``: GGPO's test accuracy, then LoRA's. Passes when the lower bound of the mean over
    seeds of (best GGPO − best LoRA) clears −`ACC_MARGIN` (non-inferiority by one point)."""
    g, lo = np.split(curves, 2, axis=1)
    bound = t_lower(g.max(axis=1) - lo.max(axis=1))
    return bound is not None and bound > -ACC_MARGIN


def rank_sd(*curves: np.ndarray) -> np.ndarray | None:
    """Per rank, the seed-to-seed SD of ``[seeds, ranks]`` matrices pooled over them (mean of their
    unbiased variances): the noise of each rank on its own — the under-fitted low ranks can be ten times
    noisier than the rest, and a single pooled σ would drown every rank in theirs. None with < 2 seeds or
    a non-finite value."""
    ys = [np.asarray(c, dtype=float) for c in curves]
    if any(y.ndim != 2 or y.shape[0] < 2 or y.shape != ys[0].shape for y in ys):
        return None
    sd = np.sqrt(np.mean([np.var(y, axis=0, ddof=1) for y in ys], axis=0))
    return np.maximum(sd, 1e-12) if np.all(np.isfinite(sd)) else None


def calibrate_per_rank(
    rule: Rule, null: np.ndarray, effect: np.ndarray, sd: np.ndarray, n_seeds: int
) -> Calibration:
    """`calibrate` with noise of its own SD at each grid point (`sd`, same length as `null`): simulated in
    units of `sd` and scaled back before the rule reads it. The reported σ is the median of `sd`."""

    def scaled(z: np.ndarray) -> bool:
        return rule(z * sd)

    cal = calibrate(scaled, null / sd, effect / sd, 1.0, n_seeds, n_sim=N_SIM)
    return Calibration(cal.fpr, cal.power, cal.n_sim, float(np.median(sd)), cal.n_groups)


def _pair_calibration(rule, g: np.ndarray, lo: np.ndarray, null_g, effect_g) -> Calibration | None:
    sd = rank_sd(g, lo)
    if sd is None:
        return None
    base = np.nanmean(lo, axis=0)
    return calibrate_per_rank(
        rule,
        np.concatenate([null_g(base), base]),
        np.concatenate([effect_g(base), base]),
        np.concatenate([sd, sd]),
        g.shape[0],
    )


def lower_peak_calibration(g: np.ndarray, lo: np.ndarray) -> Calibration | None:
    """`lower_peak_rule` at each rank's noise pooled over both methods' ``[seeds, ranks]`` test losses (`rank_sd`):
    null GGPO = LoRA's mean curve, effect GGPO = that curve with its peak cut by `PEAK_CUT`."""

    def cut(base: np.ndarray) -> np.ndarray:
        return np.minimum(base, base.max() * (1 - PEAK_CUT))

    return _pair_calibration(lower_peak_rule, g, lo, lambda b: b, cut)


def no_worse_calibration(g: np.ndarray, lo: np.ndarray) -> Calibration | None:
    """`no_worse_rule` at each rank's noise pooled over both methods' ``[seeds, ranks]`` accuracies: null GGPO one point
    worse than LoRA's mean curve (the margin), effect GGPO equal to it."""
    return _pair_calibration(no_worse_rule, g, lo, lambda b: b - ACC_MARGIN, lambda b: b)


def peak_at_excess(curves: np.ndarray, at: int) -> np.ndarray:
    """Per seed s of ``[seeds, ranks]`` test losses: ``y_s[at] / max(y_s[jL], y_s[jR]) − 1`` — how far the
    value at grid index `at` stands above the higher of its two valleys, the valleys jL < at < jR located
    on the mean of the *other* seeds (so seed s's own noise does not pick its minima, which would bias the
    valleys low and the excess high on a flat curve)."""
    y = np.asarray(curves, dtype=float)
    n = y.shape[0]
    others = (y.sum(axis=0)[None, :] - y) / max(n - 1, 1) if n > 1 else y
    left = np.argmin(others[:, :at], axis=1)
    right = at + 1 + np.argmin(others[:, at + 1 :], axis=1)
    rows = np.arange(n)
    return y[:, at] / np.maximum(y[rows, left], y[rows, right]) - 1


def peak_at_rule(at: int) -> Rule:
    """ "The test loss peaks at grid index `at`": the one-sided 97.5% lower bound of the mean over seeds of
    `peak_at_excess` above 0 (needs ≥ 4 seeds and an interior `at`)."""

    def rule(curves: np.ndarray) -> bool:
        bound = t_lower(peak_at_excess(curves, at))
        return bound is not None and bound > 0

    return rule


def peak_at_calibration(curves: np.ndarray, at: int) -> Calibration | None:
    """`peak_at_rule` at each rank's seed noise (`rank_sd`) of the ``[seeds, ranks]`` test losses: null the
    seed mean with every interior peak removed (`no_peak`), effect that null with its value at `at` raised
    to `RANK_PEAK` above the higher of its best values either side — the excess the rule measures."""
    y = np.asarray(curves, dtype=float)
    sd = rank_sd(y)
    if sd is None or not 0 < at < y.shape[1] - 1:
        return None
    null = no_peak(np.nanmean(y, axis=0))
    effect = null.copy()
    effect[at] = (1 + RANK_PEAK) * max(null[:at].min(), null[at + 1 :].min())
    return calibrate_per_rank(peak_at_rule(at), null, effect, sd, y.shape[0])


def transient_rule(level: float, sigmas: list[float] | None = None, sizes: list[int] | None = None) -> Rule:
    """Rule over ``[seeds, steps]`` training-loss blocks, one per rank, side by side: some rank's training loss
    has an interior peak (`held_out_peak`: the spike located on the other seeds) whose one-sided lower bound
    at `level` clears `TRANSIENT_GATE`. With `sigmas` the blocks are in units of each rank's σ (simulation);
    `sizes` are the blocks' step counts (default equal: ranks stopped at different steps differ)."""

    def rule(curves: np.ndarray) -> bool:
        if sigmas and sizes:
            blocks = np.split(curves, np.cumsum(sizes)[:-1], axis=1)
        else:
            blocks = np.split(curves, len(sigmas), axis=1) if sigmas else [curves]
        return any(
            held_out_peak(b * s if sigmas else b, level).exceeds(TRANSIENT_GATE)
            for b, s in zip(blocks, sigmas or [1.0])
        )

    return rule


def transient_calibration(per_rank: list[np.ndarray]) -> Calibration | None:
    """fpr and power of "some rank's training loss converges, diverges, stabilises": every rank's curve tested
    at a Bonferroni level (1 − (1 − `PEAK_LEVEL`)/ranks), the ranks simulated together so the "some rank"
    rule is calibrated as applied. Null: each rank's seed-mean curve with its peaks removed; effect: the rank
    with the largest measured spike (or the middle rank) given a spike `TRANSIENT` above its running
    minimum at its own peak step (`_spike`)."""
    level = 1 - (1 - PEAK_LEVEL) / max(len(per_rank), 1)
    sigmas = [seed_sd(c) for c in per_rank]
    if (
        not per_rank
        or not all(np.isfinite(s) and s > 0 for s in sigmas)
        or min(c.shape[1] for c in per_rank) < 3
    ):
        return None
    means = [np.nanmean(c, axis=0) for c in per_rank]
    nulls = [no_peak(m) for m in means]
    spikes = [float(np.max(m / n - 1)) for m, n in zip(means, nulls)]
    which = int(np.argmax(spikes)) if max(spikes) > 0 else len(per_rank) // 2
    at = int(np.argmax(means[which] / nulls[which])) if max(spikes) > 0 else means[which].size // 2
    at = min(max(at, 1), means[which].size - 2)
    effects = [_spike(n, at) if i == which else n for i, n in enumerate(nulls)]
    null = np.concatenate([n / s for n, s in zip(nulls, sigmas)])
    effect = np.concatenate([e / s for e, s in zip(effects, sigmas)])
    rule = transient_rule(level, sigmas, [c.shape[1] for c in per_rank])
    cal = calibrate(rule, null, effect, 1.0, per_rank[0].shape[0], n_sim=N_SIM)
    return Calibration(cal.fpr, cal.power, cal.n_sim, float(max(sigmas)), cal.n_groups)


def _spike(null: np.ndarray, at: int) -> np.ndarray:
    """`null` with the training loss at step index `at` risen `TRANSIENT` above where it had converged (its
    minimum over the earlier steps): a rise relative to the running minimum, as the claim reads."""
    out = null.copy()
    out[at] = max(out[at], (1 + TRANSIENT) * out[:at].min())
    return out


def flatter_calibration(g: np.ndarray, lo: np.ndarray) -> Calibration | None:
    """ "λ_max(GGPO) ≤ λ_max(LoRA) in ≥ 80% of cells" on ``[seeds, ranks]`` matrices of the two methods' top
    Hessian eigenvalues. The rule reads only the sign of each cell's difference, so it is simulated on the
    log ratios d = log(λ_GGPO / λ_LoRA) (λ_max spans two orders of magnitude over rank; a 10% cut is the
    same log step at every rank): null d ~ N(0, σ²) (the methods exchangeable), effect d ~ N(log(1 −
    `FLATTER`), σ²), σ the pooled seed-to-seed SD of d within a rank — not its spread over ranks, which would
    count the rank-to-rank differences as noise. Raw differences where some λ_max is not positive."""
    g, lo = np.asarray(g, dtype=float), np.asarray(lo, dtype=float)
    if g.shape != lo.shape or g.ndim != 2 or g.shape[0] < 2:
        return paired_share_calibration((g - lo).ravel(), 0.8, FLATTER * float(np.nanmedian(lo)))
    if np.all(g > 0) and np.all(lo > 0):
        d, effect = np.log(g / lo), -np.log(1 - FLATTER)
    else:
        d, effect = g - lo, FLATTER * float(np.nanmedian(lo))
    sigma = seed_sd(d)
    if not np.isfinite(sigma):
        return None

    def rule(x: np.ndarray) -> bool:
        return float(np.mean(x[0] <= 0)) >= 0.8

    cells = np.zeros(d.size)
    return calibrate(rule, cells, cells - effect, sigma, 1, n_sim=N_SIM)
