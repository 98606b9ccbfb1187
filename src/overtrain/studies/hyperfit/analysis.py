"""The hyperfitting study's analysis run (kind ``hyperfit``): base-model controls, the comparison of every
setting, and the claims (`overtrain.studies.hyperfit.claims`).

Settings (all on the same held-out prompts, per seed; `SETTINGS`): the human continuation, the base model
greedy (its epoch-0 evaluation in the main hyperfit run), with nucleus sampling, and with pure temperature
sampling at the τ whose mean validation entropy equals the hyperfitted model's (the sharpening control);
the hyperfitted model greedy, greedy with citation blocking, and every ablation greedy.

Per prompt and setting (`_setting_metrics`): TTR; novel TTR (TTR with the spans of ≥ ``eval.overlap_len``
tokens copied from the setting's hyperfit set removed, `overtrain.analysis.generation.novel_ttr`); the
longest copy in tokens and in words (decoded text, `WordCopyIndex`) and whether it exceeds
`copy_words` words; the NLL of the continuation under the seed's base model and under the *reference
model* — the base model of the next seed (cyclically): an independently initialised and trained model of
the same size and data, a fluency judge that is not the model that generated the base settings. Sampled
settings average their `samples` continuations per prompt; corpus metrics (distinct-n, Self-BLEU) use the
first, so every setting has one continuation per prompt there.

Seeds are the replicates: each per-prompt value is averaged over the prompts within a seed, and the claims
get one value per seed (`unit_table`).

Rows of the run: ``evals.jsonl`` (``record``: ``claim``, ``comparison`` per setting (means over seeds),
``comparison_seed`` per (seed, setting), ``temperature`` per seed, ``sample`` for the continuations the
report shows (first seed), ``run`` per run of the study it read: ``child_kind``, ``child_id``, ``seed``,
``sequences``) and ``probes.jsonl`` (``generation`` rows of the base's sampled settings). The report reads
only these.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from overtrain.analysis.claims import Claim
from overtrain.analysis.generation import CopyIndex, WordCopyIndex, match_temperature, novel_ttr, ttr
from overtrain.analysis.stats import bootstrap_ci
from overtrain.config import config_hash
from overtrain.errors import RunFailed
from overtrain.probes import generation as pg
from overtrain.runs.jsonl import read_jsonl
from overtrain.runs.run import Run
from overtrain.runs.store import Store
from overtrain.studies.base import log_claims
from overtrain.studies.hyperfit.claims import claims
from overtrain.studies.hyperfit.config import HyperfitConfig
from overtrain.studies.hyperfit.plan import pretrain_config, run_configs, train_ids
from overtrain.studies.hyperfit.train import (
    check_lengths,
    digest,
    hyperfit_set,
    load_base,
    prepare_data,
    torch_threads,
)
from overtrain.training.pretrain import resolve_device

SETTINGS = {
    "human": "human continuation",
    "base_greedy": "base, greedy",
    "base_nucleus": "base, nucleus sampling",
    "base_matched": "base, entropy-matched temperature",
    "hyperfit": "hyperfitted, greedy",
    "blocked": "hyperfitted, greedy, citation blocked",
}
"""Keys and labels of the compared settings (ablations add ``ablation_<n>``)."""

SHOWN_PROMPTS = 4
"""Prompts whose continuations the report shows side by side (``sample`` rows)."""


def _generations(rows: list[dict], epoch: int, setting: str, n_prompts: int) -> list[list[list[int]]]:
    """Per prompt, the list of continuations (one here) of `setting` at `epoch`."""
    found = {
        r["prompt"]: r["token_ids"]
        for r in rows
        if r.get("record") == "generation" and r["epoch"] == epoch and r["setting"] == setting
    }
    if len(found) != n_prompts:
        raise RunFailed(f"expected {n_prompts} '{setting}' generations at epoch {epoch}, found {len(found)}")
    return [[found[i]] for i in range(n_prompts)]


def _setting_metrics(
    conts: list[list[list[int]]],
    prompts: torch.Tensor,
    judges: dict[str, Any],
    ec,
    copies: dict[str, Any],
    cfg,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Corpus metrics (first continuation per prompt) and per-prompt arrays of one setting.

    Args:
        conts: per prompt, its continuations (token ids).
        prompts: ``[P, prompt_len]``.
        judges: ``{"base": model, "ref": model or None, "tokenizer": tokenizer}``.
        ec: the evaluation config.
        copies: ``{"tokens": CopyIndex, "words": WordCopyIndex}`` of the hyperfit set.
        cfg: the study config (`copy_words`).
    """
    n_samples = len(conts[0])
    first = [c[0] for c in conts]
    _, corpus = pg.continuation_metrics(first, ec, copies["tokens"])
    tok = judges["tokenizer"]

    def each(fn) -> np.ndarray:
        return np.array([[fn(c) for c in cs] for cs in conts], dtype=float)

    ttrs = each(lambda c: ttr(c, ec.ttr_window))
    novel = each(lambda c: novel_ttr(c, copies["tokens"], ec.overlap_len, ec.ttr_window))
    copy = each(copies["tokens"].longest_copy)
    copy_words = each(lambda c: copies["words"].longest_copy(tok.decode(c)))

    def nll(model) -> np.ndarray:
        if model is None:
            return np.full(len(conts), np.nan)
        parts = [
            pg.continuation_nll(model, prompts, torch.tensor([cs[s] for cs in conts]))
            for s in range(n_samples)
        ]
        return np.stack(parts, 1).mean(1)

    per = {
        "ttr": ttrs.mean(1),
        "novel_ttr": novel.mean(1),
        "copied": (copy >= ec.overlap_len).mean(1),
        "longest_copy": copy.mean(1),
        "copied_words": (copy_words > cfg.copy_words).mean(1),
        "longest_copy_words": copy_words.mean(1),
        "base_nll": nll(judges["base"]),
        "ref_nll": nll(judges["ref"]),
    }
    out = {
        **corpus,
        **{k: float(v.mean()) for k, v in per.items()},
        "overlap": float(per["copied"].mean()),
        "samples": n_samples,
    }
    return out, per


