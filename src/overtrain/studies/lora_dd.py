"""LoRA double descent and its cures (science.md §2): a rank sweep × fine-tuning methods × seeds.

Part (a), built: a frozen pre-trained digits MLP adapted by LoRA to a new task with label noise
(`overtrain.models.lora_mlp`; the threshold rank r* = 5n/(64 + 3H) ≈ 1.5 at the defaults). Part (b), a tiny
pre-trained language model, is not built yet. One run holds every cell; the report shows test loss,
accuracy, sharpness (row-noise proxy and top Hessian eigenvalue) vs rank per method, and the training-loss
curves per rank. Claims (GGPO = ``lora_ggpo``, Flat = ``flat_lora``, LoRA = ``lora``):

1. S(GGPO) ≤ S(LoRA) in ≥ 80% of (rank, seed) cells (S: row-noise sharpness of the training loss);
2. λ_max(GGPO) ≤ λ_max(LoRA) in ≥ 80% of cells (top Hessian eigenvalue over the LoRA factors);
3. GGPO's rank-wise test-loss peak (max over ranks of the seed mean) ≤ LoRA's;
4. GGPO's best test accuracy (max over ranks of the seed mean) ≥ LoRA's − 1 point;
5. Flat-LoRA lands between LoRA and GGPO on sharpness (medians over cells; the β = 0 ablation);
6. LoRA's test loss has an interior peak over ranks, by more than 2 standard errors of the seed mean;
7. LoRA's training loss "converges, diverges, stabilises" at some rank: a transient rise above its running
   minimum of ≥ 10%, after which it falls back within 10% of that minimum.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from pydantic import Field

from overtrain.analysis.claims import check
from overtrain.config import BaseConfig
from overtrain.models.lora_mlp import LoraMlpConfig, run_lora_mlp
from overtrain.studies.single_run import SingleRunStudy, claims_table, register


class LoraDDConfig(BaseConfig):
    """The LoRA double-descent study (``overtrain lora-dd``)."""

    schema_version: int = 1
    """Config schema version."""

    mlp: LoraMlpConfig = Field(default_factory=LoraMlpConfig)
    """Part (a): the rank sweep on a frozen digits MLP."""


def compute(cfg: LoraDDConfig, progress=lambda done, total: None) -> tuple[list[dict], dict]:
    rows, info = run_lora_mlp(cfg.mlp, progress)
    return rows + [c.row() for c in claims(rows)], {"wall_s": info["mlp_wall_s"], **info}


def _cells(rows, task="mlp") -> dict[tuple[str, int, int], dict]:
    return {(r["method"], r["rank"], r["seed"]): r for r in rows if r.get("record") == "cell" and r["task"] == task}


def _by_rank(cells, method: str, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ranks, seed mean and standard error of `key` for `method`."""
    by = defaultdict(list)
    for (m, r, _), row in cells.items():
        if m == method:
            by[r].append(row[key])
    ranks = np.array(sorted(by))
    mean = np.array([np.mean(by[r]) for r in ranks])
    se = np.array([np.std(by[r], ddof=1) / np.sqrt(len(by[r])) if len(by[r]) > 1 else 0.0 for r in ranks])
    return ranks, mean, se


def _paired_fraction(cells, a: str, b: str, key: str) -> tuple[float | None, int]:
    pairs = [(row[key], cells[(b, r, s)][key]) for (m, r, s), row in cells.items() if m == a and (b, r, s) in cells]
    return (float(np.mean([x <= y for x, y in pairs])) if pairs else None), len(pairs)


def _interior_peak(ranks, mean, se) -> tuple[float | None, int | None]:
    """Largest excess of an interior rank's mean over the higher of the best smaller and best larger rank,
    in standard errors of that rank's mean."""
    best, at = None, None
    for i in range(1, len(ranks) - 1):
        excess = mean[i] - max(mean[:i].min(), mean[i + 1:].min())
        z = excess / se[i] if se[i] > 0 else (np.inf if excess > 0 else -np.inf)
        if best is None or z > best:
            best, at = float(z), int(ranks[i])
    return best, at


