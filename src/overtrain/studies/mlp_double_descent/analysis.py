"""The two-layer-network findings (Nakkiran et al. 2020; Belkin et al. 2019; Liu & Flanigan 2023), decided
from the compute run's per-seed curves: per part (`sweep_claims`), the model-wise ones (`modelwise_claims`:
a peak near the interpolation threshold, a second descent, no peak before interpolation) and the epoch-wise
ones (`epochwise_claims`: a rise after the first minimum, a second descent over steps).

Every claim is a finding about the phenomenon. Its decision rule (`overtrain.studies.mlp_double_descent.
calibrate`) treats the initialisation seeds as the replicates: what it measures is located on the other
seeds (no winner's curse) and it decides with a one-sided bound over seeds, so it can PASS only with ≥ 4
seeds; its false-positive rate and power are simulated at the seed-to-seed noise of the same curves
(`calibrated`). The claim logic is a set of pure functions of the curves, unit-tested on handmade ones."""

from __future__ import annotations

import numpy as np

from overtrain.analysis.claims import Claim, calibrated, check
from overtrain.analysis.rise import PEAK_LEVEL, held_out_peak
from overtrain.studies.mlp_double_descent.calibrate import (
    ABSENCE_LEVEL,
    LEVEL,
    absence_calibration,
    absence_rule,
    fall_calibration,
    fall_rule,
    fixed_rise,
    held_out_drop,
    held_out_max_rise,
    located_peak_rule,
    max_rise,
    peak_calibration,
    peak_location,
    rise_calibration,
    rise_rule,
)
from overtrain.studies.mlp_double_descent.config import CLAIM_SETTINGS, MLPDoubleDescentConfig
from overtrain.studies.mlp_double_descent.engine import MLPSweepResult

__all__ = ["claims", "epochwise_claims", "max_rise", "modelwise_claims", "sweep_claims"]

PTS = 100.0
"""Points per unit of error (errors are fractions; claims speak of points)."""


def _percent(widths: np.ndarray, values: np.ndarray) -> str:
    return ", ".join(f"H={w}: {v * 100:.1f}" for w, v in zip(widths.tolist(), values))


def _bound(x: float | None) -> float | None:
    return None if x is None else x * PTS


def _held_out_claim(
    claim: str, statistic: str, held, threshold: str, detail: str, *, upper: bool = False
) -> Claim:
    """A finding's row from a `HeldOut` statistic (None: fewer than 2 seeds), in points; its verdict is set
    by `calibrated`."""
    if held is None:
        return Claim(
            claim, statistic, None, None, None, threshold, "", detail + "; one seed: nothing held out"
        )
    lo, hi = (None, _bound(held.upper)) if upper else (_bound(held.lower), None)
    return Claim(claim, statistic, held.value * PTS, lo, hi, threshold, "", detail)


