"""The random-features claims (Belkin et al. 2019 §2; Nakkiran et al. 2020 §6), each decided on the
per-seed curves (each seed redraws the features and the data split / teacher sample):

- findings: the test squared loss and the 0-1 test error (classification data) peak at the interpolation
  threshold P = n (within ±`peak_tolerance`); second descent: the widest model beats P = n/2; label noise
  raises the 0-1 error at P = n (digits); sample-wise: with P fixed, the test loss at n = P exceeds the one
  at n = P/2 (more data hurts). Their decision rules and calibration: `calibrate` (held-out peaks, paired
  and trend t bounds over seeds, on log values; fpr at the measured noise, power at a planted effect);
- checks: κ(F) and ‖a‖ peak at P = n (linear algebra: they verify the solver), and ridge tuned per width on
  the test loss (an oracle) removes the peak.

A finding PASSes only with a calibrated false-positive rate ≤ 5% and ≥ 4 seeds (`calibrated`).
"""

from __future__ import annotations

import numpy as np

from overtrain.analysis.bounds import paired_rule, t_lower
from overtrain.analysis.calibration import Calibration
from overtrain.analysis.claims import Claim, calibrated, check
from overtrain.studies.random_features.calibrate import (
    LEVEL,
    joint,
    log_peak,
    log_peak_calibration,
    paired_calibration,
    slopes,
    trend_calibration,
)
from overtrain.studies.random_features.config import RandomFeaturesConfig


def median_curve(rows: list[dict], key: str, **match) -> tuple[np.ndarray, np.ndarray]:
    """``(x, median over seeds of key)`` of the rows matching `match`, x = ``ratio``, sorted."""
    by: dict[float, list[float]] = {}
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()) and r.get(key) is not None:
            by.setdefault(r["ratio"], []).append(r[key])
    x = np.array(sorted(by))
    return x, np.array([np.median(by[v]) for v in x])


