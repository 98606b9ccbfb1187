"""Repeated data (Hernandez et al. 2022, science.md §3): a small subset repeated E times hurts held-out
loss most at an intermediate E, damages copying, and shrinks the effective model size.

The study expands into runs:

1. ``pretrain``: one run per (model size, E, seed) on the `repeat` mixer: a fraction f of the training
   sequences comes from a subset of ``round(f·N/E)`` sequences placed exactly E times, the rest is unique
   (N training sequences in the fixed token budget). E = 1 is the no-repetition baseline at the same f.
   The unique language (`data`) is one where in-context copying pays: a Zipf-bigram text with copied
   spans mixed with [random block; same block] sequences, so induction heads form (docs/repeated_data.md);
2. ``probe``: on every final checkpoint, the `induction` probe (prefix-matching score per head, copying
   loss on repeated random blocks) and the `reference_loss` probe on split ``repeated`` (the loss on the
   repeated subset: how far it was memorised);
3. ``repeated_data``: this study's analysis, after all of them. It writes into its ``evals.jsonl``
   (``record`` column): ``point`` (per run), ``layer`` (best prefix-matching score per layer), ``curve``
   (held-out loss over training), ``subset_curve`` (loss on the repeated subset over training, at the
   worst E and E = 1, from the run's checkpoints), ``scaling_fit`` (loss vs parameters on the E = 1 runs),
   ``effective_size`` (its inversion per size and E), ``claim`` and ``recommendation`` (the headline).

Claims (one row per model size where it applies; CIs bootstrap the seeds, which pair runs across E):

- interior peak: max over interior E of the held-out loss exceeds both ends (E = 1 and the largest E)
  by ≥ `min_peak` (relative to the higher end);
- precondition: an induction head forms at E = 1 (max prefix-matching score ≥ `induction_threshold`);
- at the worst E (argmax of held-out loss over E > 1), the copying loss is higher and the max
  prefix-matching score lower than at E = 1, each by ≥ `min_change` relative (N/A without a head);
- peak location vs model size: log2 of the subset size at the worst E, largest over smallest model (the
  paper: larger models are hurt most by larger subsets, i.e. > 0);
- effective size: L(N) = a·N^(−b) (+ c with ≥ 4 sizes) fitted on the E = 1 runs and inverted; for the
  largest model N_eff(worst E) / N_eff(E = 1) < 1;
- mid-training rise: at the worst E the held-out loss rises above its running minimum by ≥ `min_rise`.

Rerunning the study reuses every finished run (content-addressed); ``--workers 2`` runs two at once.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from overtrain.analysis.claims import Claim, check
from overtrain.config import (
    BaseConfig,
    NotInId,
    Registered,
    Seeds,
    build_config,
    config_hash,
    identity,
    validate,
)
from overtrain.data.copy import CopyConfig
from overtrain.data.mixture import MixtureConfig
from overtrain.data.repeat import RepeatConfig
from overtrain.models.presets import ModelConfig
from overtrain.paths import repo_root
from overtrain.probes.induction import InductionConfig
from overtrain.probes.reference_loss import ReferenceLossConfig
from overtrain.registry import DATASETS, RUN_KINDS, STUDIES
from overtrain.runs.kinds import RunKind
from overtrain.runs.kinds.probe import ProbeRunConfig
from overtrain.runs.plan import Plan, PlanItem
from overtrain.training.pretrain import CheckpointConfig, EvalConfig, PretrainConfig, TrainConfig

PRESETS = ("default", "small")
VOCAB = 64


def _default_models() -> dict[str, ModelConfig]:
    d48 = {"hidden_size": 48, "intermediate_size": 192}
    return {"nano": ModelConfig(preset="llama-nano"), "micro": ModelConfig(preset="llama-micro"),
            "d48": ModelConfig(preset="llama-micro", overrides=d48)}


def _default_eval() -> EvalConfig:
    return EvalConfig(batches=8, every=100, extra={"copy": CopyConfig(mode="repeat", vocab_size=VOCAB),
                                                   "spans": CopyConfig(mode="spans", vocab_size=VOCAB)})


class RepeatedDataConfig(BaseConfig):
    """The repeated-data study (``overtrain repeated-data``)."""

    schema_version: int = 1
    """Config schema version."""

    data: Registered(DATASETS) = Field(default_factory=lambda: MixtureConfig())
    """The unique language, base of the `repeat` mixer (default: copied-spans text mixed 3:1 with [random
    block; same block] sequences, vocabulary 64)."""

    fraction: float = Field(0.1, gt=0, lt=1)
    """Fraction f of the training sequences that are repeats of the subset (fixed across E)."""

    repeats: list[int] = [1, 16, 128, 1024]
    """Repeat counts E (log-spaced, must include 1: the no-repetition baseline). The subset holds
    round(f·N/E) sequences."""

    models: dict[str, ModelConfig] = Field(default_factory=_default_models)
    """Model sizes by label, e.g. ``{micro: {preset: llama-micro}}`` (at least 2 for the scaling law)."""

    seeds: Seeds = [0]
    """Seeds: each sets the model initialisation and where the repeats are placed; CIs resample them."""

    train: TrainConfig = TrainConfig(tokens=[3_072_000], schedule="cosine", batch_size=32, seq_len=64,
                                     lr=3e-3, warmup_steps=100, log_every=50)
    """Optimisation; exactly one token budget (the fixed total tokens of every run)."""

    eval: EvalConfig = Field(default_factory=_default_eval)
    """Held-out evaluation during training (``eval.every`` gives the loss curves; ``extra`` sources log
    ``<name>/loss`` and must use the data's vocabulary: default ``copy`` and ``spans`` at 64 tokens)."""

    checkpoint: CheckpointConfig = CheckpointConfig(log_spaced=False, every=250, step_zero=False,
                                                    resume_every=500)
    """Checkpoints along training: the analysis evaluates the repeated subset on them (worst E, E = 1)."""

    induction: InductionConfig = InductionConfig(sequences=64, batch_size=32)
    """Induction probe on every final checkpoint: prefix-matching score per head, copying loss."""

    memorisation: ReferenceLossConfig = ReferenceLossConfig(split="repeated", eval_batches=4,
                                                            batch_size=32)
    """Loss on the repeated subset (``split: repeated``) on every final checkpoint."""

    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute precision of every run (bf16 autocast)."""

    device: str = NotInId("cpu")
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``."""

    bootstrap: int = Field(2000, ge=100)
    """Bootstrap replicates for every confidence interval (over seeds)."""

    min_peak: float = Field(0.01, ge=0)
    """Relative height of the interior peak over the higher end needed to pass (1%: science.md §3 at this
    scale)."""

    min_change: float = Field(0.05, ge=0)
    """Relative change of the copying loss (up) or the max prefix-matching score (down) at the worst E
    against E = 1 needed to count as damage (5%); with several seeds the CI must also exclude 0."""

    induction_threshold: float = Field(0.3, gt=0, le=1)
    """Max prefix-matching score above which a model has an induction head (the 0.3–0.5 convention)."""

    min_rise: float = Field(0.005, ge=0)
    """Relative rise of the held-out loss above its running minimum that counts as a mid-training rise."""

    @field_validator("repeats")
    @classmethod
    def _repeats(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value) or any(e < 1 for e in value):
            raise ValueError(f"give distinct repeat counts >= 1, got {value}")
        if 1 not in value or len(value) < 3:
            raise ValueError("include E = 1 (the no-repetition baseline) and at least 2 more repeat counts")
        return sorted(value)

    @field_validator("models")
    @classmethod
    def _models(cls, value: dict[str, ModelConfig]) -> dict[str, ModelConfig]:
        if not value:
            raise ValueError("give at least one model size")
        return value

    @model_validator(mode="after")
    def _budget(self) -> RepeatedDataConfig:
        if len(self.train.tokens) != 1:
            raise ValueError(f"train.tokens: give exactly one token budget (the fixed total), "
                             f"got {len(self.train.tokens)}")
        n = self.sequences
        for e in self.repeats:
            subset = round(self.fraction * n / e)
            if subset < 1:
                raise ValueError(f"repeats: E = {e} leaves round({self.fraction} x {n} / {e}) = 0 subset "
                                 f"sequences (N = {n} training sequences); lower E or raise train.tokens "
                                 "or fraction")
        return self

    @property
    def sequences(self) -> int:
        """N: training sequences of the budget."""
        return self.train.budgets()[0].steps * self.train.batch_size

    def subset(self, repeats: int) -> int:
        """Distinct subset sequences at E = `repeats`."""
        return round(self.fraction * self.sequences / repeats)


# --- expansion into runs -----------------------------------------------------------------------------


def pretrain_config(cfg: RepeatedDataConfig, size: str, repeats: int, seed: int) -> PretrainConfig:
    """The pre-training run of one (size, E, seed)."""
    budget = cfg.train.budgets()[0]
    data = RepeatConfig(base=cfg.data, fraction=cfg.fraction, repeats=repeats, seed=seed,
                        total_tokens=budget.steps * cfg.train.tokens_per_step)
    return PretrainConfig(seed=seed, data=data, model=cfg.models[size], train=cfg.train, eval=cfg.eval,
                          checkpoint=cfg.checkpoint, dtype=cfg.dtype, device=cfg.device)


def _flops_per_token(model: ModelConfig) -> int:
    """Matrix parameters per token of the model's blocks (attention 4d², MLP 3·d·ffn per layer): the
    order in which the plan starts runs, largest first, so the longest runs do not finish last."""
    from overtrain.models.presets import build_hf_config

    hf = build_hf_config(model, vocab_size=VOCAB, max_positions=8)
    d, ffn = hf.hidden_size, getattr(hf, "intermediate_size", 4 * hf.hidden_size)
    return hf.num_hidden_layers * (4 * d * d + 3 * d * ffn)


def cells(cfg: RepeatedDataConfig) -> list[dict[str, Any]]:
    """Every (size, E, seed) with the run ids of its pre-training run and its two probe runs, the
    largest model first."""
    out = []
    ckpt = cfg.train.budgets()[0].name
    for size in sorted(cfg.models, key=lambda s: -_flops_per_token(cfg.models[s])):
        for e in cfg.repeats:
            for seed in cfg.seeds:
                pre = pretrain_config(cfg, size, e, seed)
                pre_id = config_hash(pre)
                probes = {name: validate(ProbeRunConfig, {
                    "parent": pre_id, "checkpoint": ckpt, "probe": probe, "settings": identity(settings),
                    "dtype": cfg.dtype, "device": cfg.device}, "probe")
                    for name, probe, settings in (("induction", "induction", cfg.induction),
                                                  ("memorisation", "reference_loss", cfg.memorisation))}
                out.append({"size": size, "repeats": e, "seed": seed, "pretrain": pre,
                            "pretrain_id": pre_id, "probes": probes,
                            "probe_ids": {k: config_hash(v) for k, v in probes.items()}})
    return out


def plan(cfg: RepeatedDataConfig) -> Plan:
    """Every run of the study, the analysis run last."""
    items: list[PlanItem] = []
    for c in cells(cfg):
        label = f"{c['size']} E={c['repeats']} seed={c['seed']}"
        items.append(PlanItem.from_config(RUN_KINDS.get("pretrain"), c["pretrain"], label))
        for name, probe in c["probes"].items():
            items.append(PlanItem.from_config(RUN_KINDS.get("probe"), probe, f"{label} {name}"))
    # built by hand: the analysis kind's parents() is this very plan
    items.append(PlanItem("repeated_data", cfg, config_hash(cfg), [item.run_id for item in items],
                          "analysis"))
    return Plan(items)


def load_config(config: str | Path | None = None, preset: str | None = None,
                overrides=()) -> RepeatedDataConfig:
    """A preset from ``configs/repeated_data/<preset>.yaml`` (default: ``default``) or a file, then
    ``key=value`` overrides."""
    from overtrain.errors import UserError

    if config is None:
        preset = preset or PRESETS[0]
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r} of repeated_data; choose from: "
                            f"{', '.join(PRESETS)}")
        config = (repo_root() or Path.cwd()) / "configs" / "repeated_data" / f"{preset}.yaml"
        if not config.is_file():  # installed without the repo: the preset is the config's defaults
            config = None
    return build_config(RepeatedDataConfig, config, overrides)


