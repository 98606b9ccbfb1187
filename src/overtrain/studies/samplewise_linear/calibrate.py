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

import numpy as np

from overtrain.analysis import bounds
from overtrain.analysis.calibration import Calibration
from overtrain.analysis.rise import PEAK_LEVEL

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


def split_peak_calibration(
    curves: np.ndarray, x: Sequence[float], target: float, tol: float, *, height: float = PAPER_PEAK
) -> Calibration | None:
    """`overtrain.analysis.bounds.split_peak_calibration` with this study's planted peak and draws."""
    return bounds.split_peak_calibration(curves, x, target, tol, height=height, level=LEVEL, n_sim=N_SIM)


def paired_calibration(diffs: Sequence[float], *, gap: float = PAPER_GAP) -> Calibration | None:
    """`overtrain.analysis.bounds.paired_calibration` of log differences, effect log(1 + `gap`)."""
    return bounds.paired_calibration(diffs, float(np.log1p(gap)), level=LEVEL, n_sim=N_SIM_T)
