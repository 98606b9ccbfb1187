"""The hyperfitting claims (Carlsson et al. 2025; docs/hyperfit.md), from one value per base-model seed and
setting (`overtrain.studies.hyperfit.analysis.unit_table`: per-prompt values averaged over the prompts
within a seed, validation values over the windows).

One check — the hyperfit drives its training loss near zero: the optimiser doing what it optimises, so it
cannot be doubted as a finding about the phenomenon — and the findings, each decided by a one-sided
Student-t bound over the seeds (the replicates; every comparison paired within a seed) and calibrated at
the measured seed-to-seed SD (`overtrain.studies.hyperfit.calibrate` has the rules, nulls and effects):

1. (check) training loss near zero: the largest final hyperfit-set loss over seeds ≤ `loss_near_zero`;
2. entropy down: validation entropy, hyperfitted / base ≤ `entropy_ratio` (upper bound);
3. validation perplexity up: exp(mean NLL difference) > 1 (lower bound);
4. greedy TTR up vs base greedy: mean TTR difference > 0 (lower bound);
5. rare copying, in words and net of the baselines: share of hyperfitted greedy continuations sharing more
   than `copy_words` consecutive words with the hyperfit set, minus the largest such share of the human,
   base-greedy and base-nucleus texts, < `max_overlap` (upper bound);
6. not just sharpening: mean TTR difference, hyperfitted greedy − base at the matched τ, > 0;
7. citation blocking barely matters: mean TTR difference, blocked − unblocked, within
   ± `blocking_tolerance` (both bounds);
8. fluency (beyond diversity): reference-model NLL, hyperfitted greedy − base nucleus, < `quality_margin`
   (upper bound; non-inferiority);
9. per ablation size n, on the novel TTR (copied spans removed, so recitation is no gain): with n ≤ the
   batch size the share of the main run's gain kept ≤ `ablation_retained` (upper bound); with a larger n
   it is > `ablation_retained` (lower bound).

A finding needs at least 4 seeds to PASS or FAIL (`finding_verdict`); with fewer it is UNDERPOWERED.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from overtrain.analysis.bounds import paired_calibration, paired_rule
from overtrain.analysis.claims import Claim, calibrated, check
from overtrain.studies.hyperfit.calibrate import (
    LEVEL,
    N_SIM,
    PAPER_ABLATION_SHARE,
    PAPER_BLOCKING_CHANGE,
    PAPER_COPY_SHARE,
    PAPER_ENTROPY_RATIO,
    PAPER_KEPT_SHARE,
    PAPER_PERPLEXITY_RATIO,
    PAPER_QUALITY_CHANGE,
    PAPER_TTR_GAIN,
    below,
    equivalence_calibration,
    linearised,
    mean_bounds,
    ratio_lower,
    ratio_upper,
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


def _upper(
    claim: str, statistic: str, d, limit: float, threshold: str, detail: str, effect: float, what: str
) -> Claim:
    """A "mean of d is below `limit`" finding (upper bound; null: a mean of exactly `limit`, effect:
    `effect`)."""
    bd = mean_bounds(d)
    return _finding(
        claim,
        statistic,
        bd.value,
        (None, bd.upper),
        threshold,
        detail,
        below(limit)(d),
        unit_calibration(d, below(limit), limit, effect),
        bd.n,
        what,
    )


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
        f"{detail}; seed SD of the difference {bd.sd:.3g}",
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
        f"{detail}; seed SD of a − {limit:g}·b {sd:.3g}",
        below(0.0)(d),
        unit_calibration(d, below(0.0), 0.0, (effect - limit) * float(b.mean())),
        d.size,
        what,
    )


def claims(
    cfg: HyperfitConfig, units: dict[str, dict[str, np.ndarray]], temperatures: list[dict[str, Any]]
) -> list[Claim]:
    """The claims table (module docstring) from one value per seed and setting
    (`overtrain.studies.hyperfit.analysis.unit_table`) and the per-seed temperature rows."""
    main = cfg.train.sequences
    what = "base-model seeds (prompts averaged within a seed)"
    u = units
    out = []
    loss = u["hyperfit"]["train_loss"]
    steps = u["hyperfit"].get("steps")
    out.append(
        check(
            "Hyperfitting drives the training loss near zero",
            f"largest over seeds of the mean loss on the {main} hyperfit sequences at the end (nats/token)",
            float(loss.max()),
            bool(loss.max() <= cfg.loss_near_zero),
            f"≤ {cfg.loss_near_zero:g} on every seed",
            None,
            f"per seed {_list(loss, 3)}; steps {_list(steps, 0)}; a check: the optimiser reaching its own "
            "objective",
            type="check",
        )
    )
    hb, hh = u["base_greedy"]["val_entropy"], u["hyperfit"]["val_entropy"]
    out.append(
        _ratio(
            "Next-token entropy drops",
            "mean validation entropy, hyperfitted / base",
            hh,
            hb,
            cfg.entropy_ratio,
            PAPER_ENTROPY_RATIO,
            f"entropy {hb.mean():.2f} → {hh.mean():.2f} nats; top-1 probability "
            f"{u['base_greedy']['val_top1'].mean():.2f} → {u['hyperfit']['val_top1'].mean():.2f}; null: ratio "
            f"{cfg.entropy_ratio:g}, effect: the paper's {PAPER_ENTROPY_RATIO:.2f}",
            what,
        )
    )
    d = u["hyperfit"]["val_nll"] - u["base_greedy"]["val_nll"]
    bd = mean_bounds(d)
    out.append(
        _finding(
            "Validation perplexity rises",
            "validation perplexity, hyperfitted / base = exp(mean over seeds of the NLL difference)",
            math.exp(bd.value),
            (None if bd.lower is None else math.exp(bd.lower), None),
            f"{BOUND} lower bound > 1",
            f"perplexity {math.exp(u['base_greedy']['val_nll'].mean()):.1f} → "
            f"{math.exp(u['hyperfit']['val_nll'].mean()):.1f}; seed SD of the NLL difference {bd.sd:.3g} nats; "
            f"effect: the paper's x{PAPER_PERPLEXITY_RATIO:.1f}",
            paired_rule(LEVEL)(d[:, None]),
            paired_calibration(d, math.log(PAPER_PERPLEXITY_RATIO), level=LEVEL, n_sim=N_SIM),
            bd.n,
            what,
        )
    )
    ttr = {k: v["ttr"] for k, v in u.items()}
    out.append(
        _difference(
            "Greedy TTR rises over the base model's greedy TTR",
            f"mean paired TTR difference ({_window(cfg)}), hyperfitted − base",
            ttr["hyperfit"],
            ttr["base_greedy"],
            PAPER_TTR_GAIN,
            f"TTR {ttr['base_greedy'].mean():.3f} → {ttr['hyperfit'].mean():.3f}; effect: +{PAPER_TTR_GAIN:g}",
            what,
        )
    )
    out.append(_copy_claim(cfg, u, what))
    tau = np.array([t["tau"] for t in temperatures])
    out.append(
        _difference(
            "Not just sharpening: hyperfitted greedy beats the base sampled at the same entropy",
            "mean paired TTR difference, hyperfitted greedy − base at the entropy-matched τ",
            ttr["hyperfit"],
            ttr["base_matched"],
            PAPER_TTR_GAIN,
            f"τ per seed {_list(tau, 3)} (entropy at τ {np.mean([t['entropy_at_tau'] for t in temperatures]):.2f} "
            f"vs target {np.mean([t['target_entropy'] for t in temperatures]):.2f} nats); TTR matched "
            f"{ttr['base_matched'].mean():.3f}, nucleus {ttr['base_nucleus'].mean():.3f}, human "
            f"{ttr['human'].mean():.3f}; novel TTR hyperfitted {u['hyperfit']['novel_ttr'].mean():.3f} vs "
            f"matched {u['base_matched']['novel_ttr'].mean():.3f}; effect: +{PAPER_TTR_GAIN:g}",
            what,
        )
    )
    tol = cfg.blocking_tolerance
    d = ttr["blocked"] - ttr["hyperfit"]
    bd = mean_bounds(d)
    out.append(
        _finding(
            "Citation blocking barely changes the hyperfitted model's diversity",
            f"mean paired TTR difference, blocked − unblocked (k = {cfg.eval.block_longer_than} tokens)",
            bd.value,
            (bd.lower, bd.upper),
            f"both {BOUND} bounds within ± {tol:g}",
            f"copies > {cfg.copy_words} words: {u['hyperfit']['copied_words'].mean():.3f} → "
            f"{u['blocked']['copied_words'].mean():.3f}; seed SD of the difference {bd.sd:.3g}; an "
            f"equivalence: fpr at a true change of ± {tol:g}, power at the paper's {PAPER_BLOCKING_CHANGE:g}",
            within(tol)(d),
            equivalence_calibration(d, tol, PAPER_BLOCKING_CHANGE),
            bd.n,
            what,
        )
    )
    out.append(_quality_claim(cfg, u, what))
    out += _ablation_claims(cfg, u, what)
    return out


COPY_BASELINES = ("human", "base_greedy", "base_nucleus")
"""Texts whose copying of the hyperfit set is chance or pre-training memory, not hyperfitting: the human
continuation (Shakespeare repeats itself: speaker tags, refrains) and the base model's greedy and nucleus
text (the hyperfit set comes from the pre-training split)."""


def _copy_claim(cfg: HyperfitConfig, u, what: str) -> Claim:
    """Rare copying, in words and net of the baselines: per seed, the share of hyperfitted greedy
    continuations sharing more than `copy_words` consecutive words with the hyperfit set, minus the
    largest such share among `COPY_BASELINES`; passes when the upper bound of its mean is below
    `max_overlap`. Null: an excess of exactly `max_overlap`; effect: the paper's share."""
    hf = u["hyperfit"]["copied_words"]
    baseline = np.max([u[k]["copied_words"] for k in COPY_BASELINES], axis=0)
    excess = hf - baseline
    shares = ", ".join(f"{k} {u[k]['copied_words'].mean():.3f}" for k in COPY_BASELINES)
    return _upper(
        "Hyperfitted continuations rarely copy the training set (beyond the baselines)",
        f"share of greedy continuations sharing > {cfg.copy_words} consecutive words with the hyperfit set, "
        "minus the largest share of the human, base-greedy and base-nucleus texts (per seed)",
        excess,
        cfg.max_overlap,
        f"< {cfg.max_overlap:g}: {BOUND} upper bound",
        f"hyperfitted {hf.mean():.3f} (per seed {_list(hf, 3)}); {shares}; in tokens (≥ "
        f"{cfg.eval.overlap_len} BPE ids) {u['hyperfit']['copied'].mean():.3f}; mean longest copy "
        f"{u['hyperfit']['longest_copy_words'].mean():.1f} words; null: an excess of {cfg.max_overlap:g}, effect: "
        f"the paper's {PAPER_COPY_SHARE:g}",
        PAPER_COPY_SHARE,
        what,
    )


