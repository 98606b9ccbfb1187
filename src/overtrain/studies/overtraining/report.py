"""Report section of the overtraining study: the paper's panels, the claims table and the advice.

Reads only what the analysis run stored (its claims, inflection points, monitor leads, recommendation and
the curves they were computed from), plus the monitor's checks in the pre-training runs' metrics.
"""

from __future__ import annotations

import math

import numpy as np

from overtrain.analysis.rise import MIN_SEEDS_FOR_CI
from overtrain.config import dump_yaml, to_plain
from overtrain.report.html import Figure, Section, Table, format_number
from overtrain.report.plots import label, log_y, new_figure
from overtrain.runs.query import Reader
from overtrain.studies.base import claims_table
from overtrain.studies.overtraining.advise import advise_pretrain, forecast_tokens
from overtrain.studies.overtraining.config import OvertrainingConfig


def _inflection(infl: list[dict], regime: str, method: str, lr, curve: str) -> dict | None:
    """The stored inflection row of one fine-tuning curve (its quantity is the curve's name)."""
    return next(
        (
            r
            for r in infl
            if r.get("regime") == regime
            and r.get("method") == method
            and r.get("lr") == lr
            and r["quantity"] == curve
        ),
        None,
    )


def _curve(rows: list[dict], seeds: list[int], curve: str, axis: str = "tokens_seen", **labels) -> tuple:
    """``(x, [S, P] matrix)`` of one stored curve (rows of `curve` matching `labels`), seeds in `seeds`
    order; NaN where a cell is missing."""
    sel = [r for r in rows if r["curve"] == curve and all(r.get(k) == v for k, v in labels.items())]
    x = sorted({r[axis] for r in sel})
    seeds = seeds or sorted({r["seed"] for r in sel})
    out = np.full((len(seeds), len(x)), np.nan)
    si, xi = {s: i for i, s in enumerate(seeds)}, {v: j for j, v in enumerate(x)}
    for r in sel:
        if r["seed"] in si and r["value"] is not None:
            out[si[r["seed"]], xi[r[axis]]] = r["value"]
    return np.array(x, dtype=float), out


def _band(ax, x, curves, **kw):
    """Mean over seeds with a min-max band."""
    curves = np.asarray(curves, dtype=float)
    mean = np.nanmean(curves, 0)
    line = ax.plot(x, mean, marker="o", ms=3, **kw)[0]
    if curves.shape[0] > 1:
        ax.fill_between(
            x, np.nanmin(curves, 0), np.nanmax(curves, 0), color=line.get_color(), alpha=0.15, lw=0
        )
    return line


def _mark(ax, row, color, min_rise: float):
    """Mark T* where the seed-mean curve has an interior minimum and rises by more than `min_rise` after
    it, and shade its CI where there is one (only with ≥ 4 seeds). The mark shows the curve's shape; whether
    the rise is real is the claims table's business."""
    if row and row.get("t_star") and row.get("interior") and (row.get("rise") or 0) > min_rise:
        ax.axvline(row["t_star"], color=color, ls=":", lw=1)
        if row.get("t_star_ci_low") is not None and row.get("t_star_ci_high") is not None:
            ax.axvspan(row["t_star_ci_low"], row["t_star_ci_high"], color=color, alpha=0.07, lw=0)


def _span(low: float | None, high: float | None) -> str:
    """ "A – B" of two budgets (blank when either is missing: an edge of the grid, or too few seeds)."""
    if low is None or high is None:
        return ""
    return format_number(low) if low == high else f"{format_number(low)} – {format_number(high)}"