def analyse(cfg: HyperfitConfig, run: Run) -> None:
    """The ``hyperfit`` run kind: base-model controls, the comparison table and the claims (`cfg` resolved:
    the study plans it so)."""
    run.truncate("probes", 0)
    with torch_threads(cfg.threads):
        result = compare(cfg, run.store, train_ids(cfg))
    for row in result["probes"]:
        run.log_probe(row)
    log_claims(run, result["claims"], temperature=result["temperature"])
    for row in result["evals"]:
        run.log_eval(row)


def run_rows(cfg: HyperfitConfig, ids: dict[tuple[int, int], str]) -> list[dict[str, Any]]:
    """One ``run`` row per run of the study the analysis read (what the report looks up)."""
    rows = []
    if cfg.base_model is None:
        rows += [
            {
                "record": "run",
                "child_kind": "pretrain",
                "child_id": config_hash(pretrain_config(cfg, s)),
                "seed": s,
            }
            for s in cfg.seeds
        ]
    rows += [
        {"record": "run", "child_kind": "hyperfit_train", "child_id": run_id, "seed": s, "sequences": n}
        for (s, n), run_id in ids.items()
    ]
    return rows


def _final_epoch(store: Store, run_id: str, fallback: int) -> tuple[int, dict]:
    info = (store.manifest("hyperfit_train", run_id) or {}).get("info") or {}
    return int(info.get("final_epoch", fallback)), info


