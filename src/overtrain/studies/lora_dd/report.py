"""The lora-dd report section: per part, test loss, accuracy and sharpness (row-noise proxy and top
Hessian eigenvalue) vs rank per method, the training-loss curves per rank, and the claims table."""

from __future__ import annotations

import json

import numpy as np

from overtrain.report.html import Figure, Section
from overtrain.report.plots import label, log_x, new_figure
from overtrain.runs.query import Reader
from overtrain.studies.base import claims_table
from overtrain.studies.lora_dd.analysis import by_rank, cells, fit_rank, train_curves
from overtrain.studies.lora_dd.config import TASKS, LoraDDConfig


def report(reader: Reader, cfg: LoraDDConfig, rows: list[dict], run_id: str) -> list:
    info = _compute_info(reader, run_id)
    table, passed = claims_table(rows, "Claims of LoRA-GGPO (Chang et al. 2025), per part")
    text = [f"{passed} Run <code>{run_id}</code>. Error bars: standard error over seeds."]
    figures = []
    for task, part in cfg.parts().items():
        text.append(_description(task, part, info))
        threshold = part.threshold_rank() if task == "mlp" else info.get("lm_threshold_rank")
        figures += _figures(rows, task, part, threshold)
    return [Section("LoRA double descent and its cures", text=text, tables=[table], figures=figures)]


def _compute_info(reader: Reader, run_id: str) -> dict:
    """The manifest info of the compute run the analysis run `run_id` read (its parent)."""
    found = reader.runs(run_ids=[run_id])
    parents = [p.split("/", 1)[1] for p in (found[0]["parents"] if found else []) if p.startswith("lora_dd/")]
    compute = reader.runs("lora_dd", parents) if parents else []
    return json.loads(compute[0]["info"]) if compute else {}


def _figures(rows: list[dict], task: str, part, threshold: float | None) -> list:
    part_cells = cells(rows, task)
    methods = [m.name for m in part.methods]
    r_star = fit_rank(part_cells, part.fit_loss) if "lora" in methods else None
    loss = "MSE, 5 outputs" if task == "mlp" else "nats/token"
    fig, axes = new_figure(6, width=4.2, height=3.4, per_row=3)
    panels = [
        ("test_loss", f"test loss ({loss})", False),
        ("test_acc", "test accuracy" if task == "mlp" else "test top-1 next-token accuracy", False),
        ("train_loss", f"final training loss ({loss})", True),
        ("sharpness", f"row-noise sharpness S ({loss})", True),
        ("merged_hessian_top", "merged-weight Hessian λ_max", True),
        ("steps", "steps to convergence", True),
    ]
    for ax, (key, ylabel, logy) in zip(axes, panels):
        for m in methods:
            x, mean, se = by_rank(part_cells, m, key)
            ax.errorbar(x, mean, yerr=se, marker="o", ms=3, capsize=2, label=m)
        if threshold is not None:
            ax.axvline(threshold, color="grey", ls=":", lw=1)
        if r_star is not None:
            ax.axvline(r_star, color="black", ls="--", lw=0.8)
        log_x(ax, part.ranks)
        if logy:
            ax.set_yscale("log")
        label(ax, "LoRA rank r", ylabel)
    axes[0].legend(fontsize=7)
    curves_fig, curve_axes = new_figure(len(methods) + 1, width=4.2, height=3.4, per_row=4)
    for ax, m in zip(curve_axes, methods):
        by = train_curves(rows, m, task)
        for rank in sorted(by):
            steps = sorted(by[rank])
            ax.plot(steps, [np.mean(by[rank][s]) for s in steps], lw=1, label=f"r = {rank}")
        ax.set_yscale("log")
        label(ax, "step", "training loss (seed mean)" if ax is curve_axes[0] else "", m)
    curve_axes[0].legend(fontsize=6, ncol=2)
    share_ax = curve_axes[len(methods)]
    for m in methods:
        steps, share = _median_curve(rows, m, task, "ggpo/grad_share")
        if steps:
            share_ax.plot(steps, share, lw=1, label=m)
    share_ax.set_xscale("log")
    label(share_ax, "step", "ggpo/grad_share (median)", "GGPO: gradient term share of noise")
    name = TASKS[task]
    return [
        Figure(
            f"lora_dd_{task}_rank",
            fig,
            f"{name}: test loss, accuracy and sharpness vs LoRA rank, per "
            "method. Dotted: the nominal threshold rank (parameters = equations); dashed: the measured r*, "
            "the smallest rank whose LoRA training loss reaches the fit loss.",
        ),
        Figure(
            f"lora_dd_{task}_curves",
            curves_fig,
            f"{name}: training loss vs step for every rank (mean over the seeds still training), "
            "per method, and the share of GGPO's noise variance carried by its gradient term.",
        ),
    ]


def _median_curve(rows: list[dict], method: str, task: str, key: str) -> tuple[list[int], list[float]]:
    """Median over cells of `key` per logged step of `method`'s training curves."""
    by: dict[int, list[float]] = {}
    for r in rows:
        if (
            r.get("record") == "train_curve"
            and r["method"] == method
            and r["task"] == task
            and r.get(key) is not None
        ):
            by.setdefault(r["step"], []).append(r[key])
    steps = sorted(by)
    return steps, [float(np.median(by[t])) for t in steps]


def _training(part, info: dict, task: str) -> str:
    """How the part's cells were trained: scaling, learning rates per rank, convergence stop."""
    scale = {"rslora": f"s = {part.alpha:g}/√r (rsLoRA)", "fixed": f"s = {part.alpha:g}/r", "rank": "α = r"}
    lrs = info.get(f"{task}_lr_per_rank") or {}
    chosen = ", ".join(f"r {r}: {lr:g}" for r, lr in lrs.items())
    return (
        f"LoRA scale {scale[part.scaling]}; Adam, full batch, learning rate per rank the best of "
        f"{part.lrs} by final LoRA training loss ({chosen}); each cell stops at training loss ≤ "
        f"{part.fit_loss:g}, on a plateau (< {part.plateau_tol:.0%} better over {part.plateau_steps} "
        f"steps) or at {part.max_steps} steps; seeds {list(part.seeds)}."
    )


def _description(task: str, part, info: dict) -> str:
    if task == "mlp":
        return (
            f"<b>Digits MLP.</b> A frozen 64-{part.hidden}-{part.hidden}-10 MLP pre-trained on digits 0–4, "
            f"adapted by LoRA on both hidden layers to digits 5–9 with n = {part.n_train} and "
            f"{part.label_noise:.0%} label noise; MSE. {_training(part, info, task)} Nominal threshold rank "
            f"{part.threshold_rank():.2f} (trainable parameters = training equations, dotted line)."
        )
    floor, base = info.get("lm_task_floor"), info.get("lm_base_task_test_loss")
    extra = (
        f" The task's Bayes floor is {floor:.3f} nats/token; the base model scores {base:.3f} on it."
        if (floor is not None and base is not None)
        else ""
    )
    return (
        f"<b>Tiny LM.</b> A {part.model.preset} model pre-trained in the run ({part.pretrain_steps} steps) on "
        f"an HMM language (V = {part.vocab_size}), adapted by LoRA on {', '.join(part.target_modules)} "
        f"to {part.n_train} sequences of {part.seq_len} tokens of another HMM, tested on {part.n_test} fresh "
        f"ones; cross-entropy. {_training(part, info, task)} "
        f"Nominal threshold rank r* = {info.get('lm_threshold_rank', float('nan')):.2f} (trainable parameters "
        f"= training targets).{extra}"
    )
