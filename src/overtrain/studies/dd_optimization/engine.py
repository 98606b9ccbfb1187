"""The role of optimisation in model-wise double descent (Liu & Flanigan 2023): one run sweeps every width
under every optimiser setting.

**Model.** Random features φ(x) ∈ R^P (`overtrain.models.random_features`, ReLU by default), frozen; only
the linear readout a ∈ R^{P x k} trains, on the objective

    L(a) = ½ · mean_{i ∈ batch} ||φ̃(x_i)ᵀ a − y_i||²,        φ̃ = the normalised features (`training`).

The *reported* losses are plain mean squared errors, ``mean_i ||φ̃(x_i)ᵀa − y_i||²`` over the whole
training set (train loss, noisy targets) or the test set (test loss, clean targets) — the ``loss`` of
`sweep_widths`, in squared target units, so the two families of curves are comparable.

**Two families of settings**, each swept over every width P of the grid:

- *closed form* (free): exact full-batch GD from a = 0 for T steps at η = 1/s_max² on ½||F a − y||²
  (`fits(steps=...)`), T in ``steps``, plus T = ∞ — the minimum-norm interpolant;
- *torch* (`OptimizerSetting`, trained by `training.train_readouts`, all widths and seeds batched): SGD
  (batch 1 … full, optional heavy-ball momentum) or Adam, a learning rate (``edge`` units: a multiple of
  1/λ_max of each width's Hessian; or absolute), an epoch budget, the readout init
  ``a_0 ~ N(0, init_scale²)`` entry-wise (0: zero init, which makes GD converge to the minimum-norm
  solution) and the feature normalisation.

**Peak statistics** (per setting, on the median-over-seeds curves; `peak_statistics`):

- ``test_at_n``: the test loss at P = n;
- ``peak_height = test_at_n / median(test loss at the grid widths with P/n in any of `peak_windows`)``,
  by default P/n ∈ [0.5, 0.7] ∪ [1.5, 2] — near the threshold but outside its ill-conditioned zone; ≈ 1
  means no peak, ≫ 1 a sharp peak;
- ``train_at_n``: the (mean squared) training loss at P = n, and ``kappa_at_n`` = s_max/s_min of the
  (normalised) n x n feature matrix.

Rows: ``record = 'curve'`` per (setting, seed, width) and ``'setting'`` per setting (its peak statistics
and parameters); the claims are `analysis`'.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from overtrain.config import to_plain
from overtrain.data.regression import RegressionData
from overtrain.models.random_features import FeatureConfig, fits, random_features, sweep_widths
from overtrain.seed import numpy_rng
from overtrain.studies.dd_optimization.config import OptimizationDDConfig
from overtrain.studies.dd_optimization.training import (
    singular_range,
    standardize,
    train_readouts,
    width_scales,
)
from overtrain.threads import blas_threads


@dataclass(frozen=True)
class PeakStats:
    """The peak of one test-loss curve at P = n.

    Attributes:
        test_at_n: test loss at P = n.
        baseline: median test loss over the grid widths inside the peak windows.
        height: test_at_n / baseline (≈ 1: no peak).
        local_ratio: test_at_n / mean(test loss at the two grid neighbours of n) (`analysis`, claim 3).
    """

    test_at_n: float
    baseline: float
    height: float
    local_ratio: float


def peak_statistics(
    widths: Sequence[int],
    curve: Sequence[float],
    n: int,
    windows: Sequence[tuple[float, float]] = ((0.5, 0.7), (1.5, 2.0)),
) -> PeakStats:
    """Peak height and local peak ratio of a test-loss `curve` over `widths` (which contain n).

    ``height = curve(n) / median{curve(P) : lo ≤ P/n ≤ hi for a window (lo, hi)}``;
    ``local_ratio = curve(n) / mean(curve at the grid widths just below and just above n)``.
    """
    widths = np.asarray(widths)
    curve = np.asarray(curve, dtype=np.float64)
    hits = np.flatnonzero(widths == n)
    if hits.size == 0:
        raise ValueError(f"the grid has no width P = n = {n}")
    i = int(hits[0])
    if i == 0 or i == len(widths) - 1:
        raise ValueError("P = n must have a grid neighbour on each side")
    ratios = widths / n
    inside = np.zeros(len(widths), dtype=bool)
    for lo, hi in windows:
        inside |= (ratios >= lo) & (ratios <= hi)
    if not inside.any():
        raise ValueError(f"no width inside the peak windows {list(windows)}")
    baseline = float(np.median(curve[inside]))
    at_n = float(curve[i])
    return PeakStats(at_n, baseline, at_n / baseline, at_n / float((curve[i - 1] + curve[i + 1]) / 2))


@dataclass
class SettingCurves:
    """Every width's losses under one optimiser setting.

    Attributes:
        name: the setting's label.
        family: ``closed_form`` (exact GD / min-norm) or ``torch``.
        spec: the setting's parameters (for the records); closed form: ``steps`` (None: T = ∞).
        train_loss, test_loss: [S, W] mean squared errors.
        norm: [S, W] readout norms.
        kappa: [S, W] κ of the (normalised) features of each width.
        wall_s: training time of the setting (all widths and seeds), seconds.
    """

    name: str
    family: str
    spec: dict[str, Any]
    train_loss: np.ndarray
    test_loss: np.ndarray
    norm: np.ndarray
    kappa: np.ndarray
    wall_s: float = 0.0

    def median(self, what: str) -> np.ndarray:
        """[W] median over seeds of ``train_loss``, ``test_loss``, ``norm`` or ``kappa``."""
        return np.median(getattr(self, what), axis=0)


@dataclass
class OptimizationDDResult:
    """Measurements of `run_optimization_dd`.

    Attributes:
        n: training examples.
        widths: [W] widths P.
        seeds: the seeds (rows of every [S, W] array).
        settings: the closed-form family (T ascending, then T = ∞), then the torch settings.
        peak_windows: the P/n windows of the peak-height baseline.
        wall_s: wall time of the run in seconds.
    """

    n: int
    widths: np.ndarray
    seeds: list[int]
    settings: list[SettingCurves]
    peak_windows: list[tuple[float, float]]
    wall_s: float | None = field(default=None, compare=False)

    @property
    def n_index(self) -> int:
        return int(np.flatnonzero(self.widths == self.n)[0])

    def peak(self, setting: SettingCurves) -> PeakStats:
        return peak_statistics(self.widths, setting.median("test_loss"), self.n, self.peak_windows)

    def summary(self) -> list[dict[str, Any]]:
        """One dict per setting: name, family, peak_height, test_at_n, baseline, local_ratio,
        train_loss_at_n, kappa_at_n, norm_at_n (medians over seeds), wall_s and the spec."""
        i = self.n_index
        out = []
        for s in self.settings:
            p = self.peak(s)
            out.append(
                {
                    "setting": s.name,
                    "family": s.family,
                    "peak_height": p.height,
                    "test_loss_at_n": p.test_at_n,
                    "baseline_test_loss": p.baseline,
                    "local_ratio": p.local_ratio,
                    "train_loss_at_n": float(s.median("train_loss")[i]),
                    "kappa_at_n": float(s.median("kappa")[i]),
                    "norm_at_n": float(s.median("norm")[i]),
                    "wall_s": s.wall_s,
                    **s.spec,
                }
            )
        return out

    def rows(self) -> list[dict[str, Any]]:
        """Long rows for ``evals.jsonl``: ``curve`` rows per (setting, seed, width) — setting, family, seed,
        width, ratio (P/n), train_loss, test_loss, norm, kappa — and one ``setting`` row per setting
        (`summary`, with a ``description``)."""
        out: list[dict[str, Any]] = []
        for s in self.settings:
            for si, seed in enumerate(self.seeds):
                for w, P in enumerate(self.widths.tolist()):
                    out.append(
                        {
                            "record": "curve",
                            "setting": s.name,
                            "family": s.family,
                            "seed": seed,
                            "width": P,
                            "ratio": P / self.n,
                            "train_loss": float(s.train_loss[si, w]),
                            "test_loss": float(s.test_loss[si, w]),
                            "norm": float(s.norm[si, w]),
                            "kappa": float(s.kappa[si, w]),
                        }
                    )
        for row in self.summary():
            out.append({"record": "setting", **row, "description": _describe(row)})
        return out


def _describe(row: dict[str, Any]) -> str:
    if row["family"] == "closed_form":
        t = row.get("steps")
        return (
            "minimum-norm least squares (GD from zero, T = ∞)"
            if t is None
            else f"exact full-batch GD from zero, T = {t:.0e} steps at η = 1/s_max²"
        )
    lr = f"{row['lr']:g}" + (" x 1/λ_max(H_P)" if row["lr_units"] == "edge" else "")
    return (
        f"{row['optimizer']} batch {row['batch_size']}, lr {lr}, {row['epochs']} epochs "
        f"({row['steps']} steps), init std {row['init_scale']:g}, normalisation {row['normalization']}"
    )


@dataclass
class _Draws:
    """Every seed's data and features, stacked: F [S, n, P_max], Y [S, n, k], test likewise."""

    F: np.ndarray
    Y: np.ndarray
    F_test: np.ndarray
    Y_test: np.ndarray
    data: list[RegressionData]


