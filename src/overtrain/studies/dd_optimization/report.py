"""The optimization-and-double-descent report section: test loss against width per setting, peak height
against the training loss reached, the claims and the settings table."""

from __future__ import annotations

from overtrain.report.html import Figure, Section, Table
from overtrain.report.plots import label, log_x, new_figure
from overtrain.runs.query import Reader
from overtrain.studies.base import claims_table
from overtrain.studies.dd_optimization.analysis import median_curve
from overtrain.studies.dd_optimization.config import OptimizationDDConfig


def report(reader: Reader, cfg: OptimizationDDConfig, rows: list[dict], run_id: str) -> list:
    settings = [r for r in rows if r["record"] == "setting"]
    n = cfg.data.n_train
    fig, axes = new_figure(3, width=4.8, height=3.6)
    for family, ax, title in [
        ("closed_form", axes[0], "exact GD for T steps (closed form)"),
        ("torch", axes[1], "torch optimizer settings"),
    ]:
        for s in settings:
            if s["family"] != family:
                continue
            widths, y = median_curve(rows, s["setting"], "test_loss")
            ax.plot(
                widths / n, y, lw=1, marker="o" if family == "closed_form" else None, ms=2, label=s["setting"]
            )
        ax.axvline(1.0, color="grey", ls=":", lw=1)
        log_x(ax)
        ax.set_yscale("log")
        label(ax, "P / n (log)", "test MSE", title)
        ax.legend(fontsize=5, ncol=1 if family == "closed_form" else 2, loc="upper left", framealpha=0.6)
    ax = axes[2]
    for family, marker in (("closed_form", "o"), ("torch", "s")):
        pts = [
            (s["train_loss_at_n"], s["peak_height"])
            for s in settings
            if s["family"] == family and s["train_loss_at_n"] and s["train_loss_at_n"] > 1e-12
        ]  # min-norm interpolates: off the axis
        if pts:
            ax.scatter(*zip(*pts), marker=marker, s=18, label=family.replace("_", " "))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.axhline(1.0, color="grey", ls=":", lw=1)
    label(
        ax, "train MSE reached at P = n (log)", "peak height", "peak height vs loss reached (T = ∞ omitted)"
    )
    ax.legend(fontsize=7)
    table, passed = claims_table(rows, "Claims of Liu & Flanigan 2023")
    setting_rows = [
        {
            "setting": s["setting"],
            "family": s["family"],
            "train MSE at P=n": s["train_loss_at_n"],
            "test MSE at P=n": s["test_loss_at_n"],
            "peak height": s["peak_height"],
            "κ at P=n": s["kappa_at_n"],
            "wall s": s.get("wall_s"),
        }
        for s in settings
    ]
    text = [
        f"{passed} Run <code>{run_id}</code>: random-feature readouts on the tanh teacher "
        f"(n = {n}), {len(cfg.seeds)} seeds. Peak height = test MSE at P = n / median test MSE "
        "at P/n in [0.5, 0.7] ∪ [1.5, 2] (median-over-seeds curves); 1 means no peak."
    ]
    return [
        Section(
            "The role of optimization in double descent",
            text=text,
            figures=[
                Figure(
                    "dd_optimization",
                    fig,
                    "Left, middle: test MSE vs width; right: the peak "
                    "grows as the optimizer reaches a lower training loss.",
                )
            ],
            tables=[table, Table(setting_rows, "Every optimizer setting")],
        )
    ]
