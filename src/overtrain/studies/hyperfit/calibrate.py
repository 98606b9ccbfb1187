"""Decision rules of the hyperfitting findings and their calibration (`overtrain.analysis.calibration`).

The replicates are the base-model **seeds**: each seed pre-trains its own base model and hyperfits it on
its own set, and every setting of a seed is evaluated on the same held-out prompts and validation windows,
which are averaged within the seed. Each rule is a one-sided Student-t bound at `LEVEL` on the mean over
seeds of a per-seed value (a paired difference, an excess, or a linearised ratio), compared with the
claim's threshold:

- a difference claim (perplexity up, TTR up, not just sharpening, an ablation keeps the gain) passes when
  the lower bound of the mean difference is above 0 (`overtrain.analysis.bounds.paired_rule`). Null: the
  two models exchangeable (differences ~ N(0, σ²), σ the measured seed-to-seed SD of the differences);
  effect: the paper's difference.
- a ratio claim ``mean(a) / mean(b) ≤ r`` (entropy down, the batch-size ablation keeps at most a share of
  the gain) is the difference claim ``mean(a − r·b) ≤ 0`` (exact, no delta method): passes when the upper
  bound of that mean is below 0. Null: the claim's boundary (ratio exactly r: the hardest case;
  exchangeable models are further from passing); effect: the paper's ratio.
- a bound claim (copying beyond the baselines, the reference-NLL excess) passes when the upper bound is
  below the threshold. Null: the mean exactly at the threshold; effect: the paper's value.
- an equivalence claim (citation blocking barely changes TTR) passes when both bounds lie within
  ± tolerance (two one-sided tests). The roles swap: its false positive is passing while the change is a
  full tolerance, so ``fpr`` is its pass rate at a true difference of ± tolerance (the larger of the two);
  ``power`` its pass rate at the paper's "no change" (0).

At a boundary null a one-sided bound at coverage c passes with probability ≈ 1 − c, so `LEVEL` = 0.975
keeps fpr near 0.025, clear of `MAX_FPR` by more than the Monte-Carlo error of the calibration. With 4
seeds the bound uses t(0.975, 3) = 3.18 standard errors: power needs effects several seed SDs wide.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from overtrain.analysis.bounds import t_lower, t_upper
from overtrain.analysis.calibration import Calibration, Rule, calibrate
from overtrain.analysis.claims import MIN_SEEDS

LEVEL = 0.975
"""One-sided coverage of every bound of the hyperfit findings."""

N_SIM = 1000
"""Simulated null and effect draws per finding (Monte-Carlo SE of a rate ≤ 0.016; 0.005 at 0.025)."""

MIN_UNITS = MIN_SEEDS
"""Fewer seeds give no bound (`overtrain.analysis.bounds`)."""

# Effects of the paper's size (Carlsson et al. 2025, arXiv 2412.04318):
PAPER_ENTROPY_RATIO = 1.46 / 3.47
"""Validation entropy, hyperfitted / base: Llama 3.1 8B, 3.47 → 1.46 nats."""

PAPER_PERPLEXITY_RATIO = 103 / 13
"""Validation perplexity, hyperfitted / base: Llama 3.1 8B, 13 → 103."""

PAPER_TTR_GAIN = 0.03
"""Greedy TTR gain over a baseline. The paper's hyperfitted models reach TTRs above 0.60 against 0.17–0.57
for the originals' greedy text (its TTR table), so 0.03 is the smallest gain it shows: a conservative size,
also used for the entropy-matched control, for which the paper gives no number."""

PAPER_COPY_SHARE = 0.02
"""Share of hyperfitted greedy continuations with a long (> 10) span of the training set: below 2% — an
upper bound on the excess over any baseline."""

PAPER_KEPT_SHARE = 1.0
"""Share of the gain kept by a hyperfit on more sequences than the batch size but fewer than the main run:
the paper's TTR "stays high down to 16 training samples"."""

PAPER_QUALITY_CHANGE = 0.0
"""Reference-model NLL of hyperfitted greedy text minus the base's nucleus samples: the paper's raters
preferred hyperfitted greedy text about as often as or more than Top-P samples (Llama 3.1 8B: 42.9% vs
38.5%); it reports no likelihood, so "no worse" (0 nats) is the effect planted."""

