"""The repeated-data analysis run (Hernandez et al. 2022): read the pre-training and probe runs, decide
the claims, store what the report shows.

It writes into its ``evals.jsonl`` (``record`` column): ``claim``, ``point`` (per run), ``layer`` (best
prefix-matching score per layer), ``curve`` (held-out loss over training), ``subset_curve`` (loss on the
repeated subset over training, at the worst E and E = 1, from the run's checkpoints), ``worst`` (the
worst E per size), ``scaling_fit`` (loss vs parameters on the E = 1 runs), ``law`` (that law on a grid
of sizes), ``effective_size`` (its inversion per size and E) and ``recommendation`` (the headline).

Claims (one row per model size where it applies; CIs bootstrap the seeds, which pair runs across E):

- interior peak: max over interior E of the held-out loss exceeds both ends (E = 1 and the largest E)
  by ≥ `min_peak` (relative to the higher end);
- precondition: an induction head forms at E = 1 (max prefix-matching score ≥ `induction_threshold`);
- at the worst E (argmax of held-out loss over E > 1), the copying loss is higher and the max
  prefix-matching score lower than at E = 1, each by ≥ `min_change` relative (N/A without a head);
- peak location vs model size: log2 of the subset size at the worst E, largest over smallest model (the
  paper: larger models are hurt most by larger subsets, i.e. > 0);
- effective size: L(N) = a·N^(−b) (+ c with ≥ 4 sizes) fitted on the E = 1 runs and inverted
  (`effective_size`); for the largest model N_eff(worst E) / N_eff(E = 1) < 1;
- mid-training rise: at the worst E the held-out loss rises above its running minimum by ≥ `min_rise`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from overtrain.analysis.claims import Claim, check
from overtrain.analysis.stats import bootstrap_ci
from overtrain.core.evaluate import evaluate_loss
from overtrain.runs.query import Reader
from overtrain.runs.run import Run
from overtrain.runs.store import Store
from overtrain.studies.base import log_claims
from overtrain.studies.repeated_data.config import RepeatedDataConfig
from overtrain.studies.repeated_data.effective_size import effective_size, fit_scaling_law
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
    claims, worst, fit_row, effective, headline = decide(cfg, points, curves)
    subset = subset_curves(cfg, run.store, {size: [1, e] for size, e in worst.items()})
    worst_rows = [
        {"record": "worst", "size": size, "repeats": e, "subset_sequences": cfg.subset(e)}
        for size, e in worst.items()
    ]
    log_claims(run, claims, headline=headline)  # starts the evals over: redone whole
    rows = points + layers + curves + subset + worst_rows + [fit_row] + law_rows(fit_row, points) + effective
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

    The ``metrics`` table holds one row per (record, metric): the k-th row of a metric at a step belongs
    to the step's k-th record."""
    records: dict[tuple[str, int, int], dict[str, Any]] = {}
    seen: dict[tuple[str, int, str], int] = {}
    for r in reader.metrics(run_ids, CURVE_METRICS):
        if json.loads(r["tags"] or "{}").get("line") != line:
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


def law_rows(fit_row: dict[str, Any], points: list[dict]) -> list[dict[str, Any]]:
    """The fitted law ``L(N) = a·N^(−b) + c`` at `LAW_POINTS` log-spaced sizes from half the smallest to
    twice the largest model (none without a fit)."""
    if fit_row.get("a") is None:
        return []
    sizes = [p["n_params_non_embedding"] for p in points]
    grid = np.geomspace(min(sizes) / 2, max(sizes) * 2, LAW_POINTS)
    loss = fit_row["a"] * grid ** -fit_row["b"] + fit_row["c"]
    return [{"record": "law", "n": float(n), "heldout_loss": float(v)} for n, v in zip(grid, loss)]


# --- claims ------------------------------------------------------------------------------------------


def _grid(points: list[dict], size: str, repeats: list[int], seeds: list[int], key: str) -> np.ndarray:
    """[seed, E] matrix of `key` for one size (NaN where missing)."""
    out = np.full((len(seeds), len(repeats)), np.nan)
    for p in points:
        if p["size"] == size and p.get(key) is not None:
            out[seeds.index(p["seed"]), repeats.index(p["repeats"])] = p[key]
    return out


def _boot(values: np.ndarray, stat, cfg: RepeatedDataConfig) -> tuple[float, tuple[float, float] | None]:
    """`stat` of a [seed, ...] array and its bootstrap CI over seeds (None with one seed)."""
    est = bootstrap_ci(values, stat, n_boot=cfg.bootstrap, seed=0)
    return est.value, None if est.degenerate else (est.low, est.high)


