"""Calibration of the overtraining study's findings (`overtrain.analysis.calibration`): each decision rule is
re-run on null curves and on curves with the paper's effect planted, at the seed-to-seed noise measured
on the study's own curves, with the study's own number of seeds and bootstrap replicates.

- **Rise findings** (the perturbed loss is U-shaped; the loss after fine-tuning degrades with more
  pre-training, at a fixed and at the tuned LR), decided by `rise_rule`: the leave-one-seed-out rise
  (T* chosen on the other seeds, so no winner's curse) with a one-sided lower bound above `min_rise`. Null: the measured mean curve with every rise removed
  (`no_rise`: the loss never gets worse again after its minimum). Effect: that curve with a rise of
  `PAPER_RISE` planted after the middle budget — Springer et al. 2025 report OLMo-1B pre-trained on 3T
  tokens "over 2% worse on multiple standard LLM benchmarks" than at 2.3T.
- **Trend findings** (Δ rises with tokens, Spearman ≥ 0.8 at every γ). Δ's spread between seeds grows
  with Δ, so noise is measured and simulated on log Δ (σ in log units). Null: each γ's Δ constant at its
  geometric mean. Effect: Δ growing geometrically in log budget to `PAPER_DELTA_GROWTH` times its first
  value — a conservative stand-in for the steady growth of the perturbation gap the paper shows (here Δ
  grows 10–60x over the demo's grid). The γ curves are simulated together, so the joint rule "every γ" is
  calibrated as it is applied.
- **The monitor finding** (the early-warning monitor fires before T*), decided by `monitor_rule`: every
  seed's monitor fired, and the one-sided 97.5% t lower bound of the mean lead (doublings of tokens from
  the warning to T*) is above 0. Null: leads ~ N(0, σ²), the monitor firing at T* on average; effect: mean
  lead `MONITOR_LEAD`, the half doubling of warning a training team needs to act on it (the paper proposes
  no monitor, so this is our target, not a measured effect); σ the SD of the measured per-seed leads.
"""

from __future__ import annotations

import numpy as np

from overtrain.analysis.bounds import t_lower
from overtrain.analysis.calibration import (
    Calibration,
    Rule,
    calibrate,
    no_rise,
    planted_rise,
    planted_trend,
    seed_sd,
)
from overtrain.analysis.rise import held_out_rise
from overtrain.analysis.stats import spearman

PAPER_RISE = 0.02
"""The planted degradation: the last budget 2% worse than T* (relative, in the curve's units)."""

PAPER_DELTA_GROWTH = 2.0
"""The planted sensitivity growth: Δ doubles over the budget grid."""

MONITOR_LEAD = 0.5
"""The planted early warning: the monitor fires half a doubling of tokens before T*."""

N_SIM = 200
"""Simulated null and effect draws per finding (Monte-Carlo SE of a rate ≤ 0.035)."""


def rise_rule(min_rise: float, interior: bool) -> Rule:
    """The rise findings' decision rule on a ``[seeds, budgets]`` matrix: the leave-one-seed-out rise
    (`overtrain.analysis.rise`: T* chosen on the other seeds) has a one-sided 95% lower bound above
    `min_rise` (no bound, so no pass, below 4 seeds), and with `interior` the seed-mean curve's minimum is
    strictly inside the grid."""

    def rule(curves: np.ndarray) -> bool:
        if not held_out_rise(curves).exceeds(min_rise):
            return False
        j = int(np.nanargmin(np.nanmean(curves, axis=0)))
        return not interior or 0 < j < curves.shape[1] - 1

    return rule


def rise_calibration(
    curves: np.ndarray, *, min_rise: float, interior: bool, seed: int = 0
) -> Calibration | None:
    """fpr and power of `rise_rule` on ``[seeds, budgets]`` curves like `curves`; None when the noise
    cannot be measured (one seed) or the grid has fewer than 3 budgets."""
    curves = np.asarray(curves, dtype=float)
    sigma = seed_sd(curves)
    mean = np.nanmean(curves, axis=0)
    if not np.isfinite(sigma) or curves.shape[1] < 3 or not np.all(np.isfinite(mean)):
        return None
    null = no_rise(mean)
    return calibrate(
        rise_rule(min_rise, interior),
        null,
        planted_rise(null, PAPER_RISE),
        sigma,
        curves.shape[0],
        n_sim=N_SIM,
        seed=seed,
    )


