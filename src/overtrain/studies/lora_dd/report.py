"""The lora-dd report section: per part, test loss, accuracy and sharpness (row-noise proxy and top
Hessian eigenvalue) vs rank per method, the training-loss curves per rank, and the claims table."""

from __future__ import annotations

import json

import numpy as np

from overtrain.report.html import Figure, Section
from overtrain.report.plots import label, log_x, new_figure
from overtrain.runs.query import Reader
from overtrain.studies.base import claims_table
from overtrain.studies.lora_dd.analysis import by_rank, cells, train_curves
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
    loss = "MSE, 5 outputs" if task == "mlp" else "nats/token"
    fig, axes = new_figure(4, width=4.2, height=3.4, per_row=2)
    panels = [
        ("test_loss", f"test loss ({loss})", False),
        ("test_acc", "test accuracy" if task == "mlp" else "test top-1 next-token accuracy", False),
        ("sharpness", f"row-noise sharpness S ({loss})", True),
        ("hessian_top", "top Hessian eigenvalue", True),
    ]
    for ax, (key, ylabel, logy) in zip(axes, panels):
        for m in methods:
            x, mean, se = by_rank(part_cells, m, key)
            ax.errorbar(x, mean, yerr=se, marker="o", ms=3, capsize=2, label=m)
        if threshold is not None:
            ax.axvline(threshold, color="grey", ls=":", lw=1)
        log_x(ax, part.ranks)
        if logy:
            ax.set_yscale("log")
        label(ax, "LoRA rank r", ylabel)
    axes[0].legend(fontsize=7)
    curves_fig, curve_axes = new_figure(len(methods), width=4.2, height=3.4, per_row=3)
    for ax, m in zip(curve_axes, methods):
        by = train_curves(rows, m, task)
        for rank in sorted(by):
            steps = sorted(by[rank])
            ax.plot(steps, [np.mean(by[rank][s]) for s in steps], lw=1, label=f"r = {rank}")
        ax.set_yscale("log")
        label(ax, "step", "training loss (seed mean)" if ax is curve_axes[0] else "", m)
    curve_axes[0].legend(fontsize=6, ncol=2)
    name = TASKS[task]
    return [
        Figure(
            f"lora_dd_{task}_rank",
            fig,
            f"{name}: test loss, accuracy and sharpness vs LoRA rank, per "
            "method. Dotted: the threshold rank r*.",
        ),
        Figure(
            f"lora_dd_{task}_curves",
            curves_fig,
            f"{name}: training loss vs step for every rank (seed mean), per method.",
        ),
    ]


def _description(task: str, part, info: dict) -> str:
    if task == "mlp":
        return (
            f"<b>Digits MLP.</b> A frozen 64-{part.hidden}-{part.hidden}-10 MLP pre-trained on digits 0–4, "
            f"adapted by LoRA (α = r) on both hidden layers to digits 5–9 with n = {part.n_train} and "
            f"{part.label_noise:.0%} label noise; MSE, Adam lr {part.lr:g}, {part.steps} full-batch steps, "
            f"seeds {list(part.seeds)}. Threshold rank r* = {part.threshold_rank():.2f} (trainable parameters "
            "= training equations)."
        )
    floor, base = info.get("lm_task_floor"), info.get("lm_base_task_test_loss")
    extra = (
        f" The task's Bayes floor is {floor:.3f} nats/token; the base model scores {base:.3f} on it."
        if (floor is not None and base is not None)
        else ""
    )
    return (
        f"<b>Tiny LM.</b> A {part.model.preset} model pre-trained in the run ({part.pretrain_steps} steps) on "
        f"an HMM language (V = {part.vocab_size}), adapted by LoRA (α = r) on {', '.join(part.target_modules)} "
        f"to {part.n_train} sequences of {part.seq_len} tokens of another HMM, tested on {part.n_test} fresh "
        f"ones; cross-entropy, Adam lr {part.lr:g}, {part.steps} full-batch steps, seeds {list(part.seeds)}. "
        f"Nominal threshold rank r* = {info.get('lm_threshold_rank', float('nan')):.2f} (trainable parameters "
        f"= training targets).{extra}"
    )
