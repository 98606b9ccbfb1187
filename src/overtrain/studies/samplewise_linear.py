"""Sample-wise double descent of isotropic linear regression (Nakkiran et al. 2020, science.md §7): with
d fixed, the min-norm estimate's test risk peaks at n = d, so more data hurts just below it.

The numerics are `overtrain.models.linear_regression`; this module makes them a study (one run, claims,
report with the closed-form expected risk beside the Monte Carlo median).
"""

from __future__ import annotations

import numpy as np

from overtrain.models.linear_regression import SamplewiseLinearConfig, run_samplewise_linear
from overtrain.studies.single_run import SingleRunStudy, claims_table, register


def compute(cfg: SamplewiseLinearConfig, progress=lambda done, total: None) -> tuple[list[dict], dict]:
    result = run_samplewise_linear(cfg, progress=progress)
    return result.rows() + [c.row() for c in result.claims()], {"wall_s": result.wall_s}


def report(store, cfg: SamplewiseLinearConfig, rows: list[dict], run_id: str) -> list:
    from overtrain.models.linear_regression import expected_risk
    from overtrain.report.html import Figure, Section
    from overtrain.report.plots import label, log_x, new_figure

    by: dict[int, list[float]] = {}
    for r in rows:
        if r.get("record") == "risk":
            by.setdefault(r["n"], []).append(r["risk"])
    n = np.array(sorted(by))
    fig, (ax,) = new_figure(1, width=6.4, height=4.2)
    ax.plot(n / cfg.d, [np.median(by[v]) for v in n], marker="o", ms=2, label="median over trials")
    ax.plot(n / cfg.d, [np.mean(by[v]) for v in n], lw=0.8, alpha=0.6, label="mean over trials")
    expected = np.array([expected_risk(int(v), cfg.d, cfg.noise_std) for v in n])
    ok = np.isfinite(expected)
    ax.plot(n[ok] / cfg.d, expected[ok], "k--", lw=1, label="closed form E[risk]")
    ax.axvline(1.0, color="grey", ls=":", lw=1)
    log_x(ax)
    ax.set_yscale("log")
    label(ax, "n / d (log)", "test MSE", f"sample-wise double descent, d = {cfg.d}")
    ax.legend(fontsize=7)
    table, passed = claims_table(rows, "Claims of Nakkiran et al. 2020 (sample-wise, linear regression)")
    text = [f"{passed} Run <code>{run_id}</code>: y = βᵀx + N(0, {cfg.noise_std:g}²), x ~ N(0, I_{cfg.d}), min-norm "
            f"estimate, test MSE = ‖β̂ − β‖² + σ² (exact), {cfg.trials} trials with nested training sets."]
    return [Section("Sample-wise double descent (linear regression)", text=text, tables=[table],
                    figures=[Figure("samplewise_linear", fig, "Test MSE against the number of training examples.")])]


STUDY = register(SingleRunStudy(
    name="samplewise_linear", config_cls=SamplewiseLinearConfig, compute=compute, report_fn=report,
    presets=("default",), help="sample-wise double descent of linear regression: more data hurts near n = d"))