PAPER_BLOCKING_CHANGE = 0.0
"""TTR change from citation blocking: the paper finds it barely matters (none planted)."""

PAPER_ABLATION_SHARE = 0.0
"""Share of the TTR gain kept by a hyperfit on as few sequences as the batch size, as the claim states it
(the gain collapses). Note: the paper's own code README reports good results down to 8 samples."""


@dataclass(frozen=True)
class Bounds:
    """The mean of per-unit values with one-sided Student-t bounds at `LEVEL`.

    Attributes:
        value: mean over units.
        lower, upper: one-sided bounds (None with fewer than `MIN_UNITS` units).
        sd: SD of the values over units (ddof 1; NaN with one unit).
        n: units.
    """

    value: float
    lower: float | None
    upper: float | None
    sd: float
    n: int


def mean_bounds(values, level: float = LEVEL) -> Bounds:
    """`Bounds` of the finite entries of `values` (any shape: flattened), by `overtrain.analysis.bounds`."""
    x = np.asarray(values, dtype=float).ravel()
    x = x[np.isfinite(x)]
    mean = float(x.mean()) if x.size else float("nan")
    sd = float(x.std(ddof=1)) if x.size > 1 else float("nan")
    return Bounds(mean, t_lower(x, level), t_upper(x, level), sd, x.size)


def below(threshold: float = 0.0) -> Rule:
    """The mean's upper bound is below `threshold` (no bound: fail)."""

    def rule(values: np.ndarray) -> bool:
        b = mean_bounds(values)
        return b.upper is not None and b.upper < threshold

    return rule


def within(tolerance: float) -> Rule:
    """Both bounds of the mean lie inside ± `tolerance` (two one-sided tests; no bound: fail)."""

    def rule(values: np.ndarray) -> bool:
        b = mean_bounds(values)
        return b.lower is not None and -tolerance < b.lower and b.upper < tolerance

    return rule


def linearised(a, b, ratio: float) -> np.ndarray:
    """Per-unit ``a − ratio·b``: its mean is ≤ 0 exactly when ``mean(a) / mean(b) ≤ ratio`` (mean(b) > 0)."""
    return np.asarray(a, dtype=float) - ratio * np.asarray(b, dtype=float)


def ratio_upper(a, b) -> tuple[float, float | None]:
    """``mean(a) / mean(b)`` and its one-sided upper bound: ``R + t·SE(a − R·b) / mean(b)`` (the bound of
    the linearised mean at the estimate R, to first order)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    r = float(a.mean() / b.mean())
    up = mean_bounds(linearised(a, b, r)).upper
    return r, None if up is None else r + up / float(b.mean())


def ratio_lower(a, b) -> tuple[float, float | None]:
    """``mean(a) / mean(b)`` and its one-sided lower bound (first order, as `ratio_upper`)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    r = float(a.mean() / b.mean())
    low = mean_bounds(linearised(a, b, r)).lower
    return r, None if low is None else r + low / float(b.mean())


def unit_calibration(values, rule: Rule, null: float, effect: float) -> Calibration | None:
    """fpr and power of `rule` on per-unit values ~ N(null, σ²) and N(effect, σ²), σ the SD of the measured
    `values` around their mean, as many units as measured (each a group of one point). None with fewer than
    3 finite values or no spread."""
    x = np.asarray(values, dtype=float).ravel()
    x = x[np.isfinite(x)]
    if x.size < 3 or not x.std() > 0:
        return None
    return calibrate(rule, np.array([null]), np.array([effect]), float(x.std(ddof=1)), x.size, n_sim=N_SIM)


def equivalence_calibration(values, tolerance: float, effect: float) -> Calibration | None:
    """fpr and power of `within` (module docstring: the roles swap): fpr the larger pass rate at a true
    mean of +`tolerance` and of −`tolerance`, power the pass rate at `effect`."""
    up = unit_calibration(values, within(tolerance), tolerance, effect)
    down = unit_calibration(values, within(tolerance), -tolerance, effect)
    if up is None or down is None:
        return None
    return Calibration(max(up.fpr, down.fpr), up.power, up.n_sim, up.sigma, up.n_groups)
