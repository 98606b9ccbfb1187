"""The sample-wise claims (Nakkiran et al. 2020 §6), two findings decided over the trials (each trial draws
β and one nested sequence of training examples, so the trials are the independent replicates):

1. more data hurts: the test MSE at n = d exceeds the one at n ≈ d/2 (paired over trials);
2. the sample-wise curve peaks at n = d: the peak located on half of the trials lies within ±5% of d and
   stands above both its valleys on the other half.

Decision rules and their calibration (fpr at the measured trial-to-trial noise, power at a planted effect):
`calibrate`. The medians over trials are quoted in the details.
"""

from __future__ import annotations

import math

import numpy as np

from overtrain.analysis.bounds import paired_rule, split_peak, t_lower
from overtrain.analysis.claims import Claim, calibrated, check
from overtrain.studies.samplewise_linear.calibrate import LEVEL, paired_calibration, split_peak_calibration
from overtrain.studies.samplewise_linear.config import SamplewiseLinearConfig

_HURTS = (
    "more data hurts: the test MSE at n = d exceeds that at n = d/2",
    "geometric mean over trials of test MSE at n = d / test MSE at n = d/2 (paired)",
    f"one-sided {LEVEL:.1%} lower bound > 1",
)
_PEAK = (
    "sample-wise test MSE peaks at n = d",
    "n of the peak located on the first half of the trials",
    f"within ±5% of d, and on the other half above both valleys (one-sided {LEVEL:.1%} bound, log scale)",
)
PEAK_TOLERANCE = 0.05
"""Claim 2: the peak counts as at n = d within ±5% of d."""


def median_curve(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """``(n, median over trials of the test MSE)`` of the ``risk`` rows, n ascending."""
    by: dict[int, list[float]] = {}
    for r in rows:
        if r.get("record") == "risk":
            by.setdefault(r["n"], []).append(r["risk"])
    ns = np.array(sorted(by))
    return ns, np.array([np.median(by[n]) for n in ns])


def risk_matrix(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """``(n, risk[trials, n])`` of the ``risk`` rows, n ascending, trials ascending (those with every n)."""
    by: dict[int, dict[int, float]] = {}
    for r in rows:
        if r.get("record") == "risk":
            by.setdefault(r["trial"], {})[r["n"]] = r["risk"]
    ns = np.array(sorted({n for d in by.values() for n in d}))
    full = [t for t in sorted(by) if len(by[t]) == len(ns)]
    return ns, np.array([[by[t][n] for n in ns] for t in full], dtype=float).reshape(len(full), len(ns))


def claims(cfg: SamplewiseLinearConfig, rows: list[dict]) -> list[Claim]:
    """Claims 1 and 2 from the compute run's ``risk`` rows (the closed form quoted in claim 1's detail is
    the ``expected`` row: None where it diverges)."""
    d = cfg.d
    ns, y = risk_matrix(rows)
    med = np.median(y, axis=0)
    closed = {r["n"]: r["risk"] for r in rows if r.get("record") == "expected"}
    out = []
    half = int(ns[np.argmin(np.abs(ns - d / 2))])
    if d not in ns.tolist() or abs(half - d / 2) > 0.05 * d:
        out.append(
            check(*_HURTS[:2], None, None, _HURTS[2], detail=f"need n = {d} and n ≈ {d / 2:g} in the grid")
        )
    else:
        i, j = ns.tolist().index(d), ns.tolist().index(half)
        diffs = np.log(y[:, i]) - np.log(y[:, j])
        lower = t_lower(diffs)
        expected = closed.get(half)
        claim = check(
            *_HURTS[:2],
            float(np.exp(diffs.mean())),
            None,
            _HURTS[2],
            detail=f"median test MSE {med[i]:.4g} at n = {d} vs {med[j]:.4g} at n = {half} (closed form at "
            f"n = {half}: {math.inf if expected is None else expected:.4g}); lower bound "
            f"{'none' if lower is None else f'{np.exp(lower):.3g}'}x; SD of the log ratio over trials "
            f"{diffs.std(ddof=1) if diffs.size > 1 else math.nan:.3g}",
        )
        out.append(
            calibrated(claim, paired_rule(LEVEL)(diffs[:, None]), paired_calibration(diffs), len(diffs))
        )
    if y.shape[0] < 2 or len(ns) < 3:
        out.append(check(*_PEAK[:2], None, None, _PEAK[2], detail="need ≥ 2 trials and ≥ 3 sizes"))
        return out
    peak = split_peak(y, ns, d, PEAK_TOLERANCE * d)
    bound = "no bound" if peak.lower is None else f"lower bound {np.exp(peak.lower):.3g}x"
    claim = check(
        *_PEAK[:2],
        peak.peak_x,
        None,
        _PEAK[2],
        detail=f"d = {d}; peak {np.exp(peak.excess):.3g}x the higher valley on {peak.held_out} held-out trials "
        f"({bound}); argmax of the median over all trials n = {int(ns[np.argmax(med)])} (median "
        f"{med.max():.4g}); grid {ns[0]}..{ns[-1]} ({len(ns)} points)",
    )
    cal = split_peak_calibration(y, ns, d, PEAK_TOLERANCE * d)
    out.append(calibrated(claim, peak.passed, cal, peak.held_out))
    return out
