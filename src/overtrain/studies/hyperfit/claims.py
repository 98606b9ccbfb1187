"""The hyperfitting claims (Carlsson et al. 2025; docs/hyperfit.md), from the analysis's per-prompt and
per-window arrays (`overtrain.studies.hyperfit.analysis`).

One check — the hyperfit drives its training loss near zero: the optimiser doing what it optimises, so it
cannot be doubted as a finding about the phenomenon — and seven findings, each decided by a one-sided bound
over the paired held-out units (prompts or validation windows: the study's replicates) and calibrated at
the measured per-unit noise (`overtrain.studies.hyperfit.calibrate` has the rules, nulls and effects):

1. (check) training loss near zero: mean hyperfit-set loss at the end (bootstrap CI over its sequences)
   ≤ `loss_near_zero`;
2. entropy down: validation entropy, hyperfitted / base ≤ `entropy_ratio` (upper bound, windows);
3. validation perplexity up: exp(mean paired NLL difference) > 1 (lower bound, windows);
4. greedy TTR up vs base greedy: mean paired TTR difference > 0 (lower bound, prompts);
5. rare copying: share of hyperfitted greedy continuations with a copied span of ≥ `overlap_len` tokens
   < `max_overlap` (exact upper bound, prompts);
6. not just sharpening: mean paired TTR difference, hyperfitted greedy − base at the matched τ, > 0;
7. citation blocking barely matters: mean paired TTR difference, blocked − unblocked, within
   ± `blocking_tolerance` (both bounds);
8. the batch-size ablation loses the gain: (TTR ablation − TTR base) / (TTR main − TTR base)
   ≤ `ablation_retained` (upper bound, prompts).

A finding needs at least 4 units (`finding_verdict` reads the unit count where it reads seeds elsewhere).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from overtrain.analysis.bounds import paired_calibration, paired_rule
from overtrain.analysis.claims import Claim, calibrated, check
from overtrain.analysis.stats import bootstrap_ci
from overtrain.studies.hyperfit.calibrate import (
    LEVEL,
    N_SIM,
    PAPER_ABLATION_SHARE,
    PAPER_BLOCKING_CHANGE,
    PAPER_COPY_SHARE,
    PAPER_ENTROPY_RATIO,
    PAPER_PERPLEXITY_RATIO,
    PAPER_TTR_GAIN,
    below,
    equivalence_calibration,
    linearised,
    mean_bounds,
    ratio_upper,
    share_calibration,
    share_rule,
    share_upper,
    unit_calibration,
    within,
)
from overtrain.studies.hyperfit.config import HyperfitConfig

BOUND = f"one-sided {LEVEL:.1%}"


def _finding(
    claim: str,
    statistic: str,
    value: float | None,
    ci: tuple[float | None, float | None],
    threshold: str,
    detail: str,
    passed: bool,
    cal,
    units: int,
    what: str,
) -> Claim:
    row = Claim(claim, statistic, value, ci[0], ci[1], threshold, "", f"{detail}; replicates: {units} {what}")
    return calibrated(row, passed, cal, units)


def _difference(claim: str, statistic: str, a, b, effect: float, detail: str, what: str) -> Claim:
    """A "mean paired difference a − b is above 0" finding (lower bound; exchangeable null)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    bd = mean_bounds(d)
    return _finding(
        claim,
        statistic,
        bd.value,
        (bd.lower, None),
        f"{BOUND} lower bound > 0",
        f"{detail}; per-unit SD of the difference {bd.sd:.3g}",
        paired_rule(LEVEL)(d[:, None]),
        paired_calibration(d, effect, level=LEVEL, n_sim=N_SIM),
        bd.n,
        what,
    )


