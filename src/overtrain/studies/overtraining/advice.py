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
    """The budget advice from the degradation finding of the main method at its top LR: what the curves
    show, and whether the finding's verdict lets a reader act on it."""
    if not methods or not tokens:
        return "no fine-tuning results to base a recommendation on"
    method = "full" if "full" in methods else methods[0]
    lr = cfg.finetune.lrs_for(method)[-1]
    inf = fixed[(method, lr)]
    per_param = f" (~{inf.t_star / n_params:,.0f} tokens per parameter)" if n_params else ""
    name = f"Post-fine-tuning pre-training loss degrades with more pre-training ({method}, LR {lr:g})"
    finding = next((c for c in claims if c.claim == name), None)
    n = len(cfg.seeds)
    where = f"For {method} fine-tuning at LR {lr:g}"
    if finding is None or finding.value is None:
        return f"{where}: no degradation finding to base a recommendation on."
    rise = f"the pre-training loss after fine-tuning at {tokens[-1]:,} tokens is {finding.value:.1%} higher"
    if finding.verdict == "PASS":
        return (
            f"{where}, pre-training past ~{inf.t_star:,.0f} tokens{per_param} hurt: {rise} than at T* "
            f"(T* chosen on held-out seeds; 95% lower bound {finding.ci_low:.1%}; fpr {finding.fpr:.0%})."
        )
    if finding.verdict == "FAIL":
        return (
            f"{where}, no budget up to {tokens[-1]:,} tokens was measurably worse than T* = "
            f"{inf.t_star:,.0f}{per_param} (held-out rise {finding.value:.1%}): more pre-training did not hurt "
            "at this scale."
        )
    why = (
        ""
        if finding.fpr is None
        else f" (the rule passes rise-free curves {finding.fpr:.0%} of the time and finds the paper's 2% rise "
        f"{finding.power:.0%} of the time at this noise and seed count)"
    )
    return (
        f"{where}, the curves put T* at ~{inf.t_star:,.0f} tokens{per_param} and {rise} than there, but "
        f"{n} seeds cannot support a verdict{why}: rerun with at least 4 seeds before acting on it."
    )
