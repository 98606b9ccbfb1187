"""The head-tuning report section: the median risk curve per SNR, the null risks, and the claims table."""

from __future__ import annotations

import numpy as np

from overtrain.report.html import Figure, Section
from overtrain.report.plots import label, log_x, new_figure
from overtrain.runs.query import Reader
from overtrain.studies.base import claims_table
from overtrain.studies.head_tuning.config import HeadTuningConfig


def report(reader: Reader, cfg: HeadTuningConfig, rows: list[dict], run_id: str) -> list:
    fig, (ax,) = new_figure(1, width=6.4, height=4.2)
    snrs = sorted({r["snr"] for r in rows if r["record"] == "risk"})
    for s in snrs:
        by: dict[int, list[float]] = {}
        for r in rows:
            if r["record"] == "risk" and r["snr"] == s:
                by.setdefault(r["p"], []).append(r["risk"])
        p = np.array(sorted(by))
        actual = next(r["snr_actual"] for r in rows if r["record"] == "risk" and r["snr"] == s)
        (line,) = ax.plot(
            p, [np.median(by[v]) for v in p], marker="o", ms=2, label=f"SNR {actual:.2g} (×{s:g})"
        )
        null = np.median([r["risk"] for r in rows if r["record"] == "null" and r["snr"] == s])
        ax.axhline(null, color=line.get_color(), ls="--", lw=0.8)
    ax.axvline(cfg.n_train, color="grey", ls=":", lw=1)
    log_x(ax)
    ax.set_yscale("log")
    label(
        ax, "head width p (features used, log)", "test risk (MSE)", "head-tuning risk vs p; dashed: predict 0"
    )
    ax.legend(fontsize=7)
    table, passed = claims_table(rows, "Claims of Luo et al. 2024 (head tuning on HMM representations)")
    text = [
        f"{passed} Run <code>{run_id}</code>: n = {cfg.n_train} training examples, median over {cfg.trials} "
        f"trials; the dotted line is p = n. SNR = Var(signal)/target-noise variance (multiplier s scales the "
        "signal, SNR by s²)."
    ]
    return [
        Section(
            "Head tuning on HMM representations",
            text=text,
            tables=[table],
            figures=[Figure("head_tuning_risk", fig, "Median test risk of the min-norm head vs p.")],
        )
    ]