def run(cfg: RepeatedDataConfig, store=None, *, workers: int = 1, progress: bool = True):
    """Execute the study: every run it needs (finished ones are skipped), then its analysis.

    Returns:
        ``(PlanResult, study_run_id)``.
    """
    from overtrain.executors.local import run_plan
    from overtrain.runs.store import Store

    store = store or Store()
    return run_plan(plan(cfg), store, workers=workers, progress=progress), config_hash(cfg)


# --- analysis ----------------------------------------------------------------------------------------


def _read(store, kind: str, run_id: str, name: str) -> list[dict[str, Any]]:
    from overtrain.runs.store import read_jsonl

    return read_jsonl(store.run_dir(kind, run_id) / f"{name}.jsonl")


def collect(cfg: RepeatedDataConfig, store) -> tuple[list[dict], list[dict], list[dict]]:
    """Per-run results from the children's files: ``point`` rows, ``layer`` rows and ``curve`` rows."""
    budget = cfg.train.budgets()[0]
    points, layers, curves = [], [], []
    for c in cells(cfg):
        key = {"size": c["size"], "repeats": c["repeats"], "seed": c["seed"]}
        info = (store.manifest("pretrain", c["pretrain_id"]) or {}).get("info", {})
        final = {r["split"]: r["loss"] for r in _read(store, "pretrain", c["pretrain_id"], "evals")
                 if r.get("checkpoint") == budget.name}
        ind = _read(store, "probe", c["probe_ids"]["induction"], "evals")
        model = next(r for r in ind if r["scope"] == "model")
        memo = next(r for r in _read(store, "probe", c["probe_ids"]["memorisation"], "evals"))
        subset = cfg.subset(c["repeats"])
        points.append({"record": "point", **key, "run_id": c["pretrain_id"], "n_params": info.get("n_params"),
                       "n_params_non_embedding": info.get("n_params_non_embedding"),
                       "subset_sequences": subset, "subset_share": subset / cfg.sequences,
                       "repeated_share": subset * c["repeats"] / cfg.sequences,
                       "heldout_loss": final.get("val"), "spans_loss": final.get("spans"),
                       "copy_task_loss": final.get("copy"), "copying_loss": model["second_copy_loss"],
                       "first_copy_loss": model["first_copy_loss"], "copying_gain": model["copying_gain"],
                       "max_prefix_matching": model["max_prefix_matching"], "repeated_loss": memo["loss"],
                       "uniform_prefix_matching": _uniform_score(model["block_len"])})
        layers += [{"record": "layer", **key, "layer": r["layer"], "head": r["head"],
                    "max_prefix_matching": r["max_prefix_matching"]} for r in ind if r["scope"] == "layer"]
        for r in _read(store, "pretrain", c["pretrain_id"], "metrics"):
            if "val/loss" in r and r.get("line") == budget.name:
                curves.append({"record": "curve", **key, "step": r["step"], "tokens_seen": r["tokens_seen"],
                               "heldout_loss": r["val/loss"], "copy_task_loss": r.get("copy/loss"),
                               "spans_loss": r.get("spans/loss")})
    return points, layers, curves