def modelwise_claims(r: MLPSweepResult) -> list[Claim]:
    """Nakkiran/Belkin model-wise double descent and Liu & Flanigan's "no interpolation, no peak", on the
    per-seed test-error curves over widths at the last measured step (`calibrate` has the rules):

    1. *Peak near the interpolation threshold*: the held-out interior peak (`held_out_peak`: its excess
       over the higher of its two valleys, relative) has a one-sided lower bound above 0, and its width
       (the most common per-seed location) is within ±`peak_tolerance` in parameters of the threshold,
       the first width that interpolates (`MLPSweepResult.interpolating`, on seed means).
    2. *Second descent*: test error at the held-out peak minus at the largest width (`held_out_drop`,
       points), lower bound above `min_rise`.
    3. *No interpolation, no peak*: at `early_step` (default: the last measured step at which no width has
       memorised more than `early_memorised` of the corrupted labels) the test error at the last step's
       peak width minus at its classical-minimum width (points), upper bound below `min_rise`; N/A when a
       width already interpolates there.
    """
    tol = r.peak_tolerance
    c1 = "test error peaks near the interpolation threshold (model-wise double descent)"
    c2 = "second descent: test error at the largest width is below the peak"
    c3 = "no interpolation, no peak (Liu & Flanigan): with far fewer steps the peak is absent"
    s1 = (
        "held-out peak excess: mean over seeds of y_s(peak) / max(y_s(valleys)) − 1, peak and valleys "
        "located on the other seeds"
    )
    t1 = f"one-sided {PEAK_LEVEL:.1%} lower bound > 0 (≥ 4 seeds) and P(peak)/P(threshold) within ±{tol:.0%}"
    s2 = "held-out drop: test error at the peak (located on the other seeds) minus at the largest width (points)"
    t2 = f"one-sided {LEVEL:.0%} lower bound > {r.min_rise * PTS:g} points (≥ 4 seeds)"
    s3 = (
        "test error at the last step's peak width minus at its classical-minimum width, at the early step "
        "(points)"
    )
    t3 = f"one-sided {ABSENCE_LEVEL:.1%} upper bound < {r.min_rise * PTS:g} points (≥ 4 seeds), none interpolating"
    if len(r.widths) < 3:
        why = f"needs at least 3 widths; have {len(r.widths)}"
        return [
            check(c, s, None, None, t, detail=why) for c, s, t in ((c1, s1, t1), (c2, s2, t2), (c3, s3, t3))
        ]
    n_seeds = len(r.seeds)
    curves = r.test_error[:, :, -1]  # [S, M]
    test, train = r.mean("test_error")[:, -1], r.mean("train_error")[:, -1]
    hits = np.flatnonzero(r.interpolating()[:, -1])
    thr = int(hits[0]) if hits.size else None
    zero = np.flatnonzero(train == 0)
    criterion = (
        f"train loss ≤ {r.interpolation_loss:g}/k"
        if r.loss == "mse"
        else f"train error ≤ {r.interpolation_error:g}"
    )
    shown = (
        f"At step {int(r.steps[-1])}, seed-mean test error (%): {_percent(r.widths, test)}; train error (%, "
        f"noisy labels): {_percent(r.widths, train)}; train loss: "
        + ", ".join(f"H={w}: {v:.2g}" for w, v in zip(r.widths.tolist(), r.mean("train_loss")[:, -1]))
    )
    out = []
    if thr is None:
        out.append(
            check(
                c1, s1, None, None, t1, detail=f"no width interpolates ({criterion}): train longer. " + shown
            )
        )
    else:
        first_zero = (
            f"first width with zero train error H={r.widths[zero[0]]} (P={r.n_params[zero[0]]})"
            if zero.size
            else "no width reaches zero train error"
        )
        where = (
            f"first interpolating width ({criterion}) H={r.widths[thr]} (P={r.n_params[thr]}); {first_zero}"
        )
        if n_seeds < 2:
            claim = Claim(c1, s1, None, None, None, t1, "", f"{where}; one seed: nothing held out. " + shown)
            out.append(calibrated(claim, False, None, n_seeds))
        else:
            hp = held_out_peak(curves)
            at = peak_location(curves)
            ratio = float(r.n_params[at] / r.n_params[thr])
            claim = Claim(
                c1,
                s1,
                hp.excess,
                hp.lower,
                None,
                t1,
                "",
                f"peak H={r.widths[at]} (P={r.n_params[at]}, P(peak)/P(threshold) = {ratio:.2f}, "
                f"P(peak)/(n·k) = {r.n_params[at] / (r.n_train * r.classes):.2f}); {where}. " + shown,
            )
            passed = located_peak_rule(r.n_params, thr, tol)(curves)
            out.append(calibrated(claim, passed, peak_calibration(curves, r.n_params, thr, tol), n_seeds))
    drop = held_out_drop(curves) if n_seeds >= 2 else None
    _, lo, peak = max_rise(test)
    claim = _held_out_claim(
        c2,
        s2,
        drop,
        t2,
        f"seed means: {test[peak] * PTS:.1f}% at H={r.widths[peak]} → {test[-1] * PTS:.1f}% at "
        f"H={r.widths[-1]}; classical minimum {test[lo] * PTS:.1f}% at H={r.widths[lo]}",
    )
    passed = fall_rule(r.min_rise)(curves) if drop is not None else False
    out.append(calibrated(claim, passed, fall_calibration(curves, r.min_rise), n_seeds))
    out.append(_early_claim(r, c3, s3, t3))
    return out


