"""The overtraining study's curves over pre-training budgets: ``[seed, budget]`` matrices from stored rows,
their storable rows, and the fine-tuning grid's curves (fixed LR, LR tuned per checkpoint) of the
quantities the findings read — the pre-training loss after fine-tuning (retention), the task loss
(in-distribution) and, when measured, the loss on a held-out language (out-of-distribution capability).

The tuned learning rate of a (seed, budget) cell is chosen on the selection loss (``select_loss``: task
batches disjoint from the reported ones) when the runs measured it; otherwise on the reported task loss
itself, which the detail of every tuned-LR finding then says.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from overtrain.analysis.inflection import Inflection, bracket, inflection_point
from overtrain.analysis.rise import MIN_SEEDS_FOR_CI

QUANTITIES = {
    "pretrain_loss": "pre-training loss after fine-tuning",
    "task_loss": "task loss after fine-tuning",
    "ood_loss": "held-out language loss after fine-tuning",
}
"""Eval-row field -> the curve's name, for every quantity read after fine-tuning."""


def curve_rows(
    matrix: np.ndarray, seeds: list[int], x: list[float] | np.ndarray, axis: str, **labels: Any
) -> list[dict[str, Any]]:
    """One row per (seed, x) of a [S, P] curve matrix: ``{curve labels, seed, <axis>, value}``; NaN kept."""
    return [
        {**labels, "seed": s, axis: x[j], "value": float(matrix[i, j])}
        for i, s in enumerate(seeds)
        for j in range(matrix.shape[1])
    ]


def matrix(rows, seeds, tokens, value, seed_of) -> np.ndarray:
    """[S, P] array of `value` from rows keyed by (seed, tokens_seen); NaN where missing."""
    out = np.full((len(seeds), len(tokens)), np.nan)
    si = {s: i for i, s in enumerate(seeds)}
    ti = {t: j for j, t in enumerate(tokens)}
    for r in rows:
        s, t = seed_of(r), r["tokens_seen"]
        if s in si and t in ti:
            out[si[s], ti[t]] = r[value]
    return out


def ci(value: float | None, n_groups: int) -> float | None:
    """A confidence bound only where at least `MIN_SEEDS_FOR_CI` independent seeds exist: with fewer, a
    bootstrap over seeds is little more than their range."""
    return value if n_groups >= MIN_SEEDS_FOR_CI else None


def inflection_row(inf: Inflection, grid: Sequence[float], **labels: Any) -> dict[str, Any]:
    """The stored row of T* on `grid`; ``between_low``/``between_high`` are the budgets either side of it
    (the minimum lies between them: T* is a grid point, not a measurement finer than the grid)."""
    n = inf.n_groups
    between = bracket(grid, inf.index)
    note = inf.note if n >= MIN_SEEDS_FOR_CI else "; ".join(filter(None, [inf.note, f"no CI with {n} seeds"]))
    return {
        **labels,
        "t_star": inf.t_star,
        "t_star_ci_low": ci(inf.ci_low, n),
        "t_star_ci_high": ci(inf.ci_high, n),
        "between_low": between[0],
        "between_high": between[1],
        "interior": inf.interior,
        "rise": inf.rise,
        "rise_ci_low": ci(inf.rise_ci_low, n),
        "rise_ci_high": ci(inf.rise_ci_high, n),
        "min_loss": inf.min_loss,
        "final_loss": inf.final_loss,
        "n_groups": n,
        "note": note,
    }


@dataclass
class FinetuneCurves:
    """The fine-tuning grid's curves.

    Attributes:
        inflections: (method, lr or "tuned", field) -> T* and rise of that curve.
        matrices: the same keys -> the ``[seed, budget]`` matrix the findings are decided on.
        bracket: per method, whether the tuned LR sits inside its grid (in words).
        selection: per method, how the tuned LR was chosen (in words).
        rows: storable curve rows (``record = 'curve'``), inflection rows.
    """

    inflections: dict[tuple, Inflection] = field(default_factory=dict)
    matrices: dict[tuple, np.ndarray] = field(default_factory=dict)
    bracket: dict[str, str] = field(default_factory=dict)
    selection: dict[str, str] = field(default_factory=dict)
    curve_rows: list[dict[str, Any]] = field(default_factory=list)
    inflection_rows: list[dict[str, Any]] = field(default_factory=list)


def finetune_curves(cfg, ft: list[dict], seeds: list[int], tokens: list, seed_of_parent, boot: int):
    """`FinetuneCurves` of the fine-tuning eval rows `ft` (one per run) over `seeds` x `tokens`."""
    out = FinetuneCurves()
    t = np.array(tokens, dtype=float)
    fields = [f for f in QUANTITIES if all(f in r for r in ft)] if ft else []
    methods = sorted({r["method"] for r in ft})
    seed_of = lambda r: seed_of_parent[r["parent"]]  # noqa: E731

    def add(method: str, key, fld: str, m: np.ndarray, regime: str, lr) -> None:
        out.matrices[(method, key, fld)] = m
        out.curve_rows.extend(
            curve_rows(m, seeds, tokens, "tokens_seen", curve=_name(fld, key), method=method, lr=lr)
        )
        inf = inflection_point(t, m, n_boot=boot)
        out.inflections[(method, key, fld)] = inf
        out.inflection_rows.append(
            inflection_row(inf, tokens, regime=regime, method=method, lr=lr, quantity=QUANTITIES[fld])
        )

    for method in methods:
        grid = cfg.finetune.lrs_for(method)
        for lr in grid:
            rows = [r for r in ft if r["method"] == method and math.isclose(r["lr"], lr)]
            for fld in fields:
                add(method, lr, fld, matrix(rows, seeds, tokens, fld, seed_of), "fixed LR", lr)
        by = {(seed_of(r), r["tokens_seen"], r["lr"]): r for r in ft if r["method"] == method}
        chooser = "select_loss" if ft and all("select_loss" in r for r in ft) else "task_loss"
        out.selection[method] = (
            "the LR is chosen on task batches disjoint from the reported ones"
            if chooser == "select_loss"
            else "the LR is chosen on the same task batches it is scored on"
        )
        tuned = {fld: np.full((len(seeds), len(tokens)), np.nan) for fld in [*fields, "lr"]}
        for i, s in enumerate(seeds):
            for j, tok in enumerate(tokens):
                cands = [by[(s, tok, lr)] for lr in grid if (s, tok, lr) in by]
                if cands:
                    best = min(cands, key=lambda r: r[chooser])
                    for fld in [*fields, "lr"]:
                        tuned[fld][i, j] = best[fld]
        for fld in fields:
            add(method, "tuned", fld, tuned[fld], "tuned LR", None)
        at_edge = int(np.sum(np.isin(tuned["lr"], [grid[0], grid[-1]])))
        out.bracket[method] = (
            f"the tuned LR is an end of the grid {grid} at {at_edge} of {tuned['lr'].size} (seed, budget) cells"
            + (": the grid does not bracket the optimum" if at_edge else "")
        )
        # the LR each (seed, budget) chose, so the tuned regime can be audited
        out.curve_rows.extend(
            curve_rows(tuned["lr"], seeds, tokens, "tokens_seen", curve="tuned LR", method=method)
        )
    return out


def _name(fld: str, key) -> str:
    return QUANTITIES[fld] + (", tuned LR" if key == "tuned" else "")