def _uniform_score(block_len: int) -> float:
    """Prefix-matching score of uniform causal attention: ``(H_2L − H_(L+1)) / (L − 1)``, about
    ``ln 2 / (L − 1)``."""
    L = block_len
    return sum(1.0 / k for k in range(L + 2, 2 * L + 1)) / (L - 1)


def subset_curves(cfg: RepeatedDataConfig, store, which: dict[str, list[int]]) -> list[dict[str, Any]]:
    """Loss on the repeated subset at every checkpoint of the runs of `which` (size -> repeat counts)."""
    import torch

    from overtrain.core.evaluate import evaluate_loss
    from overtrain.training import checkpoint as ckpt

    rows = []
    mc = cfg.memorisation
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else None
    for c in cells(cfg):
        if c["repeats"] not in which.get(c["size"], []):
            continue
        source = c["pretrain"].data.build()
        batches = [source.batch("repeated", i, mc.batch_size, cfg.train.seq_len)
                   for i in range(mc.eval_batches)]
        for meta in ckpt.list_checkpoints(store.run_dir("pretrain", c["pretrain_id"])):
            model, _, _ = ckpt.load_checkpoint(Path(meta["path"]))
            rows.append({"record": "subset_curve", "size": c["size"], "repeats": c["repeats"],
                         "seed": c["seed"], "step": meta["step"], "tokens_seen": meta["tokens_seen"],
                         "repeated_loss": evaluate_loss(model, batches, autocast_dtype=dtype)})
    return rows


