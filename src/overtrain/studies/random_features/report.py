"""The random-features report section: model-wise and sample-wise curves, and the claims table."""

from __future__ import annotations

from overtrain.report.html import Figure, Section
from overtrain.report.plots import label, log_x, new_figure
from overtrain.runs.query import Reader
from overtrain.studies.base import claims_table
from overtrain.studies.random_features.analysis import median_curve
from overtrain.studies.random_features.config import RandomFeaturesConfig


def report(reader: Reader, cfg: RandomFeaturesConfig, rows: list[dict], run_id: str) -> list:
    curves = [r for r in rows if r["record"] == "curve"]
    datasets = sorted({r["dataset"] for r in curves}, key=lambda d: (not d.startswith("teacher"), d))
    feats = sorted({r["features"] for r in curves})
    figs = []
    panels = [
        ("test_loss", "test squared loss", True),
        ("test_error", "0-1 test error", False),
        ("kappa", "κ(F)", True),
        ("norm", "‖a‖", True),
    ]
    for ds in datasets:
        keys = [p for p in panels if any(r.get(p[0]) is not None for r in curves if r["dataset"] == ds)]
        fig, axes = new_figure(len(keys) + 1, width=4.2, height=3.2, per_row=5)
        for ax, (key, name, logy) in zip(axes, keys):
            for feat in feats:
                x, y = median_curve(curves, key, dataset=ds, features=feat, solver="min_norm")
                ax.plot(x, y, marker="o", ms=2, label=f"{feat} min-norm")
            if key in ("test_loss", "test_error"):
                for lam in cfg.ridges:
                    x, y = median_curve(curves, key, dataset=ds, features=feats[0], solver="ridge", value=lam)
                    ax.plot(x, y, lw=1, ls="--", label=f"{feats[0]} ridge λ={lam:g}")
            _threshold(ax, logy)
            label(ax, "P / n (log)", name, name)
            ax.legend(fontsize=6)
        ax = axes[-1]
        for T in cfg.steps:
            x, y = median_curve(curves, "test_loss", dataset=ds, features=feats[0], solver="gd", value=T)
            ax.plot(x, y, lw=1, label=f"GD T={T:g}")
        x, y = median_curve(curves, "test_loss", dataset=ds, features=feats[0], solver="min_norm")
        ax.plot(x, y, color="k", lw=1, label="T = ∞ (min-norm)")
        _threshold(ax, True)
        label(ax, "P / n (log)", "test squared loss", f"training length ({feats[0]})")
        ax.legend(fontsize=6)
        figs.append(
            Figure(
                f"rf_{_slug(ds)}",
                fig,
                f"{ds}: model-wise curves, median over {len(cfg.seeds)} seeds; "
                "dashed line: the interpolation threshold P = n.",
            )
        )
    sw = [r for r in rows if r["record"] == "samplewise"]
    if sw:
        fig, axes = new_figure(2, width=4.6, height=3.4)
        for ds in datasets:
            for feat in feats:
                x, y = median_curve(sw, "test_loss", dataset=ds, features=feat, solver="min_norm")
                axes[0].plot(x, y, marker="o", ms=2, label=f"{ds} / {feat}")
                x, y = median_curve(sw, "kappa", dataset=ds, features=feat, solver="min_norm")
                axes[1].plot(x, y, marker="o", ms=2, label=f"{ds} / {feat}")
        for ax, name in zip(axes, ["test squared loss", "κ(F)"]):
            _threshold(ax, True, [r for r in (0.25, 0.5, 1, 2, 3) if min(x) <= r <= max(x)])
            label(ax, "training examples n / P (log)", name, f"sample-wise: {name}")
        axes[0].legend(fontsize=6)
        figs.append(
            Figure(
                "rf_samplewise",
                fig,
                f"Sample-wise: P = {cfg.samplewise.width} features fixed, nested "
                "training sets; median over seeds.",
            )
        )
    table, passed = claims_table(
        rows, "Claims of Belkin et al. 2019 and Nakkiran et al. 2020 (random features)"
    )
    text = [
        f"{passed} Run <code>{run_id}</code>: {len(datasets)} datasets × {len(feats)} feature maps × "
        f"{len(cfg.seeds)} seeds, {len({r['ratio'] for r in curves})} widths from P/n = {min(cfg.width_ratios):g} "
        f"to {max(cfg.width_ratios):g}; losses are mean squared errors summed over outputs (one-hot targets for "
        "digits)."
    ]
    return [Section("Random-features double descent", text=text, figures=figs, tables=[table])]


def _threshold(ax, logy: bool, ticks=None) -> None:
    ax.axvline(1.0, color="grey", ls=":", lw=1)
    log_x(ax, ticks)
    if logy:
        ax.set_yscale("log")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower()