def _transient_rise(rows, method: str = "lora") -> tuple[float | None, int | None, bool]:
    """Largest relative rise of the seed-mean training loss above its running minimum, the rank where it
    happens, and whether the loss comes back within 10% of that minimum afterwards."""
    curves = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("record") == "train_curve" and r["method"] == method:
            curves[r["rank"]][r["step"]].append(r["train_loss"])
    best = (None, None, False)
    for rank, by_step in curves.items():
        loss = np.array([np.mean(by_step[s]) for s in sorted(by_step)])
        running = np.minimum.accumulate(loss)
        rise = loss / running - 1
        i = int(np.argmax(rise))
        recovered = bool(loss[i:].min() <= 1.1 * running[i])
        if best[0] is None or rise[i] > best[0]:
            best = (float(rise[i]), rank, recovered)
    return best


def claims(rows: list[dict]) -> list:
    cells = _cells(rows)
    methods = {m for m, _, _ in cells}
    out = []
    have = {"lora", "lora_ggpo"} <= methods
    frac, n = _paired_fraction(cells, "lora_ggpo", "lora", "sharpness") if have else (None, 0)
    out.append(check("GGPO finds flatter minima than LoRA (row-noise sharpness)",
                     "share of (rank, seed) cells with S(GGPO) ≤ S(LoRA)", frac,
                     frac is not None and frac >= 0.8, "≥ 0.8", detail=f"{n} cells"))
    frac, n = _paired_fraction(cells, "lora_ggpo", "lora", "hessian_top") if have else (None, 0)
    out.append(check("GGPO finds flatter minima than LoRA (top Hessian eigenvalue)",
                     "share of (rank, seed) cells with λ_max(GGPO) ≤ λ_max(LoRA)", frac,
                     frac is not None and frac >= 0.8, "≥ 0.8", detail=f"{n} cells"))
    if have:
        _, g_loss, _ = _by_rank(cells, "lora_ggpo", "test_loss")
        _, l_loss, _ = _by_rank(cells, "lora", "test_loss")
        ratio = float(g_loss.max() / l_loss.max())
        out.append(check("GGPO's rank-wise peak is no higher than LoRA's",
                         "max over ranks of mean test loss, GGPO / LoRA", ratio, ratio <= 1.0, "≤ 1"))
        _, g_acc, _ = _by_rank(cells, "lora_ggpo", "test_acc")
        _, l_acc, _ = _by_rank(cells, "lora", "test_acc")
        diff = float(g_acc.max() - l_acc.max())
        out.append(check("GGPO's best accuracy is no worse than LoRA's",
                         "best mean test accuracy, GGPO − LoRA", diff, diff >= -0.01, "≥ −0.01"))
    else:
        out.append(check("GGPO's rank-wise peak is no higher than LoRA's", "needs lora and lora_ggpo", None, None, ""))
        out.append(check("GGPO's best accuracy is no worse than LoRA's", "needs lora and lora_ggpo", None, None, ""))
    if {"lora", "lora_ggpo", "flat_lora"} <= methods:
        med = {m: float(np.median([row["sharpness"] for (mm, _, _), row in cells.items() if mm == m]))
               for m in ("lora", "flat_lora", "lora_ggpo")}
        span = med["lora"] - med["lora_ggpo"]
        pos = (med["lora"] - med["flat_lora"]) / span if span != 0 else None
        out.append(check("Flat-LoRA (β = 0) lands between LoRA and GGPO on sharpness",
                         "position of median S(Flat) from LoRA (0) to GGPO (1)", pos,
                         pos is not None and 0 <= pos <= 1, "in [0, 1]",
                         detail="median S: " + ", ".join(f"{k} {v:.3g}" for k, v in med.items())))
    else:
        out.append(check("Flat-LoRA (β = 0) lands between LoRA and GGPO on sharpness", "needs all three methods",
                         None, None, ""))
    if "lora" in methods:
        ranks, mean, se = _by_rank(cells, "lora", "test_loss")
        z, at = _interior_peak(ranks, mean, se) if len(ranks) >= 3 else (None, None)
        out.append(check("LoRA's test loss shows a rank-wise double descent",
                         "interior peak over the best smaller and larger ranks, in seed standard errors", z,
                         z is not None and z > 2, "> 2", detail=f"at r = {at}" if at else "needs ≥ 3 ranks"))
        rise, rank, recovered = _transient_rise(rows)
        out.append(check("LoRA's training loss converges, diverges, stabilises",
                         "largest rise of the seed-mean training loss above its running minimum", rise,
                         rise is not None and rise >= 0.1 and recovered, "≥ 0.1, then back within 10%",
                         detail=f"at r = {rank}, {'recovers' if recovered else 'does not recover'}"))
    return out