def _grid(points: list[dict], size: str, repeats: list[int], seeds: list[int], key: str) -> np.ndarray:
    """[seed, E] matrix of `key` for one size (NaN where missing)."""
    out = np.full((len(seeds), len(repeats)), np.nan)
    for p in points:
        if p["size"] == size and p.get(key) is not None:
            out[seeds.index(p["seed"]), repeats.index(p["repeats"])] = p[key]
    return out


def _boot(values: np.ndarray, stat, cfg: RepeatedDataConfig) -> tuple[float, tuple[float, float] | None]:
    """`stat` of a [seed, ...] array and its bootstrap CI over seeds (None with one seed)."""
    from overtrain.analysis.stats import bootstrap_ci

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
    out = [check(f"Held-out loss peaks at an intermediate E ({size})",
                 "max interior seed-mean held-out loss / higher of E = 1 and E = max, − 1", value,
                 value >= cfg.min_peak and (ci is None or ci[0] > 0),
                 f"≥ {cfg.min_peak:g}" + (", CI low > 0" if ci else ""), ci,
                 f"peak at E = {reps[interior]} ({cfg.subset(reps[interior])} sequences): {m[interior]:.4f}; "
                 f"E = 1: {m[0]:.4f}; E = {reps[-1]}: {m[-1]:.4f}")]
    formed = float(np.nanmean(_grid(points, size, reps, seeds, "max_prefix_matching")[:, 0]))
    out.append(check(f"Precondition: an induction head forms without repetition ({size})",
                     "max prefix-matching score over heads at E = 1 (seed mean)", formed,
                     formed >= cfg.induction_threshold, f"≥ {cfg.induction_threshold:g}",
                     detail=f"uniform attention scores {points[0]['uniform_prefix_matching']:.3f}"))
    has_head = formed >= cfg.induction_threshold
    for key, what, sign in (("copying_loss", "copying loss (2nd copy)", 1),
                            ("max_prefix_matching", "max prefix-matching score", -1)):
        pair = _grid(points, size, reps, seeds, key)[:, [0, w]]
        m1, mw = np.nanmean(pair, axis=0)
        value, ci = _boot(pair, _relative_change, cfg)
        # past the minimum change on the claimed side, and a CI that excludes 0 on that side
        ok = sign * value >= cfg.min_change and (ci is None or (ci[0] > 0 if sign > 0 else ci[1] < 0))
        out.append(check(
            f"At the worst E, {'copying is worse' if sign > 0 else 'induction heads are weaker'} ({size})",
            f"relative change of the {what}, E = {reps[w]} vs E = 1", value, ok if has_head else None,
            f"{'≥ +' if sign > 0 else '≤ −'}{cfg.min_change:g}" + (", CI excludes 0" if ci else ""), ci,
            f"{mw:.4g} vs {m1:.4g}" + ("" if has_head else
                                       "; no induction head at E = 1 (precondition fails): not testable")))
    return out, reps[w]


