"""The ``audit`` run kind: registered probes on a list of the user's own Hugging Face checkpoints.

``overtrain audit DIR [DIR ...]`` loads each directory (``config.json`` + safetensors weights, e.g. the
revisions of pythia-70m a user saved with ``save_pretrained``), runs the probes (default: reference loss,
noise sensitivity, sharpness, induction) on one reference text tokenised by the checkpoints' own
tokenizer, and writes one ``evals.jsonl`` summary row per (checkpoint, probe row) with ``model_dir``,
``order`` and, when known, ``tokens``/``step``.

At the end of the run, with at least `MIN_FOR_U` checkpoints whose training tokens are known (else, as
many whose steps are known: the axis is then steps), it looks for the U of the init-scale perturbed loss
at the largest γ over the checkpoints in training order: T* =
argmin of the mean over noise draws, with a percentile-bootstrap CI resampling the draws (each draw uses
the same directions at every checkpoint; `overtrain.analysis.inflection.inflection_point`). The result
is one more ``evals.jsonl`` row, ``record: "inflection"`` (`inflection_row`), which the report reads.

Training tokens of a checkpoint come from, in order: our ``meta.json`` (``tokens_seen``), a directory
name with ``tokens<N>`` (OLMo revisions, ``stage1-step1000-tokens4B``) or ``budget_<N>``; else a step
from ``step<N>`` / ``step_<N>`` (Pythia revisions) times `AuditConfig.tokens_per_step` when given; without
it the step orders them and the U analysis runs on steps. Each row's ``tokens_from`` says which.

The run id hashes the config, which holds every directory's weight fingerprint (file names, sizes and
modification times), so a checkpoint overwritten in place is audited again.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from overtrain.analysis.inflection import inflection_point
from overtrain.config import BaseConfig, InIdWhenSet, NotInId
from overtrain.core.atomic import atomic_write_json
from overtrain.core.weights import check_model_dir, fingerprint
from overtrain.data.corpus import TextConfig
from overtrain.data.tokenized import tokenizer_digest
from overtrain.errors import CheckpointError, DataError, UserError
from overtrain.probes import lm_harness
from overtrain.registry import PROBES, RUN_KINDS
from overtrain.runs.kinds import RunKind
from overtrain.training import checkpoint as ckpt
from overtrain.training.pretrain import resolve_device

MIN_FOR_U = 4
"""Checkpoints with token counts needed before the run looks for a U."""

U_MIN_RISE = 0.005
"""A U needs the last checkpoint's perturbed loss more than this fraction above the minimum (`Inflection.is_u`)."""

DEFAULT_PROBES = ("reference_loss", "noise", "sharpness", "induction")

AUDIT_SETTINGS: dict[str, dict[str, Any]] = {
    "reference_loss": {"eval_batches": 4, "batch_size": 16},
    "noise": {"gammas": [1.0, 2.0, 4.0], "law": "both", "draws": 4, "eval_batches": 2, "batch_size": 16},
    # Lanczos keeps `iterations` float64 vectors of every selected parameter (10 x 70M x 8 B = 5.6 GB for
    # Pythia-70m): narrow θ_S with settings.sharpness.include for large models
    "sharpness": {"eval_batches": 1, "batch_size": 8, "top_k": 1, "iterations": 10, "hutchinson_samples": 8},
    "induction": {"sequences": 16, "batch_size": 8},
}
"""Audit defaults per probe: small evaluations, so a CPU audits a 70M-parameter checkpoint in minutes."""

_SCALE = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


