"""The lora-dd claims (LoRA-GGPO, Chang et al. 2025; `docs/lora_dd.md`), checked per part on the compute
run's rows (GGPO = ``lora_ggpo``, Flat = ``flat_lora``, LoRA = ``lora``):

1. check: S(GGPO) ≤ S(LoRA) in ≥ 80% of (rank, seed) cells (S: row-noise sharpness of the training loss —
   the noise GGPO trains against, so this checks the method does what it optimises);
2. finding: λ_max(GGPO) ≤ λ_max(LoRA) in ≥ 80% of cells (top Hessian eigenvalue over the LoRA factors);
3. finding: GGPO's rank-wise test-loss peak is lower than LoRA's: per seed, log(max_r GGPO / max_r LoRA),
   one-sided 97.5% upper bound of its mean over seeds below 0;
4. finding: GGPO's best test accuracy is no worse than LoRA's − 1 point: per seed, best GGPO − best LoRA,
   one-sided 97.5% lower bound of its mean above −0.01;
5. check: Flat-LoRA lands between LoRA and GGPO on sharpness (medians over cells; the β = 0 ablation; at the
   default β GGPO's noise is numerically Flat-LoRA's, so it is an ordering check);
6. finding: LoRA's test loss has a rank-wise second descent: the held-out interior peak
   (`overtrain.analysis.rise.held_out_peak`, peak located on the other seeds) has a one-sided 97.5% lower
   bound above 0;
7. finding: LoRA's training loss "converges, diverges, stabilises" at some rank: the held-out peak of its
   training loss over steps has a lower bound above 10% at a Bonferroni level over ranks.

Findings are calibrated in `overtrain.studies.lora_dd.calibrate` (fpr on null data at the measured seed
noise, power on a planted effect) and need ≥ 4 seeds to PASS.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from overtrain.analysis.bounds import t_lower, t_upper
from overtrain.analysis.claims import calibrated, check
from overtrain.analysis.rise import held_out_peak
from overtrain.studies.lora_dd.calibrate import (
    TRANSIENT_GATE,
    flatter_calibration,
    lower_peak_calibration,
    lower_peak_rule,
    no_worse_calibration,
    no_worse_rule,
    rank_peak_calibration,
    transient_calibration,
)
from overtrain.studies.lora_dd.config import TASKS, LoraDDConfig


def cells(rows: list[dict], task: str = "mlp") -> dict[tuple[str, int, int], dict]:
    """The part's ``record = 'cell'`` rows by (method, rank, seed)."""
    return {
        (r["method"], r["rank"], r["seed"]): r
        for r in rows
        if r.get("record") == "cell" and r["task"] == task
    }


