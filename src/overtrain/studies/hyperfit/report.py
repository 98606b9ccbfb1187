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
    ("gen/overlap", "share copying ≥ N BPE tokens of the hyperfit set", False),
]
"""Panels of the training-curve figure: metric, axis label, log scale."""

BARS = [
    ("ttr", "TTR (mean over seeds and prompts, 95% CI over prompts)"),
    ("novel_ttr", "novel TTR (copied spans removed)"),
    ("distinct_2", "distinct-2"),
    ("self_bleu", "Self-BLEU"),
    ("copied_words", "share copying > N words of the hyperfit set"),
    ("ref_nll", "reference-model NLL of the text (nats/token)"),
]
"""Panels of the comparison figure: comparison-row key and axis label."""


def _curves(reader: Reader, ids: dict[tuple[int, int], str]) -> dict[tuple[int, int], dict[str, list]]:
    """Per (seed, hyperfit-set size), metric name -> [(step, value)] from the runs' metrics."""
    rows = reader.metrics(ids.values(), ["epoch", *(name for name, _, _ in CURVES)])
    by_run: dict[str, dict[int, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in rows:
        by_run[r["run_id"]][r["step"]][r["name"]] = r["value"]
    out = {}
    for key, run_id in ids.items():
        records = sorted(by_run[run_id].items())
        out[key] = {
            name: [(step, rec[name]) for step, rec in records if rec.get(name) is not None]
            for name, _, _ in CURVES
        }
    return out


def _text(value: str) -> str:
    return " / ".join(line.strip() for line in value.splitlines() if line.strip())


def report(reader: Reader, cfg: HyperfitConfig, run_id: str) -> list[Section]:
    from matplotlib.ticker import FuncFormatter, NullFormatter

    rows = reader.evals(run_id)
    runs = [r for r in rows if r["record"] == "run"]
    ids = {
        (int(r["seed"]), int(r["sequences"])): r["child_id"]
        for r in runs
        if r["child_kind"] == "hyperfit_train"
    }
    comparisons = [r for r in rows if r["record"] == "comparison"]
    temps = [r for r in rows if r["record"] == "temperature"]
    temp = {k: float(np.mean([t[k] for t in temps])) for k in ("tau", "entropy_at_tau", "target_entropy")}
    by_key = {r["setting"]: r for r in comparisons}
    sizes = sorted({n for _, n in ids})
    colors = {n: f"C{i}" for i, n in enumerate(sizes)}

    # Figure 1: during training, every seed (one colour per hyperfit-set size)
    curves = _curves(reader, ids)
    fig1, axes = new_figure(len(CURVES), width=4.2, height=3.2, per_row=3)
    for ax, (name, ylabel, logy) in zip(axes, CURVES):
        labelled = set()
        for (_seed, n), pts in ((key, curves[key][name]) for key in ids):
            if pts:
                main = " (main)" if n == cfg.train.sequences else ""
                text = None if n in labelled else f"n = {n}{main}"
                labelled.add(n)
                ax.plot(*zip(*pts), marker="o", ms=3, lw=1, alpha=0.8, color=colors[n], label=text)
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
        label(ax, "hyperfitting step", ylabel.replace("N BPE", f"{cfg.eval.overlap_len} BPE"))
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
        bar_colors = [
            "#8899aa" if r["setting"].startswith(("human", "base")) else "#cc6644" for r in comparisons
        ]
        ax.barh(y, values, xerr=err, color=bar_colors, capsize=2)
        ax.set_yticks(y, names if ax is axes2[0] or ax is axes2[3] else [""] * len(names), fontsize=7)
        ax.invert_yaxis()
        if key == "copied_words":
            ax.set_xlim(0, max(0.05, 1.15 * np.nanmax(values)))
        label(ax, xlabel.replace("N words", f"{cfg.copy_words} words"), "")

    keys = [f"distinct_{n}" for n in cfg.eval.distinct]
    ec = cfg.eval
    table = Table(
        [
            {
                "setting": r["label"],
                "TTR": r["ttr"],
                "CI low": r["ttr_ci_low"],
                "CI high": r["ttr_ci_high"],
                **{k.replace("_", "-"): r.get(k) for k in keys},
                "Self-BLEU": r["self_bleu"],
                "novel TTR": r["novel_ttr"],
                f"copying > {cfg.copy_words} words": r["copied_words"],
                f"copying ≥ {ec.overlap_len} tokens": r["copied"],
                "longest copy (words)": r["longest_copy_words"],
                "base NLL": r["base_nll"],
                "reference NLL": r.get("ref_nll"),
                "hyperfit loss": r.get("train_loss"),
                "steps": r.get("steps"),
                "val ppl": r.get("val_ppl"),
                "val entropy": r.get("val_entropy"),
                "top-1": r.get("val_top1"),
                "τ": r.get("temperature"),
            }
            for r in comparisons
        ],
        f"Every setting on the same held-out prompts, mean over {len(cfg.seeds)} base-model seeds",
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
    tc = cfg.train
    pretrain = [f"pretrain/{r['child_id']}" for r in runs if r["child_kind"] == "pretrain"]
    base = str(cfg.base_model) if cfg.base_model else ", ".join(pretrain)
    ablations = [n for n in sizes if n != tc.sequences]
    length = (
        f"until the mean training loss of an epoch is ≤ {tc.until_loss:g} nats (cap {tc.max_steps} steps)"
        if tc.until_loss is not None
        else f"{tc.epochs} epochs"
    )
    (study,) = reader.runs(run_ids=[run_id])
    text = [
        f"{passed} Study run <code>{run_id}</code>. Base models (seeds {cfg.seeds}) <code>{base}</code>, each "
        f"hyperfitted on n = {tc.sequences} windows of its training text (ablations: {ablations or 'none'}), "
        f"{length}, Adam lr {tc.lr:g}, batch {tc.batch_size}. {ec.prompts} held-out prompts of "
        f"{ec.prompt_len} tokens, {ec.new_tokens} generated tokens, TTR over the last {ec.ttr_window} "
        f"tokens; sampled settings average {ec.samples} continuations per prompt. Table CIs: 95% bootstrap "
        f"({cfg.bootstrap} replicates) over prompts. Findings: one-sided {LEVEL:.1%} Student-t bounds over the "
        "base-model seeds (the replicates; prompts averaged within a seed), each with its false-positive "
        "rate on null data and its power on the paper's effect, both at the measured seed-to-seed noise.",
        f"Sharpening control (means over seeds): the base model sampled at τ = {temp['tau']:.3f}, where its validation entropy "
        f"({temp['entropy_at_tau']:.3f} nats) matches the hyperfitted model's "
        f"({temp['target_entropy']:.3f}). "
        "Base NLL is the base model's loss on each continuation; reference NLL the loss under the next "
        "seed's base model (independently trained, same size and data). Both are fluency proxies, not "
        "quality scores: they reward repetitive and memorised text. Novel TTR counts only the tokens outside "
        f"spans of ≥ {ec.overlap_len} tokens copied from the hyperfit set, over all tokens of the window.",
    ]
    return [
        Section("Hyperfitting: claims", text=text, tables=[claims, table]),
        Section(
            "Hyperfitting: before, during and after",
            figures=[
                Figure(
                    "hyperfit_curves",
                    fig1,
                    "Evaluations over hyperfitting steps (step 0 = the base model), every seed; each run "
                    "ends where its loss target is reached; grey lines: base-model settings on the same "
                    "prompts (means over seeds).",
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
