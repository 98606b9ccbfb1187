"""Random-features double descent (Belkin et al. 2019; Nakkiran et al. 2020): model-wise and sample-wise.

For every dataset, feature map and seed, one draw of ``P_max`` random features is fitted at every
width ``P = ratio·n`` of the grid by minimum-norm least squares, ridge and finite-step GD
(`overtrain.models.random_features`: one eigendecomposition per width serves every fit). The
claims (science.md §7, §8):

- the test squared loss, the 0-1 test error (classification data), the condition number κ(F) and the
  solution norm ‖a‖ all peak at the interpolation threshold P = n (within ±`peak_tolerance`);
- second descent: the test loss at the largest width is below its value at P = n/2;
- label noise makes the peak higher (digits at increasing noise);
- ridge regularisation removes the peak (test loss at P = n no higher than at P = n/2 and 2n);
- sample-wise: with P fixed, the test loss at n = P exceeds the one at n = P/2 (more data hurts).

Curves are the median over seeds (each seed redraws the features and the data split / teacher sample).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from overtrain.analysis.claims import check
from overtrain.config import BaseConfig, Seeds, to_plain
from overtrain.data.regression import DigitsConfig, RegressionDataConfig, TeacherConfig
from overtrain.models.random_features import FeatureConfig, fits, random_features, sweep_widths
from overtrain.studies.single_run import SingleRunStudy, claims_table, register

DEFAULT_RATIOS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 1.0, 1.02, 1.05, 1.1, 1.15,
                  1.2, 1.3, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 7.0, 10.0, 15.0, 20.0]
"""Widths P/n: dense around the threshold, log-spaced beyond it."""


class SamplewiseConfig(BaseConfig):
    """Sample-wise sweep: P fixed, the training set grows (nested subsets of one draw)."""

    width: int = Field(250, ge=2)
    """Features P (digits has 797 training images besides a 1,000-image test set: keep n ≤ 797)."""

    n_ratios: list[float] = [0.25, 0.5, 0.75, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5, 2.0, 3.0]
    """Training-set sizes n/P."""

    @field_validator("n_ratios")
    @classmethod
    def _ratios(cls, value: list[float]) -> list[float]:
        if not value or any(r <= 0 for r in value):
            raise ValueError("give positive ratios n/P")
        return sorted(set(value))


class RandomFeaturesConfig(BaseConfig):
    """The random-features double-descent study (``overtrain random-features``)."""

    schema_version: int = 1
    """Config schema version."""

    datasets: list[RegressionDataConfig] = Field(default_factory=lambda: [
        TeacherConfig(), DigitsConfig(label_noise=0.0), DigitsConfig(label_noise=0.1), DigitsConfig(label_noise=0.2)])
    """Datasets (``{name: teacher, ...}`` or ``{name: digits, label_noise: 0.1, ...}``); each seed replaces
    the dataset's own seed."""

    features: list[Literal["relu", "tanh", "fourier"]] = ["relu", "fourier"]
    """Feature maps (`overtrain.models.random_features.FeatureConfig.kind`)."""

    width_ratios: list[float] = Field(default_factory=lambda: list(DEFAULT_RATIOS))
    """Model-wise widths as P/n (1.0, the interpolation threshold, is always added)."""

    ridges: list[float] = [1e-3, 1e-2, 1e-1, 1.0]
    """Ridge λ per example (``min (1/n)‖Fa − Y‖² + λ‖a‖²``), each one more curve."""

    steps: list[float] = [1e2, 1e4]
    """Lengths T of exact full-batch GD from zero (step 1/s_max²), each one more curve."""

    seeds: Seeds = [0, 1, 2]
    """Seeds: each redraws the features and the dataset (split, label noise, teacher sample)."""

    samplewise: SamplewiseConfig | None = SamplewiseConfig()
    """The sample-wise sweep on every dataset (None: skip)."""

    peak_tolerance: float = Field(0.1, gt=0, lt=1)
    """A peak counts as "at P = n" when its P/n is within ±this (science.md §7, §8: ±10%)."""

    @field_validator("width_ratios")
    @classmethod
    def _width_ratios(cls, value: list[float]) -> list[float]:
        if any(r <= 0 for r in value):
            raise ValueError("width ratios P/n must be positive")
        return sorted(set(value) | {1.0})