def _effective(cfg: RepeatedDataConfig, points: list[dict], sizes: list[str], n_of: dict[str, int],
               worst: dict[str, int]) -> tuple[list[Claim], dict[str, Any], list[dict[str, Any]], str]:
    """Scaling law on the E = 1 runs, every (size, E)'s effective size, its claim and the headline."""
    from overtrain.analysis.effective_size import effective_size, fit_scaling_law

    base = [p for p in points if p["repeats"] == 1]
    fit = fit_scaling_law([p["n_params_non_embedding"] for p in base], [p["heldout_loss"] for p in base])
    rows = []
    for size in sizes:
        loss = np.nanmean(_grid(points, size, list(cfg.repeats), list(cfg.seeds), "heldout_loss"), axis=0)
        own = float(fit.size(loss[0]))  # the size's own E = 1 loss read through the law
        for e, value in zip(cfg.repeats, loss):
            eff = effective_size(fit, n_of[size], float(value))
            rows.append({"record": "effective_size", "size": size, "repeats": e, "n": eff.n,
                         "heldout_loss": eff.loss, "n_eff": eff.n_eff, "ratio_to_n": eff.ratio,
                         "ratio": eff.n_eff / own, "extrapolated": eff.extrapolated,
                         "subset_share": cfg.subset(e) / cfg.sequences})
    big = sizes[-1]
    row = next(r for r in rows if r["size"] == big and r["repeats"] == worst[big])
    law = f"{fit.form} law L = {fit.a:.4g}·N^-{fit.b:.3g} + {fit.c:.3g} on {fit.sizes} sizes"
    claim = check("Repetition makes a model behave like a smaller one",
                  f"N_eff(E = {worst[big]}) / N_eff(E = 1) of the largest model ({big})", row["ratio"],
                  row["ratio"] < 1 if fit.invertible else None, "< 1",
                  detail=law + (" (extrapolated)" if row["extrapolated"] else "")
                  + ("" if fit.invertible else ": loss does not fall with size, no inversion"))
    headline = ("No effective-size headline: the held-out loss of the E = 1 runs does not fall with model "
                f"size (fitted exponent b = {fit.b:.3g}).")
    if fit.invertible and row["ratio"] > 0:
        headline = (f"Repeating {row['subset_share']:.2%} of the data {worst[big]} times "
                    f"({cfg.fraction:.0%} of the training tokens) makes the {n_of[big]:,}-parameter model "
                    f"behave like one {1 / row['ratio']:.1f}x smaller than itself without repetition "
                    f"(N_eff = {row['n_eff']:,.0f} non-embedding parameters"
                    f"{', extrapolated beyond the fitted sizes' if row['extrapolated'] else ''}).")
    return [claim], {"record": "scaling_fit", **fit.row()}, rows, headline


