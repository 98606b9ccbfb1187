"""The lora-dd claims (LoRA-GGPO, Chang et al. 2025; `docs/lora_dd.md`), checked per part on the compute
run's rows (GGPO = ``lora_ggpo``, Flat = ``flat_lora``, LoRA = ``lora``). Sharpness findings use the top
eigenvalue of the Hessian over the merged weights, which no method trains against.

Checks: S(GGPO) ≤ S(LoRA) in ≥ 80% of cells (row-noise sharpness: the noise GGPO trains against, so it
checks the method does what it optimises); GGPO's gradient term carries ≥ 10% of its noise variance (the
regime where GGPO is not Flat-LoRA); LoRA's cells stopped by fitting or on a plateau (trained to
convergence; the measured threshold rank r* is the smallest rank whose LoRA training loss reaches the
fit loss).

Findings (calibrated in `overtrain.studies.lora_dd.calibrate`: fpr on null data at the measured seed
noise, power on a planted effect; ≥ 4 seeds to PASS): λ_max(GGPO) ≤ λ_max(LoRA) and ≤ λ_max(Flat) in
≥ 80% of (rank, seed) cells; the rank-wise test-loss peak (max over the ranks within a factor 4 of r*,
per seed) of GGPO below
LoRA's, of Flat below LoRA's, of GGPO below Flat's (one-sided 97.5% upper bound of the mean log ratio
below 0); GGPO's best accuracy no worse than LoRA's − 1 point; LoRA's test loss peaks at r* (one-sided
97.5% lower bound of the excess over the two valleys above 0); LoRA's training loss converges, diverges,
stabilises at some rank.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from overtrain.analysis.bounds import t_lower, t_upper
from overtrain.analysis.claims import Claim, calibrated, check
from overtrain.analysis.rise import held_out_peak
from overtrain.studies.lora_dd.calibrate import (
    TRANSIENT_GATE,
    flatter_calibration,
    lower_peak_calibration,
    lower_peak_rule,
    no_worse_calibration,
    no_worse_rule,
    peak_at_calibration,
    peak_at_excess,
    peak_at_rule,
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
    """Per rank, the ``[seeds, steps]`` matrix of `method`'s training loss over the union of logged steps; a
    cell that stopped early (converged) keeps its last value after its stop."""
    by = defaultdict(dict)
    for r in rows:
        if r.get("record") == "train_curve" and r["method"] == method and r["task"] == task:
            by[r["rank"]][(r["seed"], r["step"])] = r["train_loss"]
    out = {}
    for rank, cells in sorted(by.items()):
        seeds, steps = sorted({s for s, _ in cells}), sorted({t for _, t in cells})
        m = np.array([[cells.get((s, t), np.nan) for t in steps] for s in seeds])
        for j in range(1, m.shape[1]):
            m[:, j] = np.where(np.isnan(m[:, j]), m[:, j - 1], m[:, j])
        out[rank] = m
    return out


NAMES = {"lora": "LoRA", "flat_lora": "Flat-LoRA", "lora_ggpo": "GGPO"}
"""How claims name the methods."""

GRAD_SHARE_GATE = 0.1
"""The regime check: GGPO's gradient term must carry at least this share of its noise variance."""

CONVERGED_GATE = 0.9
"""The convergence check: at least this share of LoRA's cells must stop by fitting or on a plateau."""


PEAK_WINDOW = 4
"""The rank-wise peak is looked for within a factor of this of the measured r* (two octaves either side):
the high test loss of ranks far below it is under-fitting, not the double-descent peak."""


def peak_window(ranks: list[int], r_star: int | None) -> list[int]:
    """Indices of the ranks within a factor `PEAK_WINDOW` of `r_star` (all ranks without one). r* comes
    from training losses only, so the window is not chosen on the test set."""
    if r_star is None:
        return list(range(len(ranks)))
    return [i for i, r in enumerate(ranks) if r_star / PEAK_WINDOW <= r <= r_star * PEAK_WINDOW]


