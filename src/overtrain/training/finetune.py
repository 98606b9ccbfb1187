"""Fine-tuning one pre-trained checkpoint on a task, measuring what it learns and what it forgets.

A run reads ``ckpt/<checkpoint>`` of a finished pre-training run (its *parent*), or a local Hugging Face
checkpoint directory (`FinetuneConfig.model_dir`: the user's own checkpoint series), trains it on the
task with a fine-tuning method (``full``, ``lora``, ...), and evaluates before and after:

- ``task/loss``: in-distribution loss on the task's ``val`` split (nats per token);
- ``pretrain/loss``: loss on the parent's pre-training distribution (its ``val`` split, the very batches
  the parent evaluated), the paper's "base capability" proxy; ``forgetting`` = after − before. A local
  directory has no pre-training config: its ``pretrain/loss`` is on `FinetuneConfig.reference_data`
  (default: the packaged reference text of ``overtrain audit``, in the checkpoint's own tokenizer);
- ``ood/loss`` (with `ood_data`): loss on a language seen neither in pre-training nor in fine-tuning, a
  stand-in for the generalist benchmarks Springer et al. 2025 score after fine-tuning;
- ``task/select_loss`` (with `selection_batches`): the task loss on further ``val`` batches, disjoint from
  the reported ones, for choosing among runs (a tuned learning rate, a convergence stop) without
  selecting on the loss that is reported.

With ``train.converge`` the run stops early once the selection loss has stopped improving (a plateau):
fine-tuning "to convergence" rather than for a fixed number of steps.

Fine-tuning runs are short, so a restarted run starts again from the checkpoint (its records are
truncated first) rather than resuming mid-way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from overtrain import distributed
from overtrain.config import BaseConfig, InIdWhenSet, NotInId, Registered
from overtrain.core.evaluate import evaluate_loss
from overtrain.core.weights import check_model_dir, fingerprint
from overtrain.data.corpus import TextConfig
from overtrain.errors import CheckpointError, DataError, RunFailed, UserError
from overtrain.models.presets import count_params
from overtrain.registry import DATASETS, FINETUNE_METHODS
from overtrain.seed import seed_everything
from overtrain.training import checkpoint as ckpt
from overtrain.training.loop import build_optimizer, divergence, train_segment
from overtrain.training.parent import ParentCheckpoint, resolve_parent
from overtrain.training.pretrain import resolve_device
from overtrain.training.schedules import LR, cosine, linear_decay, warmup_stable


class ConvergeConfig(BaseConfig):
    """Stop fine-tuning at a plateau of the selection loss (``task/select_loss``)."""

    every: int = Field(50, gt=0)
    """Steps between checks."""

    patience: int = Field(2, gt=0)
    """Stop after this many checks in a row without an improvement of at least `tol`."""

    tol: float = Field(0.002, ge=0)
    """Relative improvement of the best selection loss that counts (0.002 = 0.2%)."""


class FinetuneTrainConfig(BaseConfig):
    """Fine-tuning optimisation."""

    steps: int = Field(100, gt=0)
    """Optimizer steps."""

    batch_size: int = Field(64, gt=0)
    """Sequences per step."""

    seq_len: int | None = Field(None, ge=2)
    """Tokens per sequence (default: the parent's pre-training context)."""

    lr: float = Field(1e-3, gt=0)
    """Peak learning rate."""

    schedule: Literal["constant", "cosine", "linear"] = "constant"
    """After warmup: hold, cosine to zero, or linear to zero."""

    warmup_steps: int = Field(0, ge=0)
    """Linear warmup steps."""

    weight_decay: float = Field(0.0, ge=0)
    """AdamW decoupled weight decay on matrices."""

    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW (beta1, beta2)."""

    grad_clip: float = Field(1.0, ge=0)
    """Global gradient-norm clip (0 disables)."""

    log_every: int = Field(10, gt=0)
    """Steps between training-loss records."""

    eval_every: int | None = Field(None, gt=0)
    """Also evaluate every this many steps (default: before and after only)."""

    converge: ConvergeConfig | None = InIdWhenSet()
    """Train until the selection loss plateaus (`ConvergeConfig`), `steps` being the most allowed; needs
    ``selection_batches`` on the run."""


LOCAL_SEQ_LEN = 128
"""Tokens per sequence for a local directory without ``train.seq_len`` (capped by its context), as audit."""

LOCAL_EVAL_BATCHES = 4
"""Validation batches per evaluation for a local directory without ``eval_batches``."""


class FinetuneConfig(ParentCheckpoint):
    """One checkpoint fine-tuned on one task with one method and learning rate (``overtrain finetune``)."""

    schema_version: int = 1
    """Config schema version."""

    parent: str | None = None
    """The pre-training run: ``<run_id>`` or ``pretrain/<run_id>`` (12 hex digits); or give `model_dir`."""

    checkpoint: str | None = None
    """Checkpoint name in the parent's ``ckpt/`` (``budget_<tokens>`` or ``step_<N>``); with `parent`."""

    model_dir: Path | None = InIdWhenSet()
    """A local Hugging Face checkpoint directory (``config.json`` + safetensors + tokenizer) to fine-tune
    instead of a stored run's checkpoint; its weight fingerprint enters the run id."""

    model_fingerprint: str | None = InIdWhenSet()
    """Fingerprint of `model_dir`'s weight files (file names, sizes, modification times), filled in when
    the config is built: a checkpoint rewritten in place is fine-tuned again."""

    reference_data: Registered(DATASETS) | None = InIdWhenSet()
    """With `model_dir`: the data whose loss stands for the pre-training distribution (``pretrain/loss``,
    forgetting); default: the packaged reference text, tokenised with the checkpoint's tokenizer."""

    data: Registered(DATASETS, "hmm")
    """The task to fine-tune on (e.g. a second HMM with the parent's vocabulary and another seed)."""

    method: Registered(FINETUNE_METHODS, "full") = Field(
        default_factory=lambda: FINETUNE_METHODS.get("full")()
    )
    """Fine-tuning method by name (``overtrain ls methods``) with its settings."""

    train: FinetuneTrainConfig = FinetuneTrainConfig()
    """Optimisation."""

    seed: int = 0
    """Seed of the task's data order and of any adapter initialisation."""

    eval_batches: int | None = Field(None, gt=0)
    """Validation batches per evaluation (default: the parent's setting)."""

    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute precision (bf16 autocast)."""

    device: str = NotInId("auto")
    """``auto`` (cuda, else mps, else cpu), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""

    ood_data: Registered(DATASETS) | None = InIdWhenSet()
    """A held-out capability probe: a language in neither the pre-training nor the task data (e.g. a third
    HMM with the parent's vocabulary), its loss measured before and after fine-tuning (nats per token)."""

    selection_batches: int | None = InIdWhenSet(gt=0)
    """Task ``val`` batches, after the reported ones, whose loss (``task/select_loss``) is for selection
    only: choosing a tuned learning rate, stopping at convergence."""

    @model_validator(mode="before")
    @classmethod
    def _fingerprint_model_dir(cls, data: Any) -> Any:
        # here, not in the CLI, so that a sweep file or a study plan naming a directory gets it too
        if (
            isinstance(data, dict)
            and data.get("model_dir") is not None
            and data.get("model_fingerprint") is None
        ):
            path = Path(data["model_dir"])
            try:
                check_model_dir(path)
            except CheckpointError as exc:
                raise ValueError(str(exc)) from None
            data = {**data, "model_dir": path.resolve(), "model_fingerprint": fingerprint(path)}
        return data

    @model_validator(mode="after")
    def _one_parent(self) -> FinetuneConfig:
        if (self.parent is None) == (self.model_dir is None):
            raise ValueError("give exactly one of parent (+ checkpoint), a pre-training run, and model_dir")
        if self.parent is not None and self.checkpoint is None:
            raise ValueError("parent needs checkpoint: a checkpoint name in the parent's ckpt/")
        if self.model_dir is not None and self.checkpoint is not None:
            raise ValueError("checkpoint names a checkpoint of a parent run; a model_dir is a checkpoint")
        if self.model_dir is None and self.reference_data is not None:
            raise ValueError("reference_data is for a model_dir; a parent run's pre-training data is used")
        return self

    @model_validator(mode="after")
    def _converge_needs_a_selection_split(self) -> FinetuneConfig:
        if self.train.converge is not None and self.selection_batches is None:
            raise ValueError("train.converge needs selection_batches (the loss it stops on)")
        return self


def lr_schedule(tc: FinetuneTrainConfig) -> LR:
    if tc.schedule == "cosine":
        return cosine(tc.lr, tc.warmup_steps, tc.steps, 0.0)
    base = warmup_stable(tc.lr, tc.warmup_steps)
    if tc.schedule == "linear":
        return linear_decay(base, tc.warmup_steps, max(1, tc.steps - tc.warmup_steps), 0.0)
    return base


def check_same_tokens(task_tok, parent_tok, field: str = "data") -> None:
    """Refuse a task whose token ids mean something else to the parent (e.g. a BPE trained on other text).

    The task's vocabulary must be a subset of the parent's with the same ids: a second HMM with fewer
    symbols passes, a byte-level text task passes for a byte-level parent, two different BPEs do not.
    """
    task_vocab, parent_vocab = task_tok.get_vocab(), parent_tok.get_vocab()
    clashes = [t for t, i in task_vocab.items() if parent_vocab.get(t) != i]
    if clashes:
        raise DataError(
            f"{field}: the task's tokenizer does not match the parent's ({len(clashes)} of {len(task_vocab)} "
            f"tokens differ, e.g. {clashes[0]!r}); fine-tune on data tokenised like the pre-training data"
        )


def _build_task(data, parent_tok, model, field: str):
    """The dataset of config field `field`, refused unless it is tokenised like the parent's data."""
    source = data.build(parent_tok) if getattr(data, "tokenizer", None) == "parent" else data.build()
    if source.vocab_size > model.config.vocab_size:
        raise DataError(
            f"{field}: vocab_size {source.vocab_size} exceeds the model's {model.config.vocab_size}"
        )
    check_same_tokens(source.tokenizer(), parent_tok, field)
    return source


class _Plateau:
    """Counts checks since the best selection loss last improved by a relative `tol`."""

    def __init__(self, cc: ConvergeConfig, start: float) -> None:
        self.cc, self.best, self.stale = cc, start, 0

    def update(self, loss: float) -> bool:
        """Record a check's loss; True once `patience` checks in a row have not improved."""
        if loss < self.best * (1 - self.cc.tol):
            self.best, self.stale = loss, 0
        else:
            self.stale += 1
        return self.stale >= self.cc.patience


def _optional(before: dict, after: dict, step: int, plateau: _Plateau | None) -> dict:
    """The eval row's fields of the optional measurements: the held-out capability, the selection loss,
    the steps a converging run took."""
    out = {}
    if "ood/loss" in after:
        out.update(base_ood_loss=before["ood/loss"], ood_loss=after["ood/loss"])
    if "task/select_loss" in after:
        out["select_loss"] = after["task/select_loss"]
    if plateau is not None:
        out.update(steps_run=step, converged=plateau.stale >= plateau.cc.patience)
    return out


def _local_reference(cfg: FinetuneConfig, tokenizer, model):
    """The `pretrain/loss` source of a local directory and its tokenizer (which every task must share)."""
    if tokenizer is None:
        raise CheckpointError(f"no tokenizer in {cfg.model_dir}: a fine-tuning task is tokenised with it")
    if cfg.reference_data is not None:
        return _build_task(cfg.reference_data, tokenizer, model, "reference_data"), tokenizer
    text = Path(str(resources.files("overtrain.data").joinpath("fixtures/shakespeare_excerpt.txt")))
    source = TextConfig(train=[text], val=[text], tokenizer="parent").build(tokenizer)
    return source, tokenizer


@dataclass
class Setting:
    """What every run of one fine-tuning setting shares: the parent's config, the task, the evaluation sets.

    Runs that differ only in parent run, checkpoint, learning rate and seed (a fine-tuning grid over a
    model family, `overtrain.training.finetune_group`) share one `Setting`.
    """

    parent: Any
    parent_tok: Any
    task: Any
    seq_len: int
    sets: dict[str, list[torch.Tensor]]
    device: torch.device
    autocast: torch.dtype | None

    @classmethod
    def build(cls, cfg: FinetuneConfig, parent, model, parent_tok) -> Setting:
        """`parent` is the parent run's `PretrainConfig`, or None for a local directory (`model_dir`)."""
        device = resolve_device(cfg.device)
        if parent is None:
            pretrain_source, parent_tok = _local_reference(cfg, parent_tok, model)
            context = getattr(model.config, "max_position_embeddings", None) or LOCAL_SEQ_LEN
            pre_seq_len = min(LOCAL_SEQ_LEN, context)
            n_eval, eval_bs = cfg.eval_batches or LOCAL_EVAL_BATCHES, cfg.train.batch_size
        else:
            pretrain_source = parent.data.build()
            parent_tok = parent_tok or pretrain_source.tokenizer()
            pre_seq_len = parent.train.seq_len
            n_eval = cfg.eval_batches or parent.eval.batches
            eval_bs = parent.eval.batch_size or parent.train.batch_size
        task = _build_task(cfg.data, parent_tok, model, "data")
        seq_len = cfg.train.seq_len or pre_seq_len
        task_val = [task.batch("val", i, eval_bs, seq_len) for i in range(n_eval)]
        pre_val = [pretrain_source.batch("val", i, eval_bs, pre_seq_len) for i in range(n_eval)]
        sets = {"task/loss": task_val, "pretrain/loss": pre_val}
        if cfg.selection_batches:  # later val batches than the reported ones: disjoint from them
            sets["task/select_loss"] = [
                task.batch("val", n_eval + i, eval_bs, seq_len) for i in range(cfg.selection_batches)
            ]
        if cfg.ood_data is not None:
            ood = _build_task(cfg.ood_data, parent_tok, model, "ood_data")
            sets["ood/loss"] = [ood.batch("val", i, eval_bs, seq_len) for i in range(n_eval)]
        autocast = torch.bfloat16 if cfg.dtype == "bfloat16" else None
        return cls(parent, parent_tok, task, seq_len, sets, device, autocast)

    def evaluate(self, model) -> dict[str, float]:
        """Every evaluation set's mean next-token loss (nats per token) of `model`."""
        return {
            k: evaluate_loss(model, v, autocast_dtype=self.autocast, device=self.device)
            for k, v in self.sets.items()
        }

    def batch_at(self, cfg: FinetuneConfig) -> Callable[[int], torch.Tensor]:
        """Step -> the run's training batch: each seed reads its own stretch of the task's training stream."""
        offset, tc = cfg.seed << 32, cfg.train

        def batch_at(step: int) -> torch.Tensor:
            return self.task.batch("train", offset + step, tc.batch_size, self.seq_len)

        return batch_at


def schedule_events(tc: FinetuneTrainConfig) -> tuple[list[int], set[int]]:
    """The steps where a segment ends (logging, evaluation, the last step) and those that evaluate."""
    events = set(range(tc.log_every, tc.steps + 1, tc.log_every)) | {tc.steps}
    evals = set(range(tc.eval_every, tc.steps + 1, tc.eval_every)) if tc.eval_every else set()
    if tc.converge:
        evals |= set(range(tc.converge.every, tc.steps + 1, tc.converge.every))
    return sorted(events | evals), evals


def final_record(
    cfg: FinetuneConfig,
    meta: dict,
    sizes: tuple[int, int],
    before: dict,
    after: dict,
    step: int,
    plateau: _Plateau | None = None,
) -> dict:
    """The run's evals.jsonl row: what it fine-tuned, the losses before and after, the forgetting."""
    n_params, trainable = sizes
    return {
        "parent": cfg.parent_id if cfg.parent else str(cfg.model_dir),
        "checkpoint": cfg.checkpoint or cfg.model_dir.name,
        "method": cfg.method.name,
        "lr": cfg.train.lr,
        "steps": cfg.train.steps,
        "seed": cfg.seed,
        "tokens_seen": meta.get("tokens_seen"),
        "budget": meta.get("budget"),
        "tokens_per_param": meta.get("tokens_per_param"),
        "n_params": n_params,
        "trainable_params": trainable,
        "base_task_loss": before["task/loss"],
        "task_loss": after["task/loss"],
        "base_pretrain_loss": before["pretrain/loss"],
        "pretrain_loss": after["pretrain/loss"],
        "forgetting": after["pretrain/loss"] - before["pretrain/loss"],
        **_optional(before, after, step, plateau),
    }


def train_record(step: int, tokens_per_step: int, stats) -> dict:
    """A metrics row at the end of a segment."""
    return {
        "step": step,
        "tokens_seen": step * tokens_per_step,
        "train/loss": stats.mean_loss,
        "train/lr": stats.lr,
        "train/grad_norm": stats.grad_norm,
    }


def load_parent(cfg: FinetuneConfig, store, device) -> tuple[Any, Any, dict, Any]:
    """``(model, tokenizer or None, meta, parent PretrainConfig or None)`` of the checkpoint to fine-tune."""
    if cfg.model_dir is None:
        parent_dir, parent = resolve_parent(cfg, store)
        return *ckpt.load_checkpoint(parent_dir / "ckpt" / cfg.checkpoint, device=str(device)), parent
    if not cfg.model_dir.is_dir() or fingerprint(cfg.model_dir) != cfg.model_fingerprint:
        # the id promises these weights: a directory changed since the config was made is another run
        raise UserError(
            f"{cfg.model_dir} changed since this run's config was made (weight fingerprint); run the "
            "command again to fine-tune it as it is now"
        )
    return *ckpt.load_checkpoint(cfg.model_dir, device=str(device)), None


def run_finetune(cfg: FinetuneConfig, run) -> None:
    """Execute one fine-tuning run inside an open run directory (see module docstring)."""
    started = time.perf_counter()
    for name in ("metrics", "evals"):
        run.truncate(name, 0)  # a restarted run begins again from the checkpoint
    device = resolve_device(cfg.device)
    model, parent_tok, meta, parent = load_parent(cfg, run.store, device)
    setting = Setting.build(cfg, parent, model, parent_tok)
    before = setting.evaluate(model)
    run.log_metrics({"step": 0, "tokens_seen": 0, **before})
    finetune_member(cfg, run, setting, model, meta, before, started)


def finetune_member(
    cfg: FinetuneConfig, run, setting: Setting, model, meta: dict, before: dict, started: float
) -> None:
    """Train `model` (the parent checkpoint, evaluated as `before`) and log the run's records."""
    n_params = count_params(model)
    seed_everything(cfg.seed)
    model = cfg.method.apply(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tc = cfg.train
    optimizer = build_optimizer(model, tc.lr, tc.weight_decay, tc.betas, 1e-8)
    rule = cfg.method.step_rule(model, optimizer, cfg.seed)
    train_model = distributed.wrap(model)  # DDP under a multi-process launch; the rule keeps the bare model
    lr = lr_schedule(tc)
    batch_at = setting.batch_at(cfg)
    tokens_per_step = tc.batch_size * setting.seq_len
    events, evals = schedule_events(tc)
    step, after = 0, {}
    plateau = _Plateau(tc.converge, before.get("task/select_loss")) if tc.converge else None
    for event in events:
        stats = train_segment(
            train_model,
            optimizer,
            batch_at,
            lr,
            step,
            event,
            grad_clip=tc.grad_clip or None,
            autocast_dtype=setting.autocast,
            device=setting.device,
            step_rule=rule,
        )
        reason = divergence(stats, step, event, "fine-tuning loss")
        if reason is not None:  # stop now: the run is marked failed with the reason and the step
            bad = stats.first_nonfinite_step
            run.set_info(diverged_at_step=event if bad is None else bad)
            raise RunFailed(reason)
        step = event
        record = {**train_record(step, tokens_per_step, stats), **rule.stats()}
        converged = False
        if step == tc.steps or step in evals:
            after = setting.evaluate(model)  # the last one is the run's final evaluation
            record.update(after)
            converged = plateau is not None and plateau.update(after["task/select_loss"])
        run.log_metrics(record)
        run.progress(step, tc.steps)
        if converged:
            break
    run.log_eval(final_record(cfg, meta, (n_params, trainable), before, after, step, plateau))
    run.set_info(n_params=n_params, trainable_params=trainable, wall_s=time.perf_counter() - started)