def _peak_excess(loss: np.ndarray) -> float:
    """Relative excess of the highest interior mean over the higher end: max_i m_i / max(m_0, m_-1) − 1."""
    m = np.nanmean(loss, axis=0)
    return float(m[1:-1].max() / max(m[0], m[-1]) - 1)


def _relative_change(pair: np.ndarray) -> float:
    """``mean(x_E) / mean(x_1) − 1`` of a [seed, (E = 1, E)] array."""
    m = np.nanmean(pair, axis=0)
    return float(m[1] / m[0] - 1)


def _worst(loss: np.ndarray) -> int:
    """Index of the worst E > 1 (highest seed-mean held-out loss)."""
    return 1 + int(np.nanargmax(np.nanmean(loss, axis=0)[1:]))


def _rise(curve: np.ndarray) -> float:
    """Largest relative rise of a curve above its running minimum."""
    return float(np.max(curve / np.minimum.accumulate(curve) - 1)) if len(curve) else math.nan


def _peak_claims(cfg: RepeatedDataConfig, points: list[dict], size: str) -> tuple[list[Claim], int]:
    """The interior-peak, precondition, copying and induction claims of one size, and its worst E."""
    reps, seeds = list(cfg.repeats), list(cfg.seeds)
    loss = _grid(points, size, reps, seeds, "heldout_loss")
    m = np.nanmean(loss, axis=0)
    w = _worst(loss)
    interior = 1 + int(np.nanargmax(m[1:-1]))
    value, ci = _boot(loss, _peak_excess, cfg)
    out = [
        check(
            f"Held-out loss peaks at an intermediate E ({size})",
            "max interior seed-mean held-out loss / higher of E = 1 and E = max, − 1",
            value,
            value >= cfg.min_peak and (ci is None or ci[0] > 0),
            f"≥ {cfg.min_peak:g}" + (", CI low > 0" if ci else ""),
            ci,
            f"peak at E = {reps[interior]} ({cfg.subset(reps[interior])} sequences): {m[interior]:.4f}; "
            f"E = 1: {m[0]:.4f}; E = {reps[-1]}: {m[-1]:.4f}",
        )
    ]
    formed = float(np.nanmean(_grid(points, size, reps, seeds, "max_prefix_matching")[:, 0]))
    out.append(
        check(
            f"Precondition: an induction head forms without repetition ({size})",
            "max prefix-matching score over heads at E = 1 (seed mean)",
            formed,
            formed >= cfg.induction_threshold,
            f"≥ {cfg.induction_threshold:g}",
            detail=f"uniform attention scores {points[0]['uniform_prefix_matching']:.3f}",
            type="check",
        )
    )
    has_head = formed >= cfg.induction_threshold
    for key, what, sign in (
        ("copying_loss", "copying loss (2nd copy)", 1),
        ("max_prefix_matching", "max prefix-matching score", -1),
    ):
        pair = _grid(points, size, reps, seeds, key)[:, [0, w]]
        m1, mw = np.nanmean(pair, axis=0)
        value, ci = _boot(pair, _relative_change, cfg)
        # past the minimum change on the claimed side, and a CI that excludes 0 on that side
        ok = sign * value >= cfg.min_change and (ci is None or (ci[0] > 0 if sign > 0 else ci[1] < 0))
        out.append(
            check(
                f"At the worst E, {'copying is worse' if sign > 0 else 'induction heads are weaker'} ({size})",
                f"relative change of the {what}, E = {reps[w]} vs E = 1",
                value,
                ok if has_head else None,
                f"{'≥ +' if sign > 0 else '≤ −'}{cfg.min_change:g}" + (", CI excludes 0" if ci else ""),
                ci,
                f"{mw:.4g} vs {m1:.4g}"
                + ("" if has_head else "; no induction head at E = 1 (precondition fails): not testable"),
            )
        )
    return out, reps[w]


