"""The hyperfitting study's analysis run (kind ``hyperfit``): base-model controls, the comparison of every
setting, and the claims (`overtrain.studies.hyperfit.claims`).

Settings (all on the same held-out prompts; `SETTINGS`): the human continuation, the base model greedy (its
epoch-0 evaluation in the main hyperfit run), with nucleus sampling, and with pure temperature sampling at
the τ whose mean validation entropy equals the hyperfitted model's (the sharpening control); the hyperfitted
model greedy, greedy with citation blocking, and every ablation greedy.

Per-prompt values (TTR, longest copy, base-model NLL) average a sampled setting's `samples` continuations;
corpus metrics (distinct-n, Self-BLEU) use its first sample, so every setting has one continuation per
prompt there.

Rows of the run: ``evals.jsonl`` (``record``: ``claim``, ``comparison`` per setting, ``temperature``,
``sample`` for the continuations the report shows, ``run`` per run of the study it read: ``child_kind``,
``child_id``, ``sequences``) and ``probes.jsonl`` (``generation`` rows of the base's sampled settings). The
report reads only these.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from overtrain.analysis.claims import Claim
from overtrain.analysis.generation import CopyIndex, match_temperature, ttr
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
from overtrain.studies.hyperfit.plan import run_configs, train_ids
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
    conts: list[list[list[int]]], prompts: torch.Tensor, model, ec, index: CopyIndex, n_boot: int
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Corpus metrics (first continuation per prompt) and per-prompt arrays of one setting."""
    n_samples = len(conts[0])
    first = [c[0] for c in conts]
    _, corpus = pg.continuation_metrics(first, ec, index)
    ttrs = np.array([np.mean([ttr(c, ec.ttr_window) for c in cs]) for cs in conts])
    copy = np.array([[index.longest_copy(c) for c in cs] for cs in conts], dtype=float)
    nll = np.stack(
        [
            pg.continuation_nll(model, prompts, torch.tensor([cs[s] for cs in conts]))
            for s in range(n_samples)
        ],
        1,
    )
    per = {
        "ttr": ttrs,
        "copied": (copy >= ec.overlap_len).mean(1),
        "longest_copy": copy.mean(1),
        "base_nll": nll.mean(1),
    }
    ci = bootstrap_ci(ttrs, n_boot=n_boot, seed=1)
    out = {
        **corpus,
        "ttr": float(ttrs.mean()),
        "ttr_ci_low": ci.low,
        "ttr_ci_high": ci.high,
        "overlap": float(per["copied"].mean()),
        "longest_copy": float(per["longest_copy"].mean()),
        "base_nll": float(per["base_nll"].mean()),
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


def run_rows(cfg: HyperfitConfig, ids: dict[int, str]) -> list[dict[str, Any]]:
    """One ``run`` row per run of the study the analysis read (what the report looks up)."""
    rows = []
    if cfg.base_model is None:
        rows.append({"record": "run", "child_kind": "pretrain", "child_id": config_hash(cfg.pretrain)})
    rows += [
        {"record": "run", "child_kind": "hyperfit_train", "child_id": run_id, "sequences": n}
        for n, run_id in ids.items()
    ]
    return rows


def compare(cfg: HyperfitConfig, store: Store, ids: dict[int, str]) -> dict[str, Any]:
    """Everything the ``hyperfit`` analysis run writes (see module docstring).

    Args:
        cfg: the study config (resolved, `overtrain.studies.hyperfit.plan.resolve`).
        store: the run store holding the study's runs.
        ids: ``{hyperfit-set size: hyperfit_train run id}``, main run included.

    Returns:
        ``{"evals": rows, "claims": [Claim], "probes": rows, "temperature": τ}``; `evals` holds every row
        but the claims'.
    """
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
    base_val, kept = pg.val_stats(
        model, data["val"], keep_positions=ec.match_positions, seed=(ec.seed, "match")
    )
    hf_val = _sequence_arrays(runs[main_n]["probes"], "val_sequence", last)
    tau, matched_subset, inside = match_temperature(kept, float(hf_val["entropy"].mean()))
    tau_val, _ = pg.val_stats(model, data["val"], temperature=tau)
    temperature_row = {
        "record": "temperature",
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
    labels = dict(SETTINGS)
    indexes = {}  # copies are counted against the set each model was hyperfitted on (default: the main set)
    for n in ids:
        if n != main_n:
            conts[f"ablation_{n}"] = _generations(runs[n]["probes"], last, "greedy", P)
            labels[f"ablation_{n}"] = f"hyperfitted on n = {n}, greedy"
            indexes[f"ablation_{n}"] = CopyIndex(hyperfit_set(base["source"], n, seq_len, cfg.seed).tolist())
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
                seed=(ec.seed, key, s),
                batch_size=ec.batch_size,
            ).tolist()
            for s in range(ec.samples)
        ]
        conts[key] = [[samples[s][i] for s in range(ec.samples)] for i in range(P)]
        for s, seqs in enumerate(samples):
            probe_rows += [
                {
                    "record": "generation",
                    "setting": labels[key],
                    "sample": s,
                    "prompt": i,
                    "ttr": ttr(seq, ec.ttr_window),
                    "token_ids": seq,
                    "text": tokenizer.decode(seq),
                }
                for i, seq in enumerate(seqs)
            ]

    model_stats = {
        "base_greedy": base_val,
        "base_nucleus": base_val,
        "base_matched": tau_val,
        "hyperfit": hf_val,
        "blocked": hf_val,
    }
    for n in ids:
        if n != main_n:
            model_stats[f"ablation_{n}"] = _sequence_arrays(runs[n]["probes"], "val_sequence", last)
    evals, per = [], {}
    order = [
        "human",
        "base_greedy",
        "base_nucleus",
        "base_matched",
        "hyperfit",
        "blocked",
        *[k for k in conts if k.startswith("ablation_")],
    ]
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
    found: list[Claim] = claims(cfg, per, base_val, hf_val, train_nll, temperature_row)
    texts = {"prompt": prompts.tolist(), **{k: [c[0] for c in v] for k, v in conts.items()}}
    for i in range(min(SHOWN_PROMPTS, P)):
        for key in ["prompt", *order]:
            seq = texts[key][i]
            evals.append(
                {
                    "record": "sample",
                    "prompt": i,
                    "setting": key,
                    "label": labels.get(key, "prompt"),
                    "text": tokenizer.decode(seq),
                    "ttr": None if key == "prompt" else ttr(seq, ec.ttr_window),
                }
            )
    evals += run_rows(cfg, ids)
    return {"evals": evals, "claims": found, "probes": probe_rows, "temperature": tau}


def _sequence_arrays(rows: list[dict], record: str, epoch: int) -> dict[str, np.ndarray]:
    mine = [r for r in rows if r.get("record") == record and r["epoch"] == epoch]
    mine.sort(key=lambda r: r["index"])
    if not mine:
        raise RunFailed(f"no {record} rows at epoch {epoch}")
    return {k: np.array([r[k] for r in mine]) for k in mine[0] if k not in ("record", "index", "epoch")}
