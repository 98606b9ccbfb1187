"""The sample-wise linear-regression report section: the Monte Carlo curve beside the closed form, and
the claims table."""

from __future__ import annotations

import numpy as np

from overtrain.report.html import Figure, Section
from overtrain.report.plots import label, log_x, new_figure
from overtrain.runs.query import Reader
from overtrain.studies.base import claims_table
from overtrain.studies.samplewise_linear.config import SamplewiseLinearConfig


def report(reader: Reader, cfg: SamplewiseLinearConfig, rows: list[dict], run_id: str) -> list:
    by: dict[int, list[float]] = {}
    for r in rows:
        if r.get("record") == "risk":
            by.setdefault(r["n"], []).append(r["risk"])
    n = np.array(sorted(by))
    fig, (ax,) = new_figure(1, width=6.4, height=4.2)
    ax.plot(n / cfg.d, [np.median(by[v]) for v in n], marker="o", ms=2, label="median over trials")
    ax.plot(n / cfg.d, [np.mean(by[v]) for v in n], lw=0.8, alpha=0.6, label="mean over trials")
    # the closed form as the run stored it (None where it diverges, d − 1 ≤ n ≤ d + 1)
    closed = sorted(
        (r["n"], r["risk"]) for r in rows if r.get("record") == "expected" and r["risk"] is not None
    )
    ax.plot([v / cfg.d for v, _ in closed], [e for _, e in closed], "k--", lw=1, label="closed form E[risk]")
    ax.axvline(1.0, color="grey", ls=":", lw=1)
    log_x(ax)
    ax.set_yscale("log")
    label(ax, "n / d (log)", "test MSE", f"sample-wise double descent, d = {cfg.d}")
    ax.legend(fontsize=7)
    table, passed = claims_table(rows, "Claims of Nakkiran et al. 2020 (sample-wise, linear regression)")
    text = [
        f"{passed} Run <code>{run_id}</code>: y = βᵀx + N(0, {cfg.noise_std:g}²), x ~ N(0, I_{cfg.d}), min-norm "
        f"estimate, test MSE = ‖β̂ − β‖² + σ² (exact), {cfg.trials} trials with nested training sets."
    ]
    return [
        Section(
            "Sample-wise double descent (linear regression)",
            text=text,
            tables=[table],
            figures=[Figure("samplewise_linear", fig, "Test MSE against the number of training examples.")],
        )
    ]
