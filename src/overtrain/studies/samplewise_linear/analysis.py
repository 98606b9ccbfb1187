"""The sample-wise claims (Nakkiran et al. 2020 §6), on the median over trials of the test MSE:

1. more data hurts: the median test MSE at n = d exceeds the one at n ≈ d/2;
2. the sample-wise curve peaks at n = d (argmax within ±5% of d).
"""

from __future__ import annotations

import math

import numpy as np

from overtrain.analysis.claims import Claim, check
from overtrain.studies.samplewise_linear.config import SamplewiseLinearConfig

_HURTS = (
    "more data hurts: the test MSE at n = d exceeds that at n = d/2",
    "median test MSE at n = d / median test MSE at n = d/2",
    "> 1",
)
_PEAK = (
    "sample-wise test MSE peaks at n = d",
    "n maximising the median test MSE over trials",
    "argmax within ±5% of d",
)


def median_curve(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """``(n, median over trials of the test MSE)`` of the ``risk`` rows, n ascending."""
    by: dict[int, list[float]] = {}
    for r in rows:
        if r.get("record") == "risk":
            by.setdefault(r["n"], []).append(r["risk"])
    ns = np.array(sorted(by))
    return ns, np.array([np.median(by[n]) for n in ns])


def claims(cfg: SamplewiseLinearConfig, rows: list[dict]) -> list[Claim]:
    """Claims 1 and 2 from the compute run's ``risk`` rows (the closed form quoted in claim 1's detail is
    the ``expected`` row: None where it diverges)."""
    d = cfg.d
    ns, med = median_curve(rows)
    closed = {r["n"]: r["risk"] for r in rows if r.get("record") == "expected"}
    out = []
    half = int(ns[np.argmin(np.abs(ns - d / 2))])
    if d not in ns.tolist() or abs(half - d / 2) > 0.05 * d:
        out.append(
            check(*_HURTS[:2], None, None, _HURTS[2], detail=f"need n = {d} and n ≈ {d / 2:g} in the grid")
        )
    else:
        at_d, at_half = med[ns.tolist().index(d)], med[ns.tolist().index(half)]
        expected = closed.get(half)
        out.append(
            check(
                *_HURTS[:2],
                at_d / at_half,
                at_d > at_half,
                _HURTS[2],
                detail=f"median test MSE {at_d:.4g} at n = {d} vs {at_half:.4g} at n = {half} "
                f"(closed form at n = {half}: {math.inf if expected is None else expected:.4g})",
            )
        )
    n_star = int(ns[np.argmax(med)])
    out.append(
        check(
            *_PEAK[:2],
            n_star,
            abs(n_star - d) <= 0.05 * d,
            _PEAK[2],
            detail=f"d = {d}; median test MSE at the peak {med.max():.4g}; grid {ns[0]}..{ns[-1]} "
            f"({len(ns)} points)",
        )
    )
    return out