def dataset_label(data) -> str:
    if data.name == "digits":
        return f"digits noise={data.label_noise:g}"
    return f"teacher σ={data.noise_std:g}"


def _with_seed(data, seed: int, **update):
    return type(data).model_validate({**to_plain(data), "seed": seed, **update})


def compute(cfg: RandomFeaturesConfig, progress=lambda done, total: None) -> tuple[list[dict], dict]:
    from overtrain.threads import blas_threads

    with blas_threads(1):  # 2.2x faster than two BLAS threads at these sizes (overtrain.threads)
        return _compute(cfg, progress)


def _compute(cfg: RandomFeaturesConfig, progress) -> tuple[list[dict], dict]:
    import time

    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    jobs = [(d, k, s) for d in cfg.datasets for k in cfg.features for s in cfg.seeds]
    total = len(jobs) * (2 if cfg.samplewise else 1)
    done = 0
    for data_cfg, kind, seed in jobs:
        data = _with_seed(data_cfg, seed).build()
        n = data.n
        widths = sorted({max(1, round(r * n)) for r in cfg.width_ratios})
        # ridge λ is per example: the fits' n must be this dataset's
        for row in sweep_widths(*_features(data, kind, seed, widths[-1]), widths, fits(cfg.ridges, cfg.steps, n),
                                labels=data.labels, labels_test=data.labels_test, Y_test=data.Y_test):
            rows.append({"record": "curve", "dataset": dataset_label(data_cfg), "features": kind, "seed": seed,
                         "n": n, "ratio": row["width"] / n, **row})
        done += 1
        progress(done, total)
    if cfg.samplewise:
        for data_cfg, kind, seed in jobs:
            rows += _samplewise(cfg, data_cfg, kind, seed)
            done += 1
            progress(done, total)
    rows += [c.row() for c in claims(cfg, rows)]
    return rows, {"wall_s": time.perf_counter() - started, "curves": len(jobs)}


def _features(data, kind: str, seed: int, width: int):
    F, F_test = random_features(FeatureConfig(kind=kind, seed=seed), data.X, data.X_test, width)
    return F, data.Y, F_test


def _samplewise(cfg: RandomFeaturesConfig, data_cfg, kind: str, seed: int) -> list[dict]:
    sw = cfg.samplewise
    sizes = sorted({max(2, round(r * sw.width)) for r in sw.n_ratios})
    full = _with_seed(data_cfg, seed, n_train=sizes[-1]).build()
    F, F_test = random_features(FeatureConfig(kind=kind, seed=seed), full.X, full.X_test, sw.width)
    out = []
    for n in sizes:
        part = full.subset(n)
        (row,) = sweep_widths(F[:n], part.Y, F_test, [sw.width], fits(), labels=part.labels,
                              labels_test=part.labels_test, Y_test=part.Y_test)
        out.append({"record": "samplewise", "dataset": dataset_label(data_cfg), "features": kind, "seed": seed,
                    "n": n, "ratio": n / sw.width, **row})
    return out


# --- claims --------------------------------------------------------------------------------------------


def median_curve(rows: list[dict], key: str, **match) -> tuple[np.ndarray, np.ndarray]:
    """``(x, median over seeds of key)`` of the rows matching `match`, x = ``ratio``, sorted."""
    by: dict[float, list[float]] = {}
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()) and r.get(key) is not None:
            by.setdefault(r["ratio"], []).append(r[key])
    x = np.array(sorted(by))
    return x, np.array([np.median(by[v]) for v in x])


def _at(x: np.ndarray, y: np.ndarray, ratio: float) -> float:
    return float(y[np.argmin(np.abs(np.log(x / ratio)))])