def _early_claim(r: MLPSweepResult, claim: str, stat: str, threshold: str) -> Claim:
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
    train = r.mean("train_error")[:, c]
    most = np.nanmax(r.mean("memorised")[:, c])
    detail = (
        f"step {int(r.steps[c])} of {int(r.steps[-1])}: lowest train error {np.nanmin(train) * PTS:.1f}% "
        f"(label noise {r.label_noise * PTS:.1f}%), most memorised {most * PTS:.0f}% "
        f"of the corrupted labels; seed-mean test error (%): {_percent(r.widths, test)}"
    )
    if interpolating[c]:
        # the antecedent fails: a width already interpolates, so this step says nothing about the claim
        return check(claim, stat, None, None, threshold, detail="a width interpolates already; " + detail)
    _, valley, peak = max_rise(r.mean("test_error")[:, -1])
    if peak == 0:
        return check(
            claim, stat, None, None, threshold, detail="no peak at the last step to look for; " + detail
        )
    detail = f"late peak H={r.widths[peak]}, late classical minimum H={r.widths[valley]}; " + detail
    curves = r.test_error[:, :, c]
    n_seeds = len(r.seeds)
    held = fixed_rise(curves, valley, peak) if n_seeds >= 2 else None
    row = _held_out_claim(claim, stat, held, threshold, detail, upper=True)
    passed = absence_rule(r.min_rise, valley, peak)(curves) if held is not None else False
    return calibrated(row, passed, absence_calibration(curves, r.min_rise, valley, peak), n_seeds)


def epochwise_claims(r: MLPSweepResult) -> list[Claim]:
    """Nakkiran's epoch-wise double descent, on the per-seed test-error curves over steps of the widest width:

    1. *Rise after the first minimum*: `held_out_max_rise` (the first minimum and the peak of the largest
       rise located on the other seeds; points), one-sided 95% lower bound above `min_rise`, and the
       seed-mean train error on the noisy labels lower at the peak than at the minimum (it kept falling).
    2. *Second descent over steps* (not every setting shows it): `held_out_drop` from the peak to the last
       step (points), lower bound above `min_rise`.
    """
    m = len(r.widths) - 1
    n_seeds = len(r.seeds)
    curves = r.test_error[:, m, :]  # [S, C]
    test, train = r.mean("test_error")[m], r.mean("train_error")[m]
    h = int(r.widths[m])
    c1 = f"epoch-wise: after its first minimum test error rises while train error falls (H={h})"
    c2 = f"epoch-wise second descent: test error falls again after its peak (H={h})"
    s1 = "held-out rise: test error at the peak minus at the first minimum (both located on the other seeds; points)"
    t1 = f"one-sided {LEVEL:.0%} lower bound > {r.min_rise * PTS:g} points (≥ 4 seeds), train error falling"
    s2 = "held-out drop: test error at the peak (located on the other seeds) minus at the last step (points)"
    t2 = f"one-sided {LEVEL:.0%} lower bound > {r.min_rise * PTS:g} points (≥ 4 seeds)"
    _, lo, peak = max_rise(test)
    every = max(1, len(r.steps) // 12)
    trajectory = "seed-mean train/test error (%) by step: " + ", ".join(
        f"{int(s)}: {a * PTS:.1f}/{b * PTS:.1f}"
        for s, a, b in zip(r.steps[::every], train[::every], test[::every])
    )
    head = (
        f"seed means: first minimum {test[lo] * PTS:.1f}% at step {int(r.steps[lo])} "
        f"(train error {train[lo] * PTS:.1f}%), peak {test[peak] * PTS:.1f}% at step {int(r.steps[peak])} "
        f"(train error {train[peak] * PTS:.1f}%), last {test[-1] * PTS:.1f}% at step {int(r.steps[-1])} "
        f"(train error {train[-1] * PTS:.1f}%). "
    )
    # a precondition on the train curve, not simulated: the rise must come while the noise is being fitted
    falling = bool(peak > 0 and train[peak] < train[lo])
    rise = held_out_max_rise(curves) if n_seeds >= 2 else None
    claim = _held_out_claim(
        c1, s1, rise, t1, head + ("" if falling else "train error not falling; ") + trajectory
    )
    passed = (rise_rule(r.min_rise)(curves) and falling) if rise is not None else False
    out = [calibrated(claim, passed, rise_calibration(curves, r.min_rise), n_seeds)]
    drop = held_out_drop(curves) if n_seeds >= 2 else None
    claim = _held_out_claim(c2, s2, drop, t2, head)
    passed = fall_rule(r.min_rise)(curves) if drop is not None else False
    out.append(calibrated(claim, passed, fall_calibration(curves, r.min_rise), n_seeds))
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