def fit_rank(part: dict, fit_loss: float) -> int | None:
    """The measured threshold rank r*: the smallest rank whose LoRA training loss (median over seeds)
    is ≤ `fit_loss`; None when no rank gets there."""
    ranks, _, loss = matrix(part, "lora", "train_loss")
    fitted = [r for r, col in zip(ranks, loss.T) if np.nanmedian(col) <= fit_loss]
    return min(fitted) if fitted else None


def claims(cfg: LoraDDConfig, rows: list[dict]) -> list:
    """The claims of every part the config runs, part (a) first."""
    return [c for task, part in cfg.parts().items() for c in part_claims(rows, task, part.fit_loss)]


def _flatter(part: dict, a: str, b: str, n_seeds: int) -> Claim:
    """Finding: λ_max of the merged-weight Hessian of `a` ≤ that of `b` in ≥ 80% of (rank, seed) cells."""
    frac, n = _paired_fraction(part, a, b, "merged_hessian_top")
    claim = check(
        f"{NAMES[a]} finds flatter minima than {NAMES[b]} (merged-weight Hessian λ_max)",
        f"share of (rank, seed) cells with λ_max({NAMES[a]}) ≤ λ_max({NAMES[b]})",
        frac,
        None,
        "≥ 0.8",
        detail=f"{n} cells",
    )
    _, _, x = matrix(part, a, "merged_hessian_top")
    _, _, y = matrix(part, b, "merged_hessian_top")
    cal = flatter_calibration(x, y) if n else None
    return calibrated(claim, None if frac is None else frac >= 0.8, cal, n_seeds)


def _lower_peak(part: dict, a: str, b: str, r_star: int | None, n_seeds: int) -> Claim:
    """Finding: the highest test loss of `a` over the ranks around r* (`peak_window`) is below that of `b`
    (paired by seed)."""
    ranks, _, x = matrix(part, a, "test_loss")
    _, _, y = matrix(part, b, "test_loss")
    window = peak_window(ranks, r_star)
    x, y = x[:, window], y[:, window]
    log_ratio = np.log(x.max(axis=1) / y.max(axis=1))
    claim = check(
        f"{NAMES[a]}'s rank-wise peak is lower than {NAMES[b]}'s",
        f"mean over seeds of log(max over ranks r*/{PEAK_WINDOW}..{PEAK_WINDOW}r* of test loss, "
        f"{NAMES[a]} / {NAMES[b]})",
        float(log_ratio.mean()),
        None,
        "one-sided 97.5% upper bound < 0 (needs ≥ 4 seeds)",
        detail=f"peak ratio {float(np.exp(log_ratio.mean())):.3f} over ranks {[ranks[i] for i in window]}",
    )
    claim.ci_high = t_upper(log_ratio)  # one-sided: an upper bound only
    paired = np.concatenate([x, y], axis=1)
    return calibrated(claim, lower_peak_rule(paired), lower_peak_calibration(x, y), n_seeds)


def _no_worse(part: dict, n_seeds: int) -> Claim:
    """Finding: GGPO's best test accuracy is no worse than LoRA's − 1 point."""
    _, _, g_acc = matrix(part, "lora_ggpo", "test_acc")
    _, _, l_acc = matrix(part, "lora", "test_acc")
    diff = g_acc.max(axis=1) - l_acc.max(axis=1)
    claim = check(
        "GGPO's best accuracy is no worse than LoRA's",
        "mean over seeds of best test accuracy, GGPO − LoRA",
        float(diff.mean()),
        None,
        "one-sided 97.5% lower bound > −0.01 (needs ≥ 4 seeds)",
    )
    claim.ci_low = t_lower(diff)  # one-sided: a lower bound only
    paired = np.concatenate([g_acc, l_acc], axis=1)
    return calibrated(claim, no_worse_rule(paired), no_worse_calibration(g_acc, l_acc), n_seeds)


