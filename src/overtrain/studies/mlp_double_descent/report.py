"""The two-layer-network report section: the model-wise curves at the last step, the epoch-wise
trajectory of the wide network, and the claims table."""

from __future__ import annotations

import numpy as np

from overtrain.report.html import Figure, Section
from overtrain.report.plots import label, new_figure
from overtrain.runs.query import Reader
from overtrain.studies.base import claims_table
from overtrain.studies.mlp_double_descent.config import MLPDoubleDescentConfig


def _final(rows, key: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds of `key` at each width's last step (model-wise rows)."""
    last = max(r["step"] for r in rows)
    by: dict[int, list[float]] = {}
    for r in rows:
        if r["step"] == last:
            by.setdefault(r["n_params"], []).append(r[key])
    x = np.array(sorted(by))
    return x, np.array([np.mean(by[v]) for v in x])


def report(reader: Reader, cfg: MLPDoubleDescentConfig, rows: list[dict], run_id: str) -> list:
    figs = []
    mw = [r for r in rows if r.get("record") == "curve" and r["study"] == "modelwise"]
    if mw:
        fig, axes = new_figure(2, width=5.0, height=3.6)
        n, k = cfg.modelwise.data.n_train, 10
        for key, name in (
            ("test_error", "test error (clean labels)"),
            ("train_error", "train error (noisy labels)"),
        ):
            x, y = _final(mw, key)
            axes[0].plot(x, y, marker="o", ms=3, label=name)
        x, y = _final(mw, "train_loss")
        axes[1].plot(x, y, marker="o", ms=3, color="C2", label="train loss")
        x, y = _final(mw, "test_loss")
        axes[1].plot(x, y, marker="o", ms=3, color="C3", label="test loss")
        for ax in axes:
            ax.axvline(n * k, color="grey", ls=":", lw=1)
            ax.set_xscale("log")
            ax.legend(fontsize=7)
        axes[1].set_yscale("log")
        label(
            axes[0], "parameters (log; dotted: n·k)", "error", f"width-wise, {cfg.modelwise.steps} Adam steps"
        )
        label(
            axes[1], "parameters (log; dotted: n·k)", f"{cfg.modelwise.loss} loss", "losses at the last step"
        )
        figs.append(
            Figure(
                "mlp_modelwise",
                fig,
                f"Two-layer nets on digits, n = {n}, "
                f"{cfg.modelwise.data.label_noise:.0%} label noise, mean over {len(cfg.modelwise.seeds)} "
                "seeds.",
            )
        )
    ew = [r for r in rows if r.get("record") == "curve" and r["study"] == "epochwise"]
    if ew:
        fig, (ax,) = new_figure(1, width=6.0, height=3.6)
        steps = sorted({r["step"] for r in ew})
        for key, name in (
            ("test_error", "test error"),
            ("train_error", "train error (noisy labels)"),
            ("memorised", "corrupted labels memorised"),
        ):
            ax.plot(steps, [np.mean([r[key] for r in ew if r["step"] == s]) for s in steps], label=name)
        ax.set_xscale("symlog", linthresh=100)
        label(ax, "Adam steps (symlog)", "fraction", f"epoch-wise, width {max(cfg.epochwise.widths)}")
        ax.legend(fontsize=7)
        figs.append(
            Figure(
                "mlp_epochwise",
                fig,
                f"One wide network over training, mean over {len(cfg.epochwise.seeds)} seeds.",
            )
        )
    table, passed = claims_table(rows, "Claims of Nakkiran et al. 2020 / Belkin et al. 2019 (two-layer nets)")
    text = [f"{passed} Run <code>{run_id}</code>. Full-batch Adam, no weight decay; test labels are clean."]
    return [Section("Two-layer networks on digits", text=text, figures=figs, tables=[table])]