def _effective(
    cfg: RepeatedDataConfig, points: list[dict], sizes: list[str], n_of: dict[str, int], worst: dict[str, int]
) -> tuple[list[Claim], dict[str, Any], list[dict[str, Any]], str]:
    """Scaling law on the E = 1 runs, every (size, E)'s effective size, its claim and the headline."""
    base = [p for p in points if p["repeats"] == 1]
    fit = fit_scaling_law([p["n_params_non_embedding"] for p in base], [p["heldout_loss"] for p in base])
    rows = []
    for size in sizes:
        loss = np.nanmean(_grid(points, size, list(cfg.repeats), list(cfg.seeds), "heldout_loss"), axis=0)
        own = float(fit.size(loss[0]))  # the size's own E = 1 loss read through the law
        for e, value in zip(cfg.repeats, loss):
            eff = effective_size(fit, n_of[size], float(value))
            rows.append(
                {
                    "record": "effective_size",
                    "size": size,
                    "repeats": e,
                    "n": eff.n,
                    "heldout_loss": eff.loss,
                    "n_eff": eff.n_eff,
                    "ratio_to_n": eff.ratio,
                    "ratio": eff.n_eff / own,
                    "extrapolated": eff.extrapolated,
                    "subset_share": cfg.subset(e) / cfg.sequences,
                }
            )
    big = sizes[-1]
    row = next(r for r in rows if r["size"] == big and r["repeats"] == worst[big])
    law = f"{fit.form} law L = {fit.a:.4g}·N^-{fit.b:.3g} + {fit.c:.3g} on {fit.sizes} sizes"
    claim = check(
        "Repetition makes a model behave like a smaller one",
        f"N_eff(E = {worst[big]}) / N_eff(E = 1) of the largest model ({big})",
        row["ratio"],
        row["ratio"] < 1 if fit.invertible else None,
        "< 1",
        detail=law
        + (" (extrapolated)" if row["extrapolated"] else "")
        + ("" if fit.invertible else ": loss does not fall with size, no inversion"),
        # the fitted law is monotone in size, so this restates L(worst E) > L(E = 1): a check of the inversion
        type="check",
    )
    headline = (
        "No effective-size headline: the held-out loss of the E = 1 runs does not fall with model "
        f"size (fitted exponent b = {fit.b:.3g})."
    )
    if fit.invertible and row["ratio"] > 0:
        headline = (
            f"Repeating {row['subset_share']:.2%} of the data {worst[big]} times "
            f"({cfg.fraction:.0%} of the training tokens) makes the {n_of[big]:,}-parameter model "
            f"behave like one {1 / row['ratio']:.1f}x smaller than itself without repetition "
            f"(N_eff = {row['n_eff']:,.0f} non-embedding parameters"
            f"{', extrapolated beyond the fitted sizes' if row['extrapolated'] else ''})."
        )
    return [claim], {"record": "scaling_fit", **fit.row()}, rows, headline


def decide(
    cfg: RepeatedDataConfig, points: list[dict], curves: list[dict]
) -> tuple[list[Claim], dict[str, int], dict[str, Any], list[dict[str, Any]], str]:
    """From the per-run rows: the claims, the worst E per size, the scaling-fit row, the effective-size
    rows and the headline sentence (saying why there is none without an invertible fit)."""
    n_of = {p["size"]: p["n_params_non_embedding"] for p in points}
    sizes = sorted(cfg.models, key=n_of.__getitem__)
    claims: list[Claim] = []
    worst: dict[str, int] = {}
    peaked: dict[str, bool] = {}
    for size in sizes:
        rows, worst[size] = _peak_claims(cfg, points, size)
        peaked[size] = rows[0].value is not None and rows[0].value > 0  # an interior maximum over E
        claims += rows
    fit_row: dict[str, Any] = {"record": "scaling_fit"}
    effective: list[dict[str, Any]] = []
    headline = "No effective-size headline: it needs at least 2 model sizes."
    if len(sizes) >= 2:
        ratio = math.log2(cfg.subset(worst[sizes[-1]]) / cfg.subset(worst[sizes[0]]))
        # a worst E at the edge of the grid of a model with no interior peak is not a "worst subset"
        both = peaked[sizes[0]] and peaked[sizes[-1]]
        claims.append(
            check(
                "Larger models are hurt most by larger repeated subsets",
                "log2(subset at the worst E: largest / smallest model)",
                ratio,
                ratio > 0 if both else None,
                "> 0, both models with an interior peak over E",
                detail="; ".join(
                    f"{s} ({n_of[s]:,} params): worst E = {worst[s]}, {cfg.subset(worst[s])} sequences"
                    + ("" if peaked[s] else " (no interior peak)")
                    for s in sizes
                ),
            )
        )
        more, fit_row, effective, headline = _effective(cfg, points, sizes, n_of, worst)
        claims += more
    rises = {}
    for size in sizes:
        by_step: dict[int, list[float]] = {}
        for r in curves:
            if r["size"] == size and r["repeats"] == worst[size]:
                by_step.setdefault(r["step"], []).append(r["heldout_loss"])
        rises[size] = _rise(np.array([np.mean(by_step[s]) for s in sorted(by_step)]))
    top = max(rises, key=rises.__getitem__)
    claims.append(
        check(
            "Held-out loss rises mid-training at the worst E",
            "largest rise of the seed-mean held-out loss above its running minimum (max over sizes)",
            rises[top],
            rises[top] >= cfg.min_rise,
            f"≥ {cfg.min_rise:g}",
            detail=", ".join(f"{s}: {v:.4f}" for s, v in rises.items()),
        )
    )
    return claims, worst, fit_row, effective, headline
