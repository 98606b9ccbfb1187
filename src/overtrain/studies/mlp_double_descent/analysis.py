"""The two-layer-network claims (Nakkiran et al. 2020; Belkin et al. 2019; Liu & Flanigan 2023), on seed
means of the compute run's curves: per part (`sweep_claims`), the model-wise ones (`modelwise_claims`:
peak near the interpolation threshold, second descent, no peak before interpolation) and the epoch-wise
ones (`epochwise_claims`: rise after the first minimum, second descent over steps). The claim logic is a
set of pure functions of the curves, unit-tested on handmade curves."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from overtrain.analysis.claims import Claim, check
from overtrain.studies.mlp_double_descent.config import CLAIM_SETTINGS, MLPDoubleDescentConfig
from overtrain.studies.mlp_double_descent.engine import MLPSweepResult


def max_rise(curve: Sequence[float]) -> tuple[float, int, int]:
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


def _percent(widths: np.ndarray, values: np.ndarray) -> str:
    return ", ".join(f"H={w}: {v * 100:.1f}" for w, v in zip(widths.tolist(), values))


def modelwise_claims(r: MLPSweepResult) -> list[Claim]:
    """Nakkiran/Belkin model-wise double descent and Liu & Flanigan's "no interpolation, no peak".

    On seed means at the last measured step:

    1. *Peak near the interpolation threshold*: the peak is the top j of the largest rise of test error
       over widths (`max_rise`); the threshold is the first width that interpolates
       (`MLPSweepResult.interpolating`). Statistic P(peak)/P(threshold) in parameters; PASS when within
       ±`peak_tolerance` and the rise is ≥ `min_rise`.
    2. *Second descent*: test error at the peak minus at the largest width (points); PASS when ≥
       `min_rise` (a drop as large as the rise a peak needs).
    3. *No interpolation, no peak*: at `early_step` (default: the last measured step at which no width has
       memorised more than `early_memorised` of the corrupted labels) the largest rise of test error over
       widths (points); PASS when < `min_rise` and no width interpolates there.
    """
    pts = 100.0
    tol = r.peak_tolerance
    c1 = "test error peaks near the interpolation threshold (model-wise double descent)"
    c2 = "second descent: test error at the largest width is below the peak"
    c3 = "no interpolation, no peak (Liu & Flanigan): with far fewer steps the peak is absent"
    s1, t1 = (
        "P(peak)/P(threshold) (parameter counts)",
        f"within ±{tol:.0%} and rise ≥ {r.min_rise * pts:g} points",
    )
    s2, t2 = "test error drop peak → largest width (points)", f"≥ {r.min_rise * pts:g} points"
    if len(r.widths) < 3:
        why = f"needs at least 3 widths; have {len(r.widths)}"
        return [
            check(c1, s1, None, None, t1, detail=why),
            check(c2, s2, None, None, t2, detail=why),
            check(
                c3,
                "largest rise of test error over widths (points)",
                None,
                None,
                f"< {r.min_rise * pts:g} points",
                detail=why,
            ),
        ]
    test = r.mean("test_error")[:, -1]
    train = r.mean("train_error")[:, -1]
    rise, lo, peak = max_rise(test)
    hits = np.flatnonzero(r.interpolating()[:, -1])
    thr = int(hits[0]) if hits.size else None
    zero = np.flatnonzero(train == 0)
    criterion = (
        f"train loss ≤ {r.interpolation_loss:g}/k"
        if r.loss == "mse"
        else f"train error ≤ {r.interpolation_error:g}"
    )
    nk = r.n_train * r.classes
    curves = (
        f"At step {int(r.steps[-1])}, test error (%): {_percent(r.widths, test)}; train error (%, noisy "
        f"labels): {_percent(r.widths, train)}; train loss: "
        + ", ".join(f"H={w}: {v:.2g}" for w, v in zip(r.widths.tolist(), r.mean("train_loss")[:, -1]))
    )
    out = []
    if thr is None:
        out.append(
            check(
                c1, s1, None, None, t1, detail=f"no width interpolates ({criterion}): train longer. " + curves
            )
        )
    elif rise <= 0:
        # a FAIL without a value (the ratio is undefined): `check` would call a missing value N/A
        out.append(
            Claim(
                c1, s1, None, None, None, t1, "FAIL", "test error never rises with width: no peak. " + curves
            )
        )
    else:
        ratio = float(r.n_params[peak] / r.n_params[thr])
        ok = abs(ratio - 1) <= tol + 1e-12 and rise >= r.min_rise - 1e-12
        first_zero = (
            f"first width with zero train error H={r.widths[zero[0]]} (P={r.n_params[zero[0]]}, "
            f"P(peak)/P = {r.n_params[peak] / r.n_params[zero[0]]:.2f})"
            if zero.size
            else "no width reaches zero train error"
        )
        out.append(
            check(
                c1,
                s1,
                ratio,
                ok,
                t1,
                detail=(
                    f"peak H={r.widths[peak]} (P={r.n_params[peak]}, test error {test[peak] * pts:.1f}%), "
                    f"{rise * pts:.1f} points above the classical minimum at H={r.widths[lo]}; "
                    f"first interpolating width ({criterion}) H={r.widths[thr]} (P={r.n_params[thr]}); "
                    f"{first_zero}; "
                    f"P(peak)/(n·k) = {r.n_params[peak] / nk:.2f}. " + curves
                ),
            )
        )
    if rise <= 0:
        out.append(check(c2, s2, None, None, t2, detail="no peak: nothing to descend from"))
    elif peak == len(r.widths) - 1:
        out.append(check(c2, s2, 0.0, False, t2, detail="the peak is the largest width"))
    else:
        drop = float(test[peak] - test[-1])
        out.append(
            check(
                c2,
                s2,
                drop * pts,
                drop >= r.min_rise - 1e-12,
                t2,
                detail=(
                    f"{test[peak] * pts:.1f}% at H={r.widths[peak]} → {test[-1] * pts:.1f}% "
                    f"at H={r.widths[-1]}; classical minimum {test[lo] * pts:.1f}% at H={r.widths[lo]}"
                ),
            )
        )
    out.append(_early_claim(r, c3))
    return out


def _early_claim(r: MLPSweepResult, claim: str) -> Claim:
    pts = 100.0
    stat = "largest rise of test error over widths at the early step (points)"
    threshold = f"< {r.min_rise * pts:g} points, no width interpolating"
    interpolating = r.interpolating().any(axis=0)  # [C]
    if r.early_step is not None:
        hits = np.flatnonzero(r.steps == r.early_step)
        if hits.size == 0:
            return check(claim, stat, None, None, threshold, detail=f"step {r.early_step} was not measured")
        c = int(hits[0])
    else:
        memorised = r.mean("memorised")
        if np.isnan(memorised).all():
            return check(claim, stat, None, None, threshold, detail="needs label noise (nothing to memorise)")
        # step 0 is the untrained initialisation: not a training budget
        far = np.flatnonzero((memorised[:, 1:] <= r.early_memorised).all(axis=0)) + 1
        if far.size == 0:
            return check(
                claim,
                stat,
                None,
                None,
                threshold,
                detail=(
                    f"some width memorised > {r.early_memorised:.0%} of the corrupted labels by the first "
                    f"measured step: measure earlier (eval_every)"
                ),
            )
        c = int(far[-1])
    test = r.mean("test_error")[:, c]
    rise, lo, peak = max_rise(test)
    train = r.mean("train_error")[:, c]
    most = np.nanmax(r.mean("memorised")[:, c])
    return check(
        claim,
        stat,
        rise * pts,
        rise < r.min_rise and not interpolating[c],
        threshold,
        detail=(
            f"step {int(r.steps[c])} of {int(r.steps[-1])}: lowest train error {np.nanmin(train) * pts:.1f}% "
            f"(label noise {r.label_noise * pts:.1f}%), most memorised {most * pts:.0f}% "
            f"of the corrupted labels; test error (%): {_percent(r.widths, test)}"
        ),
    )


def epochwise_claims(r: MLPSweepResult) -> list[Claim]:
    """Nakkiran's epoch-wise double descent, on the seed-mean curves of the widest width.

    1. *Rise after the first minimum*: the largest rise of the test error over measured steps
       (`max_rise`; its start is the first minimum); PASS when ≥ `min_rise` and the train error on the
       noisy labels at the peak is below that at the minimum (it kept falling).
    2. *Second descent over epochs* (a bonus: not every setting shows it): test error at the peak minus at the last
       step (points); PASS when ≥ `min_rise`; FAIL when the peak is the last step; N/A without a rise.
    """
    pts = 100.0
    m = len(r.widths) - 1
    test, train = r.mean("test_error")[m], r.mean("train_error")[m]
    c1 = (
        f"epoch-wise: after its first minimum test error rises while train error falls (H={int(r.widths[m])})"
    )
    c2 = f"epoch-wise second descent: test error falls again after its peak (H={int(r.widths[m])})"
    s1, t1 = (
        "test error rise after its first minimum (points)",
        f"≥ {r.min_rise * pts:g} points, train error falling",
    )
    s2, t2 = "test error drop from its peak to the last step (points)", f"≥ {r.min_rise * pts:g} points"
    rise, lo, peak = max_rise(test)
    every = max(1, len(r.steps) // 12)
    trajectory = "train/test error (%) by step: " + ", ".join(
        f"{int(s)}: {a * pts:.1f}/{b * pts:.1f}"
        for s, a, b in zip(r.steps[::every], train[::every], test[::every])
    )
    if rise <= 0:
        return [
            check(c1, s1, 0.0, False, t1, detail="test error never rises. " + trajectory),
            check(c2, s2, None, None, t2, detail="no rise: no peak to descend from"),
        ]
    head = (
        f"first minimum {test[lo] * pts:.1f}% at step {int(r.steps[lo])} "
        f"(train error {train[lo] * pts:.1f}%), "
        f"peak {test[peak] * pts:.1f}% at step {int(r.steps[peak])} (train error {train[peak] * pts:.1f}%), "
        f"last {test[-1] * pts:.1f}% at step {int(r.steps[-1])} (train error {train[-1] * pts:.1f}%). "
    )
    falling = bool(train[peak] < train[lo])
    out = [check(c1, s1, rise * pts, rise >= r.min_rise - 1e-12 and falling, t1, detail=head + trajectory)]
    if peak == len(r.steps) - 1:
        out.append(check(c2, s2, 0.0, False, t2, detail="test error is highest at the last step. " + head))
    else:
        drop = float(test[peak] - test[-1])
        out.append(check(c2, s2, drop * pts, drop >= r.min_rise - 1e-12, t2, detail=head))
    return out


def sweep_claims(r: MLPSweepResult) -> list[Claim]:
    """The claims of one sweep: `modelwise_claims` or `epochwise_claims`, per its ``study``."""
    return modelwise_claims(r) if r.study == "modelwise" else epochwise_claims(r)


def claims(cfg: MLPDoubleDescentConfig, rows: list[dict]) -> list[Claim]:
    """Every configured part's claims, model-wise first, each from its ``curve`` rows and its ``sweep`` row
    and the claim settings of its config (`CLAIM_SETTINGS`)."""
    out: list[Claim] = []
    for name, sub in (("modelwise", cfg.modelwise), ("epochwise", cfg.epochwise)):
        if not sub:
            continue
        sweep = next(r for r in rows if r.get("record") == "sweep" and r["study"] == name)
        curves = [r for r in rows if r.get("record") == "curve" and r["study"] == name]
        result = MLPSweepResult.from_rows(
            curves,
            study=sub.study,
            n_train=sweep["n_train"],
            classes=sweep["classes"],
            label_noise=sweep["label_noise"],
            **{k: getattr(sub, k) for k in CLAIM_SETTINGS},
        )
        out += sweep_claims(result)
    return out
