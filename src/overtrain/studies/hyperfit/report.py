"""Report section of the hyperfitting study: curves over epochs, the comparison of settings, the claims,
and sample continuations side by side.

Reads only what the runs stored: the analysis run's ``evals`` rows (``run`` rows name the study's runs,
`overtrain.studies.hyperfit.analysis`) and config, and the hyperfit runs' ``metrics``.
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np

from overtrain.config import dump_yaml
from overtrain.report.html import Figure, Section, Table
from overtrain.report.plots import label, new_figure
from overtrain.runs.query import Reader
from overtrain.studies.base import claims_table
from overtrain.studies.hyperfit.calibrate import LEVEL
from overtrain.studies.hyperfit.config import HyperfitConfig

CURVES = [
    ("hyperfit/loss", "loss on the hyperfit set (nats/token)", True),
    ("val/ppl", "validation perplexity", True),
    ("val/entropy", "validation next-token entropy (nats)", False),
    ("val/top1", "validation top-1 probability", False),
    ("gen/ttr", "greedy TTR", False),
    ("gen/overlap", "share of continuations copying", False),
]
"""Panels of the training-curve figure: metric, axis label, log scale."""

BARS = [
    ("ttr", "TTR (mean over prompts, 95% CI)"),
    ("distinct_2", "distinct-2"),
    ("self_bleu", "Self-BLEU"),
    ("overlap", "share copying the hyperfit set"),
    ("base_nll", "base-model NLL of the text (nats/token)"),
]
"""Panels of the comparison figure: comparison-row key and axis label."""


def _curves(reader: Reader, ids: dict[int, str]) -> dict[int, dict[str, list[tuple[float, float]]]]:
    """Per hyperfit-set size, metric name -> [(epoch, value)] from the runs' metrics."""
    rows = reader.metrics(ids.values(), ["epoch", *(name for name, _, _ in CURVES)])
    by_run: dict[str, dict[int, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        by_run[r["run_id"]][r["step"]][r["name"]] = r["value"]
    out = {}
    for n, run_id in ids.items():
        records = sorted(by_run[run_id].values(), key=lambda rec: rec.get("epoch", 0))
        out[n] = {
            name: [(rec["epoch"], rec[name]) for rec in records if rec.get(name) is not None]
            for name, _, _ in CURVES
        }
    return out


def _text(value: str) -> str:
    return " / ".join(line.strip() for line in value.splitlines() if line.strip())


def report(reader: Reader, cfg: HyperfitConfig, run_id: str) -> list[Section]:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    rows = reader.evals(run_id)
    runs = [r for r in rows if r["record"] == "run"]
    ids = {int(r["sequences"]): r["child_id"] for r in runs if r["child_kind"] == "hyperfit_train"}
    comparisons = [r for r in rows if r["record"] == "comparison"]
    temp = next(r for r in rows if r["record"] == "temperature")
    by_key = {r["setting"]: r for r in comparisons}

    # Figure 1: during training
    curves = _curves(reader, ids)
    fig1, axes = new_figure(len(CURVES), width=4.2, height=3.2, per_row=3)
    for ax, (name, ylabel, logy) in zip(axes, CURVES):
        for n in ids:
            pts = curves[n][name]
            if pts:
                main = " (main)" if n == cfg.train.sequences else ""
                ax.plot(*zip(*pts), marker="o", ms=3, label=f"n = {n}{main}")
        if name == "gen/ttr":
            for key, style in (("base_matched", "--"), ("base_nucleus", ":"), ("human", "-.")):
                if key in by_key:
                    ax.axhline(by_key[key]["ttr"], color="grey", ls=style, lw=1, label=by_key[key]["label"])
        if name == "val/entropy":
            ax.axhline(
                temp["entropy_at_tau"], color="grey", ls="--", lw=1, label=f"base at τ = {temp['tau']:.2f}"
            )
        if logy:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
        label(ax, "epoch", ylabel)
        ax.legend(fontsize=6)

    # Figure 2: every setting on the same prompts
    fig2, axes2 = new_figure(len(BARS), width=4.6, height=3.0, per_row=3)
    names = [r["label"] for r in comparisons]
    y = np.arange(len(comparisons))
    for ax, (key, xlabel) in zip(axes2, BARS):
        values = [r.get(key) if r.get(key) is not None else np.nan for r in comparisons]
        err = None
        if key == "ttr":
            err = np.array([[r["ttr"] - r["ttr_ci_low"], r["ttr_ci_high"] - r["ttr"]] for r in comparisons]).T
        colors = ["#8899aa" if r["setting"].startswith(("human", "base")) else "#cc6644" for r in comparisons]
        ax.barh(y, values, xerr=err, color=colors, capsize=2)
        ax.set_yticks(y, names if ax is axes2[0] or ax is axes2[3] else [""] * len(names), fontsize=7)
        ax.invert_yaxis()
        if key == "overlap":
            ax.set_xlim(0, max(0.05, 1.15 * np.nanmax(values)))
        label(ax, xlabel, "")

    keys = [f"distinct_{n}" for n in cfg.eval.distinct]
    table = Table(
        [
            {
                "setting": r["label"],
                "TTR": r["ttr"],
                "CI low": r["ttr_ci_low"],
                "CI high": r["ttr_ci_high"],
                **{k.replace("_", "-"): r.get(k) for k in keys},
                "Self-BLEU": r["self_bleu"],
                "copying": r["overlap"],
                "longest copy": r["longest_copy"],
                "base NLL": r["base_nll"],
                "val ppl": r.get("val_ppl"),
                "val entropy": r.get("val_entropy"),
                "top-1": r.get("val_top1"),
                "τ": r.get("temperature"),
            }
            for r in comparisons
        ],
        "Every setting on the same held-out prompts",
    )
    claims, passed = claims_table(rows, "Claims of Carlsson et al. (2025) at this scale")

    samples = defaultdict(list)
    for r in rows:
        if r["record"] == "sample":
            samples[r["prompt"]].append(r)
    sample_tables = [
        Table(
            [{"setting": r["label"], "TTR": r["ttr"], "text": _text(r["text"])} for r in samples[i]],
            f"Prompt {i}: context, then each setting's continuation (line breaks shown as /)",
        )
        for i in sorted(samples)
    ]
    tc, ec = cfg.train, cfg.eval
    pretrain = [f"pretrain/{r['child_id']}" for r in runs if r["child_kind"] == "pretrain"]
    base = str(cfg.base_model) if cfg.base_model else pretrain[0]
    ablations = [n for n in ids if n != tc.sequences]
    (study,) = reader.runs(run_ids=[run_id])
    text = [
        f"{passed} Study run <code>{run_id}</code>. Base model <code>{base}</code>, hyperfitted on "
        f"n = {tc.sequences} windows of its training text (ablations: {ablations or 'none'}), "
        f"{tc.epochs} epochs, Adam lr {tc.lr:g}, batch {tc.batch_size}. {ec.prompts} held-out prompts of "
        f"{ec.prompt_len} tokens, {ec.new_tokens} generated tokens, TTR over the last {ec.ttr_window} "
        f"tokens; sampled settings average {ec.samples} continuations per prompt. Table CIs: 95% bootstrap "
        f"({cfg.bootstrap} replicates) over prompts. Findings: one-sided {LEVEL:.1%} bounds paired over prompts or "
        "validation windows (the replicates), each with its false-positive rate on null data and its power "
        "on the paper's effect, both at the measured per-unit noise.",
        f"Sharpening control: the base model sampled at τ = {temp['tau']:.3f}, where its validation entropy "
        f"({temp['entropy_at_tau']:.3f} nats) matches the hyperfitted model's "
        f"({temp['target_entropy']:.3f}). "
        "Base NLL is the base model's loss on each continuation: a fluency proxy that favours the base's own "
        "greedy text, not a quality score.",
    ]
    return [
        Section("Hyperfitting: claims", text=text, tables=[claims, table]),
        Section(
            "Hyperfitting: before, during and after",
            figures=[
                Figure(
                    "hyperfit_curves",
                    fig1,
                    "Evaluations over hyperfitting epochs (epoch 0 = the base "
                    "model); grey lines: base-model settings on the same prompts.",
                ),
                Figure(
                    "hyperfit_settings",
                    fig2,
                    "Every setting on the same prompts (grey: human and base model).",
                ),
            ],
        ),
        Section(
            "Hyperfitting: sample continuations",
            tables=sample_tables,
            details=[("Study config (resolved)", dump_yaml(json.loads(study["config"])))],
        ),
    ]
