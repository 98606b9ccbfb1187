"""The role of optimization in double descent (Liu & Flanigan 2023, science.md §5): the model-wise peak
appears only when the optimizer reaches a low enough training loss.

The numerics are `overtrain.models.optim_dd`: random-feature readouts trained by exact GD for T steps
(closed form, T = 10² … ∞) and by torch optimizer settings (SGD at several batch sizes, momentum, Adam,
init scale, feature normalisation), all widths of a setting batched into one problem. This module makes
them a study: one run, the claims (κ and ‖a‖ peak at P = n; the peak grows with T; no peak at the
smallest T; Spearman(peak height, −log train loss at P = n) ≥ 0.8 across settings), the report.
"""

from __future__ import annotations

import numpy as np

from overtrain.models.optim_dd import OptimizationDDConfig, run_optimization_dd
from overtrain.studies.single_run import SingleRunStudy, claims_table, register


def compute(cfg: OptimizationDDConfig, progress=lambda done, total: None) -> tuple[list[dict], dict]:
    result = run_optimization_dd(cfg, progress=progress)
    return result.rows() + [c.row() for c in result.claims()], {"wall_s": result.wall_s}


def _median_curve(rows, setting: str, key: str):
    by: dict[float, list[float]] = {}
    for r in rows:
        if r["record"] == "curve" and r["setting"] == setting:
            by.setdefault(r["ratio"], []).append(r[key])
    x = np.array(sorted(by))
    return x, np.array([np.median(by[v]) for v in x])


def report(store, cfg: OptimizationDDConfig, rows: list[dict], run_id: str) -> list:
    from overtrain.report.html import Figure, Section, Table
    from overtrain.report.plots import label, log_x, new_figure

    settings = [r for r in rows if r["record"] == "setting"]
    fig, axes = new_figure(3, width=4.8, height=3.6)
    for family, ax, title in [("closed_form", axes[0], "exact GD for T steps (closed form)"),
                              ("torch", axes[1], "torch optimizer settings")]:
        for s in settings:
            if s["family"] != family:
                continue
            x, y = _median_curve(rows, s["setting"], "test_loss")
            ax.plot(x, y, lw=1, marker="o" if family == "closed_form" else None, ms=2, label=s["setting"])
        ax.axvline(1.0, color="grey", ls=":", lw=1)
        log_x(ax)
        ax.set_yscale("log")
        label(ax, "P / n (log)", "test MSE", title)
        ax.legend(fontsize=5, ncol=1 if family == "closed_form" else 2, loc="upper left", framealpha=0.6)
    ax = axes[2]
    for family, marker in (("closed_form", "o"), ("torch", "s")):
        pts = [(s["train_loss_at_n"], s["peak_height"]) for s in settings if s["family"] == family
               and s["train_loss_at_n"] and s["train_loss_at_n"] > 1e-12]  # min-norm interpolates: off the axis
        if pts:
            ax.scatter(*zip(*pts), marker=marker, s=18, label=family.replace("_", " "))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.axhline(1.0, color="grey", ls=":", lw=1)
    label(ax, "train MSE reached at P = n (log)", "peak height", "peak height vs loss reached (T = ∞ omitted)")
    ax.legend(fontsize=7)
    table, passed = claims_table(rows, "Claims of Liu & Flanigan 2023")
    setting_rows = [{"setting": s["setting"], "family": s["family"], "train MSE at P=n": s["train_loss_at_n"],
                     "test MSE at P=n": s["test_loss_at_n"], "peak height": s["peak_height"],
                     "κ at P=n": s["kappa_at_n"], "wall s": s.get("wall_s")} for s in settings]
    text = [f"{passed} Run <code>{run_id}</code>: random-feature readouts on the science.md §5 teacher "
            f"(n = {cfg.data.n_train}), {len(cfg.seeds)} seeds. Peak height = test MSE at P = n / median test MSE "
            "at P/n in [0.5, 0.7] ∪ [1.5, 2] (median-over-seeds curves); 1 means no peak."]
    return [Section("The role of optimization in double descent", text=text,
                    figures=[Figure("dd_optimization", fig, "Left, middle: test MSE vs width; right: the peak "
                                    "grows as the optimizer reaches a lower training loss.")],
                    tables=[table, Table(setting_rows, "Every optimizer setting")])]


STUDY = register(SingleRunStudy(
    name="dd_optimization", config_cls=OptimizationDDConfig, compute=compute, report_fn=report,
    presets=("default",), help="role of optimization in double descent: the peak needs a low training loss"))