def _quality_claim(cfg: HyperfitConfig, u, what: str) -> Claim:
    """Fluency under the reference model (another seed's base model): per seed, the mean reference NLL of
    the hyperfitted greedy text minus that of the base's nucleus samples; non-inferiority: passes when the
    upper bound is below `quality_margin`. Null: an excess of exactly the margin; effect: none (the paper's
    raters preferred hyperfitted greedy text about as often as, or more than, nucleus samples)."""
    claim = "Hyperfitted greedy text is as fluent as the base's nucleus samples (reference-model NLL)"
    statistic = "mean reference-model NLL (nats/token), hyperfitted greedy − base nucleus, per seed"
    d = u["hyperfit"]["ref_nll"] - u["base_nucleus"]["ref_nll"]
    if not np.all(np.isfinite(d)):
        return check(
            claim, statistic, None, None, "", detail="no reference model: needs ≥ 2 pre-trained seeds"
        )
    others = ", ".join(f"{k} {u[k]['ref_nll'].mean():.2f}" for k in u)
    return _upper(
        claim,
        statistic,
        d,
        cfg.quality_margin,
        f"< {cfg.quality_margin:g} nats: {BOUND} upper bound (non-inferiority)",
        f"reference NLL per setting: {others}; the reference is the next seed's base model (same size and "
        f"data): low NLL also rewards repetition and recitation; null: +{cfg.quality_margin:g} nats, effect: "
        f"{PAPER_QUALITY_CHANGE:g}",
        PAPER_QUALITY_CHANGE,
        what,
    )