def analyse(cfg: RepeatedDataConfig, points: list[dict], curves: list[dict]
            ) -> tuple[list[Claim], dict[str, int], dict[str, Any], list[dict[str, Any]], str]:
    """From the per-run rows: the claims, the worst E per size, the scaling-fit row, the effective-size
    rows and the headline sentence (saying why there is none without an invertible fit)."""
    n_of = {p["size"]: p["n_params_non_embedding"] for p in points}
    sizes = sorted(cfg.models, key=n_of.__getitem__)
    claims: list[Claim] = []
    worst: dict[str, int] = {}
    for size in sizes:
        rows, worst[size] = _peak_claims(cfg, points, size)
        claims += rows
    fit_row: dict[str, Any] = {"record": "scaling_fit"}
    effective: list[dict[str, Any]] = []
    headline = "No effective-size headline: it needs at least 2 model sizes."
    if len(sizes) >= 2:
        ratio = math.log2(cfg.subset(worst[sizes[-1]]) / cfg.subset(worst[sizes[0]]))
        claims.append(check("Larger models are hurt most by larger repeated subsets",
                            "log2(subset at the worst E: largest / smallest model)", ratio, ratio > 0, "> 0",
                            detail="; ".join(f"{s} ({n_of[s]:,} params): worst E = {worst[s]}, "
                                             f"{cfg.subset(worst[s])} sequences" for s in sizes)))
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
    claims.append(check("Held-out loss rises mid-training at the worst E",
                        "largest rise of the seed-mean held-out loss above its running minimum "
                        "(max over sizes)",
                        rises[top], rises[top] >= cfg.min_rise, f"≥ {cfg.min_rise:g}",
                        detail=", ".join(f"{s}: {v:.4f}" for s, v in rises.items())))
    return claims, worst, fit_row, effective, headline


def run_analysis(cfg: RepeatedDataConfig, run) -> None:
    """The ``repeated_data`` run kind: collect the children, analyse, write every row."""
    run.truncate("evals", 0)  # redone whole
    points, layers, curves = collect(cfg, run.store)
    claims, worst, fit_row, effective, headline = analyse(cfg, points, curves)
    subset = subset_curves(cfg, run.store, {size: [1, e] for size, e in worst.items()})
    rows = points + layers + curves + subset + [fit_row] + effective
    rows += [c.row() for c in claims] + [{"record": "recommendation", "text": headline}]
    for row in rows:
        run.log_eval(row)
    run.set_info(claims_passed=sum(c.verdict == "PASS" for c in claims), claims_total=len(claims),
                 headline=headline)


def _parents(cfg: RepeatedDataConfig) -> list[tuple[str, str]]:
    return [(item.kind, item.run_id) for item in plan(cfg).items if item.kind != "repeated_data"]


def _report(store) -> list:
    from overtrain.studies.repeated_data_report import report_sections

    return report_sections(store)


class _Study:
    """Repeated data (Hernandez et al. 2022): an intermediate repeat count hurts most and damages copying."""

    name = "repeated_data"
    config_cls = RepeatedDataConfig
    load_config = staticmethod(load_config)
    plan = staticmethod(plan)
    run = staticmethod(run)
    report = staticmethod(_report)


STUDIES.register("repeated_data", _Study(), help=_Study.__doc__)
RUN_KINDS.register("repeated_data", RunKind(
    name="repeated_data", config_cls=RepeatedDataConfig, run=run_analysis, parents=_parents,
    help="the repeated-data study's analysis: peak over E, copying/induction damage, effective size, claims"))
