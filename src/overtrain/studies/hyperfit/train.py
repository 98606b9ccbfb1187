"""The ``hyperfit_train`` run: hyperfitting one language model (Carlsson et al. 2025; docs/hyperfit.md): train
on a few sequences until the training loss is near zero, evaluating before, during and after.

A run takes a base model — a checkpoint of a pre-training run in the store, or a local Hugging Face
checkpoint directory — picks `sequences` non-overlapping windows of `seq_len` tokens from the training split
of its data (nested: the first m windows of a larger set are the set of m), and trains every parameter with
Adam at a constant learning rate, shuffling the set every epoch. At epoch 0 (the base model), every
`eval_every` epochs and at the end it measures (`overtrain.probes.generation`). Training lasts `epochs`
epochs, or — loss-matched, `until_loss` — until the mean training loss of an epoch is at most the target
(capped at `max_steps`), so hyperfit sets of different sizes end at the same near-zero loss whatever the
number of steps it takes. Measured:

- ``hyperfit/loss``: mean loss on the hyperfit set (eval mode); ``train/loss``: mean training loss of the
  steps since the last evaluation;
- ``val/loss``, ``val/ppl``, ``val/entropy``, ``val/top1`` on validation windows;
- greedy continuations of the held-out prompts: ``gen/ttr``, ``gen/distinct_<n>``, ``gen/self_bleu``,
  ``gen/longest_copy``, ``gen/overlap`` (copies of the hyperfit set);
- at the end also greedy with citation blocking (``blocked/...``, `overtrain.studies.hyperfit.blocker`).

Records: ``metrics.jsonl`` one line per evaluation (``epoch``, ``step``, ``tokens_seen``, the keys above,
``final`` = 1 on the last); the manifest's info has ``steps``, ``final_epoch``, ``final_hyperfit_loss`` and
``reached_target`` (loss-matched: whether the target was reached before the cap);
``evals.jsonl`` one ``summary`` row per (epoch, setting); ``probes.jsonl`` one ``generation`` row per
(epoch, setting, prompt) with the token ids and text, and at the end one ``val_sequence`` / ``train_sequence``
row per validation / hyperfit window (the units of the study's confidence intervals); ``ckpt/final`` the
hyperfitted model. Runs are minutes long, so a restarted run starts again from the base model.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from overtrain.analysis.generation import CopyIndex
from overtrain.config import BaseConfig, NotInId, Registered, build_config
from overtrain.errors import CheckpointError, DataError, RunFailed, UserError
from overtrain.models.presets import count_params
from overtrain.probes import generation as pg
from overtrain.registry import DATASETS
from overtrain.runs.kinds import RunKind
from overtrain.runs.run import Run
from overtrain.runs.store import Store
from overtrain.seed import numpy_rng, seed_everything
from overtrain.studies.hyperfit.blocker import CitationBlocker
from overtrain.training import checkpoint as ckpt
from overtrain.training.finetune import check_same_tokens
from overtrain.training.loop import build_optimizer, train_segment
from overtrain.training.pretrain import resolve_device
from overtrain.training.pretrain_config import PretrainConfig


class HyperfitTrainConfig(BaseConfig):
    """The hyperfitting optimisation (paper: 2,000 × 256 tokens, 20 epochs, Adam lr 1e-6, batch 8)."""

    sequences: int = Field(64, ge=1)
    """Training sequences n (windows of the training split)."""

    seq_len: int | None = Field(None, ge=2)
    """Tokens per sequence (default: the base model's pre-training context, or 128 for a local checkpoint)."""

    epochs: int = Field(40, ge=1)
    """Passes over the sequences (ignored with `until_loss`)."""

    until_loss: float | None = Field(None, gt=0)
    """Loss-matched training: stop at the end of the first epoch whose mean training loss — every sequence
    once, each measured just before its own update, so the model after the epoch does at least as well —
    is at most this (nats/token), or once `max_steps` steps are done. None: exactly `epochs` epochs."""

    max_steps: int = Field(2000, ge=1)
    """Step cap of loss-matched training (`until_loss`); checked at epoch ends."""

    batch_size: int = Field(8, ge=1)
    """Sequences per step (the last step of an epoch takes the remainder)."""

    lr: float = Field(1e-3, gt=0)
    """Constant learning rate (the paper's 1e-6 is tuned to billion-parameter models; 1/3 to 1/10 of the
    pre-training rate suits tiny ones; the default preset's loss: docs/hyperfit.md)."""

    betas: tuple[float, float] = (0.9, 0.999)
    """Adam (beta1, beta2)."""

    weight_decay: float = Field(0.0, ge=0)
    """Decoupled weight decay on matrices (paper: none)."""

    grad_clip: float = Field(0.0, ge=0)
    """Global gradient-norm clip (0: off, as in the paper)."""

    eval_every: int | None = Field(10, ge=1)
    """Epochs between evaluations (epoch 0 and the last epoch are always evaluated; None: only those)."""

    def eval_epochs(self) -> list[int]:
        """Evaluated epochs of fixed-length training (`until_loss` None)."""
        every = self.eval_every or self.epochs
        return sorted({0, self.epochs, *range(every, self.epochs, every)})


class BaseLM(BaseConfig):
    """The model to hyperfit: a pre-training run's checkpoint in the store, or a local HF checkpoint dir."""

    parent: str | None = None
    """Pre-training run id (12 hex digits, optionally after ``pretrain/``)."""

    checkpoint: str | None = None
    """Checkpoint in the parent's ``ckpt/`` (default: its largest budget)."""

    model_dir: Path | None = None
    """A local Hugging Face checkpoint directory (``config.json`` + safetensors) instead of a parent."""

    fingerprint: str = ""
    """Names, sizes and modification times of `model_dir`'s weight files (set by the study; in the run id)."""

    @field_validator("parent")
    @classmethod
    def _parent(cls, value: str | None) -> str | None:
        if value is None:
            return None
        kind, _, run_id = value.rpartition("/")
        if kind not in ("", "pretrain") or len(run_id) != 12 or set(run_id) - set("0123456789abcdef"):
            raise ValueError("must be a pre-training run id: 12 hex digits, optionally after 'pretrain/'")
        return run_id

    @model_validator(mode="after")
    def _one_source(self) -> BaseLM:
        if (self.parent is None) == (self.model_dir is None):
            raise ValueError("give exactly one of parent (a pre-training run) and model_dir (a checkpoint)")
        if self.model_dir is not None and self.checkpoint is not None:
            raise ValueError("checkpoint names a checkpoint of a parent run; a model_dir is a checkpoint")
        return self


class HyperfitRunConfig(BaseConfig):
    """One model hyperfitted on a set of sequences, evaluated along the way (run kind ``hyperfit_train``)."""

    schema_version: int = 1
    """Config schema version."""

    base: BaseLM
    """The base model."""

    data: Registered(DATASETS) | None = None
    """Text for the hyperfit set (training split), the prompts and validation (validation split); default:
    the parent's pre-training data. Required with `base.model_dir` (use ``tokenizer: parent``)."""

    train: HyperfitTrainConfig = HyperfitTrainConfig()
    """Optimisation."""

    eval: pg.GenerationEvalConfig = pg.GenerationEvalConfig()
    """Evaluation: prompts, decoding, metrics."""

    seed: int = 0
    """Seed of the choice of sequences and of their order in every epoch."""

    device: str = NotInId("auto")
    """``auto`` (cuda, else mps, else cpu), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``."""

    threads: int = NotInId(1, ge=1)
    """Torch CPU threads of the run: one is as fast for these small models and never fights the other
    runs (or processes) sharing the cores."""

    @model_validator(mode="after")
    def _data_for_local_model(self) -> HyperfitRunConfig:
        if self.base.model_dir is not None and self.data is None:
            raise ValueError(
                "data: a local model_dir needs a data source (e.g. {name: text, train: [...], "
                "tokenizer: parent})"
            )
        return self


def base_parents(base: BaseLM) -> list[tuple[str, str]]:
    return [("pretrain", base.parent)] if base.parent else []


def load_base(base: BaseLM, data, store: Store, device: str = "cpu") -> dict[str, Any]:
    """The base model, its tokenizer, the data source and the model's context length.

    Returns:
        ``{"model", "tokenizer", "source", "context", "name"}``.
    """
    if base.parent is not None:
        parent_dir = store.run_dir("pretrain", base.parent)
        if not (parent_dir / "config.yaml").is_file():
            raise UserError(f"parent run pretrain/{base.parent} not found in {store.root}")
        parent = build_config(PretrainConfig, parent_dir / "config.yaml")
        name = base.checkpoint or parent.train.budgets()[-1].name
        model, tokenizer, _ = ckpt.load_checkpoint(parent_dir / "ckpt" / name, device=device)
        data = data or parent.data
        tokenizer = tokenizer or parent.data.build().tokenizer()
        context, label = parent.train.seq_len, f"pretrain/{base.parent}/{name}"
    else:
        model, tokenizer, _ = ckpt.load_checkpoint(base.model_dir, device=device)
        if tokenizer is None:
            raise CheckpointError(f"no tokenizer in {base.model_dir}: its data is tokenised with it")
        context = getattr(model.config, "max_position_embeddings", None) or 128
        label = str(base.model_dir)
    source = data.build(tokenizer) if getattr(data, "tokenizer", None) == "parent" else data.build()
    if source.vocab_size > model.config.vocab_size:
        raise DataError(f"data: vocab_size {source.vocab_size} exceeds the model's {model.config.vocab_size}")
    check_same_tokens(source.tokenizer(), tokenizer)
    if not hasattr(source, "tokens"):
        raise DataError(
            f"data: {data.name} is not a text corpus (hyperfitting needs text: shakespeare, "
            "text, jsonl, hf_dataset)"
        )
    return {"model": model, "tokenizer": tokenizer, "source": source, "context": context, "name": label}


def check_lengths(cfg: HyperfitRunConfig, context: int) -> int:
    """The hyperfit sequence length; raises `UserError` when prompts + continuations exceed the context."""
    seq_len = cfg.train.seq_len or context
    need = cfg.eval.prompt_len + cfg.eval.new_tokens
    if need > context:
        raise UserError(
            f"eval: prompt_len + new_tokens = {need} exceeds the base model's context of {context}"
        )
    return seq_len


def hyperfit_set(source, n: int, seq_len: int, seed: int) -> torch.Tensor:
    """The `n` hyperfit sequences ``[n, seq_len]`` (nested in n for a given seed)."""
    return torch.from_numpy(pg.windows(source.tokens["train"], n, seq_len, (seed, "hyperfit")))


def evaluate(
    model,
    tokenizer,
    data: dict[str, Any],
    cfg: HyperfitRunConfig,
    *,
    blocked: bool = False,
    sequence_rows: bool = False,
) -> tuple[dict[str, float], list[dict], list[dict]]:
    """One evaluation: metrics, per-prompt generation rows (and per-window rows when `sequence_rows`)."""
    ec = cfg.eval
    val, _ = pg.val_stats(model, data["val"])
    train, _ = pg.val_stats(model, data["train_batches"])
    metrics = {"hyperfit/loss": float(train["nll"].mean()), **pg.summarize_val(val)}
    settings = [("greedy", "gen", ())]
    if blocked:
        settings.append(
            (
                "greedy, citation blocked",
                "blocked",
                (CitationBlocker(data["train_list"], ec.block_longer_than),),
            )
        )
    rows = []
    for setting, prefix, processors in settings:
        out = pg.generate(
            model, data["prompts"], ec.new_tokens, processors=processors, batch_size=ec.batch_size
        )
        seqs = out.tolist()
        per, corpus = pg.continuation_metrics(seqs, ec, data["copy_index"])
        metrics.update({f"{prefix}/{k}": v for k, v in corpus.items()})
        for i, (seq, row) in enumerate(zip(seqs, per)):
            rows.append(
                {
                    "record": "generation",
                    "setting": setting,
                    "prompt": i,
                    **row,
                    "token_ids": seq,
                    "text": tokenizer.decode(seq),
                }
            )
    seq_rows = []
    if sequence_rows:
        columns = zip(val["nll"], val["entropy"], val["top1"])
        seq_rows += [
            {"record": "val_sequence", "index": i, "nll": float(a), "entropy": float(b), "top1": float(c)}
            for i, (a, b, c) in enumerate(columns)
        ]
        seq_rows += [
            {"record": "train_sequence", "index": i, "nll": float(a)} for i, a in enumerate(train["nll"])
        ]
    return metrics, rows, seq_rows


def prepare_data(cfg: HyperfitRunConfig, source, seq_len: int) -> dict[str, Any]:
    """Everything an evaluation reads: prompts, validation windows, the hyperfit set and its copy index."""
    train = hyperfit_set(source, cfg.train.sequences, seq_len, cfg.seed)
    prompts, references = pg.prompts_and_references(source, cfg.eval)
    return {
        "train": train,
        "train_list": train.tolist(),
        "copy_index": CopyIndex(train.tolist()),
        "train_batches": list(train.split(cfg.eval.val_batch_size)),
        "prompts": prompts,
        "references": references,
        "val": pg.val_batches(source, cfg.eval, seq_len),
    }


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with `threads` torch CPU threads, then restore the previous number."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_hyperfit(cfg: HyperfitRunConfig, run: Run) -> None:
    """Execute one hyperfitting run inside an open run directory (see module docstring)."""
    with torch_threads(cfg.threads):
        _run_hyperfit(cfg, run)


def _run_hyperfit(cfg: HyperfitRunConfig, run: Run) -> None:
    started = time.perf_counter()
    for name in ("metrics", "evals", "probes"):
        run.truncate(name, 0)  # a restarted run begins again from the base model
    device = resolve_device(cfg.device)
    base = load_base(cfg.base, cfg.data, run.store, str(device))
    model, tokenizer = base["model"], base["tokenizer"]
    seq_len = check_lengths(cfg, base["context"])
    data = prepare_data(cfg, base["source"], seq_len)
    tc = cfg.train
    n = data["train"].shape[0]
    steps_per_epoch = math.ceil(n / tc.batch_size)
    total = total_steps(cfg)
    seed_everything(cfg.seed)
    optimizer = build_optimizer(model, tc.lr, tc.weight_decay, tc.betas, 1e-8)

    def batch_at(step: int) -> torch.Tensor:
        epoch, i = divmod(step, steps_per_epoch)
        order = numpy_rng(cfg.seed, "hyperfit order", epoch).permutation(n)
        return data["train"][torch.from_numpy(order[i * tc.batch_size : (i + 1) * tc.batch_size])]

    def log(epoch: int, step: int, train_loss: float | None, last: bool) -> dict[str, float]:
        metrics, rows, seq_rows = evaluate(model, tokenizer, data, cfg, blocked=last, sequence_rows=last)
        record = {"epoch": epoch, "step": step, "tokens_seen": step * tc.batch_size * seq_len, **metrics}
        if last:
            record["final"] = 1
        if train_loss is not None:
            record["train/loss"] = train_loss
        run.log_metrics(record)
        for setting in sorted({r["setting"] for r in rows}):
            prefix = "blocked" if "blocked" in setting else "gen"
            run.log_eval(
                {
                    "record": "summary",
                    "setting": setting,
                    "epoch": epoch,
                    "sequences": n,
                    **{k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith(prefix + "/")},
                    **{
                        k.replace("/", "_"): v
                        for k, v in metrics.items()
                        if k.split("/")[0] in ("val", "hyperfit")
                    },
                }
            )
        for row in rows:
            run.log_probe({"epoch": epoch, **row})
        for row in seq_rows:
            run.log_probe({"epoch": epoch, **row})
        return metrics

    def train(start: int, stop: int, epoch: int) -> float:
        stats = train_segment(
            model,
            optimizer,
            batch_at,
            lambda s: tc.lr,
            start,
            stop,
            grad_clip=tc.grad_clip or None,
            device=device,
        )
        if not math.isfinite(stats.mean_loss):
            raise RunFailed(f"hyperfitting loss became {stats.mean_loss} before epoch {epoch}")
        return stats.mean_loss

    log(0, 0, None, False)
    step, epoch, reached = 0, 0, None
    if tc.until_loss is None:
        for epoch in cfg.train.eval_epochs()[1:]:
            stop = epoch * steps_per_epoch
            loss = train(step, stop, epoch)
            step = stop
            final = log(epoch, step, loss, epoch == tc.epochs)
            run.progress(step, total)
    else:  # loss-matched: one epoch at a time until its mean training loss reaches the target
        losses: list[float] = []
        while True:
            epoch += 1
            losses.append(train(step, step + steps_per_epoch, epoch))
            step += steps_per_epoch
            reached = losses[-1] <= tc.until_loss
            last = reached or step >= tc.max_steps
            if last or (tc.eval_every and epoch % tc.eval_every == 0):
                final = log(epoch, step, float(np.mean(losses)), last)
                losses = []
            run.progress(min(step, total), total)
            if last:
                break
    ckpt.save_checkpoint(
        run.ckpt_dir("final"),
        model,
        tokenizer,
        {"step": step, "epochs": epoch, "sequences": n, "base": base["name"], **final},
    )
    run.set_info(
        n_params=count_params(model),
        sequences=n,
        seq_len=seq_len,
        steps=step,
        base=base["name"],
        prompts_digest=digest(data["prompts"]),
        wall_s=time.perf_counter() - started,
        final_hyperfit_loss=final["hyperfit/loss"],
        final_epoch=epoch,
        reached_target=reached,
    )


def digest(tokens: torch.Tensor) -> str:
    """Short sha256 of a token tensor (the study checks every run saw the same prompts)."""
    return hashlib.sha256(tokens.numpy().astype("int64").tobytes()).hexdigest()[:16]


def total_steps(cfg: HyperfitRunConfig) -> int:
    """Steps of fixed-length training; the cap, rounded up to whole epochs, of loss-matched training."""
    per_epoch = math.ceil(cfg.train.sequences / cfg.train.batch_size)
    if cfg.train.until_loss is not None:
        return math.ceil(cfg.train.max_steps / per_epoch) * per_epoch
    return per_epoch * cfg.train.epochs


HYPERFIT_TRAIN = RunKind(
    name="hyperfit_train",
    config_cls=HyperfitRunConfig,
    run=run_hyperfit,
    parents=lambda cfg: base_parents(cfg.base),
    total_steps=total_steps,
    help="hyperfit one model on a few sequences; evaluates generation, entropy and perplexity along the way",
)
"""The ``hyperfit_train`` run kind (registered with the study, `overtrain.studies.hyperfit.study`)."""
