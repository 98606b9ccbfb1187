"""The repeated-data analysis run (Hernandez et al. 2022): read the pre-training and probe runs, decide
the claims, store what the report shows.

It writes into its ``evals.jsonl`` (``record`` column): ``claim``, ``point`` (per run), ``layer`` (best
prefix-matching score per layer), ``curve`` (held-out loss over training), ``subset_curve`` (loss on the
repeated subset over training, at the worst E and E = 1, from the run's checkpoints),
``induction_curve`` (max prefix-matching score and copying loss at every checkpoint of every run),
``worst`` (the
worst E per size, chosen on the text loss, with the text, copy-task and copying losses there and at
E = 1), ``scaling_fit`` (loss vs parameters on the E = 1 runs), ``law`` (that law on a grid
of sizes; both on the text loss), ``effective_size`` (its inversion per size and E) and ``recommendation`` (the headline).

The claims, the worst E per size (chosen on the text part of the held-out loss) and the effective size
are decided in `findings`, their rules calibrated in `calibrate`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from overtrain.analysis.phase_change import mean_score, phase_change_step
from overtrain.core.evaluate import evaluate_loss
from overtrain.probes.induction import InductionProbe, induction_batches, induction_scores
from overtrain.runs.query import Reader
from overtrain.runs.run import Run
from overtrain.runs.store import Store
from overtrain.studies.base import log_claims
from overtrain.studies.repeated_data.config import RepeatedDataConfig
from overtrain.studies.repeated_data.findings import decide, worst_rows
from overtrain.studies.repeated_data.plan import cells
from overtrain.training import checkpoint as ckpt

CURVE_METRICS = ("val/loss", "copy/loss", "spans/loss")
"""The held-out evaluations logged during training that make the ``curve`` rows."""

LAW_POINTS = 100
"""Sizes at which the ``law`` rows evaluate the fitted scaling law (log-spaced, N_min/2 to 2·N_max)."""


def analyse(cfg: RepeatedDataConfig, run: Run) -> None:
    """The ``repeated_data`` run kind: read the children, decide the claims, store every row."""
    with Reader(run.store) as reader:
        points, layers, curves = collect(cfg, reader)
    induction = induction_curves(cfg, run.store)
    add_induction_timing(cfg, points, induction)
    claims, worst, fit_row, effective, headline = decide(cfg, points, curves)
    subset = subset_curves(cfg, run.store, {size: [1, e] for size, e in worst.items()})
    log_claims(run, claims, headline=headline)  # starts the evals over: redone whole
    worst_e = worst_rows(cfg, points, worst)
    rows = points + layers + curves + induction + subset + worst_e + [fit_row] + law_rows(fit_row, points)
    rows += effective
    for row in rows + [{"record": "recommendation", "text": headline}]:
        run.log_eval(row)


# --- reading the children ----------------------------------------------------------------------------


def collect(cfg: RepeatedDataConfig, reader: Reader) -> tuple[list[dict], list[dict], list[dict]]:
    """Per-run results from the children's rows: ``point`` rows, ``layer`` rows and ``curve`` rows."""
    budget = cfg.train.budgets()[0]
    grid = cells(cfg)
    pre_ids = [c["pretrain_id"] for c in grid]
    info = {r["run_id"]: json.loads(r["info"] or "{}") for r in reader.runs("pretrain", pre_ids)}
    evals = _by_run(reader.evals(pre_ids + [i for c in grid for i in c["probe_ids"].values()]))
    evaluations = _evaluations(reader, pre_ids, budget.name)
    points, layers, curves = [], [], []
    for c in grid:
        key = {"size": c["size"], "repeats": c["repeats"], "seed": c["seed"]}
        run_info = info.get(c["pretrain_id"], {})
        final = {
            r["split"]: r["loss"]
            for r in evals.get(c["pretrain_id"], [])
            if r.get("checkpoint") == budget.name
        }
        ind = evals[c["probe_ids"]["induction"]]
        model = next(r for r in ind if r["scope"] == "model")
        memo = evals[c["probe_ids"]["memorisation"]][0]
        subset = cfg.subset(c["repeats"])
        points.append(
            {
                "record": "point",
                **key,
                "run_id": c["pretrain_id"],
                "n_params": run_info.get("n_params"),
                "n_params_non_embedding": run_info.get("n_params_non_embedding"),
                "subset_sequences": subset,
                "subset_share": subset / cfg.sequences,
                "repeated_share": subset * c["repeats"] / cfg.sequences,
                "heldout_loss": final.get("val"),
                "spans_loss": final.get("spans"),
                "copy_task_loss": final.get("copy"),
                "copying_loss": model["second_copy_loss"],
                "first_copy_loss": model["first_copy_loss"],
                "copying_gain": model["copying_gain"],
                "max_prefix_matching": model["max_prefix_matching"],
                "ablation_effect": model.get("ablation_effect"),
                "repeated_loss": memo["loss"],
                "uniform_prefix_matching": _uniform_score(int(model["block_len"])),
            }
        )
        layers += [
            {
                "record": "layer",
                **key,
                "layer": r["layer"],
                "head": r["head"],
                "max_prefix_matching": r["max_prefix_matching"],
            }
            for r in ind
            if r["scope"] == "layer"
        ]
        for r in evaluations[c["pretrain_id"]]:
            curves.append(
                {
                    "record": "curve",
                    **key,
                    "step": r["step"],
                    "tokens_seen": r["tokens_seen"],
                    "heldout_loss": r["val/loss"],
                    "copy_task_loss": r.get("copy/loss"),
                    "spans_loss": r.get("spans/loss"),
                }
            )
    return points, layers, curves