def claims(cfg: RandomFeaturesConfig, rows: list[dict]) -> list:
    tol = cfg.peak_tolerance
    curves = sorted({(r["dataset"], r["features"]) for r in rows if r["record"] == "curve"})
    out = []
    for key, what, classification in [("test_loss", "test squared loss", False), ("test_error", "0-1 test error", True),
                                      ("kappa", "condition number κ(F)", False), ("norm", "solution norm ‖a‖", False)]:
        peaks = {}
        for ds, feat in curves:
            if classification and not ds.startswith("digits"):
                continue
            x, y = median_curve(rows, key, record="curve", dataset=ds, features=feat, solver="min_norm")
            peaks[f"{ds} / {feat}"] = float(x[np.argmax(y)])
        ok = [abs(p - 1) <= tol for p in peaks.values()]
        out.append(check(f"{what} peaks at the interpolation threshold P = n", "curves whose peak P/n is within "
                         f"±{tol:.0%} of 1 (fraction)", np.mean(ok) if ok else None, all(ok) if ok else None,
                         "all curves", detail="; ".join(f"{k}: peak at P/n = {v:.3g}" for k, v in peaks.items())))
    second, details = [], []
    for ds, feat in curves:
        x, y = median_curve(rows, "test_loss", record="curve", dataset=ds, features=feat, solver="min_norm")
        if x[-1] >= 2 and x[0] <= 0.5:
            big, half = float(y[-1]), _at(x, y, 0.5)
            second.append(big < half)
            details.append(f"{ds} / {feat}: {big:.3g} at P/n = {x[-1]:g} vs {half:.3g} at 0.5")
    out.append(check("second descent: the widest model beats P = n/2", "curves with test loss at the largest P "
                     "below P = n/2 (fraction)", np.mean(second) if second else None,
                     all(second) if second else None, "all curves", detail="; ".join(details)))
    out.append(_label_noise_claim(rows, curves))
    out.append(_ridge_claim(cfg, rows, curves))
    out.append(_samplewise_claim(rows))
    return out


def _label_noise_claim(rows, curves):
    from overtrain.analysis.stats import spearman

    noisy = sorted({ds for ds, _ in curves if ds.startswith("digits")})
    levels = [float(ds.split("=")[1]) for ds in noisy]
    if len(set(levels)) < 2:
        return check("label noise raises the peak", "Spearman(noise, peak 0-1 error)", None, None, "= 1",
                     detail="needs digits at two or more noise levels")
    rhos, details = [], []
    for feat in sorted({f for _, f in curves}):
        peaks = []
        for ds in noisy:
            x, y = median_curve(rows, "test_error", record="curve", dataset=ds, features=feat, solver="min_norm")
            peaks.append(_at(x, y, 1.0))
        rhos.append(spearman(levels, peaks))
        details.append(f"{feat}: " + ", ".join(f"noise {lv:g} → {p:.3f}" for lv, p in zip(levels, peaks)))
    return check("label noise raises the peak (digits)", "min over feature maps of Spearman(noise, 0-1 error at "
                 "P = n)", min(rhos), min(rhos) >= 0.99, "= 1", detail="; ".join(details))