def by_rank(part: dict, method: str, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ranks, seed mean and standard error of `key` for `method` over the part's `cells`."""
    by = defaultdict(list)
    for (m, r, _), row in part.items():
        if m == method:
            by[r].append(row[key])
    ranks = np.array(sorted(by))
    mean = np.array([np.mean(by[r]) for r in ranks])
    se = np.array([np.std(by[r], ddof=1) / np.sqrt(len(by[r])) if len(by[r]) > 1 else 0.0 for r in ranks])
    return ranks, mean, se


def train_curves(rows: list[dict], method: str, task: str) -> dict[int, dict[int, list[float]]]:
    """The training losses of `method` in the part: rank -> step -> one loss per seed."""
    curves = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("record") == "train_curve" and r["method"] == method and r["task"] == task:
            curves[r["rank"]][r["step"]].append(r["train_loss"])
    return curves


def _paired_fraction(part, a: str, b: str, key: str) -> tuple[float | None, int]:
    pairs = [
        (row[key], part[(b, r, s)][key]) for (m, r, s), row in part.items() if m == a and (b, r, s) in part
    ]
    return (float(np.mean([x <= y for x, y in pairs])) if pairs else None), len(pairs)


def matrix(part: dict, method: str, key: str) -> tuple[list[int], list[int], np.ndarray]:
    """Ranks, seeds and the ``[seeds, ranks]`` matrix of `key` for `method` (NaN where a cell is missing)."""
    ranks = sorted({r for m, r, _ in part if m == method})
    seeds = sorted({s for m, _, s in part if m == method})
    y = np.full((len(seeds), len(ranks)), np.nan)
    for (m, r, s), row in part.items():
        if m == method:
            y[seeds.index(s), ranks.index(r)] = row[key]
    return ranks, seeds, y


def train_matrices(rows: list[dict], method: str, task: str) -> dict[int, np.ndarray]:
    """Per rank, the ``[seeds, steps]`` matrix of `method`'s training loss."""
    by = defaultdict(dict)
    for r in rows:
        if r.get("record") == "train_curve" and r["method"] == method and r["task"] == task:
            by[r["rank"]][(r["seed"], r["step"])] = r["train_loss"]
    out = {}
    for rank, cells in sorted(by.items()):
        seeds, steps = sorted({s for s, _ in cells}), sorted({t for _, t in cells})
        out[rank] = np.array([[cells.get((s, t), np.nan) for t in steps] for s in seeds])
    return out


def claims(cfg: LoraDDConfig, rows: list[dict]) -> list:
    """The seven claims of every part the config runs, part (a) first."""
    return [c for task in cfg.parts() for c in part_claims(rows, task)]


def part_claims(rows: list[dict], task: str = "mlp") -> list:
    """The seven claims on one part's rows; each claim's name ends with the part, e.g. "(digits MLP)"."""
    part = cells(rows, task)
    methods = {m for m, _, _ in part}
    seeds = {s for _, _, s in part}
    out = []
    have = {"lora", "lora_ggpo"} <= methods
    frac, n = _paired_fraction(part, "lora_ggpo", "lora", "sharpness") if have else (None, 0)
    out.append(
        check(
            "GGPO finds flatter minima than LoRA (row-noise sharpness)",
            "share of (rank, seed) cells with S(GGPO) ≤ S(LoRA)",
            frac,
            frac is not None and frac >= 0.8,
            "≥ 0.8",
            detail=f"{n} cells",
            # measured with the row noise GGPO trains against: it checks the method does what it optimises
            type="check",
        )
    )
    frac, n = _paired_fraction(part, "lora_ggpo", "lora", "hessian_top") if have else (None, 0)
    claim = check(
        "GGPO finds flatter minima than LoRA (top Hessian eigenvalue)",
        "share of (rank, seed) cells with λ_max(GGPO) ≤ λ_max(LoRA)",
        frac,
        None,
        "≥ 0.8",
        detail=f"{n} cells",
    )
    cal = None
    if have:
        _, _, g = matrix(part, "lora_ggpo", "hessian_top")
        _, _, lo = matrix(part, "lora", "hessian_top")
        cal = flatter_calibration(g, lo)
    out.append(calibrated(claim, None if frac is None else frac >= 0.8, cal, len(seeds)))
    if have:
        _, _, g_loss = matrix(part, "lora_ggpo", "test_loss")
        _, _, l_loss = matrix(part, "lora", "test_loss")
        log_ratio = np.log(g_loss.max(axis=1) / l_loss.max(axis=1))
        bound = t_upper(log_ratio)
        claim = check(
            "GGPO's rank-wise peak is lower than LoRA's",
            "mean over seeds of log(max over ranks of test loss, GGPO / LoRA)",
            float(log_ratio.mean()),
            None,
            "one-sided 97.5% upper bound < 0 (needs ≥ 4 seeds)",
            detail=f"peak ratio {float(np.exp(log_ratio.mean())):.3f}",
        )
        claim.ci_high = bound  # one-sided: an upper bound only
        paired = np.concatenate([g_loss, l_loss], axis=1)
        out.append(
            calibrated(claim, lower_peak_rule(paired), lower_peak_calibration(g_loss, l_loss), len(seeds))
        )
        _, _, g_acc = matrix(part, "lora_ggpo", "test_acc")
        _, _, l_acc = matrix(part, "lora", "test_acc")
        diff = g_acc.max(axis=1) - l_acc.max(axis=1)
        bound = t_lower(diff)
        claim = check(
            "GGPO's best accuracy is no worse than LoRA's",
            "mean over seeds of best test accuracy, GGPO − LoRA",
            float(diff.mean()),
            None,
            "one-sided 97.5% lower bound > −0.01 (needs ≥ 4 seeds)",
        )
        claim.ci_low = bound  # one-sided: a lower bound only
        paired = np.concatenate([g_acc, l_acc], axis=1)
        out.append(calibrated(claim, no_worse_rule(paired), no_worse_calibration(g_acc, l_acc), len(seeds)))
    else:
        for name in (
            "GGPO's rank-wise peak is lower than LoRA's",
            "GGPO's best accuracy is no worse than LoRA's",
        ):
            out.append(check(name, "needs lora and lora_ggpo", None, None, ""))
    if {"lora", "lora_ggpo", "flat_lora"} <= methods:
        med = {
            m: float(np.median([row["sharpness"] for (mm, _, _), row in part.items() if mm == m]))
            for m in ("lora", "flat_lora", "lora_ggpo")
        }
        span = med["lora"] - med["lora_ggpo"]
        pos = (med["lora"] - med["flat_lora"]) / span if span != 0 else None
        out.append(
            check(
                "Flat-LoRA (β = 0) lands between LoRA and GGPO on sharpness",
                "position of median S(Flat) from LoRA (0) to GGPO (1)",
                pos,
                pos is not None and 0 <= pos <= 1,
                "in [0, 1]",
                detail="median S: " + ", ".join(f"{k} {v:.3g}" for k, v in med.items()),
                # at the default β GGPO's noise is numerically Flat-LoRA's: an ordering check, not a finding
                type="check",
            )
        )
    else:
        out.append(
            check(
                "Flat-LoRA (β = 0) lands between LoRA and GGPO on sharpness",
                "needs all three methods",
                None,
                None,
                "",
                type="check",
            )
        )
    if "lora" in methods:
        ranks, _, loss = matrix(part, "lora", "test_loss")
        peak = held_out_peak(loss) if loss.shape[0] >= 2 and len(ranks) >= 3 else None
        claim = check(
            "LoRA's test loss shows a rank-wise double descent",
            "held-out interior peak: mean over seeds of L_s(peak) / max(L_s(valleys)) − 1, peak and valleys "
            "located on the other seeds",
            None if peak is None else peak.excess,
            None,
            "one-sided 97.5% lower bound > 0 (needs ≥ 4 seeds)",
            detail="needs ≥ 3 ranks and ≥ 2 seeds"
            if peak is None
            else "peak at r = " + ", ".join(str(ranks[i]) for i in sorted(set(peak.peak_index))),
        )
        claim.ci_low = None if peak is None else peak.lower
        passed = None if peak is None else peak.exceeds(0.0)
        out.append(calibrated(claim, passed, rank_peak_calibration(loss), len(seeds)))
        curves = train_matrices(rows, "lora", task)
        mats = list(curves.values())
        ok = bool(mats) and all(m.shape[0] >= 2 and m.shape[1] >= 3 for m in mats)
        level = 1 - 0.025 / max(len(mats), 1)
        peaks = {r: held_out_peak(m, level) for r, m in curves.items()} if ok else {}
        top = max(peaks, key=lambda r: peaks[r].excess) if peaks else None
        claim = check(
            "LoRA's training loss converges, diverges, stabilises",
            "largest held-out peak of the training loss over steps: L(spike) / L(converged) − 1",
            None if top is None else peaks[top].excess,
            None,
            f"one-sided lower bound > {TRANSIENT_GATE:.0%} at a Bonferroni level over {len(mats)} ranks",
            detail="needs ≥ 2 seeds and ≥ 3 logged steps" if top is None else f"at r = {top}",
        )
        claim.ci_low = None if top is None else peaks[top].lower
        passed = any(p.exceeds(TRANSIENT_GATE) for p in peaks.values()) if ok else None
        out.append(calibrated(claim, passed, transient_calibration(mats) if ok else None, len(seeds)))
    for c in out:
        c.claim = f"{c.claim} ({TASKS[task]})"
    return out