def report(reader: Reader, cfg: OvertrainingConfig, study_id: str) -> list[Section]:
    """The study's sections from its analysis run `study_id`."""
    seeds = list(cfg.seeds)
    rows = reader.evals(study_id)
    claims = [r for r in rows if r["record"] == "claim"]
    infl = [r for r in rows if r["record"] == "inflection"]
    curves = [r for r in rows if r["record"] == "curve"]
    base = [r for r in curves if r["curve"] == "base val loss"]
    tokens = sorted({int(r["tokens_seen"]) for r in base})
    n_params = base[0]["n_params"] if base and base[0].get("n_params") else math.nan
    floor = next((r["loss_floor"] for r in base if r.get("loss_floor") is not None), None)
    x_label = f"pre-training tokens (log; {n_params:,.0f} parameters)"
    probe = [r for r in curves if r["curve"] in ("delta", "perturbed loss")]
    ft = [r for r in curves if r["curve"] == "pre-training loss after fine-tuning"]

    # Figure 1: sensitivity Δ(T, γ), both noise laws
    laws = sorted({r["law"] for r in probe})
    gammas = sorted({r["gamma"] for r in probe})
    fig1, axes = new_figure(max(1, len(laws)))
    for ax, law in zip(axes, laws):
        for g in gammas:
            _band(ax, *_curve(curves, seeds, "delta", law=law, gamma=g), label=f"γ = {g:g}")
        ax.set_xscale("log")
        label(
            ax,
            x_label,
            "Δ = perturbed − base loss (nats/token)",
            f"Sensitivity, {'init-scale noise (paper)' if law == 'init_scale' else 'relative noise'}",
        )
        ax.legend(fontsize=8)

    # Figure 2: absolute perturbed loss (init-scale) with T*, and the base loss with its floor
    fig2, (ax_p, ax_b) = new_figure(2)
    for g in gammas:
        line = _band(
            ax_p, *_curve(curves, seeds, "perturbed loss", law="init_scale", gamma=g), label=f"γ = {g:g}"
        )
        _mark(
            ax_p,
            next((r for r in infl if r.get("regime") == "init_scale noise" and r.get("gamma") == g), None),
            line.get_color(),
            cfg.min_rise,
        )
    ax_p.set_xscale("log")
    label(
        ax_p,
        x_label,
        "perturbed loss (nats/token)",
        "Perturbed pre-training loss (T* dotted; CI shaded with ≥ 4 seeds)",
    )
    ax_p.legend(fontsize=8)
    _band(ax_b, *_curve(curves, seeds, "base val loss"), label="base model")
    if floor is not None:
        ax_b.axhline(floor, color="k", ls="--", lw=1, label="Bayes floor")
    ax_b.set_xscale("log")
    label(ax_b, x_label, "validation loss (nats/token)", "Base model keeps improving")
    ax_b.legend(fontsize=8)

    # Figure 3: after fine-tuning, per LR and with the LR tuned per checkpoint: the pre-training loss
    # (retention), the task loss (in-distribution) and, when measured, a held-out language's loss
    methods = sorted({r["method"] for r in ft})
    panels = [
        (name, title)
        for name, title in (
            ("pre-training loss after fine-tuning", "Retention"),
            ("task loss after fine-tuning", "In-distribution"),
            ("held-out language loss after fine-tuning", "Held-out language"),
        )
        if any(r["curve"] == name for r in curves)
    ]
    figs3 = []
    for method in methods:
        fig3, axes = new_figure(len(panels), per_row=3)
        for ax, (name, title) in zip(axes, panels):
            for lr in cfg.finetune.lrs_for(method):
                line = _band(ax, *_curve(curves, seeds, name, method=method, lr=lr), label=f"LR {lr:g}")
                _mark(ax, _inflection(infl, "fixed LR", method, lr, name), line.get_color(), cfg.min_rise)
            tuned = _curve(curves, seeds, f"{name}, tuned LR", method=method)
            if len(tuned[0]):
                line = _band(ax, *tuned, label="LR tuned per checkpoint", color="k", ls="--")
                _mark(ax, _inflection(infl, "tuned LR", method, None, name), "k", cfg.min_rise)
            ax.set_xscale("log")
            label(
                ax, x_label, f"{name} (nats/token)", f"{title} ({method}, {cfg.finetune.train.steps} steps)"
            )
            ax.legend(fontsize=7)
        figs3.append(
            Figure(
                f"overtraining_finetune_{method}",
                fig3,
                f"{method} fine-tuning of every budget checkpoint: mean over {len(seeds)} seeds, band = "
                "min-max over seeds; dashed: the LR tuned per checkpoint (chosen on a selection split); T* "
                "(dotted; CI shaded with ≥ 4 seeds) where the curve has an interior minimum and rises after it.",
                main=not figs3,  # the paper's headline: fine-tuned loss against pre-training tokens
            )
        )

    # Figure 4: the linear theory model and its negative control
    fig4, (ax_d, ax_u) = new_figure(2)
    for key, name in (("theory", "s_i ∝ i^-1.5"), ("theory_control", "s_i ∝ 1/i (control)")):
        delta = [r for r in curves if r["curve"] == "theory delta" and r["model"] == key]
        if not delta:
            continue
        _band(ax_d, *_curve(delta, [], "theory delta", "steps"), label=f"{name}, γ={delta[0]['gamma']:g}")
        _band(
            ax_u,
            *_curve(curves, [], "theory pre-training loss after fine-tuning", "steps", model=key),
            label=name,
        )
    for ax in (ax_d, ax_u):
        ax.set_xscale("log")
        log_y(ax)
        ax.legend(fontsize=8)
    # the theory model's loss is ½‖W2 W1 − M‖²_F of a linear network (docs/theory.md), not nats
    label(
        ax_d,
        "pre-training GD steps (log)",
        "Δ = perturbed − base loss (½ squared error)",
        "Theory: sensitivity rises",
    )
    label(
        ax_u,
        "pre-training GD steps (log)",
        "pre-training loss after fine-tuning (½ squared error)",
        "Theory: U only with the slow spectrum",
    )

    monitor_section = _monitor_section(
        reader,
        cfg,
        [r for r in rows if r["record"] == "monitor"],
        x_label,
        [r for r in rows if r["record"] == "forecast"],
    )

    claims_tab, headline = claims_table(claims, "Claims of Springer et al. 2025")
    infl_rows = [
        {
            "regime": r.get("regime"),
            "quantity": r.get("quantity"),
            "method": r.get("method"),
            "LR": r.get("lr"),
            "γ": r.get("gamma"),
            "T* (lowest budget)": r["t_star"],
            "minimum between": _span(r.get("between_low"), r.get("between_high")),
            f"95% CI (≥ {MIN_SEEDS_FOR_CI} seeds)": _span(r["t_star_ci_low"], r["t_star_ci_high"]),
            "interior": r["interior"],
            "rise": r["rise"],
        }
        for r in infl
    ]
    text = [
        f"{headline} Findings are statements about the phenomenon, each with the false-positive rate (fpr) of "
        "its rule on null curves at the measured seed-to-seed noise and its power on the paper's effect size; "
        "checks verify the theory model. "
        f"Study run <code>{study_id}</code>; {len(seeds)} seeds, "
        f"{len(tokens)} budgets from {tokens[0]:,} to {tokens[-1]:,} tokens "
        f"({tokens[0] / n_params:,.0f} to {tokens[-1] / n_params:,.0f} tokens per parameter).",
    ]
    return [
        Section(
            "Catastrophic overtraining: claims",
            text=text,
            tables=[claims_tab],
        ),
        Section(
            "Sensitivity to Gaussian perturbations",
            text=[
                "Init-scale noise has a fixed absolute size per tensor (the paper's law); relative noise scales "
                "with each tensor's current spread, so it is blind to the weight-norm growth that normalisation "
                "layers allow (Springer et al. 2025; docs/overtraining.md). Mean over seeds; band = min-max over seeds."
            ],
            figures=[
                Figure("overtraining_sensitivity", fig1, "Δ(T, γ) against pre-training tokens."),
                Figure("overtraining_perturbed", fig2, "Absolute perturbed loss and the base loss."),
            ],
        ),
        Section(
            "Fine-tuning every checkpoint",
            figures=figs3,
            tables=[
                Table(
                    infl_rows,
                    "Inflection points T* (tokens; theory rows in steps): the budget where the seed-mean curve "
                    "is lowest, the budgets either side of it (the minimum lies between them), and a bootstrap "
                    f"CI over seeds only where there are ≥ {MIN_SEEDS_FOR_CI} (fewer seeds give their range, not a CI)",
                )
            ],
        ),
        *monitor_section,
        *_advice_section(reader, [r for r in rows if r["record"] == "monitor"], cfg),
        Section(
            "Linear theory model",
            text=[
                "Two-layer linear network, full-batch GD from a small initialisation "
                "(incremental learning); see docs/theory.md."
            ],
            figures=[
                Figure(
                    "overtraining_theory", fig4, "Sensitivity and post-fine-tuning loss of the theory model."
                )
            ],
            details=[("Study config (resolved)", dump_yaml(to_plain(cfg)))],
        ),
    ]