def report(store, cfg: LoraDDConfig, rows: list[dict], run_id: str) -> list:
    from overtrain.report.html import Figure, Section
    from overtrain.report.plots import label, log_x, new_figure

    cells = _cells(rows)
    methods = [m.name for m in cfg.mlp.methods]
    ranks = cfg.mlp.ranks
    fig, axes = new_figure(4, width=4.2, height=3.4, per_row=2)
    panels = [("test_loss", "test loss (MSE, 5 outputs)", False), ("test_acc", "test accuracy", False),
              ("sharpness", "row-noise sharpness S (MSE)", True), ("hessian_top", "top Hessian eigenvalue", True)]
    for ax, (key, ylabel, logy) in zip(axes, panels):
        for m in methods:
            x, mean, se = _by_rank(cells, m, key)
            ax.errorbar(x, mean, yerr=se, marker="o", ms=3, capsize=2, label=m)
        ax.axvline(cfg.mlp.threshold_rank(), color="grey", ls=":", lw=1)
        log_x(ax, ranks)
        if logy:
            ax.set_yscale("log")
        label(ax, "LoRA rank r", ylabel)
    axes[0].legend(fontsize=7)
    curves_fig, curve_axes = new_figure(len(methods), width=4.2, height=3.4, per_row=3)
    for ax, m in zip(curve_axes, methods):
        by = defaultdict(lambda: defaultdict(list))
        for r in rows:
            if r.get("record") == "train_curve" and r["method"] == m:
                by[r["rank"]][r["step"]].append(r["train_loss"])
        for rank in sorted(by):
            steps = sorted(by[rank])
            ax.plot(steps, [np.mean(by[rank][s]) for s in steps], lw=1, label=f"r = {rank}")
        ax.set_yscale("log")
        label(ax, "step", "training loss (seed mean)" if ax is curve_axes[0] else "", m)
    curve_axes[0].legend(fontsize=6, ncol=2)
    table, passed = claims_table(rows, "Claims of LoRA-GGPO (Chang et al. 2025) on the digits MLP")
    c = cfg.mlp
    text = [f"{passed} Run <code>{run_id}</code>: a frozen 64-{c.hidden}-{c.hidden}-10 MLP pre-trained on digits "
            f"0–4, adapted by LoRA (α = r) on both hidden layers to digits 5–9 with n = {c.n_train} and "
            f"{c.label_noise:.0%} label noise; MSE, Adam lr {c.lr:g}, {c.steps} full-batch steps, seeds "
            f"{list(c.seeds)}. The dotted line is the threshold rank r* = {c.threshold_rank():.2f} (trainable "
            "parameters = training equations). Error bars: standard error over seeds. Part (b), a tiny "
            "language model, is not built yet."]
    return [Section("LoRA double descent and its cures", text=text, tables=[table], figures=[
        Figure("lora_dd_rank", fig, "Test loss, accuracy and sharpness vs LoRA rank, per method."),
        Figure("lora_dd_curves", curves_fig, "Training loss vs step for every rank (seed mean), per method.")])]


STUDY = register(SingleRunStudy(
    name="lora_dd", config_cls=LoraDDConfig, compute=compute, report_fn=report, presets=("default",),
    help="LoRA double descent and its cures: rank sweep × LoRA / Flat-LoRA / GGPO / MGPO / SAM"))
