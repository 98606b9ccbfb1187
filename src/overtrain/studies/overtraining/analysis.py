"""The overtraining study's analysis run: from the stored child runs to the curves, inflection points,
trends, claims and advice it stores for the report.

Curves are indexed [seed, budget]: the groups that bootstrap CIs resample are the pre-training seeds
(each seed is an independent pre-training run, fine-tuned and perturbed with the same recipe). Every
curve the claims rest on is stored too (``record = 'curve'``: one row per curve, seed and budget), so the
report plots exactly what was decided on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from overtrain.analysis.bounds import t_lower, t_upper
from overtrain.analysis.claims import Claim, calibrated
from overtrain.analysis.inflection import Inflection, describe_t_star, inflection_point
from overtrain.analysis.rise import held_out_rise
from overtrain.analysis.stats import spearman, spearman_ci
from overtrain.config import config_hash
from overtrain.runs.query import Reader
from overtrain.runs.run import Run
from overtrain.studies.overtraining.advice import monitor_leads, recommend
from overtrain.studies.overtraining.calibrate import (
    monitor_calibration,
    monitor_rule,
    order_calibration,
    order_rule,
    rise_calibration,
    rise_rule,
    trend_calibration,
)
from overtrain.studies.overtraining.config import OvertrainingConfig
from overtrain.studies.overtraining.curves import ci, curve_rows, finetune_curves, inflection_row, matrix
from overtrain.studies.overtraining.early_warning import (
    forecast_claim,
    forecast_leads,
    forecast_theory_claims,
    monitor_series,
)
from overtrain.studies.overtraining.plan import child_ids, pretrain_configs
from overtrain.studies.overtraining.theory_run import LinearTheoryResult


@dataclass
class OvertrainingResult:
    """Everything the report shows, as rows (also written to the study run's ``evals.jsonl``)."""

    claims: list[Claim]
    inflections: list[dict[str, Any]]
    trends: list[dict[str, Any]]
    recommendation: str
    monitor: list[dict[str, Any]] = field(default_factory=list)
    """Per (seed, target): where the early-warning monitor fired and its lead over T*."""
    forecast: list[dict[str, Any]] = field(default_factory=list)
    """Per (seed, target): the T* forecaster replayed on the monitor's checks (`early_warning`)."""
    curves: list[dict[str, Any]] = field(default_factory=list)
    """The curves the statistics were computed from (`_curve_rows`)."""
    forecast_theory: list[dict[str, Any]] = field(default_factory=list)
    """Per (theory run, γ, seed): the forecaster replayed on the linear theory model (its validation)."""
    passed: int = field(init=False)
    """Findings that hold (PASS)."""

    def __post_init__(self) -> None:
        self.passed = sum(c.verdict == "PASS" and c.type == "finding" for c in self.claims)

    def rows(self) -> list[dict[str, Any]]:
        out = [{"record": "claim", **asdict(c)} for c in self.claims]
        out += [{"record": "inflection", **r} for r in self.inflections]
        out += [{"record": "trend", **r} for r in self.trends]
        out += [{"record": "monitor", **r} for r in self.monitor]
        out += [{"record": "forecast", **r} for r in self.forecast]
        out += [{"record": "forecast_theory", **r} for r in self.forecast_theory]
        out.append({"record": "recommendation", "text": self.recommendation})
        out += [{"record": "curve", **r} for r in self.curves]
        return out


def analyse(cfg: OvertrainingConfig, run: Run) -> None:
    """The analysis run's body: read the study's runs, store every row of `OvertrainingResult`."""
    run.truncate("evals", 0)  # a retried analysis starts over
    with Reader(run.store) as reader:
        result = analyse_runs(cfg, reader, child_ids(cfg))
    for row in result.rows():
        run.log_eval(row)
    run.set_info(
        recommendation=result.recommendation,
        findings_held=result.passed,
        findings_total=sum(c.type == "finding" for c in result.claims),
        claims_total=len(result.claims),
    )


def _verdict(ok: bool | None) -> str:
    return "N/A" if ok is None else ("PASS" if ok else "FAIL")


def _order_claim(claim, lo_m, hi_m, lo: Inflection, hi: Inflection, min_rise: float, n_seeds: int) -> Claim:
    """ "T* moves earlier", decided by `order_rule` (both curves a calibrated U, the larger setting's minimum
    strictly earlier) and calibrated by `order_calibration`. Testable (else N/A) only when *both* curves turn
    up inside the grid: a curve with no interior minimum has its argmin at an edge, so comparing with it would
    follow from the other curve's U alone."""
    testable = lo.is_u(min_rise) and hi.is_u(min_rise) and lo_m.shape[0] >= 2
    passed = order_rule(min_rise)(np.concatenate([lo_m, hi_m], axis=1)) if testable else None
    return calibrated(claim, passed, order_calibration(lo_m, hi_m, min_rise=min_rise), n_seeds)


def _rise_claim(
    name: str,
    curves: np.ndarray,
    inf: Inflection,
    detail: str,
    *,
    min_rise: float,
    interior: bool,
    n_seeds: int,
) -> Claim:
    """A rise finding decided by `rise_rule` (the leave-one-seed-out rise, no winner's curse) and
    calibrated on null and planted curves at the noise of `curves`; `inf` (bootstrap T*) is for the detail."""
    held = held_out_rise(curves) if curves.shape[0] >= 2 else None
    claim = Claim(
        name,
        "held-out rise: mean over seeds of L_s(last) / L_s(T* chosen on the other seeds) − 1",
        None if held is None else held.rise,
        None if held is None else held.lower,
        None,
        f"one-sided 95% lower bound above {min_rise:.1%} (needs ≥ 4 seeds)"
        + (" and an interior minimum" if interior else ""),
        "",
        f"{detail}; naive rise {inf.rise:.2%}",
    )
    passed = None if held is None else rise_rule(min_rise, interior)(curves)
    return calibrated(claim, passed, rise_calibration(curves, min_rise=min_rise, interior=interior), n_seeds)


def analyse_runs(cfg: OvertrainingConfig, reader: Reader, ids: dict[str, list[str]]) -> OvertrainingResult:
    """Compute the study's statistics from the stored runs named by `ids` (kind -> run ids)."""
    seed_of_parent = {config_hash(p): p.seed for p in pretrain_configs(cfg)}
    seeds = list(cfg.seeds)
    n_params = None
    budgets = reader.rows(
        "select run_id, budget, tokens_seen, tokens_per_param, loss, loss_floor from evals "
        "where list_contains(?, run_id) and budget is not null and split = 'val' order by tokens_seen",
        [ids["pretrain"]],
    )
    tokens = sorted({r["tokens_seen"] for r in budgets})
    if budgets:
        n_params = budgets[0]["tokens_seen"] / budgets[0]["tokens_per_param"]
    t = np.array(tokens, dtype=float)
    boot = cfg.bootstrap
    inflections: list[dict[str, Any]] = []
    trends: list[dict[str, Any]] = []
    claims: list[Claim] = []
    curves: list[dict[str, Any]] = []

    base = matrix(budgets, seeds, tokens, "loss", lambda r: seed_of_parent[r["run_id"]])
    trends.append({"quantity": "base val loss", "spearman": spearman(t, np.nanmean(base, 0))})
    floor = next((r["loss_floor"] for r in budgets if r.get("loss_floor") is not None), None)
    curves += curve_rows(
        base, seeds, tokens, "tokens_seen", curve="base val loss", n_params=n_params, loss_floor=floor
    )

    # --- fine-tuning: fixed LR and LR tuned per checkpoint -----------------------------------------
    ft = reader.evals(ids["finetune"])
    methods = sorted({r["method"] for r in ft})
    n_seeds = len(seeds)
    fc = finetune_curves(cfg, ft, seeds, tokens, seed_of_parent, boot)
    fixed, bracket = fc.inflections, fc.bracket
    matrices: dict[tuple, np.ndarray] = dict(fc.matrices)  # the [seed, budget] curves the findings read
    curves += fc.curve_rows
    inflections += fc.inflection_rows

    # --- perturbation sensitivity --------------------------------------------------------------------
    pr = reader.evals(ids["probe"])
    laws = sorted({r["law"] for r in pr})
    gammas = sorted({r["gamma"] for r in pr})
    pert: dict[tuple[str, float], Inflection] = {}
    for law in laws:
        for g in gammas:
            rows = [r for r in pr if r["law"] == law and r["gamma"] == g]
            seed_of = lambda r: seed_of_parent[r["parent"]]  # noqa: E731
            delta = matrix(rows, seeds, tokens, "delta", seed_of)
            loss = matrix(rows, seeds, tokens, "mean_loss", seed_of)
            curves += curve_rows(delta, seeds, tokens, "tokens_seen", curve="delta", law=law, gamma=g)
            curves += curve_rows(loss, seeds, tokens, "tokens_seen", curve="perturbed loss", law=law, gamma=g)
            rho = spearman_ci(t, delta, n_boot=boot)
            trends.append(
                {
                    "quantity": f"Δ {law} γ={g:g}",
                    "law": law,
                    "gamma": g,
                    "spearman": rho.value,
                    "ci_low": ci(rho.low, n_seeds),
                    "ci_high": ci(rho.high, n_seeds),
                    "first": float(np.nanmean(delta[:, 0])),
                    "last": float(np.nanmean(delta[:, -1])),
                }
            )
            inf = inflection_point(t, loss, n_boot=boot)
            pert[(law, g)] = inf
            matrices[("perturbed", law, g)] = loss
            matrices[("delta", law, g)] = delta
            inflections.append(
                inflection_row(inf, t, regime=f"{law} noise", gamma=g, quantity="perturbed loss")
            )

    # --- claims ---------------------------------------------------------------------------------------
    for law, name in (("init_scale", "init-scale (canonical)"), ("relative", "relative")):
        rel = [tr for tr in trends if tr.get("law") == law]
        if rel:
            worst = min(rel, key=lambda tr: tr["spearman"])
            claims.append(
                Claim(
                    f"Sensitivity Δ rises with pre-training tokens, {name} noise",
                    "min over γ of Spearman(T, Δ)",
                    worst["spearman"],
                    worst["ci_low"],
                    worst["ci_high"],
                    ">= 0.8 for every γ",
                    "",
                    "; ".join(
                        f"γ={tr['gamma']:g}: ρ={tr['spearman']:.2f}, Δ {tr['first']:.3f}→{tr['last']:.3f}"
                        for tr in rel
                    ),
                )
            )
            cal = trend_calibration(t, [matrices[("delta", law, tr["gamma"])] for tr in rel])
            calibrated(claims[-1], all(tr["spearman"] >= 0.8 for tr in rel), cal, n_seeds)
    base_trend = trends[0]["spearman"]
    claims.append(
        Claim(
            "Precondition: the base model keeps improving with more pre-training",
            "Spearman(T, base val loss), seed means",
            base_trend,
            None,
            None,
            "<= -0.8",
            _verdict(None if not np.isfinite(base_trend) else base_trend <= -0.8),
            "the paper's effect is about fine-tuning a model that is itself still getting better",
            type="check",
        )
    )

    def rise_finding(name: str, key: tuple, inf: Inflection, detail: str, interior: bool = False) -> None:
        claims.append(
            _rise_claim(
                name, matrices[key], inf, detail, min_rise=cfg.min_rise, interior=interior, n_seeds=n_seeds
            )
        )

    if ("init_scale", gammas[-1] if gammas else None) in pert:
        inf = pert[("init_scale", gammas[-1])]
        rise_finding(
            f"Perturbed loss is U-shaped in tokens (init-scale, γ={gammas[-1]:g})",
            ("perturbed", "init_scale", gammas[-1]),
            inf,
            f"T*: {describe_t_star(inf, t)}",
            interior=True,
        )
    for method in methods:
        lrs = cfg.finetune.lrs_for(method)
        top = lrs[-1]
        tuned = f"; {fc.selection[method]}; {bracket[method]}"
        # retention (the pre-training loss), in-distribution (the task: the paper's headline) and, when
        # measured, out-of-distribution capability (a held-out language), at the top LR and the tuned LR
        for fld, what in (
            ("pretrain_loss", "Post-fine-tuning pre-training loss"),
            ("task_loss", "Task loss after fine-tuning"),
            ("ood_loss", "Held-out language loss after fine-tuning"),
        ):
            for regime, key in ((f"LR {top:g}", top), ("LR tuned per checkpoint", "tuned")):
                if (method, key, fld) not in fixed:
                    continue
                inf = fixed[(method, key, fld)]
                rise_finding(
                    f"{what} degrades with more pre-training ({method}, {regime})",
                    (method, key, fld),
                    inf,
                    f"T*: {describe_t_star(inf, t)}; {inf.min_loss:.3f} at T*, {inf.final_loss:.3f} at the "
                    "largest budget" + (tuned if key == "tuned" else ""),
                )
        if len(lrs) > 1:
            lo, hi = fixed[(method, lrs[0], "pretrain_loss")], fixed[(method, lrs[-1], "pretrain_loss")]
            claims.append(
                Claim(
                    f"T* moves earlier for a larger fine-tuning LR ({method})",
                    "T*(largest LR) / T*(smallest LR)",
                    hi.t_star / lo.t_star,
                    None,
                    None,
                    "both curves a calibrated U, the larger one rising at the smaller's T* (needs ≥ 4 seeds)",
                    "",
                    f"T*(LR {lrs[0]:g}) = {lo.t_star:,.0f}; T*(LR {lrs[-1]:g}) = {hi.t_star:,.0f}",
                )
            )
            pair = [matrices[(method, lr, "pretrain_loss")] for lr in (lrs[0], lrs[-1])]
            _order_claim(claims[-1], *pair, lo, hi, cfg.min_rise, n_seeds)
    if len(gammas) > 1 and ("init_scale", gammas[0]) in pert:
        lo, hi = pert[("init_scale", gammas[0])], pert[("init_scale", gammas[-1])]
        claims.append(
            Claim(
                "T* of the perturbed loss moves earlier for larger γ (init-scale)",
                "T*(largest γ) / T*(smallest γ)",
                hi.t_star / lo.t_star,
                None,
                None,
                "both curves a calibrated U, the larger one rising at the smaller's T* (needs ≥ 4 seeds)",
                "",
                f"T*(γ={gammas[0]:g}) = {lo.t_star:,.0f}; T*(γ={gammas[-1]:g}) = {hi.t_star:,.0f}",
            )
        )
        pair = [matrices[("perturbed", "init_scale", g)] for g in (gammas[0], gammas[-1])]
        _order_claim(claims[-1], *pair, lo, hi, cfg.min_rise, n_seeds)

    # --- early-warning monitor: when did it fire, relative to the measured T*? --------------------------
    monitor, leads, fleads = cfg.pretrain.monitor, [], []
    if monitor is not None and tokens:
        # the perturbed-loss T* at the monitor's own noise if the probe measured it, else the largest γ
        same_noise = pert.get((monitor.law, monitor.gamma))
        targets = {"perturbed loss": same_noise or (pert.get(("init_scale", gammas[-1])) if gammas else None)}
        if methods:
            top_method = "full" if "full" in methods else methods[0]
            targets[
                f"pre-training loss after {top_method} FT, LR {cfg.finetune.lrs_for(top_method)[-1]:g}"
            ] = fixed[(top_method, cfg.finetune.lrs_for(top_method)[-1], "pretrain_loss")]
        leads = monitor_leads(reader, ids["pretrain"], seed_of_parent, targets, cfg.min_rise)
        for target, inf in targets.items():
            rows = [r for r in leads if r["target"] == target]
            if inf is None or not rows:
                continue
            per_seed = [r["lead_doublings"] for r in rows]
            lead = [x for x in per_seed if x is not None]
            testable = inf.is_u(cfg.min_rise)
            claims.append(
                Claim(
                    f"Early-warning monitor fires before T* ({target})",
                    "mean lead, doublings of tokens",
                    float(np.mean(lead)) if lead else None,
                    t_lower(lead, 0.975) if lead else None,
                    t_upper(lead, 0.975) if lead else None,
                    "fires in every seed, one-sided 97.5% lower bound of the mean lead > 0 (needs ≥ 4 seeds)",
                    "",
                    "; ".join(
                        f"seed {r['seed']}: "
                        + (
                            f"fired at {r['fired_tokens']:,} tokens (lead {r['lead_doublings']:+.2f}), "
                            f"predicted minimum {r['predicted_min']:,.0f}"
                            if r["fired_tokens"]
                            else "never fired"
                        )
                        for r in rows
                    )
                    + f"; T* = {inf.t_star:,.0f}"
                    + ("" if testable else " (no U: nothing to warn about)"),
                )
            )
            calibrated(
                claims[-1],
                monitor_rule(per_seed) if testable else None,
                monitor_calibration(per_seed) if testable else None,
                n_seeds,
            )

        # the T* forecaster replayed on the same checks: does it warn before T*, and how close is it?
        fleads = forecast_leads(
            monitor_series(reader, ids["pretrain"]),
            seed_of_parent,
            targets,
            cfg.min_rise,
            cfg.forecast_horizon,
        )
        for target, inf in targets.items():
            rows = [r for r in fleads if r["target"] == target]
            if inf is None or not rows:
                continue
            claims.append(forecast_claim(target, inf, rows, cfg, n_seeds))

    # --- linear theory ----------------------------------------------------------------------------------
    for key, label in (("theory", "slow spectrum i^-1.5"), ("theory_control", "negative control 1/i")):
        res = LinearTheoryResult.from_rows(reader.evals(ids[key]))
        steps = res.steps.astype(float)
        theory_seeds = list(range(res.pretrain_loss.shape[0]))
        curves += curve_rows(
            res.curve("delta", float(res.gammas[0])),
            theory_seeds,
            steps,
            "steps",
            curve="theory delta",
            model=key,
            gamma=float(res.gammas[0]),
        )
        curves += curve_rows(
            res.pretrain_loss,
            theory_seeds,
            steps,
            "steps",
            curve="theory pre-training loss after fine-tuning",
            model=key,
        )
        inf = inflection_point(steps, res.pretrain_loss, n_boot=boot)
        inflections.append(
            inflection_row(
                inf,
                steps,
                regime=f"linear theory, {label}",
                quantity="pre-training loss after fine-tuning (steps)",
            )
        )
        g0 = float(res.gammas[0])
        rho = spearman_ci(steps, res.curve("delta", g0), n_boot=boot)
        trends.append(
            {
                "quantity": f"theory Δ γ={g0:g} ({label})",
                "spearman": rho.value,
                "ci_low": ci(rho.low, len(theory_seeds)),
                "ci_high": ci(rho.high, len(theory_seeds)),
            }
        )
        if key == "theory":
            claims.append(
                Claim(
                    "Linear theory: sensitivity rises with pre-training steps",
                    f"Spearman(T, Δ), γ={g0:g}",
                    rho.value,
                    ci(rho.low, len(theory_seeds)),
                    ci(rho.high, len(theory_seeds)),
                    ">= 0.8",
                    _verdict(rho.value >= 0.8),
                    type="check",
                )
            )
            claims.append(
                Claim(
                    "Linear theory: post-fine-tuning pre-training loss is U-shaped",
                    "rise final/min − 1",
                    inf.rise,
                    ci(inf.rise_ci_low, inf.n_groups),
                    ci(inf.rise_ci_high, inf.n_groups),
                    "interior minimum, rise >= 5%",
                    _verdict(inf.is_u(0.05)),
                    f"T*: {describe_t_star(inf, steps, 'steps')}",
                    type="check",
                )
            )
        else:
            claims.append(
                Claim(
                    "Linear theory negative control (s_i ∝ 1/i): no U",
                    "rise final/min − 1",
                    inf.rise,
                    ci(inf.rise_ci_low, inf.n_groups),
                    ci(inf.rise_ci_high, inf.n_groups),
                    "not (interior and rise >= 1%)",
                    _verdict(not inf.is_u(0.01)),
                    f"T*: {describe_t_star(inf, steps, 'steps')}",
                    type="check",
                )
            )

    fclaims, theory_rows = forecast_theory_claims(
        {
            label: LinearTheoryResult.from_rows(reader.evals(ids[key]), reader.probes(ids[key]))
            for key, label in (
                ("forecast_theory", "i^-1.5"),
                ("forecast_theory_control", "negative control 1/i"),
            )
        },
        cfg.forecast_horizon,
        cfg.min_rise,
    )
    claims += fclaims

    return OvertrainingResult(
        claims,
        inflections,
        trends,
        recommend(cfg, fixed, methods, tokens, n_params, claims),
        leads,
        fleads,
        curves,
        theory_rows,
    )
