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
from overtrain.analysis.inflection import between_budgets, bracket
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


OBJECTIVES = (
    ("in-distribution", "task_loss", "Task loss after fine-tuning"),
    ("retention", "pretrain_loss", "Post-fine-tuning pre-training loss"),
)
"""The objectives a budget can be chosen for: (name, curve field, the finding's name prefix)."""


def recommend(cfg, fixed, methods, tokens, n_params, claims: list[Claim]) -> str:
    """The budget advice per fine-tuning method with its LR tuned per checkpoint, per objective —
    in-distribution (the task loss after fine-tuning: the paper's headline) and retention (the pre-training
    loss after fine-tuning) — then for both: what the curves show, and whether each finding's verdict lets a
    reader act on it."""
    if not methods or not tokens:
        return "no fine-tuning results to base a recommendation on"
    order = sorted(methods, key=lambda m: m != "full")  # full fine-tuning first: the paper's main setting
    return " ".join(_advice(cfg, fixed, m, tokens, n_params, claims) for m in order)


def _advice(cfg, fixed, method, tokens, n_params, claims: list[Claim]) -> str:
    lines, stops = [], []
    for objective, fld, prefix in OBJECTIVES:
        inf = fixed.get((method, "tuned", fld))
        name = f"{prefix} degrades with more pre-training ({method}, LR tuned per checkpoint)"
        finding = next((c for c in claims if c.claim == name), None)
        head = f"{objective}:"
        if inf is None or finding is None or finding.value is None:
            lines.append(f"{head} no finding to base a recommendation on.")
            continue
        per_param = f", ~{inf.t_star / n_params:,.0f} tokens per parameter" if n_params else ""
        shape = (
            f"{prefix.lower()} {inf.min_loss:.3f} at its best budget ({inf.t_star:,.0f} tokens{per_param}), "
            f"{inf.final_loss:.3f} at the largest ({tokens[-1]:,}); held-out rise {finding.value:+.2%}"
        )
        if finding.verdict == "PASS":
            stops.append(inf.t_star)
            lo, hi = bracket(tokens, inf.index)
            if lo is None:
                where = f"at or before {inf.t_star:,.0f} tokens (the smallest budget measured)"
            elif hi is None:
                where = f"at {inf.t_star:,.0f} tokens (the largest budget measured)"
            else:
                where = f"near {inf.t_star:,.0f} tokens ({between_budgets(tokens, inf.index)})"
            lines.append(
                f"{head} stop {where}: more pre-training hurt ({shape}, 95% lower bound {finding.ci_low:.2%}, "
                f"fpr {finding.fpr:.0%})."
            )
        elif finding.verdict == "FAIL":
            lines.append(
                f"{head} more pre-training did not measurably hurt ({shape}): pre-train as long as the base "
                "model keeps improving."
            )
        else:
            seen = "no degradation" if finding.value <= cfg.min_rise else "a degradation"
            lines.append(
                f"{head} the curves show {seen} ({shape}), but {len(cfg.seeds)} seeds cannot support a verdict"
                + _rates(finding)
                + "."
            )
    both = (
        f"both: stop at the earlier, {min(stops):,.0f} tokens."
        if stops
        else "both: no finding supports stopping before the largest budget measured."
    )
    return f"{method.capitalize()} fine-tuning, LR tuned per checkpoint — " + " ".join([*lines, both])


def _rates(finding: Claim) -> str:
    if finding.fpr is None:
        return ""
    if finding.ci_low is None:
        return " (with fewer than 4 seeds its rule has no bound: rerun with at least 4 before acting on it)"
    return (
        f" (at this noise the rule passes rise-free curves {finding.fpr:.0%} of the time and finds the paper's "
        f"2% rise {finding.power:.0%} of the time)"
    )
