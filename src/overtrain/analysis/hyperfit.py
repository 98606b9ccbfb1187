"""The hyperfitting study's analysis: base-model controls, the comparison of every setting, and the claims.

Settings (all on the same held-out prompts; `overtrain.studies.hyperfit.SETTINGS`): the human continuation,
the base model greedy (its epoch-0 evaluation in the main hyperfit run), with nucleus sampling, and with pure
temperature sampling at the τ whose mean validation entropy equals the hyperfitted model's (the sharpening
control); the hyperfitted model greedy, greedy with citation blocking, and every ablation greedy.

Per-prompt values (TTR, longest copy, base-model NLL) average a sampled setting's `samples` continuations;
corpus metrics (distinct-n, Self-BLEU) use its first sample, so every setting has one continuation per
prompt there. Claims and their statistics:

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
import torch

from overtrain.analysis.claims import Claim, check
from overtrain.analysis.generation import CopyIndex, match_temperature, paired_difference, paired_ratio, ttr
from overtrain.analysis.stats import bootstrap_ci
from overtrain.errors import RunFailed
from overtrain.probes import generation as pg
from overtrain.runs.store import read_jsonl

SHOWN_PROMPTS = 4
"""Prompts whose continuations the report shows side by side (``sample`` rows)."""


def _generations(rows: list[dict], epoch: int, setting: str, n_prompts: int) -> list[list[list[int]]]:
    """Per prompt, the list of continuations (one here) of `setting` at `epoch`."""
    found = {r["prompt"]: r["token_ids"] for r in rows
             if r.get("record") == "generation" and r["epoch"] == epoch and r["setting"] == setting}
    if len(found) != n_prompts:
        raise RunFailed(f"expected {n_prompts} '{setting}' generations at epoch {epoch}, found {len(found)}")
    return [[found[i]] for i in range(n_prompts)]


def _setting_metrics(conts: list[list[list[int]]], prompts: torch.Tensor, model, ec, index: CopyIndex,
                     n_boot: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Corpus metrics (first continuation per prompt) and per-prompt arrays of one setting."""
    n_samples = len(conts[0])
    first = [c[0] for c in conts]
    _, corpus = pg.continuation_metrics(first, ec, index)
    ttrs = np.array([np.mean([ttr(c, ec.ttr_window) for c in cs]) for cs in conts])
    copy = np.array([[index.longest_copy(c) for c in cs] for cs in conts], dtype=float)
    nll = np.stack([pg.continuation_nll(model, prompts, torch.tensor([cs[s] for cs in conts]))
                    for s in range(n_samples)], 1)
    per = {"ttr": ttrs, "copied": (copy >= ec.overlap_len).mean(1), "longest_copy": copy.mean(1),
           "base_nll": nll.mean(1)}
    ci = bootstrap_ci(ttrs, n_boot=n_boot, seed=1)
    out = {**corpus, "ttr": float(ttrs.mean()), "ttr_ci_low": ci.low, "ttr_ci_high": ci.high,
           "overlap": float(per["copied"].mean()), "longest_copy": float(per["longest_copy"].mean()),
           "base_nll": float(per["base_nll"].mean()), "samples": n_samples}
    return out, per