def _draw(cfg: OptimizationDDConfig, p_max: int) -> _Draws:
    Fs, Fts, data = [], [], []
    for seed in cfg.seeds:
        d = type(cfg.data).model_validate({**to_plain(cfg.data), "seed": seed}).build()
        feat = FeatureConfig.model_validate({**to_plain(cfg.features), "seed": seed})
        F, Ft = random_features(feat, d.X, d.X_test, p_max)
        Fs.append(F)
        Fts.append(Ft)
        data.append(d)
    return _Draws(
        np.stack(Fs), np.stack([d.Y for d in data]), np.stack(Fts), np.stack([d.Y_test for d in data]), data
    )


_CURVE_KEYS = ("train_loss", "test_loss", "norm", "kappa")


def closed_form_settings(
    cfg: OptimizationDDConfig, draws: _Draws, widths: Sequence[int]
) -> list[SettingCurves]:
    """The closed-form family from `sweep_widths`: GD at every T of ``cfg.steps``, then min-norm (T = ∞)."""
    n = draws.F.shape[1]
    fit_list = fits(steps=cfg.steps, n=n)
    per_fit: dict[tuple[str, float | None], dict[str, list[list[float]]]] = {}
    for s in range(len(cfg.seeds)):
        rows = sweep_widths(draws.F[s], draws.Y[s], draws.F_test[s], widths, fit_list, Y_test=draws.Y_test[s])
        for f in fit_list:
            got = [r for r in rows if r["solver"] == f.solver and r["value"] == f.value]
            bucket = per_fit.setdefault((f.solver, f.value), {k: [] for k in _CURVE_KEYS})
            for key in bucket:
                bucket[key].append([r[key] for r in got])
    out = []
    for f in fit_list[1:] + fit_list[:1]:  # T ascending, then T = ∞
        b = per_fit[(f.solver, f.value)]
        name = "min-norm (T=∞)" if f.solver == "min_norm" else f"closed-form GD T={f.value:.0e}"
        out.append(SettingCurves(name, "closed_form", {"steps": f.value}, *(np.array(b[k]) for k in b)))
    return out


