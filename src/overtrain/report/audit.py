"""Report section of ``overtrain audit``: the probes of every audited checkpoint, in training order.

Reads the newest successful ``audit`` run. With at least `MIN_FOR_U` checkpoints whose training tokens
are known, it looks for the U of the init-scale perturbed loss at the largest γ: T* = argmin over
checkpoints, CI by resampling noise draws (each draw uses the same directions at every checkpoint).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from overtrain.report.html import Figure, Section, Table
from overtrain.report.plots import label, new_figure
from overtrain.report.plots import log_x as set_log_x
from overtrain.runs.query import query

MAX_HARNESS_PANELS = 6
"""lm-eval metrics plotted (all of them are in the table)."""


def lm_eval_column(r: dict[str, Any]) -> str:
    """Column of an lm-eval result row: ``task metric``, with the filter when it is not ``none``."""
    return f"{r['task']} {r['metric']}" + ("" if r.get("filter") in (None, "none") else f" ({r['filter']})")


def audit_table(store, run_id: str) -> list[dict[str, Any]]:
    """One row per checkpoint, in training order (tokens, else step, else the order given)."""
    evals = query(f"select * from evals where run_id = '{run_id}'", store).to_pylist()
    by_dir: dict[str, dict[str, Any]] = {}
    for r in evals:
        row = by_dir.setdefault(r["model_dir"], {"checkpoint": Path(r["model_dir"]).name, "tokens": r.get("tokens"),
                                                 "step": r.get("step"), "order": r["order"]})
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
    rows.sort(key=lambda r: (r["tokens"] is None, r["tokens"] or 0, r["step"] is None, r["step"] or 0, r["order"]))
    return rows


def has_lm_eval(store, run_id: str) -> bool:
    cols = query("select * from evals limit 0", store).column_names
    return "task" in cols and bool(query(f"select 1 from evals where run_id = '{run_id}' and probe = 'lm_eval' "
                                         "limit 1", store).num_rows)


def audit_u(store, run_id: str, rows: list[dict[str, Any]]):
    """The inflection of the init-scale perturbed loss (largest γ) over checkpoints with token counts, or
    None with fewer than `MIN_FOR_U` of them."""
    from overtrain.analysis.inflection import inflection_point
    from overtrain.runs.kinds.audit import MIN_FOR_U

    known = [r for r in rows if r["tokens"]]
    if len(known) < MIN_FOR_U:
        return None, None
    draws = query(f"select model_dir, gamma, draw, loss from probes where run_id = '{run_id}' and probe = 'noise' "
                  "and law = 'init_scale'", store).to_pylist()
    if not draws:
        return None, None
    gamma = max(d["gamma"] for d in draws)
    names = {Path(d["model_dir"]).name: d["model_dir"] for d in draws}
    n_draws = 1 + max(d["draw"] for d in draws)
    curves = np.full((n_draws, len(known)), np.nan)
    col = {names[r["checkpoint"]]: j for j, r in enumerate(known) if r["checkpoint"] in names}
    for d in draws:
        if d["gamma"] == gamma and d["model_dir"] in col:
            curves[d["draw"], col[d["model_dir"]]] = d["loss"]
    tokens = np.array([r["tokens"] for r in known], dtype=float)
    return inflection_point(tokens, curves), gamma


def audit_section(store) -> Section | None:
    runs = query("select run_id, config from runs where kind = 'audit' and status = 'success' "
                 "order by finished_at desc", store).to_pylist()
    if not runs:
        return None
    run_id = runs[0]["run_id"]
    rows = audit_table(store, run_id)
    text = [f"Audit run <code>{run_id}</code>: {len(rows)} checkpoints, probes on the reference text "
            f"{json.loads(runs[0]['config']).get('text') or '(packaged Shakespeare excerpt)'}. Losses in nats/token; "
            "Δ = perturbed − base loss; init-scale noise uses config.initializer_range as the init std. lm-eval "
            "columns are the harness's metrics on the tasks given with --lm-eval-tasks."]
    figures, panels = [], []
    x_key = "tokens" if all(r["tokens"] for r in rows) else ("step" if all(r["step"] is not None for r in rows) else None)
    if x_key and len(rows) >= 2:
        x = np.array([r[x_key] or 0 for r in rows], dtype=float)
        columns = {k for r in rows for k in r}
        harness = sorted({lm_eval_column(r) for r in query(
            f"select task, metric, filter from evals where run_id = '{run_id}' and probe = 'lm_eval'",
            store).to_pylist()}) if has_lm_eval(store, run_id) else []
        panels = [(keys, ylab) for keys, ylab in [
            (["reference loss"], "reference loss (nats/token)"),
            (sorted(k for k in columns if k.startswith("perturbed init_scale")), "perturbed loss, init-scale noise"),
            (["lambda_max"], "top Hessian eigenvalue λ_max"),
            (["max prefix-matching"], "max prefix-matching score (induction)"),
            # one panel per harness metric: accuracies and perplexities share no scale
            *[([h], f"lm-eval: {h}") for h in harness[:MAX_HARNESS_PANELS]]] if keys and set(keys) <= columns]
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
    inf, gamma = audit_u(store, run_id, rows)
    if inf is not None:
        shape = "a U: more training made the perturbed loss worse" if inf.is_u(0.005) else "no U"
        text.append(f"Perturbed loss (init-scale, γ = {gamma:g}) over the checkpoints: {shape}; T* = "
                    f"{inf.t_star:,.0f} tokens (CI over noise draws {inf.ci_low:,.0f} – {inf.ci_high:,.0f}), rise "
                    f"after it {inf.rise:.1%}.")
    shown = [{k: v for k, v in r.items() if k != "order"} for r in rows]
    return Section("Audit of Hugging Face checkpoints", text=text, figures=figures, tables=[Table(shown, "Probes per checkpoint")])