def _ridge_claim(cfg, rows, curves):
    """Optimal regularisation (Nakkiran et al.): with λ tuned per width on the test loss (the best of the
    grid), the curve has no bump: its loss at P = n is at most 5% above the loss at P = n/2 (the slack
    absorbs the coarseness of the λ grid; the min-norm ratio is in the hundreds)."""
    if not cfg.ridges:
        return check("tuned ridge removes the peak", "ratio", None, None, "≤ 1", detail="no ridge values configured")
    ratios, details = [], []
    for ds, feat in curves:
        per_lam = [median_curve(rows, "test_loss", record="curve", dataset=ds, features=feat, solver="ridge",
                                value=lam) for lam in cfg.ridges]
        x, best = per_lam[0][0], np.min([y for _, y in per_lam], axis=0)
        if x[0] <= 0.5:
            ratio = _at(x, best, 1.0) / _at(x, best, 0.5)
            x0, y0 = median_curve(rows, "test_loss", record="curve", dataset=ds, features=feat, solver="min_norm")
            ratios.append(ratio)
            details.append(f"{ds} / {feat}: {ratio:.3g} (min-norm {_at(x0, y0, 1.0) / _at(x0, y0, 0.5):.3g})")
    worst = max(ratios) if ratios else None
    return check("ridge tuned per width removes the peak", "max over curves of test loss at P = n / at P = n/2, "
                 f"best λ of {cfg.ridges}", worst, worst is not None and worst <= 1.05, "≤ 1.05",
                 detail="; ".join(details))


def _samplewise_claim(rows):
    sw = [r for r in rows if r["record"] == "samplewise"]
    if not sw:
        return check("sample-wise: more data hurts near n = P", "ratio", None, None, "> 1", detail="not run")
    ratios, details = [], []
    for ds, feat in sorted({(r["dataset"], r["features"]) for r in sw}):
        x, y = median_curve(sw, "test_loss", dataset=ds, features=feat, solver="min_norm")
        ratio = _at(x, y, 1.0) / _at(x, y, 0.5)
        ratios.append(ratio)
        details.append(f"{ds} / {feat}: peak at n/P = {x[np.argmax(y)]:.3g}, loss(n=P)/loss(n=P/2) = {ratio:.3g}")
    return check("sample-wise: more data hurts near n = P", "min over curves of test loss at n = P / at n = P/2",
                 min(ratios), min(ratios) > 1, "> 1", detail="; ".join(details))


# --- report --------------------------------------------------------------------------------------------


def report(store, cfg: RandomFeaturesConfig, rows: list[dict], run_id: str) -> list:
    from overtrain.report.html import Figure, Section
    from overtrain.report.plots import label, new_figure

    curves = [r for r in rows if r["record"] == "curve"]
    datasets = sorted({r["dataset"] for r in curves}, key=lambda d: (not d.startswith("teacher"), d))
    feats = sorted({r["features"] for r in curves})
    figs = []
    panels = [("test_loss", "test squared loss", True), ("test_error", "0-1 test error", False),
              ("kappa", "κ(F)", True), ("norm", "‖a‖", True)]
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
        figs.append(Figure(f"rf_{_slug(ds)}", fig, f"{ds}: model-wise curves, median over {len(cfg.seeds)} seeds; "
                           "dashed line: the interpolation threshold P = n."))
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
        figs.append(Figure("rf_samplewise", fig, f"Sample-wise: P = {cfg.samplewise.width} features fixed, nested "
                           "training sets; median over seeds."))
    table, passed = claims_table(rows, "Claims of Belkin et al. 2019 and Nakkiran et al. 2020 (random features)")
    text = [f"{passed} Run <code>{run_id}</code>: {len(datasets)} datasets × {len(feats)} feature maps × "
            f"{len(cfg.seeds)} seeds, {len({r['ratio'] for r in curves})} widths from P/n = {min(cfg.width_ratios):g} "
            f"to {max(cfg.width_ratios):g}; losses are mean squared errors summed over outputs (one-hot targets for "
            "digits)."]
    return [Section("Random-features double descent", text=text, figures=figs, tables=[table])]


def _threshold(ax, logy: bool, ticks=None) -> None:
    from overtrain.report.plots import log_x

    ax.axvline(1.0, color="grey", ls=":", lw=1)
    log_x(ax, ticks)
    if logy:
        ax.set_yscale("log")


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text).strip("_").lower()


STUDY = register(SingleRunStudy(
    name="random_features", config_cls=RandomFeaturesConfig, compute=compute, report_fn=report,
    presets=("default",), help="random-features double descent: model-wise, sample-wise, label noise, ridge, GD length"))