def _monitor_section(
    reader: Reader, cfg: OvertrainingConfig, leads: list[dict], x_label: str, forecasts: list[dict] = ()
) -> list[Section]:
    """The early-warning monitor's checks on the main line of every seed, where it (dashed) and the T*
    forecaster replayed on its checks (dotted) warned, and T*."""
    if cfg.pretrain.monitor is None:
        return []
    mc = cfg.pretrain.monitor
    seed_of = {r["run_id_pretrain"]: r["seed"] for r in leads}
    rows = reader.rows(
        "select run_id, tokens_seen, name, value from metrics where list_contains(?, run_id) "
        "and name in ('monitor/perturbed', 'monitor/warning') order by tokens_seen",
        [list(seed_of)],
    )
    fig, (ax,) = new_figure(1, width=7.4)
    for run_id in seed_of:
        mine = [r for r in rows if r["run_id"] == run_id]
        pts = [(r["tokens_seen"], r["value"]) for r in mine if r["name"] == "monitor/perturbed"]
        if not pts:
            continue
        line = ax.plot(*zip(*pts), marker=".", ms=3, label=f"seed {seed_of[run_id]}")[0]
        fired = next(
            (r["tokens_seen"] for r in mine if r["name"] == "monitor/warning" and r["value"] > 0), None
        )
        if fired:
            ax.axvline(fired, color=line.get_color(), ls="--", lw=1)
        warned = next((r["warned_tokens"] for r in forecasts if r["run_id_pretrain"] == run_id), None)
        if warned:
            ax.axvline(warned, color=line.get_color(), ls=":", lw=1.5)
    for target, style in (("perturbed loss", ":"),):
        row = next((r for r in leads if r["target"] == target and r["t_star_is_u"]), None)
        if row:
            ax.axvline(
                row["t_star"], color="k", ls=style, lw=1, label=f"T* of the {target} (budget checkpoints)"
            )
    ax.set_xscale("log")
    if (
        mc.finetune is not None
    ):  # the rules watch the forgetting of the monitor's fine-tune (`monitor/ft_delta`)
        watched = f"L + forgetting ({mc.finetune.steps} FT steps, LR {mc.finetune.lr:g})"
    else:
        watched = f"L + Δ ({mc.law} noise, γ={mc.gamma:g})"
    weights = "averaged weights" if mc.average else "main line"
    label(
        ax,
        x_label,
        f"{watched}\n{weights}, nats/token",
        "Early-warning monitor (dashed: detector warns, dotted: forecaster warns)",
    )
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    table = [
        {
            "seed": r["seed"],
            "target": r["target"],
            "fired at (tokens)": r["fired_tokens"],
            "predicted minimum T̂": r.get("predicted_min"),
            "T*": r["t_star"],
            "T* is a U": r["t_star_is_u"],
            "lead (doublings)": r["lead_doublings"],
            "log2(T̂ / T*)": r.get("predicted_min_error_doublings"),
        }
        for r in leads
    ]
    return [
        Section(
            "Early-warning monitor",
            text=[
                f"Every {1 / mc.per_doubling:g} doubling of steps the monitor measures the loss and Δ on "
                f"{mc.eval_batches} batch(es) of {mc.batch_size} sequences with {mc.draws} noise draws, fits the "
                f"perturbed loss over its last {mc.window} checks against log tokens, and warns when the slope is "
                f"positive with {mc.confidence:.0%} one-sided confidence at {mc.patience} checks in a row. Lead = "
                "log2(T* / tokens at the warning): positive means it warned before T*; T̂ is the minimum the warning "
                "predicts (vertex of a quadratic fit in log tokens). The main line runs at a "
                "constant LR, T* is measured on cooled-down budget checkpoints.",
                "The T* forecaster is replayed on the same checks, each forecast using only the checks up to "
                "it: it fits −dL/dlog T and dΔ/dlog T as power laws in tokens and forecasts T* where they meet, "
                "with a bootstrap interval; it warns when T* is within the horizon with 90% probability.",
            ],
            figures=[Figure("overtraining_monitor", fig, "Monitor checks per seed, warnings and T*.")],
            tables=[Table(table, "Where the monitor warned, against the measured T*")]
            + (
                [
                    Table(
                        [
                            {
                                "seed": r["seed"],
                                "target": r["target"],
                                "warned at (tokens)": r["warned_tokens"],
                                "forecast T* at the warning": r["forecast_at_warning"],
                                "T*": r["t_star"],
                                "lead (doublings)": r["lead_doublings"],
                                "log2(forecast / T*)": r["error_doublings"],
                                "90% interval coverage before T*": r["coverage"],
                            }
                            for r in forecasts
                        ],
                        "The T* forecaster replayed on the same checks (warns when P(T* within "
                        f"{cfg.forecast_horizon:g} doubling) ≥ 0.9)",
                    )
                ]
                if forecasts
                else []
            ),
        )
    ]