def seed_analysis(
    cfg: HyperfitConfig, store: Store, seed: int, ids: dict[int, str], ref_base
) -> dict[str, Any]:
    """Every setting of one seed on the held-out prompts (module docstring).

    Args:
        cfg: the study config (resolved).
        store: the run store.
        seed: the base-model seed.
        ids: ``{hyperfit-set size: hyperfit_train run id}`` of this seed, main run included.
        ref_base: the `BaseLM` of the reference model (another seed's base model), or None.

    Returns:
        ``{"per": {setting: per-prompt arrays}, "corpus": {setting: metrics}, "val": {setting: per-window
        arrays}, "train": {n: {"loss", "steps", "reached"}}, "temperature": row, "conts", "probes",
        "prompts", "tokenizer"}``.
    """
    main_n = cfg.train.sequences
    ec = cfg.eval
    main_cfg = run_configs(cfg)[seed, main_n]
    device = resolve_device(cfg.device)
    base = load_base(main_cfg.base, main_cfg.data, store, str(device))
    model, tokenizer = base["model"], base["tokenizer"]
    ref = None if ref_base is None else load_base(ref_base, main_cfg.data, store, str(device))["model"]
    seq_len = check_lengths(main_cfg, base["context"])
    data = prepare_data(main_cfg, base["source"], seq_len)
    prompts, refs = data["prompts"], data["references"]
    runs, train = {}, {}
    for n, run_id in ids.items():
        run_dir = store.run_dir("hyperfit_train", run_id)
        last, info = _final_epoch(store, run_id, cfg.train.epochs)
        if info.get("prompts_digest") != digest(prompts):
            raise RunFailed(f"hyperfit_train/{run_id} was evaluated on other prompts than this analysis")
        runs[n] = {"probes": read_jsonl(run_dir / "probes.jsonl"), "last": last}
        nll = _sequence_arrays(runs[n]["probes"], "train_sequence", last)["nll"]
        train[n] = {
            "loss": float(nll.mean()),
            "steps": info.get("steps"),
            "reached": info.get("reached_target"),
        }
    P = prompts.shape[0]
    last = runs[main_n]["last"]

    # the sharpening control: the base's temperature whose validation entropy equals the hyperfitted model's
    base_val, kept = pg.val_stats(
        model, data["val"], keep_positions=ec.match_positions, seed=(ec.seed, "match")
    )
    hf_val = _sequence_arrays(runs[main_n]["probes"], "val_sequence", last)
    tau, matched_subset, inside = match_temperature(kept, float(hf_val["entropy"].mean()))
    tau_val, _ = pg.val_stats(model, data["val"], temperature=tau)
    temperature_row = {
        "record": "temperature",
        "seed": seed,
        "tau": tau,
        "target_entropy": float(hf_val["entropy"].mean()),
        "subset_entropy": matched_subset,
        "entropy_at_tau": float(tau_val["entropy"].mean()),
        "top1_at_tau": float(tau_val["top1"].mean()),
        "inside_range": inside,
        "positions": int(kept.shape[0]),
    }

    conts: dict[str, list[list[list[int]]]] = {
        "human": [[r] for r in refs.tolist()],
        "base_greedy": _generations(runs[main_n]["probes"], 0, "greedy", P),
        "hyperfit": _generations(runs[main_n]["probes"], last, "greedy", P),
        "blocked": _generations(runs[main_n]["probes"], last, "greedy, citation blocked", P),
    }

    def copy_indexes(train_set: torch.Tensor) -> dict[str, Any]:
        seqs = train_set.tolist()
        return {"tokens": CopyIndex(seqs), "words": WordCopyIndex([tokenizer.decode(x) for x in seqs])}

    main_copies = copy_indexes(data["train"])
    indexes = {}  # copies are counted against the set each model was hyperfitted on (default: the main set)
    val = {}
    for n in ids:
        if n != main_n:
            key = f"ablation_{n}"
            conts[key] = _generations(runs[n]["probes"], runs[n]["last"], "greedy", P)
            indexes[key] = copy_indexes(hyperfit_set(base["source"], n, seq_len, seed))
            val[key] = _sequence_arrays(runs[n]["probes"], "val_sequence", runs[n]["last"])
    probe_rows = []
    for key, sampling in (
        ("base_nucleus", ec.sampling),
        ("base_matched", pg.SamplingConfig(temperature=tau, top_p=1.0, top_k=0)),
    ):
        samples = [
            pg.generate(
                model,
                prompts,
                ec.new_tokens,
                sampling=sampling,
                seed=(ec.seed, seed, key, s),
                batch_size=ec.batch_size,
            ).tolist()
            for s in range(ec.samples)
        ]
        conts[key] = [[samples[s][i] for s in range(ec.samples)] for i in range(P)]
        for s, seqs in enumerate(samples):
            probe_rows += [
                {
                    "record": "generation",
                    "seed": seed,
                    "setting": SETTINGS[key],
                    "sample": s,
                    "prompt": i,
                    "ttr": ttr(seq, ec.ttr_window),
                    "token_ids": seq,
                    "text": tokenizer.decode(seq),
                }
                for i, seq in enumerate(seqs)
            ]
    val.update(
        {
            "base_greedy": base_val,
            "base_nucleus": base_val,
            "base_matched": tau_val,
            "hyperfit": hf_val,
            "blocked": hf_val,
        }
    )
    judges = {"base": model, "ref": ref, "tokenizer": tokenizer}
    per, corpus = {}, {}
    for key in _order(conts):
        corpus[key], per[key] = _setting_metrics(
            conts[key], prompts, judges, ec, indexes.get(key, main_copies), cfg
        )
    return {
        "per": per,
        "corpus": corpus,
        "val": val,
        "train": train,
        "temperature": temperature_row,
        "conts": conts,
        "probes": probe_rows,
        "prompts": prompts,
        "tokenizer": tokenizer,
    }