def analyse(cfg, store, ids: dict[int, str]) -> dict[str, Any]:
    """Everything the ``hyperfit`` analysis run writes (see module docstring).

    Args:
        cfg: the study config (`overtrain.studies.hyperfit.HyperfitConfig`, resolved).
        store: the run store holding the study's runs.
        ids: ``{hyperfit-set size: hyperfit_train run id}``, main run included.

    Returns:
        ``{"evals": rows, "probes": rows, "temperature": τ}``.
    """
    from overtrain.studies.hyperfit import SETTINGS, run_configs
    from overtrain.training.hyperfit import check_lengths, digest, hyperfit_set, load_base, prepare_data
    from overtrain.training.pretrain import resolve_device

    main_n = cfg.train.sequences
    ec, n_boot = cfg.eval, cfg.bootstrap
    main_cfg = run_configs(cfg)[main_n]
    device = resolve_device(cfg.device)
    base = load_base(main_cfg.base, main_cfg.data, store, str(device))
    model, tokenizer = base["model"], base["tokenizer"]
    seq_len = check_lengths(main_cfg, base["context"])
    data = prepare_data(main_cfg, base["source"], seq_len)
    prompts, refs = data["prompts"], data["references"]
    runs = {}
    for n, run_id in ids.items():
        run_dir = store.run_dir("hyperfit_train", run_id)
        manifest = store.manifest("hyperfit_train", run_id) or {}
        if (manifest.get("info") or {}).get("prompts_digest") != digest(prompts):
            raise RunFailed(f"hyperfit_train/{run_id} was evaluated on other prompts than this analysis")
        runs[n] = {"probes": read_jsonl(run_dir / "probes.jsonl")}
    last = cfg.train.epochs
    P = prompts.shape[0]

    # the sharpening control: the base's temperature whose validation entropy equals the hyperfitted model's
    base_val, kept = pg.val_stats(model, data["val"], keep_positions=ec.match_positions,
                                  seed=(ec.seed, "match"))
    hf_val = _sequence_arrays(runs[main_n]["probes"], "val_sequence", last)
    tau, matched_subset, inside = match_temperature(kept, float(hf_val["entropy"].mean()))
    tau_val, _ = pg.val_stats(model, data["val"], temperature=tau)
    temperature_row = {"record": "temperature", "tau": tau, "target_entropy": float(hf_val["entropy"].mean()),
                       "subset_entropy": matched_subset, "entropy_at_tau": float(tau_val["entropy"].mean()),
                       "top1_at_tau": float(tau_val["top1"].mean()), "inside_range": inside,
                       "positions": int(kept.shape[0])}

    conts: dict[str, list[list[list[int]]]] = {
        "human": [[r] for r in refs.tolist()],
        "base_greedy": _generations(runs[main_n]["probes"], 0, "greedy", P),
        "hyperfit": _generations(runs[main_n]["probes"], last, "greedy", P),
        "blocked": _generations(runs[main_n]["probes"], last, "greedy, citation blocked", P),
    }
    labels = dict(SETTINGS)
    indexes = {}  # copies are counted against the set each model was hyperfitted on (default: the main set)
    for n in ids:
        if n != main_n:
            conts[f"ablation_{n}"] = _generations(runs[n]["probes"], last, "greedy", P)
            labels[f"ablation_{n}"] = f"hyperfitted on n = {n}, greedy"
            indexes[f"ablation_{n}"] = CopyIndex(hyperfit_set(base["source"], n, seq_len, cfg.seed).tolist())
    probe_rows = []
    for key, sampling in (("base_nucleus", ec.sampling), ("base_matched", pg.SamplingConfig(
            temperature=tau, top_p=1.0, top_k=0))):
        samples = [pg.generate(model, prompts, ec.new_tokens, sampling=sampling, seed=(ec.seed, key, s),
                               batch_size=ec.batch_size).tolist() for s in range(ec.samples)]
        conts[key] = [[samples[s][i] for s in range(ec.samples)] for i in range(P)]
        for s, seqs in enumerate(samples):
            probe_rows += [{"record": "generation", "setting": labels[key], "sample": s, "prompt": i,
                            "ttr": ttr(seq, ec.ttr_window), "token_ids": seq, "text": tokenizer.decode(seq)}
                           for i, seq in enumerate(seqs)]

    model_stats = {"base_greedy": base_val, "base_nucleus": base_val, "base_matched": tau_val,
                   "hyperfit": hf_val, "blocked": hf_val}
    for n in ids:
        if n != main_n:
            model_stats[f"ablation_{n}"] = _sequence_arrays(runs[n]["probes"], "val_sequence", last)
    evals, per = [], {}
    order = ["human", "base_greedy", "base_nucleus", "base_matched", "hyperfit", "blocked",
             *[k for k in conts if k.startswith("ablation_")]]
    for key in order:
        index = indexes.get(key, data["copy_index"])
        metrics, per[key] = _setting_metrics(conts[key], prompts, model, ec, index, n_boot)
        row = {"record": "comparison", "setting": key, "label": labels[key], **metrics}
        if key in model_stats:
            row.update(pg.summarize_val(model_stats[key]))
            row = {k.replace("/", "_"): v for k, v in row.items()}
        if key == "base_matched":
            row["temperature"] = tau
        evals.append(row)
    train_nll = {n: _sequence_arrays(runs[n]["probes"], "train_sequence", last)["nll"] for n in ids}
    evals.append(temperature_row)
    evals += [c.row() for c in claims(cfg, per, base_val, hf_val, train_nll, temperature_row)]
    texts = {"prompt": prompts.tolist(), **{k: [c[0] for c in v] for k, v in conts.items()}}
    for i in range(min(SHOWN_PROMPTS, P)):
        for key in ["prompt", *order]:
            seq = texts[key][i]
            evals.append({"record": "sample", "prompt": i, "setting": key, "label": labels.get(key, "prompt"),
                          "text": tokenizer.decode(seq),
                          "ttr": None if key == "prompt" else ttr(seq, ec.ttr_window)})
    return {"evals": evals, "probes": probe_rows, "temperature": tau}