def _by_run(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by ``run_id``, each run's in the order logged."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["run_id"], []).append(r)
    return out


def _evaluations(reader: Reader, run_ids: list[str], line: str) -> dict[str, list[dict[str, Any]]]:
    """Per run, the held-out evaluation records of training line `line` (those with ``val/loss``), as
    logged: ``{step, tokens_seen, <metric>: value}`` in step order, a record logged twice kept twice.
    Under WSD the budget's line is only its decay, branched from the ``main`` (stable) line, so the
    ``main`` records up to the branch point come first (the branch point is logged on both: the same
    weights). A cosine run has its budget's line only.

    The ``metrics`` table holds one row per (record, metric): the k-th row of a metric at a step belongs
    to the step's k-th record."""
    records: dict[tuple[str, int, int], dict[str, Any]] = {}
    seen: dict[tuple[str, int, str], int] = {}
    rows = [(r, json.loads(r["tags"] or "{}").get("line")) for r in reader.metrics(run_ids, CURVE_METRICS)]
    branch: dict[str, int] = {}
    for r, tag in rows:
        if tag == line:
            branch[r["run_id"]] = min(branch.get(r["run_id"], r["step"]), r["step"])
    for r, tag in rows:
        if not (tag == line or (tag == "main" and r["step"] <= branch.get(r["run_id"], -1))):
            continue
        metric = (r["run_id"], r["step"], r["name"])
        k = seen[metric] = seen.get(metric, -1) + 1
        record = records.setdefault(
            (r["run_id"], r["step"], k), {"step": r["step"], "tokens_seen": r["tokens_seen"]}
        )
        record[r["name"]] = r["value"]
    out: dict[str, list[dict[str, Any]]] = {run_id: [] for run_id in run_ids}
    for (run_id, _, _), record in sorted(records.items(), key=lambda item: item[0]):
        if "val/loss" in record:
            out[run_id].append(record)
    return out


def _uniform_score(block_len: int) -> float:
    """Prefix-matching score of uniform causal attention: ``(H_2L − H_(L+1)) / (L − 1)``, about
    ``ln 2 / (L − 1)``."""
    L = block_len
    return sum(1.0 / k for k in range(L + 2, 2 * L + 1)) / (L - 1)


def subset_curves(cfg: RepeatedDataConfig, store: Store, which: dict[str, list[int]]) -> list[dict[str, Any]]:
    """Loss on the repeated subset at every checkpoint of the runs of `which` (size -> repeat counts)."""
    rows = []
    mc = cfg.memorisation
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else None
    for c in cells(cfg):
        if c["repeats"] not in which.get(c["size"], []):
            continue
        source = c["pretrain"].data.build()
        batches = [
            source.batch("repeated", i, mc.batch_size, cfg.train.seq_len) for i in range(mc.eval_batches)
        ]
        for meta in ckpt.list_checkpoints(store.run_dir("pretrain", c["pretrain_id"])):
            model, _, _ = ckpt.load_checkpoint(Path(meta["path"]))
            rows.append(
                {
                    "record": "subset_curve",
                    "size": c["size"],
                    "repeats": c["repeats"],
                    "seed": c["seed"],
                    "step": meta["step"],
                    "tokens_seen": meta["tokens_seen"],
                    "repeated_loss": evaluate_loss(model, batches, autocast_dtype=dtype),
                }
            )
    return rows


def induction_curves(cfg: RepeatedDataConfig, store: Store) -> list[dict[str, Any]]:
    """The induction probe (prefix-matching score, copying loss) at every checkpoint of every run: the
    ``induction_curve`` rows, one per (run, step) (a step saved under two names is scored once)."""
    rows = []
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else None
    ic = cfg.induction.model_copy(update={"ablate_top": None})
    for c in cells(cfg):
        run_dir = store.run_dir("pretrain", c["pretrain_id"])
        seen: set[int] = set()
        for meta in ckpt.list_checkpoints(run_dir):
            if meta["step"] in seen:
                continue
            seen.add(meta["step"])
            model, _, _ = ckpt.load_checkpoint(Path(meta["path"]))
            probe = InductionProbe(ic)
            batches = induction_batches(
                model.config.vocab_size,
                probe.block_len(cfg.train.seq_len),
                ic.sequences,
                ic.batch_size,
                ic.seed,
            )
            res = induction_scores(model, batches, autocast_dtype=dtype)
            rows.append(
                {
                    "record": "induction_curve",
                    "size": c["size"],
                    "repeats": c["repeats"],
                    "seed": c["seed"],
                    "step": meta["step"],
                    "max_prefix_matching": res.max_prefix_matching,
                    "copying_loss": res.second_copy_loss,
                }
            )
    return rows


def add_induction_timing(cfg: RepeatedDataConfig, points: list[dict], curves: list[dict]) -> None:
    """Per ``point`` row: ``induction_mean_score`` (the max prefix-matching score averaged over training,
    from step 0 where it is taken as 0) and ``phase_change_step`` (the step it first reaches
    `induction_threshold`, interpolated; a run whose head never forms gets its last step, so a delay is
    never overstated), `overtrain.analysis.phase_change`; ``phase_change_reached`` says which."""
    by: dict[tuple, list[tuple[int, float]]] = {}
    for r in curves:
        by.setdefault((r["size"], r["repeats"], r["seed"]), []).append((r["step"], r["max_prefix_matching"]))
    for p in points:
        curve = sorted(by.get((p["size"], p["repeats"], p["seed"]), []))
        if not curve:
            p.update(induction_mean_score=None, phase_change_step=None, phase_change_reached=None)
            continue
        steps, scores = [s for s, _ in curve], [v for _, v in curve]
        step = phase_change_step(steps, scores, cfg.induction_threshold)
        p.update(
            induction_mean_score=mean_score(steps, scores, start=0),
            phase_change_step=float(steps[-1]) if step is None else step,
            phase_change_reached=step is not None,
        )


def law_rows(fit_row: dict[str, Any], points: list[dict]) -> list[dict[str, Any]]:
    """The fitted law ``L(N) = a·N^(−b) + c`` at `LAW_POINTS` log-spaced sizes from half the smallest to
    twice the largest model (none without a fit)."""
    if fit_row.get("a") is None:
        return []
    sizes = [p["n_params_non_embedding"] for p in points]
    grid = np.geomspace(min(sizes) / 2, max(sizes) * 2, LAW_POINTS)
    loss = fit_row["a"] * grid ** -fit_row["b"] + fit_row["c"]
    return [{"record": "law", "n": float(n), "loss": float(v)} for n, v in zip(grid, loss)]