def _order(conts: dict) -> list[str]:
    return [
        *(k for k in SETTINGS if k in conts),
        *sorted((k for k in conts if k.startswith("ablation_")), key=_n),
    ]


def _n(key: str) -> int:
    return int(key.split("_")[1])


def unit_table(cfg: HyperfitConfig, by_seed: dict[int, dict[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
    """``{setting: {metric: [one value per seed]}}``: per-prompt metrics averaged over prompts, corpus
    metrics, validation means (``val_entropy``, ``val_nll``, ``val_top1``) and, for the hyperfitted
    settings, the final hyperfit-set loss (``train_loss``) and ``steps``."""
    seeds = list(by_seed)
    first = by_seed[seeds[0]]
    out: dict[str, dict[str, np.ndarray]] = {}
    for key in first["per"]:
        row = {m: np.array([by_seed[s]["per"][key][m].mean() for s in seeds]) for m in first["per"][key]}
        for m in ("self_bleu", *(f"distinct_{d}" for d in cfg.eval.distinct)):
            row[m] = np.array([by_seed[s]["corpus"][key][m] for s in seeds])
        if key in first["val"]:
            for m in ("entropy", "nll", "top1"):
                row[f"val_{m}"] = np.array([by_seed[s]["val"][key][m].mean() for s in seeds])
        n = (
            cfg.train.sequences
            if key in ("hyperfit", "blocked")
            else (_n(key) if key.startswith("ablation_") else None)
        )
        if n is not None:
            row["train_loss"] = np.array([by_seed[s]["train"][n]["loss"] for s in seeds])
            row["steps"] = np.array([by_seed[s]["train"][n]["steps"] or np.nan for s in seeds], dtype=float)
        out[key] = row
    return out


def compare(cfg: HyperfitConfig, store: Store, ids: dict[tuple[int, int], str]) -> dict[str, Any]:
    """Everything the ``hyperfit`` analysis run writes (see module docstring).

    Args:
        cfg: the study config (resolved, `overtrain.studies.hyperfit.plan.resolve`).
        store: the run store holding the study's runs.
        ids: ``{(seed, hyperfit-set size): hyperfit_train run id}``, main runs included.

    Returns:
        ``{"evals": rows, "claims": [Claim], "probes": rows, "temperature": mean τ}``; `evals` holds every
        row but the claims'.
    """
    seeds, n_boot = list(cfg.seeds), cfg.bootstrap
    by_seed = {}
    for i, seed in enumerate(seeds):
        other = seeds[(i + 1) % len(seeds)]
        ref = (
            None
            if other == seed or cfg.base_model is not None
            else run_configs(cfg)[other, cfg.train.sequences].base
        )
        mine = {n: ids[seed, n] for n in cfg.sizes()}
        by_seed[seed] = seed_analysis(cfg, store, seed, mine, ref)
    units = unit_table(cfg, by_seed)
    labels = dict(SETTINGS)
    labels.update({k: f"hyperfitted on n = {_n(k)}, greedy" for k in units if k.startswith("ablation_")})
    evals = []
    for key, row in units.items():
        # the TTR CI: bootstrap over prompts of the per-prompt TTR averaged over seeds
        ttrs = np.mean([by_seed[s]["per"][key]["ttr"] for s in seeds], axis=0)
        ci = bootstrap_ci(ttrs, n_boot=n_boot, seed=1)
        means = {m: float(np.nanmean(v)) if np.isfinite(v).any() else None for m, v in row.items()}
        evals.append(
            {
                "record": "comparison",
                "setting": key,
                "label": labels[key],
                **means,
                "ttr_ci_low": ci.low,
                "ttr_ci_high": ci.high,
                "overlap": means["copied"],
                "seeds": len(seeds),
                **(
                    {"temperature": float(np.mean([by_seed[s]["temperature"]["tau"] for s in seeds]))}
                    if key == "base_matched"
                    else {}
                ),
            }
        )
        if "val_nll" in row:
            evals[-1]["val_ppl"] = float(np.exp(np.mean(row["val_nll"])))
        for j, s in enumerate(seeds):
            evals.append(
                {
                    "record": "comparison_seed",
                    "seed": s,
                    "setting": key,
                    **{m: _num(v[j]) for m, v in row.items()},
                }
            )
    temperatures = [by_seed[s]["temperature"] for s in seeds]
    evals += temperatures
    found: list[Claim] = claims(cfg, units, temperatures)
    first = by_seed[seeds[0]]
    tokenizer, ec = first["tokenizer"], cfg.eval
    texts = {"prompt": first["prompts"].tolist(), **{k: [c[0] for c in v] for k, v in first["conts"].items()}}
    for i in range(min(SHOWN_PROMPTS, first["prompts"].shape[0])):
        for key in ["prompt", *units]:
            seq = texts[key][i]
            evals.append(
                {
                    "record": "sample",
                    "seed": seeds[0],
                    "prompt": i,
                    "setting": key,
                    "label": labels.get(key, "prompt"),
                    "text": tokenizer.decode(seq),
                    "ttr": None if key == "prompt" else ttr(seq, ec.ttr_window),
                }
            )
    evals += run_rows(cfg, ids)
    probes = [row for s in seeds for row in by_seed[s]["probes"]]
    tau = float(np.mean([t["tau"] for t in temperatures]))
    return {"evals": evals, "claims": found, "probes": probes, "temperature": tau}


def _num(x) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _sequence_arrays(rows: list[dict], record: str, epoch: int) -> dict[str, np.ndarray]:
    mine = [r for r in rows if r.get("record") == record and r["epoch"] == epoch]
    mine.sort(key=lambda r: r["index"])
    if not mine:
        raise RunFailed(f"no {record} rows at epoch {epoch}")
    return {k: np.array([r[k] for r in mine]) for k in mine[0] if k not in ("record", "index", "epoch")}