def _ratio(claim: str, statistic: str, a, b, limit: float, effect: float, detail: str, what: str) -> Claim:
    """A "mean(a) / mean(b) ≤ limit" finding: the linearised mean ``a − limit·b`` has an upper bound below 0;
    null at the boundary (ratio = limit), effect at ratio `effect`."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = linearised(a, b, limit)
    r, up = ratio_upper(a, b)
    sd = float(d.std(ddof=1)) if d.size > 1 else float("nan")
    return _finding(
        claim,
        statistic,
        r,
        (None, up),
        f"≤ {limit:g}: {BOUND} upper bound of mean(a − {limit:g}·b) < 0",
        f"{detail}; per-unit SD of a − {limit:g}·b {sd:.3g}",
        below(0.0)(d),
        unit_calibration(d, below(0.0), 0.0, (effect - limit) * float(b.mean())),
        d.size,
        what,
    )


def claims(
    cfg: HyperfitConfig,
    per: dict[str, dict[str, np.ndarray]],
    base_val,
    hf_val,
    train_nll: dict[int, np.ndarray],
    temperature: dict[str, Any],
) -> list[Claim]:
    """The claims table (module docstring) from per-prompt and per-window arrays."""
    n_boot, main = cfg.bootstrap, cfg.train.sequences
    prompts, windows = "held-out prompts (paired)", "validation windows (paired)"
    out = []
    loss = bootstrap_ci(train_nll[main], n_boot=n_boot, seed=2)
    out.append(
        check(
            "Hyperfitting drives the training loss near zero",
            f"mean loss on the {main} hyperfit sequences at the end (nats/token)",
            loss.value,
            loss.value <= cfg.loss_near_zero,
            f"≤ {cfg.loss_near_zero:g}",
            (loss.low, loss.high),
            "a check: the optimiser reaching its own objective",
            type="check",
        )
    )
    out.append(
        _ratio(
            "Next-token entropy drops",
            "mean validation entropy, hyperfitted / base",
            hf_val["entropy"],
            base_val["entropy"],
            cfg.entropy_ratio,
            PAPER_ENTROPY_RATIO,
            f"entropy {base_val['entropy'].mean():.2f} → {hf_val['entropy'].mean():.2f} nats; top-1 "
            f"probability {base_val['top1'].mean():.2f} → {hf_val['top1'].mean():.2f}; null: ratio "
            f"{cfg.entropy_ratio:g}, effect: the paper's {PAPER_ENTROPY_RATIO:.2f}",
            windows,
        )
    )
    d = np.asarray(hf_val["nll"], dtype=float) - np.asarray(base_val["nll"], dtype=float)
    bd = mean_bounds(d)
    out.append(
        _finding(
            "Validation perplexity rises",
            "validation perplexity, hyperfitted / base = exp(mean paired NLL difference)",
            math.exp(bd.value),
            (None if bd.lower is None else math.exp(bd.lower), None),
            f"{BOUND} lower bound > 1",
            f"perplexity {math.exp(base_val['nll'].mean()):.1f} → {math.exp(hf_val['nll'].mean()):.1f}; "
            f"per-window SD of the NLL difference {bd.sd:.3g} nats; effect: the paper's "
            f"x{PAPER_PERPLEXITY_RATIO:.1f}",
            paired_rule(LEVEL)(d[:, None]),
            paired_calibration(d, math.log(PAPER_PERPLEXITY_RATIO), level=LEVEL, n_sim=N_SIM),
            bd.n,
            windows,
        )
    )
    ttr = {k: v["ttr"] for k, v in per.items()}
    out.append(
        _difference(
            "Greedy TTR rises over the base model's greedy TTR",
            f"mean paired TTR difference over prompts ({_window(cfg)}), hyperfitted − base",
            ttr["hyperfit"],
            ttr["base_greedy"],
            PAPER_TTR_GAIN,
            f"TTR {ttr['base_greedy'].mean():.3f} → {ttr['hyperfit'].mean():.3f}; effect: +{PAPER_TTR_GAIN:g}",
            prompts,
        )
    )
    copied = per["hyperfit"]["copied"]
    up = share_upper(copied)
    out.append(
        _finding(
            "Hyperfitted continuations rarely copy the training set",
            f"share of greedy continuations with a ≥ {cfg.eval.overlap_len}-token span of the hyperfit set",
            float(np.mean(copied)),
            (None, up),
            f"< {cfg.max_overlap:g}: {BOUND} exact upper bound",
            f"mean longest copied span {per['hyperfit']['longest_copy'].mean():.1f} tokens; same "
            f"share for the base with nucleus sampling {per['base_nucleus']['copied'].mean():.3f}, "
            f"human text {per['human']['copied'].mean():.3f}; null: a share of {cfg.max_overlap:g}, "
            f"effect: the paper's {PAPER_COPY_SHARE:g}",
            share_rule(cfg.max_overlap)(copied),
            share_calibration(len(copied), cfg.max_overlap, PAPER_COPY_SHARE),
            len(copied),
            "held-out prompts",
        )
    )
    nuc = ttr["base_nucleus"].mean()
    out.append(
        _difference(
            "Not just sharpening: hyperfitted greedy beats the base sampled at the same entropy",
            "mean paired TTR difference, hyperfitted greedy − base at the entropy-matched τ",
            ttr["hyperfit"],
            ttr["base_matched"],
            PAPER_TTR_GAIN,
            f"τ = {temperature['tau']:.3f} (entropy {temperature['entropy_at_tau']:.2f} vs target "
            f"{temperature['target_entropy']:.2f} nats); TTR matched {ttr['base_matched'].mean():.3f}, "
            f"nucleus {nuc:.3f}, human {ttr['human'].mean():.3f}; effect: +{PAPER_TTR_GAIN:g}",
            prompts,
        )
    )
    tol = cfg.blocking_tolerance
    d = np.asarray(ttr["blocked"], dtype=float) - np.asarray(ttr["hyperfit"], dtype=float)
    bd = mean_bounds(d)
    out.append(
        _finding(
            "Citation blocking barely changes the hyperfitted model's diversity",
            f"mean paired TTR difference, blocked − unblocked (k = {cfg.eval.block_longer_than})",
            bd.value,
            (bd.lower, bd.upper),
            f"both {BOUND} bounds within ± {tol:g}",
            f"copies ≥ {cfg.eval.overlap_len} tokens: {per['hyperfit']['copied'].mean():.3f} → "
            f"{per['blocked']['copied'].mean():.3f}; per-prompt SD of the difference {bd.sd:.3g}; "
            f"an equivalence: fpr at a true change of ± {tol:g}, power at the paper's "
            f"{PAPER_BLOCKING_CHANGE:g}",
            within(tol)(d),
            equivalence_calibration(d, tol, PAPER_BLOCKING_CHANGE),
            bd.n,
            prompts,
        )
    )
    out += _ablation_claims(cfg, per, train_nll, prompts)
    return out


def _ablation_claims(cfg: HyperfitConfig, per, train_nll, prompts: str) -> list[Claim]:
    ablations = sorted(int(k.split("_")[1]) for k in per if k.startswith("ablation_"))
    if not ablations:
        return [
            check(
                "Hyperfitting on as few sequences as the batch size loses the TTR gain",
                "no ablation run (ablation_sequences = [])",
                None,
                None,
                "",
            )
        ]
    out = []
    base, main = per["base_greedy"]["ttr"], per["hyperfit"]["ttr"]
    gain = float(main.mean() - base.mean())
    for n in ablations:
        abl = per[f"ablation_{n}"]["ttr"]
        claim = f"Hyperfitting on n = {n} sequences loses the TTR gain"
        statistic = f"share of the main run's greedy-TTR gain over the base kept by the n = {n} run"
        detail = (
            f"TTR {abl.mean():.3f}; final train loss {train_nll[n].mean():.3f}; copies "
            f"{per[f'ablation_{n}']['copied'].mean():.3f}"
        )
        if not gain > 0:
            out.append(
                check(claim, statistic, None, None, "", detail=detail + "; the main run gained nothing")
            )
            continue
        # share ≤ s ⟺ mean((abl − base) − s·(main − base)) ≤ 0: the ratio claim on the gains
        out.append(
            _ratio(
                claim,
                statistic,
                abl - base,
                main - base,
                cfg.ablation_retained,
                PAPER_ABLATION_SHARE,
                f"{detail}; null: a share of {cfg.ablation_retained:g}, effect: {PAPER_ABLATION_SHARE:g} "
                "(the gain gone)",
                prompts,
            )
        )
    return out


def _window(cfg: HyperfitConfig) -> str:
    w = cfg.eval.ttr_window
    return f"last {w} tokens" if w and w < cfg.eval.new_tokens else f"all {cfg.eval.new_tokens} tokens"
