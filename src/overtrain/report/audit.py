"""Report section of ``overtrain audit``: the probes of every audited checkpoint, in training order.

Reads the newest successful ``audit`` run through a `Reader`: its per-checkpoint ``evals`` rows, and the
U of the init-scale perturbed loss the run stored (``record: "inflection"``; computed by the run kind,
`overtrain.runs.kinds.audit.inflection_row`, when at least four checkpoints have token counts).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from overtrain.analysis.inflection import bracket
from overtrain.report.html import Figure, Section, Table
from overtrain.report.plots import label, new_figure
from overtrain.report.plots import log_x as set_log_x
from overtrain.runs.kinds.audit import training_order
from overtrain.runs.query import Reader

MAX_HARNESS_PANELS = 6
"""lm-eval metrics plotted (all of them are in the table)."""


def lm_eval_column(r: dict[str, Any]) -> str:
    """Column of an lm-eval result row: ``task metric``, with the filter when it is not ``none``."""
    return f"{r['task']} {r['metric']}" + ("" if r.get("filter") in (None, "none") else f" ({r['filter']})")


def audit_table(reader: Reader, run_id: str) -> list[dict[str, Any]]:
    """One row per checkpoint, in training order (tokens, else step, else the order given)."""
    by_dir: dict[str, dict[str, Any]] = {}
    for r in reader.evals(run_id):
        if r.get("model_dir") is None:  # a row of the whole run (the inflection), not of a checkpoint
            continue
        row = by_dir.setdefault(
            r["model_dir"],
            {
                "checkpoint": Path(r["model_dir"]).name,
                "tokens": r.get("tokens"),
                "step": r.get("step"),
                "tokens from": r.get("tokens_from"),
                "order": r["order"],
            },
        )
        probe = r.get("probe")
        if probe == "reference_loss":
            row["reference loss"], row["± se"] = r["loss"], r.get("stderr")
        elif probe == "noise":
            row[f"Δ {r['law']} γ={r['gamma']:g}"] = r["delta"]
            row[f"perturbed {r['law']} γ={r['gamma']:g}"] = r["mean_loss"]
        elif probe == "sharpness":
            for key in ("lambda_max", "trace"):
                if r.get(key) is not None:
                    row[key] = r[key]
        elif probe == "induction" and r.get("scope") == "model":
            row["max prefix-matching"], row["copying gain"] = r["max_prefix_matching"], r["copying_gain"]
        elif probe == "lm_eval":
            row[lm_eval_column(r)] = r["value"]
    rows = list(by_dir.values())
    rows.sort(key=training_order)
    return rows


def inflection_line(inf: dict[str, Any], table: list[dict[str, Any]] = ()) -> str:
    """The stored U analysis in one sentence, T* in its axis's unit (tokens, or steps when the token
    counts were unknown) and at the precision of the checkpoints: the one where the perturbed loss is
    lowest and, from `table` (`audit_table`'s rows), the checkpoints either side that bracket the minimum."""
    shape = "a U: more training made the perturbed loss worse" if inf["is_u"] else "no U"
    unit = inf.get("axis") or "tokens"  # rows written before the axis was recorded were all in tokens
    key = "step" if unit == "steps" else "tokens"
    grid = sorted({float(r[key]) for r in table if r.get(key)})
    where = f"lowest at {inf['t_star']:,.0f} {unit}"
    if inf["t_star"] in grid:
        lo, hi = bracket(grid, grid.index(inf["t_star"]))
        if lo is not None and hi is not None:
            where += f" (the minimum lies between the checkpoints at {lo:,.0f} and {hi:,.0f})"
        else:
            where += f" (the {'first' if lo is None else 'last'} checkpoint)"
    span = (
        f"{inf['ci_low']:,.0f}"
        if inf["ci_low"] == inf["ci_high"]
        else f"{inf['ci_low']:,.0f} – {inf['ci_high']:,.0f}"
    )
    draws = f"{inf['draws']} noise draws" if inf.get("draws") else "noise draws"
    return (
        f"Perturbed loss (init-scale, γ = {inf['gamma']:g}) over the checkpoints: {shape}; {where}; "
        f"{inf.get('level', 0.95):.0%} bootstrap CI over {draws}: {span} {unit} (the noise of the probe "
        f"only, not of training); rise after it {inf['rise']:.1%}."
    )


def harness_columns(reader: Reader, run_id: str) -> list[str]:
    """The lm-eval columns of the audit table (``task metric``), sorted; empty without lm-eval rows."""
    if not {"task", "probe"} <= reader.columns("evals"):
        return []
    found = reader.rows(
        "select task, metric, filter from evals where run_id = ? and probe = 'lm_eval'", [run_id]
    )
    return sorted({lm_eval_column(r) for r in found})


def audit_section(reader: Reader) -> Section | None:
    run = reader.latest("audit")
    if run is None:
        return None
    run_id = run["run_id"]
    rows = audit_table(reader, run_id)
    text = [
        f"Audit run <code>{run_id}</code>: {len(rows)} checkpoints, probes on the reference text "
        f"{json.loads(run['config']).get('text') or '(packaged Shakespeare excerpt)'}. Losses in nats/token; "
        "Δ = perturbed − base loss; init-scale noise uses config.initializer_range as the init std. lm-eval "
        "columns are the harness's metrics on the tasks given with --lm-eval-tasks."
    ]
    figures, panels = [], []
    x_key = (
        "tokens"
        if all(r["tokens"] for r in rows)
        else ("step" if all(r["step"] is not None for r in rows) else None)
    )
    if x_key and len(rows) >= 2:
        x = np.array([r[x_key] or 0 for r in rows], dtype=float)
        columns = {k for r in rows for k in r}
        harness = harness_columns(reader, run_id)
        panels = [
            (keys, ylab)
            for keys, ylab in [
                (["reference loss"], "reference loss (nats/token)"),
                (
                    sorted(k for k in columns if k.startswith("perturbed init_scale")),
                    "perturbed loss, init-scale noise (nats/token)",
                ),
                (["lambda_max"], "top Hessian eigenvalue λ_max"),
                (["max prefix-matching"], "max prefix-matching score (induction)"),
                # one panel per harness metric: accuracies and perplexities share no scale
                *[([h], f"lm-eval: {h}") for h in harness[:MAX_HARNESS_PANELS]],
            ]
            if keys and set(keys) <= columns
        ]
    if x_key and len(rows) >= 2 and panels:
        fig, axes = new_figure(len(panels))
        log_x = x.min() > 0
        for ax, (keys, ylab) in zip(axes, panels):
            for key in keys:
                y = np.array([r.get(key, math.nan) for r in rows], dtype=float)
                ax.plot(x, y, marker="o", ms=3, label=key)
            if log_x:
                set_log_x(ax, x if len(x) <= 12 else None)
            label(ax, f"training {x_key}" + (" (log)" if log_x else ""), ylab, ylab)
            if len(keys) > 1:
                ax.legend(fontsize=7)
        figures.append(Figure("audit_probes", fig, "Probes of every audited checkpoint, in training order."))
    text.extend(inflection_line(inf, rows) for inf in reader.evals(run_id, record="inflection"))
    shown = [{k: v for k, v in r.items() if k != "order"} for r in rows]
    return Section(
        "Audit of Hugging Face checkpoints",
        text=text,
        figures=figures,
        tables=[Table(shown, "Probes per checkpoint")],
    )
