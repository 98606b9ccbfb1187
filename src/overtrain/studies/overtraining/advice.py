"""The overtraining study's analysis run: from the stored child runs to the curves, inflection points,
trends, claims and advice it stores for the report.

Curves are indexed [seed, budget]: the groups that bootstrap CIs resample are the pre-training seeds
(each seed is an independent pre-training run, fine-tuned and perturbed with the same recipe). Every
curve the claims rest on is stored too (``record = 'curve'``: one row per curve, seed and budget), so the
report plots exactly what was decided on.
"""

from __future__ import annotations

import math
from typing import Any

from overtrain.analysis.claims import Claim
from overtrain.runs.query import Reader


def monitor_leads(reader: Reader, pretrain_ids, seed_of_parent, targets, min_rise) -> list[dict[str, Any]]:
    """One row per (seed, target): where the monitor fired and its lead over T* in doublings of tokens,
    log2(T* / fired tokens) — positive: it fired before T*; None: it never fired. Each row names its
    pre-training run (``run_id``), whose ``monitor/*`` metrics the report plots."""
    rows = reader.rows(
        "select run_id, tokens_seen, name, value from metrics where list_contains(?, run_id) "
        "and name in ('monitor/warning', 'monitor/predicted_min') order by tokens_seen",
        [pretrain_ids],
    )
    warned = {
        (r["run_id"], r["tokens_seen"]) for r in rows if r["name"] == "monitor/warning" and r["value"] > 0
    }
    fired: dict[str, tuple[int, float]] = {}
    for r in rows:
        if r["name"] == "monitor/predicted_min" and (r["run_id"], r["tokens_seen"]) in warned:
            fired.setdefault(r["run_id"], (r["tokens_seen"], r["value"]))
    out = []
    for run_id in pretrain_ids:
        t_fire, t_hat = fired.get(run_id, (None, None))
        for target, inf in targets.items():
            if inf is None:
                continue
            out.append(
                {
                    "seed": seed_of_parent.get(run_id),
                    "run_id_pretrain": run_id,
                    "target": target,
                    "fired_tokens": t_fire,
                    "predicted_min": t_hat,
                    "t_star": inf.t_star,
                    "t_star_is_u": inf.is_u(min_rise),
                    "lead_doublings": math.log2(inf.t_star / t_fire) if t_fire else None,
                    "predicted_min_error_doublings": math.log2(t_hat / inf.t_star) if t_hat else None,
                }
            )
    return out


def recommend(cfg, fixed, methods, tokens, n_params, claims: list[Claim]) -> str:
    """The budget advice from the degradation finding of the main method at its top LR, qualified by that
    finding's verdict (an underpowered rise is reported as such, with its false-positive rate)."""
    if not methods or not tokens:
        return "no fine-tuning results to base a recommendation on"
    method = "full" if "full" in methods else methods[0]
    lr = cfg.finetune.lrs_for(method)[-1]
    inf = fixed[(method, lr)]
    per_param = f" (~{inf.t_star / n_params:,.0f} tokens per parameter)" if n_params else ""
    name = f"Post-fine-tuning pre-training loss degrades with more pre-training ({method}, LR {lr:g})"
    finding = next((c for c in claims if c.claim == name), None)
    n = len(cfg.seeds)
    if inf.rise_ci_low > cfg.min_rise:
        text = (
            f"For {method} fine-tuning at LR {lr:g}, pre-training past ~{inf.t_star:,.0f} tokens{per_param} "
            f"hurt: at {tokens[-1]:,} tokens the pre-training loss after fine-tuning is {inf.rise:.1%} higher "
            f"than at T* (bootstrap interval over {n} seeds {inf.rise_ci_low:.1%} to {inf.rise_ci_high:.1%})."
        )
        if finding is not None and finding.verdict == "UNDERPOWERED":
            fpr = (
                ""
                if finding.fpr is None
                else f" passes curves without any rise {finding.fpr:.0%} of the time"
            )
            text += (
                f" Underpowered: at the measured noise with {n} seeds this rule{fpr}; rerun with at least "
                "4 seeds before acting on it."
            )
        return text
    return (
        f"For {method} fine-tuning at LR {lr:g}, no budget up to {tokens[-1]:,} tokens was measurably worse "
        f"than T* = {inf.t_star:,.0f}{per_param} (rise {inf.rise:.1%}, interval {inf.rise_ci_low:.1%} to "
        f"{inf.rise_ci_high:.1%}): more pre-training did not hurt at this scale."
    )