class AuditConfig(BaseConfig):
    """Probes on a list of local Hugging Face checkpoints (``overtrain audit``)."""

    schema_version: int = 1
    """Config schema version."""

    models: list[Path] = Field(min_length=1)
    """Checkpoint directories (``config.json`` + ``*.safetensors``)."""

    fingerprints: dict[str, str] = {}
    """Weight fingerprint per directory (filled in by `fingerprint`; part of the run id)."""

    text: Path | None = None
    """Reference text (UTF-8); default: the packaged Shakespeare excerpt."""

    probes: list[str] = list(DEFAULT_PROBES)
    """Registered probes to run (``overtrain ls probes``); may be empty when `lm_eval_tasks` are given."""

    lm_eval_tasks: list[Path] = []
    """lm-evaluation-harness task YAMLs (files, or directories of them) over local data files, scored on
    every checkpoint (`overtrain.probes.lm_harness`; needs ``overtrain[eval]``)."""

    settings: dict[str, dict[str, Any]] = {}
    """Per-probe settings over `AUDIT_SETTINGS`, e.g. ``{noise: {draws: 8}}``; ``lm_eval`` takes
    `overtrain.probes.lm_harness.LmEvalConfig` fields (``{lm_eval: {limit: 100}}``)."""

    seq_len: int = Field(128, ge=4)
    """Tokens per reference sequence (capped by the model's context)."""

    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute precision of the probes (bf16 autocast; curvature probes run in float32)."""

    device: str = NotInId("auto")
    """``auto`` (cuda, else mps, else cpu), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""

    tokens_per_step: int | None = InIdWhenSet(gt=0)
    """Training tokens per optimizer step, for checkpoints known only by a step (``step<N>`` directories
    without meta.json): tokens = step × this. Pythia's: 2,097,152 (1024 sequences × 2048 tokens)."""

    tokenizer: Path | None = InIdWhenSet()
    """A tokenizer directory (``AutoTokenizer.from_pretrained``) used for every checkpoint instead of
    their own: for checkpoints saved without one."""

    @field_validator("probes")
    @classmethod
    def _probes(cls, value: list[str]) -> list[str]:
        for name in value:
            PROBES.get(name)  # unknown names fail with a did-you-mean
        if len(set(value)) != len(value):
            raise ValueError("give each probe once")
        return value

    @model_validator(mode="after")
    def _something_to_do(self) -> AuditConfig:
        if not self.probes and not self.lm_eval_tasks:
            raise ValueError("give at least one probe or lm-eval task")
        for name in self.settings:
            if name != "lm_eval" and name not in self.probes:
                raise ValueError(f"settings for {name!r}, which is not among the probes {self.probes}")
        lm_harness.LmEvalConfig.model_validate(self.settings.get("lm_eval", {}))
        return self

    def lm_eval_config(self) -> lm_harness.LmEvalConfig:
        return lm_harness.LmEvalConfig.model_validate(self.settings.get("lm_eval", {}))

    def probe_settings(self, name: str) -> dict[str, Any]:
        return {**AUDIT_SETTINGS.get(name, {}), **self.settings.get(name, {})}


