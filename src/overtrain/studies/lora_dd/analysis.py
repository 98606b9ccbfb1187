"""The lora-dd claims (LoRA-GGPO, Chang et al. 2025; `docs/lora_dd.md`), checked per part on the compute
run's rows (GGPO = ``lora_ggpo``, Flat = ``flat_lora``, LoRA = ``lora``):

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

from collections import defaultdict

import numpy as np

from overtrain.analysis.claims import check
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


def _interior_peak(ranks, mean, se) -> tuple[float | None, int | None]:
    """Largest excess of an interior rank's mean over the higher of the best smaller and best larger rank,
    in standard errors of that rank's mean."""
    best, at = None, None
    for i in range(1, len(ranks) - 1):
        excess = mean[i] - max(mean[:i].min(), mean[i + 1 :].min())
        z = excess / se[i] if se[i] > 0 else (np.inf if excess > 0 else -np.inf)
        if best is None or z > best:
            best, at = float(z), int(ranks[i])
    return best, at


def _transient_rise(rows, method: str = "lora", task: str = "mlp") -> tuple[float | None, int | None, bool]:
    """Largest relative rise of the seed-mean training loss above its running minimum, the rank where it
    happens, and whether the loss comes back within 10% of that minimum afterwards."""
    best = (None, None, False)
    for rank, by_step in train_curves(rows, method, task).items():
        loss = np.array([np.mean(by_step[s]) for s in sorted(by_step)])
        running = np.minimum.accumulate(loss)
        rise = loss / running - 1
        i = int(np.argmax(rise))
        recovered = bool(loss[i:].min() <= 1.1 * running[i])
        if best[0] is None or rise[i] > best[0]:
            best = (float(rise[i]), rank, recovered)
    return best


def claims(cfg: LoraDDConfig, rows: list[dict]) -> list:
    """The seven claims of every part the config runs, part (a) first."""
    return [c for task in cfg.parts() for c in part_claims(rows, task)]


def part_claims(rows: list[dict], task: str = "mlp") -> list:
    """The seven claims on one part's rows; each claim's name ends with the part, e.g. "(digits MLP)"."""
    part = cells(rows, task)
    methods = {m for m, _, _ in part}
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
    out.append(
        check(
            "GGPO finds flatter minima than LoRA (top Hessian eigenvalue)",
            "share of (rank, seed) cells with λ_max(GGPO) ≤ λ_max(LoRA)",
            frac,
            frac is not None and frac >= 0.8,
            "≥ 0.8",
            detail=f"{n} cells",
        )
    )
    if have:
        _, g_loss, _ = by_rank(part, "lora_ggpo", "test_loss")
        _, l_loss, _ = by_rank(part, "lora", "test_loss")
        ratio = float(g_loss.max() / l_loss.max())
        out.append(
            check(
                "GGPO's rank-wise peak is no higher than LoRA's",
                "max over ranks of mean test loss, GGPO / LoRA",
                ratio,
                ratio <= 1.0,
                "≤ 1",
            )
        )
        _, g_acc, _ = by_rank(part, "lora_ggpo", "test_acc")
        _, l_acc, _ = by_rank(part, "lora", "test_acc")
        diff = float(g_acc.max() - l_acc.max())
        out.append(
            check(
                "GGPO's best accuracy is no worse than LoRA's",
                "best mean test accuracy, GGPO − LoRA",
                diff,
                diff >= -0.01,
                "≥ −0.01",
            )
        )
    else:
        out.append(
            check(
                "GGPO's rank-wise peak is no higher than LoRA's", "needs lora and lora_ggpo", None, None, ""
            )
        )
        out.append(
            check("GGPO's best accuracy is no worse than LoRA's", "needs lora and lora_ggpo", None, None, "")
        )
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
        ranks, mean, se = by_rank(part, "lora", "test_loss")
        z, at = _interior_peak(ranks, mean, se) if len(ranks) >= 3 else (None, None)
        out.append(
            check(
                "LoRA's test loss shows a rank-wise double descent",
                "interior peak over the best smaller and larger ranks, in seed standard errors",
                z,
                z is not None and z > 2,
                "> 2",
                detail=f"at r = {at}" if at else "needs ≥ 3 ranks",
            )
        )
        rise, rank, recovered = _transient_rise(rows, task=task)
        out.append(
            check(
                "LoRA's training loss converges, diverges, stabilises",
                "largest rise of the seed-mean training loss above its running minimum",
                rise,
                rise is not None and rise >= 0.1 and recovered,
                "≥ 0.1, then back within 10%",
                detail=f"at r = {rank}, {'recovers' if recovered else 'does not recover'}",
            )
        )
    for c in out:
        c.claim = f"{c.claim} ({TASKS[task]})"
    return out
