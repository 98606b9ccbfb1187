"""LoRA double descent and its cures (science.md §2): a rank sweep × fine-tuning methods × seeds.

Two parts, each optional (``mlp: null`` or ``lm: null`` leaves one out):

(a) ``mlp``: a frozen pre-trained digits MLP adapted by LoRA to a new task with label noise
    (`overtrain.models.lora_mlp`; the threshold rank r* = 5n/(64 + 3H) ≈ 1.5 at the defaults);
(b) ``lm``: a tiny language model pre-trained in the run on one HMM language, adapted by LoRA to a few
    sequences of another (`overtrain.models.lora_lm`; cross-entropy on stochastic targets).

One run holds every cell; the report shows, per part, test loss, accuracy, sharpness (row-noise proxy and
top Hessian eigenvalue) vs rank per method, and the training-loss curves per rank. Claims, per part
(GGPO = ``lora_ggpo``, Flat = ``flat_lora``, LoRA = ``lora``):

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

import json
from collections import defaultdict

import numpy as np
from pydantic import Field, model_validator

from overtrain.analysis.claims import check
from overtrain.config import BaseConfig
from overtrain.models.lora_lm import LoraLmConfig, run_lora_lm
from overtrain.models.lora_mlp import LoraMlpConfig, run_lora_mlp
from overtrain.studies.single_run import SingleRunStudy, claims_table, register

TASKS = {"mlp": "digits MLP", "lm": "tiny LM"}
"""Parts of the study: config field / ``task`` column -> the name claims and figures use."""


class LoraDDConfig(BaseConfig):
    """The LoRA double-descent study (``overtrain lora-dd``)."""

    schema_version: int = 1
    """Config schema version."""

    mlp: LoraMlpConfig | None = Field(default_factory=LoraMlpConfig)
    """Part (a): the rank sweep on a frozen digits MLP (null: skip)."""

    lm: LoraLmConfig | None = Field(default_factory=LoraLmConfig)
    """Part (b): the rank sweep on a tiny pre-trained language model (null: skip)."""

    @model_validator(mode="after")
    def _some_part(self) -> LoraDDConfig:
        if self.mlp is None and self.lm is None:
            raise ValueError("mlp and lm are both null: nothing to run")
        return self

    def parts(self) -> dict[str, LoraMlpConfig | LoraLmConfig]:
        """The parts to run, by task name."""
        return {task: part for task in TASKS if (part := getattr(self, task)) is not None}


def compute(cfg: LoraDDConfig, progress=lambda done, total: None) -> tuple[list[dict], dict]:
    parts = cfg.parts()
    sizes = {t: len(p.methods) * len(p.ranks) * len(p.seeds) for t, p in parts.items()}
    total, rows, info, done = sum(sizes.values()), [], {}, 0
    for task, part in parts.items():
        run = run_lora_mlp if task == "mlp" else run_lora_lm
        part_rows, part_info = run(part, lambda d, _t, offset=done: progress(offset + d, total))
        done += sizes[task]
        rows += part_rows
        info |= part_info
        rows += [c.row() for c in claims(part_rows, task)]
    return rows, {"wall_s": sum(info[f"{t}_wall_s"] for t in parts), **info}


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


def _transient_rise(rows, method: str = "lora", task: str = "mlp") -> tuple[float | None, int | None, bool]:
    """Largest relative rise of the seed-mean training loss above its running minimum, the rank where it
    happens, and whether the loss comes back within 10% of that minimum afterwards."""
    curves = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("record") == "train_curve" and r["method"] == method and r["task"] == task:
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


def claims(rows: list[dict], task: str = "mlp") -> list:
    """The seven claims on one part's rows; each claim's name ends with the part, e.g. "(digits MLP)"."""
    cells = _cells(rows, task)
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
        rise, rank, recovered = _transient_rise(rows, task=task)
        out.append(check("LoRA's training loss converges, diverges, stabilises",
                         "largest rise of the seed-mean training loss above its running minimum", rise,
                         rise is not None and rise >= 0.1 and recovered, "≥ 0.1, then back within 10%",
                         detail=f"at r = {rank}, {'recovers' if recovered else 'does not recover'}"))
    for c in out:
        c.claim = f"{c.claim} ({TASKS[task]})"
    return out


def _figures(rows: list[dict], task: str, part, threshold: float | None) -> list:
    from overtrain.report.html import Figure
    from overtrain.report.plots import label, log_x, new_figure

    cells = _cells(rows, task)
    methods = [m.name for m in part.methods]
    loss = "MSE, 5 outputs" if task == "mlp" else "nats/token"
    fig, axes = new_figure(4, width=4.2, height=3.4, per_row=2)
    panels = [("test_loss", f"test loss ({loss})", False),
              ("test_acc", "test accuracy" if task == "mlp" else "test top-1 next-token accuracy", False),
              ("sharpness", f"row-noise sharpness S ({loss})", True), ("hessian_top", "top Hessian eigenvalue", True)]
    for ax, (key, ylabel, logy) in zip(axes, panels):
        for m in methods:
            x, mean, se = _by_rank(cells, m, key)
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
        by = defaultdict(lambda: defaultdict(list))
        for r in rows:
            if r.get("record") == "train_curve" and r["method"] == m and r["task"] == task:
                by[r["rank"]][r["step"]].append(r["train_loss"])
        for rank in sorted(by):
            steps = sorted(by[rank])
            ax.plot(steps, [np.mean(by[rank][s]) for s in steps], lw=1, label=f"r = {rank}")
        ax.set_yscale("log")
        label(ax, "step", "training loss (seed mean)" if ax is curve_axes[0] else "", m)
    curve_axes[0].legend(fontsize=6, ncol=2)
    name = TASKS[task]
    return [Figure(f"lora_dd_{task}_rank", fig, f"{name}: test loss, accuracy and sharpness vs LoRA rank, per "
                   "method. Dotted: the threshold rank r*."),
            Figure(f"lora_dd_{task}_curves", curves_fig, f"{name}: training loss vs step for every rank "
                   "(seed mean), per method.")]


def _description(task: str, part, info: dict) -> str:
    if task == "mlp":
        return (f"<b>Digits MLP.</b> A frozen 64-{part.hidden}-{part.hidden}-10 MLP pre-trained on digits 0–4, "
                f"adapted by LoRA (α = r) on both hidden layers to digits 5–9 with n = {part.n_train} and "
                f"{part.label_noise:.0%} label noise; MSE, Adam lr {part.lr:g}, {part.steps} full-batch steps, "
                f"seeds {list(part.seeds)}. Threshold rank r* = {part.threshold_rank():.2f} (trainable parameters "
                "= training equations).")
    floor, base = info.get("lm_task_floor"), info.get("lm_base_task_test_loss")
    extra = f" The task's Bayes floor is {floor:.3f} nats/token; the base model scores {base:.3f} on it." if (
        floor is not None and base is not None) else ""
    return (f"<b>Tiny LM.</b> A {part.model.preset} model pre-trained in the run ({part.pretrain_steps} steps) on "
            f"an HMM language (V = {part.vocab_size}), adapted by LoRA (α = r) on {', '.join(part.target_modules)} "
            f"to {part.n_train} sequences of {part.seq_len} tokens of another HMM, tested on {part.n_test} fresh "
            f"ones; cross-entropy, Adam lr {part.lr:g}, {part.steps} full-batch steps, seeds {list(part.seeds)}. "
            f"Nominal threshold rank r* = {info.get('lm_threshold_rank', float('nan')):.2f} (trainable parameters "
            f"= training targets).{extra}")


def report(store, cfg: LoraDDConfig, rows: list[dict], run_id: str) -> list:
    from overtrain.report.html import Section
    from overtrain.runs.query import query

    found = query(f"select info from runs where run_id = '{run_id}'", store).to_pylist()
    info = json.loads(found[0]["info"]) if found else {}
    table, passed = claims_table(rows, "Claims of LoRA-GGPO (Chang et al. 2025), per part")
    text = [f"{passed} Run <code>{run_id}</code>. Error bars: standard error over seeds."]
    figures = []
    for task, part in cfg.parts().items():
        text.append(_description(task, part, info))
        threshold = part.threshold_rank() if task == "mlp" else info.get("lm_threshold_rank")
        figures += _figures(rows, task, part, threshold)
    return [Section("LoRA double descent and its cures", text=text, tables=[table], figures=figures)]


STUDY = register(SingleRunStudy(
    name="lora_dd", config_cls=LoraDDConfig, compute=compute, report_fn=report, presets=("default",),
    help="LoRA double descent and its cures: rank sweep × LoRA / Flat-LoRA / GGPO / MGPO / SAM"))