def _double_descent(part: dict, r_star: int | None, n_seeds: int) -> Claim:
    """Finding: LoRA's test loss peaks at the measured threshold rank r* (`peak_at_rule`)."""
    ranks, _, loss = matrix(part, "lora", "test_loss")
    at = ranks.index(r_star) if r_star in ranks else None
    interior = at is not None and 0 < at < len(ranks) - 1
    excess = peak_at_excess(loss, at) if interior else None
    claim = check(
        "LoRA's test loss peaks at the threshold rank r* (rank-wise double descent)",
        "mean over seeds of L_s(r*) / max(L_s(valley below r*), L_s(valley above r*)) − 1, valleys located on "
        "the other seeds",
        None if excess is None else float(excess.mean()),
        None,
        "one-sided 97.5% lower bound > 0 (needs ≥ 4 seeds)",
        detail=(
            f"r* = {r_star} (smallest rank whose LoRA training loss reaches the fit loss)"
            if interior
            else f"r* = {r_star}: not an interior rank of {ranks}, no peak to test"
        ),
    )
    if excess is None:
        return calibrated(claim, None, None, n_seeds)
    claim.ci_low = t_lower(excess)
    return calibrated(claim, peak_at_rule(at)(loss), peak_at_calibration(loss, at), n_seeds)


def _transient(rows: list[dict], task: str, n_seeds: int) -> Claim:
    """Finding: LoRA's training loss converges, diverges, stabilises at some rank."""
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
    return calibrated(claim, passed, transient_calibration(mats) if ok else None, n_seeds)


def _regime(part: dict) -> Claim:
    """Check: GGPO's gradient term carries a real share of its noise (else GGPO is Flat-LoRA)."""
    shares = [
        row["grad_share"] for (m, _, _), row in part.items() if m == "lora_ggpo" and "grad_share" in row
    ]
    value = float(np.median(shares)) if shares else None
    return check(
        "GGPO's gradient term carries a share of its noise (GGPO ≠ Flat-LoRA)",
        "median over GGPO cells of the mean logged ggpo/grad_share",
        value,
        None if value is None else value >= GRAD_SHARE_GATE,
        f"≥ {GRAD_SHARE_GATE}",
        detail=f"{len(shares)} cells" + ("" if shares else "; GGPO with β = 0 or no GGPO cells"),
        type="check",
    )


def _converged(part: dict, r_star: int | None, fit_loss: float) -> Claim:
    """Check: LoRA's cells were trained to convergence (stopped by fitting or on a plateau, not the cap)."""
    stops = [row.get("stop") or "cap" for (m, _, _), row in part.items() if m == "lora"]
    share = float(np.mean([s in ("fit", "plateau") for s in stops])) if stops else None
    counts = {k: stops.count(k) for k in sorted(set(stops))}
    return check(
        "Every rank is trained to convergence",
        "share of LoRA cells that stopped on reaching the fit loss or a plateau",
        share,
        None if share is None else share >= CONVERGED_GATE,
        f"≥ {CONVERGED_GATE}",
        detail=f"stops {counts}; measured r* = {r_star} (fit loss {fit_loss:g})",
        type="check",
    )


def part_claims(rows: list[dict], task: str = "mlp", fit_loss: float = 1e-3) -> list:
    """The claims on one part's rows; each claim's name ends with the part, e.g. "(digits MLP)"."""
    part = cells(rows, task)
    methods = {m for m, _, _ in part}
    n_seeds = len({s for _, _, s in part})
    r_star = fit_rank(part, fit_loss) if "lora" in methods else None
    out = []
    if {"lora", "lora_ggpo"} <= methods:
        frac, n = _paired_fraction(part, "lora_ggpo", "lora", "sharpness")
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
        out.append(_regime(part))
        out.append(_flatter(part, "lora_ggpo", "lora", n_seeds))
        out.append(_lower_peak(part, "lora_ggpo", "lora", r_star, n_seeds))
        out.append(_no_worse(part, n_seeds))
    if {"lora", "flat_lora"} <= methods:
        out.append(_lower_peak(part, "flat_lora", "lora", r_star, n_seeds))
    if {"flat_lora", "lora_ggpo"} <= methods:
        out.append(_flatter(part, "lora_ggpo", "flat_lora", n_seeds))
        out.append(_lower_peak(part, "lora_ggpo", "flat_lora", r_star, n_seeds))
    if "lora" in methods:
        out.append(_converged(part, r_star, fit_loss))
        out.append(_double_descent(part, r_star, n_seeds))
        out.append(_transient(rows, task, n_seeds))
    for c in out:
        c.claim = f"{c.claim} ({TASKS[task]})"
    return out