def _file_print(files: list[Path]) -> str:
    return ";".join(f"{f}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def with_fingerprints(cfg: AuditConfig) -> AuditConfig:
    """`cfg` with every directory checked and fingerprinted, and every lm-eval task read and checked
    to be local (one-line errors for bad inputs); task files and their data enter the fingerprints."""
    for path in cfg.models:
        check_model_dir(path)
    if cfg.text is not None and not cfg.text.is_file():
        raise DataError(f"reference text not found: {cfg.text}")
    update: dict[str, Any] = {}
    if cfg.tokenizer is not None:
        if not cfg.tokenizer.is_dir():
            raise DataError(f"tokenizer directory not found: {cfg.tokenizer}")
        update["tokenizer"] = cfg.tokenizer.resolve()
    models = [p.resolve() for p in cfg.models]
    prints = {str(p): fingerprint(p) for p in models}
    if cfg.tokenizer is not None:  # a tokenizer changed in place is a new audit, like a weight file
        files = sorted(f for f in update["tokenizer"].iterdir() if f.is_file())
        prints[str(update["tokenizer"])] = _file_print(files)
    tasks = lm_harness.task_files(cfg.lm_eval_tasks) if cfg.lm_eval_tasks else []
    for file in tasks:
        prints[str(file)] = _file_print([file, *lm_harness.data_files_of(lm_harness.load_task(file))])
    return cfg.model_copy(update={**update, "models": models, "lm_eval_tasks": tasks, "fingerprints": prints})


def load_tokenizer(path: Path):
    """The tokenizer saved in directory `path` (local files only); a bad one is a one-line error."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise DataError(f"cannot load a tokenizer from {path}: {' '.join(str(exc).split())}") from None


def training_position(path: Path, meta: dict[str, Any], tokens_per_step: int | None = None) -> dict[str, Any]:
    """``{"tokens": ..., "step": ..., "tokens_from": ...}`` of a checkpoint from its meta.json or its
    directory name; ``tokens_from`` is ``meta.json``, ``name``, ``step × N`` or None (tokens unknown)."""
    tokens, step = meta.get("tokens_seen"), meta.get("step")
    source = "meta.json" if tokens is not None else None
    name = path.name
    if tokens is None and (m := re.search(r"tokens[_-]?(\d+(?:\.\d+)?)([kKMBGT]?)", name)):
        tokens, source = int(float(m.group(1)) * _SCALE[m.group(2)]), "name"
    if tokens is None and (m := re.search(r"budget_(\d+)", name)):
        tokens, source = int(m.group(1)), "name"
    if step is None and (m := re.search(r"step[_-]?(\d+)", name)):
        step = int(m.group(1))
    if tokens is None and step is not None and tokens_per_step:
        tokens, source = step * tokens_per_step, f"step × {tokens_per_step}"
    return {"tokens": tokens, "step": step, "tokens_from": source}


def _reference_source(cfg: AuditConfig, tokenizer):
    """The reference text tokenised with the checkpoints' tokenizer; both splits are the whole text."""
    text = cfg.text or Path(
        str(resources.files("overtrain.data").joinpath("fixtures/shakespeare_excerpt.txt"))
    )
    try:
        return TextConfig(train=[text], val=[text], tokenizer="parent").build(tokenizer)
    except UserError:
        raise
    except Exception as exc:  # e.g. a word-level vocabulary without an unknown token meets English text
        what = "the reference text" if cfg.text else "the default reference text (English)"
        message = " ".join(str(exc).split())
        raise DataError(
            f"the checkpoints' tokenizer cannot encode {what}: {message}; give a text in its vocabulary "
            "with --text"
        ) from None


def training_order(checkpoint: dict[str, Any]) -> tuple:
    """Sort key of a checkpoint (``tokens``, ``step``, ``order``): by tokens, else step, else the order given."""
    c = checkpoint
    return c["tokens"] is None, c["tokens"] or 0, c["step"] is None, c["step"] or 0, c["order"]


def inflection_row(
    checkpoints: Sequence[dict[str, Any]], noise_rows: Sequence[dict[str, Any]]
) -> dict[str, Any] | None:
    """The U of the init-scale perturbed loss at the largest γ over the checkpoints with token counts, or
    (fewer than `MIN_FOR_U` of those) with steps.

    Args:
        checkpoints: one dict per checkpoint with ``model_dir``, ``tokens``, ``step``, ``order``.
        noise_rows: the noise probe's ``probes.jsonl`` rows (``law``, ``gamma``, ``draw``, ``loss`` in
            nats/token, ``model_dir``).

    Returns:
        The ``evals`` row ``{"record": "inflection", ...}``: ``axis`` (``tokens`` or ``steps``), ``t_star``,
        ``ci_low``, ``ci_high`` (on that axis; CI over noise draws at ``level``), ``rise`` (final over minimum perturbed loss, minus 1)
        with its CI, ``interior``, ``is_u`` (interior and ``rise > min_rise``), ``min_rise``, ``gamma``,
        ``law``, ``checkpoints`` and ``draws``; None with fewer than `MIN_FOR_U` checkpoints with token
        counts or steps, without init-scale noise draws, or when two checkpoints have the same position.
    """
    ordered = sorted(checkpoints, key=training_order)
    axis, key = "tokens", "tokens"
    known = [c for c in ordered if c["tokens"]]
    if len(known) < MIN_FOR_U:  # e.g. Pythia's step<N> dirs without --tokens-per-step: T* in steps
        axis, key = "steps", "step"
        known = [c for c in ordered if c["step"]]  # positive: inflection_point needs a log axis
    draws = [r for r in noise_rows if r.get("law") == "init_scale"]
    if len(known) < MIN_FOR_U or not draws:
        return None
    tokens = np.array([c[key] for c in known], dtype=float)
    if not np.all(np.diff(tokens) > 0):
        return None
    gamma = max(d["gamma"] for d in draws)
    n_draws = 1 + max(d["draw"] for d in draws)
    curves = np.full((n_draws, len(known)), np.nan)
    col = {c["model_dir"]: j for j, c in enumerate(known)}
    for d in draws:
        if d["gamma"] == gamma and d["model_dir"] in col:
            curves[d["draw"], col[d["model_dir"]]] = d["loss"]
    inf = inflection_point(tokens, curves)
    return {
        "record": "inflection",
        "axis": axis,
        "law": "init_scale",
        "gamma": gamma,
        "t_star": inf.t_star,
        "ci_low": inf.ci_low,
        "ci_high": inf.ci_high,
        "level": inf.level,
        "rise": inf.rise,
        "rise_ci_low": inf.rise_ci_low,
        "rise_ci_high": inf.rise_ci_high,
        "interior": inf.interior,
        "is_u": inf.is_u(U_MIN_RISE),
        "min_rise": U_MIN_RISE,
        "checkpoints": len(known),
        "draws": n_draws,
    }


def run_audit(cfg: AuditConfig, run) -> None:
    started = time.perf_counter()
    for name in ("probes", "evals"):
        run.truncate(name, 0)  # an audit is redone whole on a restart
    device = resolve_device(cfg.device)
    autocast = torch.bfloat16 if cfg.dtype == "bfloat16" else None
    digest, source = None, None
    tasks = []
    checkpoints: list[dict[str, Any]] = []
    noise_rows: list[dict[str, Any]] = []
    if cfg.lm_eval_tasks:
        tasks = [
            lm_harness.load_task(f, run.dir / "hf_datasets") for f in lm_harness.task_files(cfg.lm_eval_tasks)
        ]
    shared = load_tokenizer(cfg.tokenizer) if cfg.tokenizer is not None else None
    for order, path in enumerate(cfg.models):
        model, tokenizer, meta = ckpt.load_checkpoint(path, device=str(device))
        tokenizer = shared or tokenizer
        if tokenizer is None:
            raise CheckpointError(
                f"no tokenizer in {path}: the audit tokenises its reference text with it (give one with "
                "--tokenizer DIR)"
            )
        if digest is None:
            digest, source = tokenizer_digest(tokenizer), _reference_source(cfg, tokenizer)
        elif tokenizer_digest(tokenizer) != digest:
            raise CheckpointError(
                f"{path} has another tokenizer than {cfg.models[0]}: checkpoints must share one"
            )
        if source.vocab_size > model.config.vocab_size:
            raise CheckpointError(
                f"{path}: its tokenizer has {source.vocab_size} ids, the model only {model.config.vocab_size}"
            )
        context = getattr(model.config, "max_position_embeddings", None) or cfg.seq_len
        seq_len = min(cfg.seq_len, context)
        extra = {
            "model_dir": str(path),
            "order": order,
            **training_position(path, meta, cfg.tokens_per_step),
            "n_params": sum(p.numel() for p in model.parameters()),
        }
        checkpoints.append(extra)
        for name in cfg.probes:
            entry = PROBES.get(name)
            probe = entry(entry.config_cls.model_validate(cfg.probe_settings(name)))
            # curvature in bf16 is rounding noise: such probes declare it and run in the weights' dtype
            dtype = None if getattr(entry, "float32_only", False) else autocast
            result = probe.run(model, probe.batches(source, seq_len), init_state=None, autocast_dtype=dtype)
            for row in result.rows(**extra):
                run.log_probe(row)
                if row.get("probe") == "noise":
                    noise_rows.append(row)
            for row in result.summary_rows(**extra):
                run.log_eval(row)
        if tasks:
            rows, results = lm_harness.evaluate_tasks(model, tokenizer, tasks, cfg.lm_eval_config())
            for row in rows:
                run.log_eval({"probe": "lm_eval", **row, **extra})
            atomic_write_json(run.dir / "lm_eval" / f"{order:03d}-{path.name}.json", results)
        run.progress(order + 1, len(cfg.models))
        del model
    row = inflection_row(checkpoints, noise_rows)
    if row is not None:
        run.log_eval(row)
    run.set_info(wall_s=time.perf_counter() - started, tokenizer=digest)


RUN_KINDS.register(
    "audit",
    RunKind(
        name="audit",
        config_cls=AuditConfig,
        run=run_audit,
        help="run probes (loss, sensitivity, sharpness, induction) on local Hugging Face checkpoints",
    ),
)
