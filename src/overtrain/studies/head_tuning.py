"""Head tuning on HMM representations (Luo et al. 2024, science.md §4): the risk of a linear head fitted by
minimum-norm least squares on the first p features of a linear-Gaussian HMM's representation.

The numerics are `overtrain.models.hmm_head`; this module makes them a study (one run, claims, report).
Claims at the config's paper SNR (multiplier 1.0): the risk peaks at p = n; the first descent is
degenerate (best at p → 0); the widest head beats every p < n. The first-descent check is repeated at
the lowest SNR run, because whether the first descent is degenerate depends on the SNR (science.md §4).
"""

from __future__ import annotations

import numpy as np

from overtrain.models.hmm_head import PAPER_SNR, HeadTuningConfig, run_head_tuning
from overtrain.studies.single_run import SingleRunStudy, claims_table, register


def compute(cfg: HeadTuningConfig, progress=lambda done, total: None) -> tuple[list[dict], dict]:
    result = run_head_tuning(cfg, progress=progress)
    claims = result.claims(PAPER_SNR) if PAPER_SNR in cfg.snrs else result.claims(cfg.snrs[0])
    low = min(cfg.snrs)
    if low != PAPER_SNR:
        first = result.claims(low)[1]
        snr = float(result.snr_actual[result.snr_index(low)])
        first.claim = f"{first.claim} (low SNR: multiplier {low:g}, SNR {snr:.2g})"
        claims.append(first)
    return result.rows() + [c.row() for c in claims], {"wall_s": result.wall_s, "snr_actual": result.snr_actual.tolist()}


def report(store, cfg: HeadTuningConfig, rows: list[dict], run_id: str) -> list:
    from overtrain.report.html import Figure, Section
    from overtrain.report.plots import label, log_x, new_figure

    fig, (ax,) = new_figure(1, width=6.4, height=4.2)
    snrs = sorted({r["snr"] for r in rows if r["record"] == "risk"})
    for s in snrs:
        by: dict[int, list[float]] = {}
        for r in rows:
            if r["record"] == "risk" and r["snr"] == s:
                by.setdefault(r["p"], []).append(r["risk"])
        p = np.array(sorted(by))
        actual = next(r["snr_actual"] for r in rows if r["record"] == "risk" and r["snr"] == s)
        line, = ax.plot(p, [np.median(by[v]) for v in p], marker="o", ms=2, label=f"SNR {actual:.2g} (×{s:g})")
        null = np.median([r["risk"] for r in rows if r["record"] == "null" and r["snr"] == s])
        ax.axhline(null, color=line.get_color(), ls="--", lw=0.8)
    ax.axvline(cfg.n_train, color="grey", ls=":", lw=1)
    log_x(ax)
    ax.set_yscale("log")
    label(ax, "head width p (features used, log)", "test risk (MSE)", "head-tuning risk vs p; dashed: predict 0")
    ax.legend(fontsize=7)
    table, passed = claims_table(rows, "Claims of Luo et al. 2024 (head tuning on HMM representations)")
    text = [f"{passed} Run <code>{run_id}</code>: n = {cfg.n_train} training examples, median over {cfg.trials} "
            f"trials; the dotted line is p = n. SNR = Var(signal)/target-noise variance (multiplier s scales the "
            "signal, SNR by s²)."]
    return [Section("Head tuning on HMM representations", text=text, tables=[table],
                    figures=[Figure("head_tuning_risk", fig, "Median test risk of the min-norm head vs p.")])]


STUDY = register(SingleRunStudy(
    name="head_tuning", config_cls=HeadTuningConfig, compute=compute, report_fn=report, presets=("default",),
    help="head tuning on HMM representations: risk vs head width, peak at p = n, degenerate first descent"))