def run_optimization_dd(
    cfg: OptimizationDDConfig, progress: Callable[[int, int], None] | None = None
) -> OptimizationDDResult:
    """The closed-form family and every torch setting at every width and seed.

    Args:
        cfg: the experiment.
        progress: ``progress(done, total)`` after the closed form and after each torch setting.

    Returns:
        The measurements (`OptimizationDDResult`), with ``wall_s`` set.
    """
    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with blas_threads(cfg.threads):
            settings = _run(cfg, progress)
    finally:
        torch.set_num_threads(threads)
    return OptimizationDDResult(
        n=cfg.data.n_train,
        widths=np.array(cfg.widths()),
        seeds=list(cfg.seeds),
        settings=settings,
        peak_windows=[tuple(w) for w in cfg.peak_windows],
        wall_s=time.perf_counter() - t0,
    )


def _run(cfg: OptimizationDDConfig, progress: Callable[[int, int], None] | None) -> list[SettingCurves]:
    widths = cfg.widths()
    n = cfg.data.n_train
    draws = _draw(cfg, widths[-1])
    total = 1 + len(cfg.settings)
    settings = closed_form_settings(cfg, draws, widths)
    if progress:
        progress(1, total)
    # normalised features and their singular ranges, shared by the settings that use them
    feats: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    init = np.stack(
        [
            numpy_rng("optim-dd-init", seed).standard_normal((widths[-1], draws.Y.shape[-1]))
            for seed in cfg.seeds
        ]
    )
    dtype = torch.float32 if cfg.dtype == "float32" else torch.float64
    for done, st in enumerate(cfg.settings, start=2):
        ts = time.perf_counter()
        base = "standardize" if st.normalization == "standardize" else "none"
        if base not in feats:
            F, Ft = standardize(draws.F, draws.F_test) if base == "standardize" else (draws.F, draws.F_test)
            feats[base] = (F, Ft, *singular_range(F, widths))
        F, Ft, smax, smin = feats[base]
        scales = width_scales(widths, st.normalization)
        fit = train_readouts(
            F,
            draws.Y,
            widths,
            st,
            F_test=Ft,
            Y_test=draws.Y_test,
            init=init,
            order_seed=cfg.seeds[0],
            s_max=smax * scales,
            dtype=dtype,
        )
        spec = {
            "optimizer": st.optimizer,
            "lr": st.lr,
            "lr_units": st.lr_units,
            "momentum": st.momentum,
            # the batch as a number ("full" = n): a text value would turn the store-wide column to text
            "batch_size": st.batch(n),
            "epochs": st.epochs,
            "steps": st.steps(n),
            "init_scale": st.init_scale,
            "normalization": st.normalization,
        }
        settings.append(
            SettingCurves(
                st.label(),
                "torch",
                spec,
                fit.train_loss,
                fit.test_loss,
                fit.norm,
                smax / smin,
                time.perf_counter() - ts,
            )
        )
        if progress:
            progress(done, total)
    return settings


def compute(cfg: OptimizationDDConfig, progress=lambda done, total: None) -> tuple[list[dict], dict]:
    """The study's run: every curve row and every setting's row (`OptimizationDDResult.rows`)."""
    result = run_optimization_dd(cfg, progress=progress)
    return result.rows(), {"wall_s": result.wall_s}