def _window(cfg) -> str:
    w = cfg.eval.ttr_window
    return f"last {w} tokens" if w and w < cfg.eval.new_tokens else f"all {cfg.eval.new_tokens} tokens"


def _sequence_arrays(rows: list[dict], record: str, epoch: int) -> dict[str, np.ndarray]:
    mine = [r for r in rows if r.get("record") == record and r["epoch"] == epoch]
    mine.sort(key=lambda r: r["index"])
    if not mine:
        raise RunFailed(f"no {record} rows at epoch {epoch}")
    return {k: np.array([r[k] for r in mine]) for k in mine[0] if k not in ("record", "index", "epoch")}


def claims(cfg, per: dict[str, dict[str, np.ndarray]], base_val, hf_val, train_nll: dict[int, np.ndarray],
           temperature: dict[str, Any]) -> list[Claim]:
    """The claims table (module docstring) from per-prompt and per-window arrays."""
    n_boot, main = cfg.bootstrap, cfg.train.sequences
    out = []
    loss = bootstrap_ci(train_nll[main], n_boot=n_boot, seed=2)
    out.append(check("Hyperfitting drives the training loss near zero",
                     f"mean loss on the {main} hyperfit sequences at the end (nats/token)", loss.value,
                     loss.value <= cfg.loss_near_zero, f"≤ {cfg.loss_near_zero:g}", (loss.low, loss.high)))
    ent = paired_ratio(hf_val["entropy"], base_val["entropy"], n_boot, seed=3)
    out.append(check("Next-token entropy drops", "mean validation entropy, hyperfitted / base", ent.value,
                     ent.value <= cfg.entropy_ratio, f"≤ {cfg.entropy_ratio:g}", (ent.low, ent.high),
                     f"entropy {base_val['entropy'].mean():.2f} → {hf_val['entropy'].mean():.2f} nats; top-1 "
                     f"probability {base_val['top1'].mean():.2f} → {hf_val['top1'].mean():.2f}"))
    nll = paired_difference(hf_val["nll"], base_val["nll"], n_boot, seed=4)
    ratio = (math.exp(nll.value), math.exp(nll.low), math.exp(nll.high))
    out.append(check("Validation perplexity rises", "validation perplexity, hyperfitted / base", ratio[0],
                     ratio[1] > 1, "> 1 (CI above 1)", ratio[1:],
                     f"perplexity {math.exp(base_val['nll'].mean()):.1f} → "
                     f"{math.exp(hf_val['nll'].mean()):.1f}"))
    d = paired_difference(per["hyperfit"]["ttr"], per["base_greedy"]["ttr"], n_boot, seed=5)
    out.append(check("Greedy TTR rises over the base model's greedy TTR",
                     f"mean paired TTR difference over prompts ({_window(cfg)}), hyperfitted − base",
                     d.value, d.low > 0, "> 0 (CI above 0)", (d.low, d.high),
                     f"TTR {per['base_greedy']['ttr'].mean():.3f} → {per['hyperfit']['ttr'].mean():.3f}"))
    share = bootstrap_ci(per["hyperfit"]["copied"], n_boot=n_boot, seed=6)
    out.append(check("Hyperfitted continuations rarely copy the training set",
                     f"share of greedy continuations with a ≥ {cfg.eval.overlap_len}-token span of the "
                     "hyperfit set", share.value, share.value < cfg.max_overlap, f"< {cfg.max_overlap:g}",
                     (share.low, share.high),
                     f"mean longest copied span {per['hyperfit']['longest_copy'].mean():.1f} tokens; same "
                     f"share for the base with nucleus sampling {per['base_nucleus']['copied'].mean():.3f}, "
                     f"human text {per['human']['copied'].mean():.3f}"))
    d = paired_difference(per["hyperfit"]["ttr"], per["base_matched"]["ttr"], n_boot, seed=7)
    nuc = per["base_nucleus"]["ttr"].mean()
    out.append(check("Not just sharpening: hyperfitted greedy beats the base sampled at the same entropy",
                     "mean paired TTR difference, hyperfitted greedy − base at the entropy-matched τ",
                     d.value, d.low > 0, "> 0 (CI above 0)", (d.low, d.high),
                     f"τ = {temperature['tau']:.3f} (entropy {temperature['entropy_at_tau']:.2f} vs target "
                     f"{temperature['target_entropy']:.2f} nats); TTR matched "
                     f"{per['base_matched']['ttr'].mean():.3f}, nucleus {nuc:.3f}, human "
                     f"{per['human']['ttr'].mean():.3f}"))
    d = paired_difference(per["blocked"]["ttr"], per["hyperfit"]["ttr"], n_boot, seed=8)
    tol = cfg.blocking_tolerance
    out.append(check("Citation blocking barely changes the hyperfitted model's diversity",
                     f"mean paired TTR difference, blocked − unblocked (k = {cfg.eval.block_longer_than})",
                     d.value, -tol <= d.low and d.high <= tol, f"CI within ± {tol:g}", (d.low, d.high),
                     f"copies ≥ {cfg.eval.overlap_len} tokens: {per['hyperfit']['copied'].mean():.3f} → "
                     f"{per['blocked']['copied'].mean():.3f}"))
    ablations = sorted(int(k.split("_")[1]) for k in per if k.startswith("ablation_"))
    if not ablations:
        out.append(check("Hyperfitting on as few sequences as the batch size loses the TTR gain",
                         "no ablation run (ablation_sequences = [])", None, None, ""))
    for n in ablations:
        cols = np.stack([per["base_greedy"]["ttr"], per["hyperfit"]["ttr"], per[f"ablation_{n}"]["ttr"]], 1)

        def retained(x: np.ndarray) -> float:
            gain = x[:, 1].mean() - x[:, 0].mean()
            return (x[:, 2].mean() - x[:, 0].mean()) / gain if gain > 0 else math.nan

        est = bootstrap_ci(cols, retained, n_boot=n_boot, seed=9)
        ok = math.isfinite(est.value)
        out.append(check(f"Hyperfitting on n = {n} sequences loses the TTR gain",
                         f"share of the main run's greedy-TTR gain over the base kept by the n = {n} run",
                         est.value if ok else None, ok and est.value <= cfg.ablation_retained,
                         f"≤ {cfg.ablation_retained:g}", (est.low, est.high) if ok else None,
                         f"TTR {per[f'ablation_{n}']['ttr'].mean():.3f}; final train loss "
                         f"{train_nll[n].mean():.3f}; copies {per[f'ablation_{n}']['copied'].mean():.3f}"
                         + ("" if ok else "; the main run gained nothing")))
    return out
