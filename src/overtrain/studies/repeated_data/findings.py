"""The repeated-data claims (Hernandez et al. 2022), decided from the per-run rows of `analysis`.

The held-out loss mixes two sources: the Zipf-bigram text with copied spans (3/4 of the rows) and the
[random block; same block] copy task (1/4). The paper's double descent is about the loss on unique *text*,
and the copy task's loss jumps when the induction head forms, so the two are kept apart: the worst E of a
size is chosen on the **text** part (``spans_loss``: argmax over E > 1 of the seed-mean text loss), the
peak and the mid-training rise are measured on the text, and the copy task is reported on its own, at the
E chosen on the text (so its damage is never selected on its own noise).

Findings (per size where marked; `calibrate` gives each rule's fpr and power; every rule needs ≥ 4 seeds):

- an interior E is worst (per size): leave-one-seed-out interior peak of the text loss over E, one-sided
  97.5% lower bound above `min_peak`;
- at the worst E copying is worse / induction heads are weaker / the top head carries less copying /
  induction is weaker over training / the phase change comes later (per size, N/A without a head at
  E = 1): per-seed relative change of the copying loss (2nd copy of [block; block]) / max prefix-matching
  score / the rise of the copying loss when the top head is ablated (causal) / the score averaged over
  training / the step it reaches the induction threshold, against E = 1, mean past `min_change` in the
  damaging direction and one-sided lower bound past 0;
- the text loss rises mid-training at the worst E more than at E = 1 (per size): per seed, the
  leave-one-seed-out rise above the running minimum at the worst E minus that at E = 1 (the text loss rises
  at E = 1 too, when the induction head forms), mean ≥ `min_rise`, one-sided 99% lower bound > 0;
- the worst E's gap to E = 1 peaks mid-training (per size): per seed, the text-loss ratio L_E(t) / L_1(t)
  at the step where the other seeds' mean ratio stands highest above its later minimum, over that
  minimum, − 1; mean ≥ `min_rise`, one-sided 99% lower bound > 0;
- larger models are hurt most by larger subsets: the largest model's interior peak at a smaller E than the
  smallest's; N/A unless both have an interior peak (their peak findings' rules passed).

- repetition makes the model behave like a smaller one (per size): the text-loss law L(N) fitted on the
  E = 1 runs, inverted; per seed the relative text-loss change at the worst E located on the other seeds,
  its mean read through the law as N_eff(E*) / N_eff(1) (95% t interval, the law held fixed); the rule
  is the one-sided 99% lower bound of the loss change above 0, its power taken against the paper's 2x
  expressed through the same law.

Checks: an induction head forms at E = 1 (the precondition of the copying findings).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from overtrain.analysis.bounds import t_quantile
from overtrain.analysis.claims import Claim, calibrated, check
from overtrain.analysis.rise import held_out_peak
from overtrain.studies.repeated_data.calibrate import (
    LEVEL,
    RISE_LEVEL,
    gap_bump,
    gap_calibration,
    gap_rule,
    held_out_bump,
    in_sample_peak,
    interior_peak,
    loo_damage,
    lower_bound,
    order_calibration,
    order_rule,
    paired_calibration,
    paired_rule,
    rise_calibration,
    rise_rule,
    shrink_calibration,
    shrink_rule,
    text_peak_calibration,
    text_peak_rule,
)
from overtrain.studies.repeated_data.config import RepeatedDataConfig
from overtrain.studies.repeated_data.effective_size import ScalingFit, effective_size, fit_scaling_law

TEXT = "spans_loss"
"""The text part of the held-out loss (the `spans` evaluation source)."""


def text_key(rows: list[dict]) -> str:
    """`TEXT` where every row has it; the mixed held-out loss where the config evaluates no `spans`."""
    return TEXT if rows and all(r.get(TEXT) is not None for r in rows) else "heldout_loss"


def grid(points: list[dict], size: str, repeats: list[int], seeds: list[int], key: str) -> np.ndarray:
    """[seed, E] matrix of `key` for one size (NaN where missing)."""
    out = np.full((len(seeds), len(repeats)), np.nan)
    for p in points:
        if p["size"] == size and p.get(key) is not None:
            out[seeds.index(p["seed"]), repeats.index(p["repeats"])] = p[key]
    return out


def worst_index(loss: np.ndarray) -> int:
    """Grid index of the worst E > 1 (highest seed-mean loss)."""
    return 1 + int(np.nanargmax(np.nanmean(loss, axis=0)[1:]))


def _curve_matrix(curves: list[dict], size: str, e: int, seeds: list[int], key: str) -> np.ndarray:
    """[seed, step] matrix of `key` at (size, E) over the steps every seed has (a step logged twice: mean)."""
    by: dict[tuple[int, int], list[float]] = {}
    for r in curves:
        if r["size"] == size and r["repeats"] == e and r.get(key) is not None:
            by.setdefault((r["seed"], r["step"]), []).append(r[key])
    steps = sorted({st for s, st in by if all((seed, st) in by for seed in seeds)})
    return np.array([[np.mean(by[(seed, st)]) for st in steps] for seed in seeds]).reshape(len(seeds), -1)


def _peak_claim(cfg: RepeatedDataConfig, points: list[dict], size: str, key: str) -> tuple[Claim, bool]:
    """The interior-peak finding of one size on the text loss, and whether its rule passed."""
    reps, seeds = list(cfg.repeats), list(cfg.seeds)
    text = grid(points, size, reps, seeds, key)
    full = np.nanmean(grid(points, size, reps, seeds, "heldout_loss"), axis=0)
    m = np.nanmean(text, axis=0)
    value, i = in_sample_peak(m)
    lower, passed = None, False
    if len(seeds) >= 2:
        held = held_out_peak(text, LEVEL)
        value, lower = held.excess, held.lower
        passed = text_peak_rule(cfg.min_peak)(text)
    what = "text loss" if key == TEXT else "held-out loss (no `spans` evaluation: text and copy task mixed)"
    claim = check(
        f"An intermediate E is worst for the text loss ({size})",
        f"interior peak of the seed-mean {what} over the higher of its valleys before and after, − 1 "
        "(peak and valleys located on the other seeds, leave-one-seed-out, with ≥ 2 seeds)",
        value,
        passed,
        f"one-sided 97.5% lower bound > {cfg.min_peak:g} (≥ 4 seeds)",
        detail=f"text peak at E = {reps[i]} ({cfg.subset(reps[i])} sequences): {m[i]:.4f}; E = 1: {m[0]:.4f}; "
        f"E = {reps[-1]}: {m[-1]:.4f}; held-out loss with the copy task at E = {reps[i]}: "
        f"{full[i] / full[0] - 1:+.2%} vs E = 1",
    )
    claim.ci_low = lower
    return calibrated(claim, passed, text_peak_calibration(text, cfg.min_peak), len(seeds)), passed


def _damage_claims(cfg: RepeatedDataConfig, points: list[dict], size: str, w: int) -> list[Claim]:
    """The precondition check and the copying / induction findings of one size at worst-E index `w`."""
    reps, seeds = list(cfg.repeats), list(cfg.seeds)
    formed = float(np.nanmean(grid(points, size, reps, seeds, "max_prefix_matching")[:, 0]))
    out = [
        check(
            f"Precondition: an induction head forms without repetition ({size})",
            "max prefix-matching score over heads at E = 1 (seed mean)",
            formed,
            formed >= cfg.induction_threshold,
            f"≥ {cfg.induction_threshold:g}",
            detail=f"uniform attention scores {points[0]['uniform_prefix_matching']:.3f}",
            type="check",
        )
    ]
    has_head = formed >= cfg.induction_threshold
    task = np.nanmean(grid(points, size, reps, seeds, "copy_task_loss")[:, [0, w]], axis=0)
    measures = [
        ("copying_loss", "copying loss (2nd copy of [block; block])", 1, "copying is worse"),
        ("max_prefix_matching", "max prefix-matching score", -1, "induction heads are weaker"),
    ]
    if all(p.get("ablation_effect") is not None for p in points):
        measures.append(
            (
                "ablation_effect",
                "copying the top head carries (2nd-copy loss with it ablated − without, nats)",
                -1,
                "the top head carries less copying",
            )
        )
    if all(p.get("phase_change_step") is not None for p in points):
        measures += [
            (
                "induction_mean_score",
                "max prefix-matching score averaged over training (area under its curve)",
                -1,
                "induction is weaker over training",
            ),
            (
                "phase_change_step",
                f"step at which the max prefix-matching score reaches {cfg.induction_threshold:g} (the last "
                "step where it never does)",
                1,
                "the induction phase change comes later",
            ),
        ]
    for key, what, sign, phrase in measures:
        pair = grid(points, size, reps, seeds, key)[:, [0, w]]
        change = pair[:, 1] / pair[:, 0] - 1  # per seed, paired by seed (same init and placement)
        worse = sign * change[:, None]  # damage is positive
        value = float(np.nanmean(change))
        bound = lower_bound(worse[:, 0])
        passed = paired_rule(cfg.min_change)(worse) if has_head else None
        m1, mw = np.nanmean(pair, axis=0)
        claim = check(
            f"At the worst E on text, {phrase} ({size})",
            f"mean over seeds of the relative change of the {what}, E = {reps[w]} (chosen on the text) "
            "vs E = 1",
            value,
            passed,
            f"{'≥ +' if sign > 0 else '≤ −'}{cfg.min_change:g}, one-sided 97.5% bound excludes 0 (≥ 4 seeds)",
            detail=f"{mw:.4g} vs {m1:.4g}"
            + (
                f"; copy-task part of the held-out loss {task[1]:.4g} vs {task[0]:.4g}"
                if key == "copying_loss"
                else ""
            )
            + ("" if has_head else "; no induction head at E = 1 (precondition fails): not testable"),
        )
        if bound is not None:
            claim.ci_low, claim.ci_high = (bound, None) if sign > 0 else (None, -bound)
        # without a head there is nothing to damage: N/A, and no calibration to report
        out.append(
            calibrated(claim, passed, paired_calibration(worse, cfg.min_change), len(seeds))
            if has_head
            else claim
        )
    return out


def _rise_claim(cfg: RepeatedDataConfig, curves: list[dict], size: str, e: int, key: str) -> Claim:
    """The mid-training rise finding of one size: the text loss's rise above its running minimum at the
    worst E `e`, beyond the rise at E = 1 (the induction phase change makes the text loss rise there too)."""
    seeds = list(cfg.seeds)
    base, y = (_curve_matrix(curves, size, x, seeds, key) for x in (1, e))
    value, lower, passed, detail = math.nan, None, False, f"{y.shape[1]} evaluations"
    if y.shape == base.shape and y.shape[1] >= 2:
        ends = [
            float(np.max(m / np.minimum.accumulate(m) - 1))
            for m in (np.nanmean(x, axis=0) for x in (base, y))
        ]
        value = ends[1] - ends[0]  # one seed: the in-sample rises
        if len(seeds) >= 2:
            b1, bw = held_out_bump(base), held_out_bump(y)
            d = np.subtract(bw.per_seed, b1.per_seed)
            value, lower = float(d.mean()), lower_bound(d, RISE_LEVEL)
            passed = rise_rule(y.shape[1], cfg.min_rise)(np.concatenate([base, y], axis=1))
            ends = [b1.excess, bw.excess]
        detail = f"rise at E = {e}: {ends[1]:.4f}, at E = 1: {ends[0]:.4f} ({y.shape[1]} evaluations)"
    claim = check(
        f"The text loss rises mid-training at the worst E, more than at E = 1 ({size})",
        f"rise of the text loss above its running minimum at E = {e} minus that at E = 1, per seed (the step "
        "and the minimum before it located on the other seeds, leave-one-seed-out, with ≥ 2 seeds)",
        None if math.isnan(value) else value,
        passed,
        f"≥ {cfg.min_rise:g}, one-sided 99% lower bound > 0 (≥ 4 seeds)",
        detail=detail,
    )
    claim.ci_low = lower
    return calibrated(claim, passed, rise_calibration(base, y, cfg.min_rise), len(seeds))


def _gap_claim(cfg: RepeatedDataConfig, curves: list[dict], size: str, e: int, key: str) -> Claim:
    """The gap finding of one size: the worst E's text loss relative to E = 1's, L_E(t) / L_1(t) paired by
    seed, peaks mid-training above where it ends up (the paper's mid-training divergence, measured against
    the run without repetition so the induction phase change common to both cancels)."""
    seeds = list(cfg.seeds)
    base, y = (_curve_matrix(curves, size, x, seeds, key) for x in (1, e))
    value, lower, passed, detail, ratios = None, None, False, f"{y.shape[1]} evaluations", None
    if y.shape == base.shape and y.shape[1] >= 3:
        ratios = y / base
        m = np.nanmean(ratios, axis=0)
        i = int(np.nanargmax([m[k] / np.nanmin(m[k + 1 :]) for k in range(len(m) - 1)]))
        value = float(m[i] / np.nanmin(m[i + 1 :]) - 1)  # one seed: in sample
        if len(seeds) >= 2:
            bump = gap_bump(ratios)
            value, lower = bump.excess, lower_bound(bump.per_seed, RISE_LEVEL)
            passed = gap_rule(cfg.min_rise)(ratios)
        detail = (
            f"seed-mean gap at E = {e}: {m[i] - 1:+.2%} at its peak (evaluation {i + 1} of {len(m)}), "
            f"{m[-1] - 1:+.2%} at the end"
        )
    claim = check(
        f"The worst E's gap to E = 1 peaks mid-training ({size})",
        f"per seed, L_E(t) / L_1(t) of the text loss (E = {e}) at the step where the other seeds' mean "
        "stands highest above its later minimum, over that minimum, − 1 (leave-one-seed-out)",
        value,
        passed,
        f"≥ {cfg.min_rise:g}, one-sided 99% lower bound > 0 (≥ 4 seeds)",
        detail=detail,
    )
    claim.ci_low = lower
    if ratios is None:
        claim.detail += ": not testable"
        return claim
    return calibrated(claim, passed, gap_calibration(ratios, cfg.min_rise), len(seeds))


def _order_claim(
    cfg: RepeatedDataConfig, points: list[dict], sizes: list[str], n_of: dict, peaked: dict, key: str
) -> Claim:
    """Larger models are hurt most by larger subsets: the largest model's interior text peak at a smaller E
    than the smallest model's; N/A unless both peak findings' rules passed."""
    reps, seeds = list(cfg.repeats), list(cfg.seeds)
    small, big = (grid(points, s, reps, seeds, key) for s in (sizes[0], sizes[-1]))
    at = {s: reps[interior_peak(x)] for s, x in ((sizes[0], small), (sizes[-1], big))}
    value = math.log2(cfg.subset(at[sizes[-1]]) / cfg.subset(at[sizes[0]]))
    both = peaked[sizes[0]] and peaked[sizes[-1]]
    passed = order_rule(len(reps))(np.concatenate([small, big], axis=1)) if both else None
    claim = check(
        "Larger models are hurt most by larger repeated subsets",
        "log2(subset at the interior text-loss peak: largest / smallest model)",
        value,
        passed,
        "> 0, both models with an interior peak (their peak findings' rules pass)",
        detail="; ".join(
            f"{s} ({n_of[s]:,} params): interior peak at E = {at[s]}, {cfg.subset(at[s])} sequences"
            + ("" if peaked[s] else " (no established interior peak)")
            for s in (sizes[0], sizes[-1])
        ),
    )
    if not both:
        claim.detail += ": not testable"
        return claim
    return calibrated(claim, passed, order_calibration(small, big), len(seeds))


def _effective(
    cfg: RepeatedDataConfig, points: list[dict], sizes: list[str], n_of: dict[str, int], key: str
) -> tuple[list[Claim], dict[str, Any], list[dict[str, Any]], str]:
    """Scaling law of the text loss on the E = 1 runs, every (size, E)'s effective size, the effective-size
    finding per size and the headline."""
    reps, seeds = list(cfg.repeats), list(cfg.seeds)
    base = [p for p in points if p["repeats"] == 1]
    fit = fit_scaling_law([p["n_params_non_embedding"] for p in base], [p[key] for p in base])
    law = f"{fit.form} law L = {fit.a:.4g}·N^-{fit.b:.3g} + {fit.c:.3g} on {fit.sizes} sizes"
    rows, claims, found = [], [], {}
    local = _local_slopes(points, sizes, n_of, key)
    for size in sizes:
        loss = grid(points, size, reps, seeds, key)
        mean = np.nanmean(loss, axis=0)
        own = float(fit.size(mean[0]))  # the size's own E = 1 loss read through the law
        for e, value in zip(cfg.repeats, mean):
            eff = effective_size(fit, n_of[size], float(value))
            rows.append(
                {
                    "record": "effective_size",
                    "size": size,
                    "repeats": e,
                    "n": eff.n,
                    "loss": eff.loss,
                    "loss_key": key,
                    "n_eff": eff.n_eff,
                    "ratio_to_n": eff.ratio,
                    "ratio": eff.n_eff / own,
                    "extrapolated": eff.extrapolated,
                    "subset_share": cfg.subset(e) / cfg.sequences,
                }
            )
        found[size] = _shrink_claim(cfg, fit, law, loss, size, n_of[size], local[size])
        claims.append(found[size][0])
    big, change = found[sizes[-1]]
    headline = (
        "No effective-size headline: the text loss of the E = 1 runs does not fall with model size "
        f"(fitted exponent b = {fit.b:.3g})."
    )
    if fit.invertible and big.value is not None and big.value > 0:
        ci = "" if big.ci_low is None else f"95% CI {1 / big.ci_high:.2f}–{1 / big.ci_low:.2f}x; "
        b_loc, pair = local[sizes[-1]]
        shrink = (1 + change) ** (1 / b_loc) if b_loc > 0 else float("nan")
        headline = (
            f"Repeating {cfg.fraction:.0%} of the training tokens at the worst E makes the "
            f"{n_of[sizes[-1]]:,}-parameter model's text loss that of a model {1 / big.value:.2f}x smaller "
            f"({ci}{shrink:.2f}x through the local slope between {pair}); Hernandez et al. report 2x. "
            f"The finding is {big.verdict}."
        )
    return claims, {"record": "scaling_fit", "loss_key": key, **fit.row()}, rows, headline


def _local_slopes(
    points: list[dict], sizes: list[str], n_of: dict[str, int], key: str
) -> dict[str, tuple[float, str]]:
    """Per size, the slope b of ``log L`` against ``log N`` between its E = 1 seed-mean loss and that of the
    next smaller size (the smallest: the next larger), and which two sizes: the law's exponent where the
    size sits. A single power law over sizes with and without an induction head averages a flat stretch
    and a steep one, so the effective size through it can differ a lot from this local reading."""
    base = {
        s: float(np.mean([p[key] for p in points if p["size"] == s and p["repeats"] == 1])) for s in sizes
    }
    out = {}
    for i, size in enumerate(sizes):
        j = i - 1 if i > 0 else i + 1
        a, b = sorted((sizes[i], sizes[j]), key=n_of.__getitem__)
        slope = -np.log(base[b] / base[a]) / np.log(n_of[b] / n_of[a])
        out[size] = (float(slope), f"{a} and {b}")
    return out


def _shrink_claim(
    cfg: RepeatedDataConfig,
    fit: ScalingFit,
    law: str,
    loss: np.ndarray,
    size: str,
    n: int,
    local: tuple[float, str],
) -> tuple[Claim, float]:
    """The effective-size finding of one size and its mean relative loss change: the per-seed relative loss
    change at the worst E (located on the other seeds) against E = 1, read through the law as
    N_eff(E*) / N_eff(1) with a 95% t interval (the law held fixed); power against the paper's 2x through
    the same law; the detail also reads it through the `local` slope (`_local_slopes`)."""
    claim = f"Repetition makes the model behave like a smaller one ({size})"
    statistic = (
        "N_eff(worst E, located on the other seeds) / N_eff(E = 1): the mean per-seed relative text-loss "
        "change read through the law fitted on the E = 1 runs"
    )
    threshold = "< 1: one-sided 99% lower bound of the mean loss change > 0 (≥ 4 seeds)"
    if len(cfg.seeds) < 2 or not fit.invertible:
        why = "one seed: the worst E cannot be located on other seeds" if fit.invertible else law
        return check(claim, statistic, None, None, threshold, detail=f"not testable: {why}"), float("nan")
    d = loo_damage(loss)
    l1 = float(np.nanmean(loss[:, 0]))

    def ratio(change: float) -> float:
        return float(fit.size(l1 * (1 + change)) / fit.size(l1))

    half = t_quantile(0.975, d.size - 1) * float(d.std(ddof=1)) / np.sqrt(d.size)
    lo, hi = ratio(float(d.mean()) + half), ratio(float(d.mean()) - half)
    paper = float(fit.loss(n / 2) / fit.loss(n) - 1)  # a 2x smaller model's loss, in this law
    passed = shrink_rule()(loss)
    got = check(
        claim,
        statistic,
        ratio(float(d.mean())),
        passed,
        threshold,
        (lo, hi) if np.isfinite([lo, hi]).all() else None,
        detail=f"text loss {d.mean():+.2%} (per seed {', '.join(f'{x:+.2%}' for x in d)}); {law}; "
        f"the paper's 2x is {paper:+.2%} of loss in this law at {n:,} parameters; through the local slope "
        f"b = {local[0]:.3g} between {local[1]}: N_eff ratio {(1 + d.mean()) ** (-1 / local[0]):.3g}, the "
        f"paper's 2x {2 ** local[0] - 1:+.2%} of loss",
    )
    return calibrated(got, passed, shrink_calibration(loss, paper), len(cfg.seeds)), float(d.mean())


def worst_rows(cfg: RepeatedDataConfig, points: list[dict], worst: dict[str, int]) -> list[dict[str, Any]]:
    """Per size the worst E (chosen on the text loss) with the seed means there and at E = 1: the text loss,
    the copy task's held-out loss, the copying loss and the mixed held-out loss."""
    reps, seeds = list(cfg.repeats), list(cfg.seeds)
    key = text_key(points)
    rows = []
    for size, e in worst.items():
        row = {
            "record": "worst",
            "size": size,
            "repeats": e,
            "subset_sequences": cfg.subset(e),
            "chosen_on": key,
        }
        for name in (key, "copy_task_loss", "copying_loss", "heldout_loss"):
            m = np.nanmean(grid(points, size, reps, seeds, name)[:, [0, reps.index(e)]], axis=0)
            row[name], row[f"{name}_e1"] = float(m[1]), float(m[0])
        rows.append(row)
    return rows