def trend_calibration(
    t: np.ndarray, deltas: list[np.ndarray], *, threshold: float = 0.8, seed: int = 0
) -> Calibration | None:
    """fpr and power of "Spearman(T, mean Δ) ≥ `threshold` for every γ" over the ``[seeds, budgets]``
    Δ curves of each γ; None when the noise of some γ cannot be measured (one seed, or Δ ≤ 0).

    Δ's seed-to-seed spread grows with Δ itself (it spans 1–2 orders of magnitude over the grid), so the
    noise is measured and simulated on log Δ: each γ's curves are ``exp(m + ε)`` with σ the pooled SD of
    log Δ, the rule applied to them exactly as to the data (mean over seeds, then Spearman)."""
    logs = []
    for d in deltas:
        d = np.asarray(d, dtype=float)
        if not np.all(np.isfinite(d)) or np.any(d <= 0):
            return None
        logs.append(np.log(d))
    sigmas = [seed_sd(lg) for lg in logs]
    if not logs or not all(np.isfinite(s) and s > 0 for s in sigmas):
        return None
    n = len(t)
    # each γ's block is simulated in units of its own σ (calibrate draws unit noise) and scaled back
    null = np.concatenate([np.full(n, lg.mean() / s) for lg, s in zip(logs, sigmas)])
    effect = np.concatenate(
        [
            (lg[:, 0].mean() + np.log(planted_trend(1.0, PAPER_DELTA_GROWTH, n))) / s
            for lg, s in zip(logs, sigmas)
        ]
    )

    def rule(sim: np.ndarray) -> bool:
        blocks = np.split(sim, len(deltas), axis=1)
        return all(spearman(t, np.exp(b * s).mean(axis=0)) >= threshold for b, s in zip(blocks, sigmas))

    cal = calibrate(rule, null, effect, 1.0, deltas[0].shape[0], n_sim=N_SIM, seed=seed)
    return Calibration(cal.fpr, cal.power, cal.n_sim, float(max(sigmas)), cal.n_groups)


def order_rule(min_rise: float, level: float = 0.975) -> Rule:
    """ "T* moves earlier" on ``[seeds, 2·budgets]`` (the smaller setting's curves, then the larger's): both
    pass `rise_rule` with an interior minimum (each a calibrated U), and the larger setting's curve is already
    rising at the smaller setting's T*. Leave one seed out: on the other seeds locate T*_lo and T*_hi (seed-mean
    argmins); seed s contributes ``d_s = hi_s(T*_lo) / hi_s(T*_hi) − 1`` when T*_hi is strictly earlier, else
    0 (a tie is not "earlier"); the one-sided `level` lower bound of mean d_s must exceed 0. Comparing argmins
    alone passes a tie half the time wherever a curve is flat around its minimum."""
    u = rise_rule(min_rise, interior=True)

    def rule(curves: np.ndarray) -> bool:
        lo, hi = np.split(curves, 2, axis=1)
        n = lo.shape[0]
        if n < 4 or not (u(lo) and u(hi)):
            return False
        d = []
        for s in range(n):
            j_lo = int(np.nanargmin(np.nanmean(np.delete(lo, s, axis=0), axis=0)))
            j_hi = int(np.nanargmin(np.nanmean(np.delete(hi, s, axis=0), axis=0)))
            d.append(hi[s, j_lo] / hi[s, j_hi] - 1 if j_hi < j_lo else 0.0)
        lower = t_lower(d, level)
        return lower is not None and lower > 0

    return rule


def order_calibration(
    lo: np.ndarray, hi: np.ndarray, *, min_rise: float, seed: int = 0
) -> Calibration | None:
    """fpr and power of `order_rule` at the pooled seed noise of both ``[seeds, budgets]`` curves. Null: both
    curves the same U (the smaller setting's `no_rise` curve with the paper's 2% rise planted after the middle
    budget), so T* does not move; effect: the larger setting's minimum planted one budget earlier. None when
    the noise cannot be measured or the grid has fewer than 4 budgets."""
    lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    sigma = seed_sd(np.concatenate([lo, hi], axis=1))
    mean = np.nanmean(lo, axis=0)
    n = lo.shape[1]
    if not np.isfinite(sigma) or n < 4 or lo.shape != hi.shape or not np.all(np.isfinite(mean)):
        return None
    base = no_rise(mean)
    at = n // 2
    same = planted_rise(base, PAPER_RISE, at)
    earlier = planted_rise(base, PAPER_RISE, at - 1)
    return calibrate(
        order_rule(min_rise),
        np.concatenate([same, same]),
        np.concatenate([same, earlier]),
        sigma,
        lo.shape[0],
        n_sim=N_SIM,
        seed=seed,
    )


def monitor_rule(leads: list[float | None]) -> bool:
    """The monitor finding's rule on the per-seed leads (doublings of tokens from the warning to T*; None
    where the monitor never fired): every seed fired and the mean lead's one-sided 97.5% lower bound is
    above 0. False below 4 seeds, where no bound exists (the verdict is then UNDERPOWERED, as for every
    finding)."""
    if any(x is None for x in leads):
        return False
    lower = t_lower(np.asarray(leads, dtype=float), 0.975)
    return lower is not None and lower > 0


def monitor_calibration(leads: list[float | None]) -> Calibration | None:
    """fpr and power of `monitor_rule` at the SD of the measured leads (those seeds where it fired): null
    mean lead 0, effect `MONITOR_LEAD`. None with fewer than two leads."""
    x = np.asarray([v for v in leads if v is not None], dtype=float)
    if x.size < 2:
        return None

    def rule(sim: np.ndarray) -> bool:
        return bool(monitor_rule(list(sim[:, 0])))

    return calibrate(
        rule, np.zeros(1), np.full(1, MONITOR_LEAD), float(x.std(ddof=1)), len(leads), n_sim=N_SIM
    )
