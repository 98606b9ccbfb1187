"""The hyperfitting claims (Carlsson et al. 2025; docs/hyperfit.md), from the analysis's per-prompt and
per-window arrays (`overtrain.studies.hyperfit.analysis`). Claims and their statistics:

1. training loss near zero: mean hyperfit-set loss at the end (CI over its sequences) ≤ `loss_near_zero`;
2. entropy down: mean validation entropy, hyperfitted / base (paired CI over windows) ≤ `entropy_ratio`;
3. validation perplexity up: perplexity ratio, hyperfitted / base = exp(mean paired NLL difference), CI > 1;
4. greedy TTR up vs base greedy: mean paired TTR difference over prompts, CI > 0;
5. low overlap: share of hyperfitted greedy continuations with a copied span of ≥ `overlap_len` tokens
   (CI over prompts) < `max_overlap`;
6. not just sharpening: mean paired TTR difference, hyperfitted greedy − base at the matched τ, CI > 0;
7. citation blocking barely matters: mean paired TTR difference, blocked − unblocked, CI within
   ± `blocking_tolerance`;
8. the batch-size ablation loses the gain: (TTR ablation − TTR base) / (TTR main − TTR base), CI over
   prompts, ≤ `ablation_retained`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from overtrain.analysis.claims import Claim, check
from overtrain.analysis.generation import paired_difference, paired_ratio
from overtrain.analysis.stats import bootstrap_ci
from overtrain.studies.hyperfit.config import HyperfitConfig


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
        )
    )
    ent = paired_ratio(hf_val["entropy"], base_val["entropy"], n_boot, seed=3)
    out.append(
        check(
            "Next-token entropy drops",
            "mean validation entropy, hyperfitted / base",
            ent.value,
            ent.value <= cfg.entropy_ratio,
            f"≤ {cfg.entropy_ratio:g}",
            (ent.low, ent.high),
            f"entropy {base_val['entropy'].mean():.2f} → {hf_val['entropy'].mean():.2f} nats; top-1 "
            f"probability {base_val['top1'].mean():.2f} → {hf_val['top1'].mean():.2f}",
        )
    )
    nll = paired_difference(hf_val["nll"], base_val["nll"], n_boot, seed=4)
    ratio = (math.exp(nll.value), math.exp(nll.low), math.exp(nll.high))
    out.append(
        check(
            "Validation perplexity rises",
            "validation perplexity, hyperfitted / base",
            ratio[0],
            ratio[1] > 1,
            "> 1 (CI above 1)",
            ratio[1:],
            f"perplexity {math.exp(base_val['nll'].mean()):.1f} → {math.exp(hf_val['nll'].mean()):.1f}",
        )
    )
    d = paired_difference(per["hyperfit"]["ttr"], per["base_greedy"]["ttr"], n_boot, seed=5)
    out.append(
        check(
            "Greedy TTR rises over the base model's greedy TTR",
            f"mean paired TTR difference over prompts ({_window(cfg)}), hyperfitted − base",
            d.value,
            d.low > 0,
            "> 0 (CI above 0)",
            (d.low, d.high),
            f"TTR {per['base_greedy']['ttr'].mean():.3f} → {per['hyperfit']['ttr'].mean():.3f}",
        )
    )
    share = bootstrap_ci(per["hyperfit"]["copied"], n_boot=n_boot, seed=6)
    out.append(
        check(
            "Hyperfitted continuations rarely copy the training set",
            f"share of greedy continuations with a ≥ {cfg.eval.overlap_len}-token span of the hyperfit set",
            share.value,
            share.value < cfg.max_overlap,
            f"< {cfg.max_overlap:g}",
            (share.low, share.high),
            f"mean longest copied span {per['hyperfit']['longest_copy'].mean():.1f} tokens; same "
            f"share for the base with nucleus sampling {per['base_nucleus']['copied'].mean():.3f}, "
            f"human text {per['human']['copied'].mean():.3f}",
        )
    )
    d = paired_difference(per["hyperfit"]["ttr"], per["base_matched"]["ttr"], n_boot, seed=7)
    nuc = per["base_nucleus"]["ttr"].mean()
    out.append(
        check(
            "Not just sharpening: hyperfitted greedy beats the base sampled at the same entropy",
            "mean paired TTR difference, hyperfitted greedy − base at the entropy-matched τ",
            d.value,
            d.low > 0,
            "> 0 (CI above 0)",
            (d.low, d.high),
            f"τ = {temperature['tau']:.3f} (entropy {temperature['entropy_at_tau']:.2f} vs target "
            f"{temperature['target_entropy']:.2f} nats); TTR matched "
            f"{per['base_matched']['ttr'].mean():.3f}, nucleus {nuc:.3f}, human "
            f"{per['human']['ttr'].mean():.3f}",
        )
    )
    d = paired_difference(per["blocked"]["ttr"], per["hyperfit"]["ttr"], n_boot, seed=8)
    tol = cfg.blocking_tolerance
    out.append(
        check(
            "Citation blocking barely changes the hyperfitted model's diversity",
            f"mean paired TTR difference, blocked − unblocked (k = {cfg.eval.block_longer_than})",
            d.value,
            -tol <= d.low and d.high <= tol,
            f"CI within ± {tol:g}",
            (d.low, d.high),
            f"copies ≥ {cfg.eval.overlap_len} tokens: {per['hyperfit']['copied'].mean():.3f} → "
            f"{per['blocked']['copied'].mean():.3f}",
        )
    )
    ablations = sorted(int(k.split("_")[1]) for k in per if k.startswith("ablation_"))
    if not ablations:
        out.append(
            check(
                "Hyperfitting on as few sequences as the batch size loses the TTR gain",
                "no ablation run (ablation_sequences = [])",
                None,
                None,
                "",
            )
        )
    for n in ablations:
        cols = np.stack([per["base_greedy"]["ttr"], per["hyperfit"]["ttr"], per[f"ablation_{n}"]["ttr"]], 1)

        def retained(x: np.ndarray) -> float:
            gain = x[:, 1].mean() - x[:, 0].mean()
            return (x[:, 2].mean() - x[:, 0].mean()) / gain if gain > 0 else math.nan

        est = bootstrap_ci(cols, retained, n_boot=n_boot, seed=9)
        ok = math.isfinite(est.value)
        out.append(
            check(
                f"Hyperfitting on n = {n} sequences loses the TTR gain",
                f"share of the main run's greedy-TTR gain over the base kept by the n = {n} run",
                est.value if ok else None,
                ok and est.value <= cfg.ablation_retained,
                f"≤ {cfg.ablation_retained:g}",
                (est.low, est.high) if ok else None,
                f"TTR {per[f'ablation_{n}']['ttr'].mean():.3f}; final train loss "
                f"{train_nll[n].mean():.3f}; copies {per[f'ablation_{n}']['copied'].mean():.3f}"
                + ("" if ok else "; the main run gained nothing"),
            )
        )
    return out


def _window(cfg: HyperfitConfig) -> str:
    w = cfg.eval.ttr_window
    return f"last {w} tokens" if w and w < cfg.eval.new_tokens else f"all {cfg.eval.new_tokens} tokens"