def _advice_section(reader: Reader, leads: list[dict], cfg: OvertrainingConfig) -> list[Section]:
    """`overtrain advise` for every seed's pre-training run (objective ``both``): the forecast at its last
    check, and the first seed's trade-off table and recommendation."""
    seed_of = {r["run_id_pretrain"]: r["seed"] for r in leads}
    if not seed_of:
        return []
    advice = {
        run_id: advise_pretrain(reader, run_id, "both", cfg.forecast_horizon, cfg.min_rise)
        for run_id in sorted(seed_of, key=seed_of.get)
    }
    forecasts = [
        {
            "seed": seed_of[run_id],
            "pre-training run": run_id,
            "signal": a.forecast["signal"],
            "checks": a.forecast["checks"],
            "forecast T* at the last check": forecast_tokens(a.forecast["t_star"]),
            "90% interval": f"{forecast_tokens(a.forecast['low'])} – {forecast_tokens(a.forecast['high'])}",
            "P(T* within horizon)": a.forecast["p_within"],
            "first warned at": forecast_tokens(a.forecast["warned_tokens"])
            if a.forecast["warned_tokens"]
            else "",
        }
        for run_id, a in advice.items()
        if a.forecast is not None
    ]
    first_id, first = next(iter(advice.items()))
    tables = [Table(forecasts, "The T* forecast replayed on each seed's monitor checks")] if forecasts else []
    if first.tradeoff:
        tables.append(
            Table(
                first.tradeoff,
                f"Trade-off across budgets, seed {seed_of[first_id]} (nats/token; LR tuned on the selection split)",
            )
        )
    return [
        Section(
            "How many tokens to pre-train (overtrain advise)",
            text=[
                "What <code>overtrain advise RUN --objective both</code> says about each seed's pre-training "
                "run: the forecast from its monitor checks and, for the first seed, the budgets' trade-off after "
                "fine-tuning and the recommendation. One run is one seed; the claims above are the verdicts over "
                "seeds (docs/early_warning.md).",
                *(f"Seed {seed_of[first_id]}: {line}" for line in first.recommendation),
            ],
            tables=tables,
        )
    ]
