"""`overtrain advise`: how many tokens to pre-train, from one stored pre-training run or from an audit of
a model family's checkpoints.

Two independent readings of a pre-training run, each from what the store holds:

- **Forecast** (needs the run's early-warning monitor): the T* forecaster (`overtrain.analysis.forecast`)
  replayed on the logged checks — the forecast and its interval at the newest check, and the first check
  where it warned (P(a material T* within `horizon` doublings) ≥ 0.9).
- **Trade-off** (needs fine-tuning runs whose parent is this run, e.g. the overtraining study's): per
  budget checkpoint, the base validation loss and, per fine-tuning method at its LR tuned on the selection
  split (`task/select_loss`; the top LR when no selection split was measured), the task loss after
  fine-tuning (in-distribution) and the pre-training loss after fine-tuning (retention), all in nats/token.
  The recommended budget for an objective minimises it over budgets; for ``both``, the sum of the two
  losses' relative excesses over their best budgets. When the largest budget is within `min_rise` of the
  best, there is no material overtraining to avoid.

With ``ft_lr`` the trade-off reads the fine-tunes at that LR instead of the tuned one.

An **audit** run (`overtrain audit` over local HF checkpoints with token counts, e.g. Pythia's or OLMo's
revisions) has no monitor and no fine-tunes: its checkpoints are the checks. The forecaster runs on the
reference loss and the init-scale perturbed loss at the largest γ (every noise draw, resampled by the
bootstrap), the trade-off is the base and perturbed loss per checkpoint, and the recommendation reads the
perturbed loss — the paper's stand-in for the loss after fine-tuning — with that limit stated.

One seed is one run: the advice carries no interval over seeds; the overtraining study's claims table is
where a verdict over ≥ 4 seeds lives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from overtrain.analysis.forecast import MIN_CHECKS, prospective
from overtrain.analysis.inflection import between_budgets
from overtrain.errors import UserError
from overtrain.runs.query import Reader
from overtrain.runs.store import Store
from overtrain.studies.overtraining.early_warning import monitor_series

Objective = Literal["id", "retention", "both"]
OBJECTIVE_FIELDS = {
    "id": ("task_loss",),
    "retention": ("pretrain_loss",),
    "both": ("task_loss", "pretrain_loss"),
}


@dataclass
class Advice:
    """What `advise` found (module docstring); every loss in nats/token, tokens as counts."""

    run_id: str
    objective: str
    forecast: dict[str, Any] | None
    tradeoff: list[dict[str, Any]] = field(default_factory=list)
    recommendation: list[str] = field(default_factory=list)
    source: str = "pretrain"
    """The kind of run advised from: ``pretrain`` or ``audit``."""


def forecast_tokens(x: float) -> str:
    """A forecast T* or interval end in words: ∞ (no T*), "already past" (0), "–" (no forecast), or tokens."""
    return "∞" if math.isinf(x) else "already past" if x == 0 else "–" if math.isnan(x) else f"{x:,.0f}"


def advise(
    store: Store,
    run: str,
    objective: Objective,
    horizon: float = 1.0,
    min_rise: float = 0.005,
    ft_lr: float | None = None,
) -> Advice:
    """Read pre-training run `run` (id or unique prefix) and its fine-tuning children from `store`, or an
    audit run (module docstring)."""
    if objective not in OBJECTIVE_FIELDS:
        raise UserError(f"unknown objective {objective!r}; choose from: {', '.join(OBJECTIVE_FIELDS)}")
    kind, run_id = store.find(run)
    if kind == "audit":
        with Reader(store) as reader:
            return _advise_audit(reader, run_id, objective, horizon, min_rise)
    if kind != "pretrain":
        raise UserError(f"{run!r} is a {kind} run; advise reads a pre-training or an audit run")
    with Reader(store) as reader:
        return advise_pretrain(reader, run_id, objective, horizon, min_rise, ft_lr)


def advise_pretrain(
    reader: Reader,
    run_id: str,
    objective: Objective,
    horizon: float = 1.0,
    min_rise: float = 0.005,
    ft_lr: float | None = None,
) -> Advice:
    """The advice on pre-training run `run_id` (module docstring), read through an open `reader` (the
    overtraining report shows it for every seed)."""
    series = monitor_series(reader, [run_id]).get(run_id)
    tradeoff = _tradeoff(reader, run_id, ft_lr)
    advice = Advice(run_id, objective, _forecast(series, horizon, min_rise) if series else None, tradeoff)
    advice.recommendation = _recommend(tradeoff, objective, min_rise)
    if advice.forecast is None and not tradeoff:
        raise UserError(
            f"pre-training run {run_id} has neither monitor checks (pretrain.monitor) nor fine-tuning runs "
            "of its checkpoints: nothing to advise from"
        )
    return advice


def _advise_audit(
    reader: Reader, run_id: str, objective: Objective, horizon: float, min_rise: float
) -> Advice:
    summary = [r for r in reader.evals(run_id) if r.get("probe") == "noise" and r.get("model_dir")]
    if not summary:
        raise UserError(f"audit run {run_id} ran no noise probe: nothing to forecast from (--probes noise)")
    law = "init_scale" if any(r["law"] == "init_scale" for r in summary) else summary[0]["law"]
    gamma = max(r["gamma"] for r in summary if r["law"] == law)
    rows = {r["model_dir"]: r for r in summary if r["law"] == law and r["gamma"] == gamma}
    if any(r.get("tokens") is None for r in rows.values()):
        raise UserError(
            f"audit run {run_id}: some checkpoints have no token count (meta.json tokens_seen, or a "
            "directory name with tokens<N> or budget_<N>); a forecast in tokens needs them all: for step<N> "
            "directories pass --tokens-per-step N (Pythia: 2097152)"
        )
    dirs = sorted(rows, key=lambda d: rows[d]["tokens"])
    tokens = np.array([rows[d]["tokens"] for d in dirs], dtype=float)
    if np.any(np.diff(tokens) <= 0):
        raise UserError(f"audit run {run_id}: two checkpoints have the same token count")
    draws: dict[str, dict[int, float]] = {}
    for r in reader.probes([run_id]):
        if r.get("law") == law and r.get("gamma") == gamma and r.get("draw") is not None:
            draws.setdefault(r["model_dir"], {})[int(r["draw"])] = r["loss"]
    n_draws = min(len(draws.get(d, {})) for d in dirs)
    base = np.array([rows[d]["mean_loss"] - rows[d]["delta"] for d in dirs])
    if n_draws:
        pert = np.array([[draws[d][k] for k in sorted(draws[d])[:n_draws]] for d in dirs])
    else:
        pert = np.array([[rows[d]["mean_loss"]] for d in dirs])
    series = (
        tokens,
        base,
        pert.mean(axis=1) - base,
        f"init-scale noise γ={gamma:g}" if law == "init_scale" else f"{law} noise γ={gamma:g}",
    )
    forecast = _forecast(series, horizon, min_rise, perturbed=pert)
    perturbed = pert.mean(axis=1)
    tradeoff = [
        {
            "checkpoint": Path(d).name,
            "tokens": int(t),
            "base_loss": float(b),
            f"perturbed γ={gamma:g}": float(p),
            "delta": float(p - b),
        }
        for d, t, b, p in zip(dirs, tokens, base, perturbed)
    ]
    advice = Advice(run_id, objective, forecast, tradeoff, source="audit")
    best = int(np.argmin(perturbed))
    rise = float(perturbed[-1] / perturbed[best] - 1)
    lines = []
    if best == len(dirs) - 1 or rise < min_rise:
        lines.append(
            f"no material rise of the perturbed loss (γ={gamma:g}) up to the largest checkpoint "
            f"({int(tokens[-1]):,} tokens; within {min_rise:.1%} of its minimum): no sign that more "
            "pre-training made these checkpoints more fragile"
        )
    else:
        lines.append(
            f"stop near {int(tokens[best]):,} tokens{_between(tokens, best)}: the perturbed loss (γ={gamma:g}) "
            "is lowest there and "
            f"{rise:.1%} higher at the largest checkpoint, {np.log2(tokens[-1] / tokens[best]):.1f} "
            "doublings later"
        )
    lines.append(
        "audited checkpoints carry no fine-tunes: the perturbed loss stands in for the loss after "
        "fine-tuning (Springer et al. 2025); "
        + (
            "the in-distribution objective needs fine-tuning runs of these checkpoints"
            if objective != "retention"
            else "fine-tune the candidates to confirm"
        )
    )
    advice.recommendation = lines
    return advice


def _forecast(series, horizon: float, min_rise: float, perturbed=None) -> dict[str, Any] | None:
    """The forecaster replayed over the checks (`perturbed`: [checks, draws] when each draw is known)."""
    t, loss, delta, signal = series
    if t.size < MIN_CHECKS:
        return None
    pert = (loss + delta)[:, None, None] if perturbed is None else np.asarray(perturbed)[:, None, :]
    replay = prospective(t, loss[:, None], pert, horizon=horizon, min_rise=min_rise)
    return {
        "checks": int(t.size),
        "signal": signal,
        "now_tokens": float(t[-1]),
        "t_star": float(replay.t_star[-1]),
        "low": float(replay.low[-1]),
        "high": float(replay.high[-1]),
        "p_within": float(replay.p_within[-1]),
        "warned_tokens": replay.warned_at,
        "horizon": horizon,
    }


def _tradeoff(reader: Reader, run_id: str, ft_lr: float | None = None) -> list[dict[str, Any]]:
    cols = set(reader.columns("evals"))
    if not {"checkpoint", "split", "loss"} <= cols:
        return []
    base = {
        r["checkpoint"]: r
        for r in reader.rows(
            "select checkpoint, tokens_seen, loss from evals where run_id = ? and split = 'val' "
            "and checkpoint like 'budget_%'",
            [run_id],
        )
    }
    ft = []
    if {"parent", "method", "lr", "task_loss", "pretrain_loss"} <= cols:
        select = "select_loss" if "select_loss" in cols else "null as select_loss"
        ft = reader.rows(
            f"select checkpoint, method, lr, task_loss, pretrain_loss, {select} from evals "
            "where kind = 'finetune' and parent = ? and task_loss is not null",
            [run_id],
        )
    if ft_lr is not None and ft:
        have = sorted({r["lr"] for r in ft})
        if not any(math.isclose(r["lr"], ft_lr, rel_tol=1e-6) for r in ft):
            raise UserError(
                f"no fine-tunes of run {run_id} at LR {ft_lr:g}; measured: {', '.join(f'{x:g}' for x in have)}"
            )
        ft = [r for r in ft if math.isclose(r["lr"], ft_lr, rel_tol=1e-6)]
    out = []
    for ckpt in sorted(base, key=lambda c: base[c]["tokens_seen"]):
        row = {"checkpoint": ckpt, "tokens": base[ckpt]["tokens_seen"], "base_loss": base[ckpt]["loss"]}
        for method in sorted({r["method"] for r in ft}):
            mine = [r for r in ft if r["checkpoint"] == ckpt and r["method"] == method]
            if not mine:
                continue
            # tuned on the selection split when there is one, never on the reported task batches
            chosen = (
                min(mine, key=lambda r: r["select_loss"])
                if all(r["select_loss"] is not None for r in mine)
                else max(mine, key=lambda r: r["lr"])
            )
            row[f"{method} lr"] = chosen["lr"]
            row[f"{method} task_loss"] = chosen["task_loss"]
            row[f"{method} pretrain_loss"] = chosen["pretrain_loss"]
        out.append(row)
    return out


def _recommend(tradeoff: list[dict[str, Any]], objective: Objective, min_rise: float) -> list[str]:
    methods = sorted({k.split(" ")[0] for row in tradeoff for k in row if k.endswith(" task_loss")})
    lines = []
    for method in methods:
        rows = [r for r in tradeoff if f"{method} task_loss" in r]
        if len(rows) < 2:
            continue
        score = np.zeros(len(rows))
        for name in OBJECTIVE_FIELDS[objective]:
            v = np.array([r[f"{method} {name}"] for r in rows])
            score += v / v.min() - 1  # relative excess over its best budget
        best = int(np.argmin(score))
        last = rows[-1]
        if best == len(rows) - 1 or score[-1] < min_rise:
            lines.append(
                f"{method}: no material overtraining for '{objective}' up to the largest budget measured "
                f"({last['tokens']:,} tokens; within {min_rise:.1%} of the best budget)"
            )
            continue
        cost = ", ".join(
            f"{name} {rows[best][f'{method} {name}']:.3f} → {last[f'{method} {name}']:.3f} nats"
            for name in OBJECTIVE_FIELDS[objective]
        )
        doublings = math.log2(last["tokens"] / rows[best]["tokens"])
        lines.append(
            f"{method}: stop near {rows[best]['tokens']:,} tokens"
            f"{_between([r['tokens'] for r in rows], best)} for '{objective}' — the largest budget, "
            f"{doublings:.1f} doublings later, "
            + ("fine-tunes worse" if objective != "both" else "is worse on the two together")
            + f" ({cost})"
        )
    return lines


def _between(grid, index: int) -> str:
    """ " (the minimum lies between the budgets A and B)": a grid's argmin is no finer than its grid."""
    text = between_budgets(grid, index)
    return f" ({text})" if text else ""