def seed_matrix(rows: list[dict], key: str, **match) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y[seeds, grid])`` of `key` over x = ``ratio`` for the rows matching `match`, one row per seed
    that has every grid point (seeds ascending)."""
    by: dict[int, dict[float, float]] = {}
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()) and r.get(key) is not None:
            by.setdefault(r["seed"], {})[r["ratio"]] = r[key]
    x = np.array(sorted({v for d in by.values() for v in d}))
    full = [s for s in sorted(by) if len(by[s]) == len(x)]
    return x, np.array([[by[s][v] for v in x] for s in full], dtype=float).reshape(len(full), len(x))


def _at(x: np.ndarray, ratio: float) -> int:
    return int(np.argmin(np.abs(np.log(x / ratio))))


def _sigmas(cals) -> str:
    got = [c.sigma for c in cals if c is not None]
    return f"measured σ (log units) {min(got):.3g}–{max(got):.3g} over curves" if got else "no σ"


def claims(cfg: RandomFeaturesConfig, rows: list[dict]) -> list[Claim]:
    curves = sorted({(r["dataset"], r["features"]) for r in rows if r["record"] == "curve"})
    n_seeds = len(cfg.seeds)
    out = [_peak_claim(cfg, rows, curves, key, what, cls, n_seeds) for key, what, cls in _PEAKS]
    out += [_solver_peak(cfg, rows, curves, key, what) for key, what in _SOLVER_PEAKS]
    out.append(_second_descent(rows, curves, n_seeds))
    out.append(_label_noise_claim(rows, curves, n_seeds))
    out.append(_ridge_claim(cfg, rows, curves))
    out.append(_samplewise_claim(rows, cfg.peak_tolerance, n_seeds))
    return out


_PEAKS = [("test_loss", "test squared loss", False), ("test_error", "0-1 test error", True)]
_SOLVER_PEAKS = [("kappa", "condition number κ(F)"), ("norm", "solution norm ‖a‖")]


def _peak_claim(cfg, rows, curves, key, what, classification, n_seeds) -> Claim:
    tol = cfg.peak_tolerance
    ok, cals, details = [], [], []
    for ds, feat in curves:
        if classification and not ds.startswith("digits"):
            continue
        x, y = seed_matrix(rows, key, record="curve", dataset=ds, features=feat, solver="min_norm")
        if y.shape[0] < 2 or y.shape[1] < 3 or not np.all(y > 0):
            ok.append(None)
            details.append(f"{ds} / {feat}: not testable ({y.shape[0]} seeds, {y.shape[1]} widths)")
            continue
        peak = log_peak(y, x, 1.0, tol)
        ok.append(peak.passed)
        cals.append(log_peak_calibration(y, x, 1.0, tol))
        bound = "no bound" if peak.lower is None else f"lower bound {np.exp(peak.lower):.3g}x"
        details.append(
            f"{ds} / {feat}: peak at P/n = {sorted(set(peak.peak_x))}, {np.exp(peak.excess):.3g}x the higher "
            f"valley ({bound})"
        )
    testable = [v for v in ok if v is not None]
    claim = check(
        f"{what} peaks at the interpolation threshold P = n",
        f"curves whose held-out peak is at P/n within ±{tol:.0%} of 1 and stands above both valleys "
        f"(one-sided {LEVEL:.1%} bound over seeds, log scale; fraction)",
        float(np.mean(testable)) if testable and len(testable) == len(ok) else None,
        None,
        "all curves",
        detail="; ".join(details) + f"; {_sigmas(cals)}",
    )
    passed = all(testable) if testable and len(testable) == len(ok) else None
    return calibrated(claim, passed, joint(cals), n_seeds)


def _solver_peak(cfg, rows, curves, key, what) -> Claim:
    tol = cfg.peak_tolerance
    peaks = {}
    for ds, feat in curves:
        x, y = median_curve(rows, key, record="curve", dataset=ds, features=feat, solver="min_norm")
        peaks[f"{ds} / {feat}"] = float(x[np.argmax(y)])
    ok = [abs(p - 1) <= tol for p in peaks.values()]
    return check(
        f"{what} peaks at the interpolation threshold P = n",
        f"curves whose peak P/n is within ±{tol:.0%} of 1 (fraction)",
        np.mean(ok) if ok else None,
        all(ok) if ok else None,
        "all curves",
        detail="; ".join(f"{k}: peak at P/n = {v:.3g}" for k, v in peaks.items()),
        # κ and ‖a‖ blow up at P = n by linear algebra: their peaks verify the solver, not the phenomenon
        type="check",
    )


def _paired(label: str, d: np.ndarray, what: str) -> tuple[bool, Calibration | None, str]:
    """The paired rule on per-seed log differences `d`: (passed, calibration, detail)."""
    lower = t_lower(d, LEVEL)
    bound = "no bound" if lower is None else f"lower bound {np.exp(lower):.3g}x"
    spread = f", σ {d.std(ddof=1):.3g}" if d.size > 1 else ""
    detail = f"{label}: {np.exp(d.mean()):.3g}x {what} ({bound}{spread})"
    return paired_rule(LEVEL)(d[:, None]), paired_calibration(d), detail


def _second_descent(rows, curves, n_seeds) -> Claim:
    ok, cals, details = [], [], []
    for ds, feat in curves:
        x, y = seed_matrix(rows, "test_loss", record="curve", dataset=ds, features=feat, solver="min_norm")
        if x[-1] >= 2 and x[0] <= 0.5 and y.shape[0] >= 1:
            d = np.log(y[:, _at(x, 0.5)]) - np.log(y[:, -1])
            passed, cal, detail = _paired(f"{ds} / {feat}", d, f"at P/n = 0.5 vs {x[-1]:g}")
            ok.append(passed)
            cals.append(cal)
            details.append(detail)
    claim = check(
        "second descent: the widest model beats P = n/2",
        f"curves whose test loss at P = n/2 exceeds the one at the largest P (paired over seeds, one-sided "
        f"{LEVEL:.1%} bound on the log ratio; fraction)",
        float(np.mean(ok)) if ok else None,
        None,
        "all curves",
        detail="; ".join(details),
    )
    return calibrated(claim, all(ok) if ok else None, joint(cals) if ok else None, n_seeds)


def _label_noise_claim(rows, curves, n_seeds) -> Claim:
    noisy = sorted({ds for ds, _ in curves if ds.startswith("digits")})
    levels = [float(ds.split("=")[1]) for ds in noisy]
    claim_text = "label noise raises the peak (digits)"
    stat = (
        "mean over seeds of the slope of log 0-1 test error at P = n (mean over feature maps) on the label-noise "
        "probability"
    )
    if len(set(levels)) < 2:
        return check(claim_text, stat, None, None, "> 0", detail="needs digits at two or more noise levels")
    feats = sorted({f for _, f in curves})
    per_feat = []  # [features, seeds, levels] log error at P = n
    for feat in feats:
        cols = []
        for ds in noisy:
            x, y = seed_matrix(
                rows, "test_error", record="curve", dataset=ds, features=feat, solver="min_norm"
            )
            cols.append(np.log(y[:, _at(x, 1.0)]))
        per_feat.append(np.stack(cols, axis=1))
    logs = np.mean(per_feat, axis=0)
    s = slopes(levels, logs)
    lower = t_lower(s, LEVEL)
    cal = trend_calibration(levels, logs)
    detail = "; ".join(
        f"{feat}: " + ", ".join(f"noise {lv:g} → {e:.3f}" for lv, e in zip(levels, np.exp(m).mean(axis=0)))
        for feat, m in zip(feats, per_feat)
    )
    bound = "no bound" if lower is None else f"lower bound {lower:.3g}"
    claim = check(
        claim_text,
        stat,
        float(s.mean()),
        None,
        f"one-sided {LEVEL:.1%} lower bound > 0",
        detail=f"0-1 error at P = n, mean over seeds: {detail}; slope {s.mean():.3g} ({bound}) per unit noise",
    )
    return calibrated(claim, lower is not None and lower > 0, cal, n_seeds)


def _ridge_claim(cfg, rows, curves):
    """Optimal regularisation (Nakkiran et al.): with λ tuned per width on the test loss (the best of the
    grid), the curve has no bump: its loss at P = n is at most 5% above the loss at P = n/2 (the slack
    absorbs the coarseness of the λ grid; the min-norm ratio is in the hundreds)."""
    name = "ridge with λ tuned per width on the test loss (an oracle) removes the peak"
    if not cfg.ridges:
        return check(name, "ratio", None, None, "≤ 1", detail="no ridge values configured", type="check")
    ratios, details = [], []
    for ds, feat in curves:
        per_lam = [
            median_curve(
                rows, "test_loss", record="curve", dataset=ds, features=feat, solver="ridge", value=lam
            )
            for lam in cfg.ridges
        ]
        x, best = per_lam[0][0], np.min([y for _, y in per_lam], axis=0)
        if x[0] <= 0.5:
            ratio = best[_at(x, 1.0)] / best[_at(x, 0.5)]
            x0, y0 = median_curve(
                rows, "test_loss", record="curve", dataset=ds, features=feat, solver="min_norm"
            )
            ratios.append(ratio)
            details.append(f"{ds} / {feat}: {ratio:.3g} (min-norm {y0[_at(x0, 1.0)] / y0[_at(x0, 0.5)]:.3g})")
    worst = max(ratios) if ratios else None
    return check(
        name,
        f"max over curves of test loss at P = n / at P = n/2, best λ of {cfg.ridges}",
        worst,
        worst is not None and worst <= 1.05,
        "≤ 1.05",
        detail="; ".join(details),
        # λ is chosen on the very loss it is scored on: it verifies what optimal ridge can do, not a finding
        type="check",
    )


def _samplewise_claim(rows, tol: float, n_seeds: int) -> Claim:
    """More data hurts near n = P: per seed, the mean log test loss over the sizes with |n/P − 1| ≤ `tol`
    minus the log loss at n = P/2. The window, not n = P alone: exactly at n = P the loss is ~1/s_min² of a
    square feature matrix, whose tail is so heavy that one seed can sit 10⁴x above the others (measured
    at the defaults: log ratios 14.5, 5.0, 5.1, 4.9 for digits / ReLU), which a t bound over 4 seeds cannot
    absorb; the claim is about the neighbourhood of the threshold."""
    name = "sample-wise: more data hurts near n = P"
    sw = [r for r in rows if r["record"] == "samplewise"]
    if not sw:
        return check(name, "fraction", None, None, "all curves", detail="not run")
    ok, cals, details = [], [], []
    for ds, feat in sorted({(r["dataset"], r["features"]) for r in sw}):
        x, y = seed_matrix(sw, "test_loss", dataset=ds, features=feat, solver="min_norm")
        near = np.abs(x - 1) <= tol
        d = np.log(y[:, near]).mean(axis=1) - np.log(y[:, _at(x, 0.5)])
        passed, cal, detail = _paired(f"{ds} / {feat}", d, "over n/P = 0.5")
        ok.append(passed)
        cals.append(cal)
        details.append(detail)
    claim = check(
        name,
        f"curves whose test loss near n = P (geometric mean over |n/P − 1| ≤ {tol:g}) exceeds the one at "
        f"n = P/2 (paired over seeds, one-sided {LEVEL:.1%} bound on the log ratio; fraction)",
        float(np.mean(ok)),
        None,
        "all curves",
        detail="; ".join(details),
    )
    return calibrated(claim, all(ok), joint(cals), n_seeds)