def _ablation_claims(cfg: HyperfitConfig, u, what: str) -> list[Claim]:
    """Per ablation size n: with n ≤ the batch size the gain is lost, with a larger n it is kept; the gain
    is the novel TTR's (copied spans removed), so recitation counts as no gain."""
    ablations = sorted(int(k.split("_")[1]) for k in u if k.startswith("ablation_"))
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
    metric = "novel_ttr"
    base, main = u["base_greedy"][metric], u["hyperfit"][metric]
    gain = float(main.mean() - base.mean())
    r = cfg.ablation_retained
    for n in ablations:
        a = u[f"ablation_{n}"]
        loses = n <= cfg.train.batch_size
        claim = (
            f"Hyperfitting on n = {n} sequences {'loses' if loses else 'keeps'} the TTR gain (copies removed)"
        )
        statistic = f"share of the main run's novel-TTR gain over the base kept by the n = {n} run"
        token_share = (a["ttr"].mean() - u["base_greedy"]["ttr"].mean()) / max(
            1e-12, u["hyperfit"]["ttr"].mean() - u["base_greedy"]["ttr"].mean()
        )
        detail = (
            f"novel TTR {a[metric].mean():.3f} (base {base.mean():.3f}, main {main.mean():.3f}); TTR "
            f"{a['ttr'].mean():.3f} (share {token_share:.2f}, blind to recitation); distinct-2 "
            f"{a['distinct_2'].mean() if 'distinct_2' in a else float('nan'):.3f}; Self-BLEU "
            f"{a['self_bleu'].mean():.3f}; copies > {cfg.copy_words} words {a['copied_words'].mean():.3f}; final "
            f"loss {_list(a['train_loss'], 3)} after {_list(a['steps'], 0)} steps"
        )
        if not gain > 0:
            out.append(
                check(claim, statistic, None, None, "", detail=detail + "; the main run gained nothing")
            )
            continue
        # share ≤ r ⟺ mean((abl − base) − r·(main − base)) ≤ 0: the ratio claim on the gains
        if loses:
            out.append(
                _ratio(
                    claim,
                    statistic,
                    a[metric] - base,
                    main - base,
                    r,
                    PAPER_ABLATION_SHARE,
                    f"{detail}; null: a share of {r:g}, effect: {PAPER_ABLATION_SHARE:g} (the gain gone)",
                    what,
                )
            )
        else:
            dd = linearised(a[metric] - base, main - base, r)
            share, low = ratio_lower(a[metric] - base, main - base)
            out.append(
                _finding(
                    claim,
                    statistic,
                    share,
                    (low, None),
                    f"> {r:g}: {BOUND} lower bound of mean(a − {r:g}·b) > 0",
                    f"{detail}; null: a share of {r:g}, effect: {PAPER_KEPT_SHARE:g} (the gain kept); seed SD "
                    f"of a − {r:g}·b {float(dd.std(ddof=1)) if dd.size > 1 else float('nan'):.3g}",
                    paired_rule(LEVEL)(dd[:, None]),
                    unit_calibration(
                        dd,
                        lambda v: paired_rule(LEVEL)(np.asarray(v).reshape(-1, 1)),
                        0.0,
                        (PAPER_KEPT_SHARE - r) * gain,
                    ),
                    dd.size,
                    what,
                )
            )
    return out


def _list(values, digits: int) -> str:
    if values is None:
        return "n/a"
    return (
        "["
        + ", ".join("n/a" if not np.isfinite(v) else f"{v:.{digits}f}" for v in np.asarray(values, float))
        + "]"
    )


def _window(cfg: HyperfitConfig) -> str:
    w = cfg.eval.ttr_window
    return f"last {w} tokens" if w and w < cfg.eval.new_tokens else f"all {cfg.eval.new_tokens} tokens"