def decide(
    cfg: RepeatedDataConfig, points: list[dict], curves: list[dict]
) -> tuple[list[Claim], dict[str, int], dict[str, Any], list[dict[str, Any]], str]:
    """From the per-run rows: the claims, the worst E per size (chosen on the text loss), the scaling-fit
    row, the effective-size rows and the headline sentence."""
    n_of = {p["size"]: p["n_params_non_embedding"] for p in points}
    sizes = sorted(cfg.models, key=n_of.__getitem__)
    reps, seeds = list(cfg.repeats), list(cfg.seeds)
    key = text_key(points)
    claims: list[Claim] = []
    worst: dict[str, int] = {}
    peaked: dict[str, bool] = {}
    for size in sizes:
        w = worst_index(grid(points, size, reps, seeds, key))
        worst[size] = reps[w]
        peak, peaked[size] = _peak_claim(cfg, points, size, key)
        claims += [peak, *_damage_claims(cfg, points, size, w)]
    claims += [_rise_claim(cfg, curves, size, worst[size], key) for size in sizes]
    claims += [_gap_claim(cfg, curves, size, worst[size], key) for size in sizes]
    fit_row: dict[str, Any] = {"record": "scaling_fit"}
    effective: list[dict[str, Any]] = []
    headline = "No effective-size headline: it needs at least 2 model sizes."
    if len(sizes) >= 2:
        claims.append(_order_claim(cfg, points, sizes, n_of, peaked, key))
        more, fit_row, effective, headline = _effective(cfg, points, sizes, n_of, key)
        claims += more
    return claims, worst, fit_row, effective, headline
