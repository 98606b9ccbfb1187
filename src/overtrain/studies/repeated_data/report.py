"""The repeated-data report section: held-out text loss, copying and induction vs E per model size, text
loss curves at the worst E against E = 1, effective model size, and the claims table.

Reads only what the analysis run stored (its ``evals`` rows, `overtrain.studies.repeated_data.analysis`);
seed means and min–max bands are the only arithmetic here.
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np

from overtrain.config import dump_yaml
from overtrain.report.html import Figure, Section, Table
from overtrain.report.plots import label, log_x, new_figure
from overtrain.runs.query import Reader
from overtrain.studies.base import claims_table
from overtrain.studies.repeated_data.config import RepeatedDataConfig


def _by_e(rows, size: str, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """E values, seed mean, min and max of `key` for one size."""
    by = defaultdict(list)
    for r in rows:
        if r["size"] == size and r.get(key) is not None:
            by[r["repeats"]].append(r[key])
    e = np.array(sorted(by), dtype=float)
    vals = [np.array(by[k]) for k in sorted(by)]
    stat = lambda f: np.array([f(v) for v in vals])  # noqa: E731
    return e, stat(np.mean), stat(np.min), stat(np.max)


def _e_axis(ax, reps) -> None:
    """Log x axis labelled at the repeat counts, as plain integers."""
    from matplotlib.ticker import FuncFormatter

    log_x(ax, reps)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))


def _plot_vs_e(ax, rows, sizes, key, n_of, labelled: bool = True):
    for size in sizes:
        e, mean, lo, hi = _by_e(rows, size, key)
        line = ax.plot(e, mean, marker="o", ms=3, label=f"{size} ({n_of[size]:,})" if labelled else None)[0]
        if (hi > lo).any():
            ax.fill_between(e, lo, hi, color=line.get_color(), alpha=0.15, lw=0)


def _curve(rows, size, e, key):
    by = defaultdict(list)
    for r in rows:
        if r["size"] == size and r["repeats"] == e and r.get(key) is not None:
            by[r["step"]].append(r[key])
    steps = sorted(by)
    return np.array(steps), np.array([np.mean(by[s]) for s in steps])


def report(reader: Reader, cfg: RepeatedDataConfig, run_id: str) -> list[Section]:
    """The claims section and the figures section of the analysis run `run_id`."""
    rows = reader.evals(run_id)
    rec = defaultdict(list)
    for r in rows:
        rec[r["record"]].append(r)
    points = rec["point"]
    n_of = {p["size"]: p["n_params_non_embedding"] for p in points}
    sizes = sorted(n_of, key=n_of.get)
    reps = list(cfg.repeats)
    worst = {r["size"]: int(r["repeats"]) for r in rec["worst"]}

    # Figure 1: text loss vs E per size (the peak findings' quantity), absolute and relative to E = 1;
    # the worst E is chosen on it (`findings`), the mixed held-out loss is in the table
    key = next((r["chosen_on"] for r in rec["worst"] if r.get("chosen_on")), "heldout_loss")
    fig1, (ax_a, ax_r) = new_figure(2)
    _plot_vs_e(ax_a, points, sizes, key, n_of)
    for size in sizes:
        e, mean, lo, hi = _by_e(points, size, key)
        ax_r.plot(e, 100 * (mean / mean[0] - 1), marker="o", ms=3, label=size)
    ax_r.axhline(100 * cfg.min_peak, color="grey", ls=":", lw=1, label=f"{cfg.min_peak:.0%} gate")
    ax_r.axhline(0, color="k", lw=0.8)
    for ax, ylab in (
        (ax_a, "held-out text loss (nats/token)"),
        (ax_r, "held-out text loss vs E = 1 (%)"),
    ):
        _e_axis(ax, reps)
        label(ax, "repeats E (log; subset = f·N/E sequences)", ylab)
        ax.legend(fontsize=7, title="size (non-embedding params)" if ax is ax_a else None, title_fontsize=7)

    # Figure 2: copying loss, induction score and memorisation vs E
    fig2, (ax_c, ax_i, ax_m) = new_figure(3, width=4.6)
    _plot_vs_e(ax_c, points, sizes, "copying_loss", n_of)
    _plot_vs_e(ax_i, points, sizes, "max_prefix_matching", n_of, labelled=False)
    _plot_vs_e(ax_m, points, sizes, "repeated_loss", n_of, labelled=False)
    ax_i.axhline(points[0]["uniform_prefix_matching"], color="grey", ls=":", lw=1, label="uniform attention")
    ax_i.axhline(cfg.induction_threshold, color="grey", ls="--", lw=1, label="induction threshold")
    for ax, ylab, title in (
        (ax_c, "copying loss (nats/token, 2nd copy)", "Copying [block; block]"),
        (ax_i, "max prefix-matching score", "Induction heads"),
        (ax_m, "loss on the repeated subset", "Memorisation"),
    ):
        _e_axis(ax, reps)
        label(ax, "repeats E (log)", ylab, title)
    ax_c.legend(fontsize=7, loc="center left", title="size (non-embedding params)", title_fontsize=7)
    ax_i.legend(fontsize=7, loc="lower right")

    # Figure 3: loss curves over training at the worst E vs E = 1
    fig3, axes3 = new_figure(len(sizes), width=4.4, per_row=3)
    for ax, size in zip(axes3, sizes):
        for e, color in ((1, "C0"), (worst[size], "C3")):
            x, y = _curve(rec["curve"], size, e, key)
            ax.plot(x, y, color=color, label=f"held-out text, E = {e}")
            x, y = _curve(rec["subset_curve"], size, e, "repeated_loss")
            ax.plot(x, y, color=color, ls="--", marker=".", label=f"repeated subset, E = {e}")
        label(ax, "step", "loss (nats/token)", f"{size}: worst E = {worst[size]} vs E = 1")
        ax.legend(fontsize=7)

    # Figure 5: the induction head's formation over training, and the text-loss gap to E = 1 over training
    fig5, axes5 = new_figure(len(sizes) + 1, width=4.4, per_row=4)
    for ax, size in zip(axes5, sizes):
        for e, color in ((1, "C0"), (worst[size], "C3")):
            x, y = _curve(rec["induction_curve"], size, e, "max_prefix_matching")
            ax.plot(x, y, color=color, marker=".", label=f"E = {e}")
        ax.axhline(cfg.induction_threshold, color="grey", ls="--", lw=1, label="induction threshold")
        label(ax, "step", "max prefix-matching score", f"{size}: induction over training")
        ax.legend(fontsize=7)
    ax_g = axes5[-1]
    for size in sizes:
        x1, y1 = _curve(rec["curve"], size, 1, key)
        xw, yw = _curve(rec["curve"], size, worst[size], key)
        common = np.intersect1d(x1, xw)
        if len(common):
            g = [100 * (yw[list(xw).index(t)] / y1[list(x1).index(t)] - 1) for t in common]
            ax_g.plot(common, g, marker=".", label=f"{size}, E = {worst[size]}")
    ax_g.axhline(0, color="k", lw=0.8)
    label(ax_g, "step", "gap (%)", "Text loss: L_E(t) / L_1(t) − 1 at worst E")
    ax_g.legend(fontsize=7)

    # Figure 4: effective model size
    figures = [
        Figure(
            "repeated_heldout",
            fig1,
            "Held-out loss on the unique text (without the copy task) vs repeat count E at fixed "
            "total tokens and repeated fraction (mean over seeds; band = min–max); the worst E is "
            "chosen on it.",
        ),
        Figure(
            "repeated_copying",
            fig2,
            "Copying loss and best prefix-matching score on [random "
            "block; same block] sequences, and the loss on the repeated subset, vs E.",
        ),
        Figure(
            "repeated_curves",
            fig3,
            "Held-out text loss over training (solid) and loss on the "
            "repeated subset (dashed, at checkpoints) at the worst E and at E = 1 (seed mean).",
        ),
        Figure(
            "repeated_induction_timing",
            fig5,
            "Best prefix-matching score at every checkpoint at the worst E and at E = 1 (seed mean; the "
            "phase-change and mean-score findings read these curves), and the relative gap of the text "
            "loss at the worst E over E = 1 through training (a mid-training rise shows as a bump).",
        ),
    ]
    fit = rec["scaling_fit"][0] if rec["scaling_fit"] else {}
    eff = rec["effective_size"]
    if fit.get("a") is not None:
        fig4, (ax_f, ax_e) = new_figure(2)
        base = [p for p in points if p["repeats"] == 1]
        key = fit.get("loss_key", "heldout_loss")
        ax_f.scatter(
            [p["n_params_non_embedding"] for p in base],
            [p[key] for p in base],
            color="k",
            zorder=3,
            label="E = 1 runs",
        )
        ax_f.plot(
            [r["n"] for r in rec["law"]],
            [r["loss"] for r in rec["law"]],
            color="k",
            lw=1,
            label=f"{fit['form']} law, b = {fit['b']:.3g}",
        )
        for size in sizes:
            r = next(r for r in eff if r["size"] == size and r["repeats"] == worst[size])
            ax_f.scatter([r["n_eff"]], [r["loss"]], marker="x", label=f"{size} at E = {worst[size]} (N_eff)")
        ax_f.set_xscale("log")
        what = "text loss" if key == "spans_loss" else "held-out loss"
        label(ax_f, "non-embedding parameters N (log)", what, "Scaling law on E = 1, inverted")
        ax_f.legend(fontsize=7)
        for size in sizes:
            sel = sorted((r["repeats"], r["ratio"]) for r in eff if r["size"] == size)
            ax_e.plot([s[0] for s in sel], [s[1] for s in sel], marker="o", ms=3, label=size)
        ax_e.axhline(1, color="k", lw=0.8)
        _e_axis(ax_e, reps)
        label(ax_e, "repeats E (log)", "N_eff(E) / N_eff(E = 1)", "Effective model size")
        ax_e.legend(fontsize=7)
        figures.append(
            Figure(
                "repeated_effective_size",
                fig4,
                "Text-loss-vs-parameters law fitted on the E = 1 "
                "runs (every seed a point); effective size N_eff of each (size, E): the size whose predicted loss "
                "equals its own (seed mean), relative to the same size's N_eff at E = 1 (so "
                "the law's residual at that size cancels).",
            )
        )

    table = [
        {
            "size": p["size"],
            "params (non-emb)": p["n_params_non_embedding"],
            "E": p["repeats"],
            "seed": p["seed"],
            "subset seqs": p["subset_sequences"],
            "held-out": p["heldout_loss"],
            "spans text": p["spans_loss"],
            "copy task": p.get("copy_task_loss"),
            "copying": p["copying_loss"],
            "max prefix-match": p["max_prefix_matching"],
            "repeated subset": p["repeated_loss"],
        }
        for p in sorted(points, key=lambda p: (n_of[p["size"]], p["repeats"], p["seed"]))
    ]
    eff_rows = [
        {
            "size": r["size"],
            "E": r["repeats"],
            "subset share": r["subset_share"],
            "loss": r["loss"],
            "N": r["n"],
            "N_eff": r["n_eff"],
            "N_eff / N": r["ratio_to_n"],
            "N_eff / N_eff(E=1)": r["ratio"],
            "extrapolated": r["extrapolated"],
        }
        for r in sorted(eff, key=lambda r: (n_of[r["size"]], r["repeats"]))
    ]
    headline = next((r["text"] for r in rec["recommendation"] if r.get("text")), "")
    table_claims, passed = claims_table(rows, "Claims of Hernandez et al. 2022 at CPU scale")
    t = cfg.train
    text = [
        f"<b>{headline}</b>" if headline else "",
        f"{passed} Study run <code>{run_id}</code>: {len(sizes)} sizes × {len(reps)} repeat counts × "
        f"{len(cfg.seeds)} seed(s), each trained on {cfg.sequences * t.seq_len:,} tokens "
        f"({cfg.sequences:,} sequences of {t.seq_len}), {cfg.fraction:.0%} of them repeats of a "
        f"subset of round(f·N/E) sequences. Effective size inverts the {fit.get('form', '?')} law "
        "fitted on the E = 1 runs (non-embedding parameters; the pure power law L = a·N^-b with fewer "
        "than 4 sizes).",
    ]
    (run,) = reader.runs(run_ids=[run_id])
    return [
        Section("Repeated data: claims", text=[x for x in text if x], tables=[table_claims]),
        Section(
            "Repeated data: figures",
            figures=figures,
            tables=[
                Table(table, "Every run (final checkpoint)"),
                Table(eff_rows, "Effective model size per size and E (seed means)"),
            ],
            details=[("Study config (resolved)", dump_yaml(json.loads(run["config"])))],
        ),
    ]
