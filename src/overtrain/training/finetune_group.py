"""A fine-tuning grid as one group: checkpoints x methods' settings x learning rates x seeds in one process.

Runs whose configs differ only in parent run, checkpoint, learning rate and seed — and whose parents share
model, data and evaluation settings — form a group (`group_key`). The group builds the task and the
evaluation sets once, evaluates each distinct checkpoint once before fine-tuning (every member of that
checkpoint logs the same ``step 0`` losses a run alone computes, bit for bit), and trains the members:

- ``stack == 1`` (the CPU default): one member after another with the single run's own code
  (`overtrain.training.finetune.finetune_member`), so records equal a run alone's;
- ``stack > 1``: `stack` members at a time as one computation (`overtrain.models.grouped`: stacked
  weights, batched matmuls, per-member AdamW and clipping), full fine-tuning or LoRA with the plain step.
  Each member matches its run alone to float rounding (tests/training/test_finetune_group.py).

Why stacking is not the CPU default: measured on llama-nano (one thread, bench/batched_training.py), a
stacked step costs what a loop over the models costs (64 x 64 tokens: 33 ms a model at K = 1, 32-35 ms at
K = 4-16) and more at the pre-training batch (256 x 64, K = 16: 0.65x): a tiny model's step on a CPU is
bound by memory traffic and the attention kernel (head dim 4), not by per-call overhead. On the demo's
grid the group runs 1.18x faster than the runs alone with members one at a time (shared setup and
evaluations) and 1.21x stacked (LoRA without PEFT's wrappers), while one at a time keeps each member's
records bit-identical to its run alone. On a GPU, where the same step is bound by kernel launches,
stacking is the point (`DEFAULT_STACK`).

Each member is recorded as its own run (`overtrain.runs.store.Store.execute_group`); a member that
diverges fails alone. Fine-tuning runs restart from their checkpoint, so a killed group resumes by
redoing its unfinished members.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import torch

from overtrain.config import to_plain
from overtrain.errors import RunFailed
from overtrain.models.grouped import GroupedLlama, grouped_eval_loss, grouping_problem
from overtrain.models.presets import build_hf_config, count_params
from overtrain.seed import seed_everything
from overtrain.training import checkpoint as ckpt
from overtrain.training.finetune import (
    FinetuneConfig,
    Setting,
    final_record,
    finetune_member,
    lr_schedule,
    schedule_events,
    train_record,
)
from overtrain.training.grouped_loop import train_group_segment
from overtrain.training.grouped_optim import GroupedAdamW
from overtrain.training.loop import divergence
from overtrain.training.methods import MethodConfig
from overtrain.training.parent import resolve_parent
from overtrain.training.pretrain import resolve_device

MEMBER_FIELDS = ("parent", "checkpoint", "seed")
"""Config fields in which members of a group may differ (and ``train.lr``)."""

MAX_PARAMS = 5_000_000
"""Largest model (parameters, from the parent's config) fine-tuned in groups; larger ones run alone."""

DEFAULT_STACK = {"cpu": 1, "cuda": 32}
"""Members per stacked computation by device type (the module docstring says why 1 on a CPU)."""


def group_key(cfg: FinetuneConfig, store) -> str | None:
    """Runs with equal keys can run as one group; None: this run executes alone.

    Alone: a convergence stop (members would stop at different steps), a method with its own step rule
    (Flat-LoRA, GGPO, SAM: perturbed steps), adapter dropout, a local directory (`model_dir`), or a parent too large or missing.
    """
    tc = cfg.train
    if tc.converge is not None or type(cfg.method).step_rule is not MethodConfig.step_rule:
        return None
    if getattr(cfg.method, "dropout", 0.0) or cfg.model_dir is not None:  # a local directory: no parent run
        return None
    try:
        _, parent = resolve_parent(cfg, store)
    except Exception:  # a parent not (yet) in the store: the single path reports it properly
        return None
    hf = build_hf_config(parent.model, vocab_size=256, max_positions=parent.train.seq_len)
    size = hf.num_hidden_layers * 12 * hf.hidden_size**2
    if size > MAX_PARAMS:
        return None
    plain = to_plain(cfg)
    for name in MEMBER_FIELDS:
        plain.pop(name, None)
    plain["train"] = {k: v for k, v in plain["train"].items() if k != "lr"}
    shared = {
        "run": plain,
        "parent": {
            "model": to_plain(parent.model),
            "data": to_plain(parent.data),
            "seq_len": parent.train.seq_len,
            "batch_size": parent.train.batch_size,
            "eval": to_plain(parent.eval),
        },
    }
    return json.dumps(shared, sort_keys=True, default=str)


def run_finetune_group(
    cfgs: list[FinetuneConfig], runs: list, on_progress: Callable | None = None, *, stack: int | None = None
) -> list[BaseException | None]:
    """Execute fine-tuning runs of one group (equal `group_key`), each through its own open `Run`.

    Args:
        stack: members per stacked computation (default `DEFAULT_STACK` for the device).

    Returns:
        Per member, the exception it failed with, or None.
    """
    started = time.perf_counter()
    for run in runs:
        for name in ("metrics", "evals"):
            run.truncate(name, 0)  # fine-tuning restarts from the checkpoint
    device = resolve_device(cfgs[0].device)
    stack = stack or DEFAULT_STACK.get(device.type, 1)
    befores: dict[tuple[str, str], tuple[dict, dict]] = {}  # (parent, ckpt) -> meta, losses before
    setting: Setting | None = None
    errors: list[BaseException | None] = [None] * len(cfgs)
    members = []  # (index, cfg, run, meta, before); models are loaded when trained (memory)
    total = sum(c.train.steps for c in cfgs)
    done_steps = 0
    for i, (cfg, run) in enumerate(zip(cfgs, runs, strict=True)):
        key = (cfg.parent_id, cfg.checkpoint)
        try:
            if key not in befores:  # one evaluation per checkpoint, shared by its members
                model, parent_tok, meta = _load(cfg, run.store, device)
                if setting is None:
                    _, parent = resolve_parent(cfg, run.store)
                    setting = Setting.build(cfg, parent, model, parent_tok)
                befores[key] = (meta, setting.evaluate(model))
        except Exception as exc:  # noqa: BLE001 - this member fails; the others go on
            errors[i] = exc
            continue
        meta, before = befores[key]
        run.log_metrics({"step": 0, "tokens_seen": 0, **before})
        members.append((i, cfg, run, meta, before))
    stackable = (
        setting is not None
        and all(m[1].method.name in ("full", "lora") for m in members)
        and grouping_problem(_model_config(setting)) is None
    )
    if stack == 1 or not stackable:
        for i, cfg, run, meta, before in members:
            try:
                member_started = time.perf_counter()  # info.wall_s: this member's own time
                model, _, _ = _load(cfg, run.store, device)
                finetune_member(cfg, run, setting, model, meta, before, member_started)
            except Exception as exc:  # noqa: BLE001 - this member fails; the others go on
                errors[i] = exc
            done_steps += cfg.train.steps
            if on_progress is not None:
                on_progress(done_steps, total)
        return errors
    for start in range(0, len(members), stack):
        chunk = members[start : start + stack]
        try:
            chunk_errors = _train_stacked(chunk, setting, started, device)
        except Exception as exc:  # noqa: BLE001 - the chunk's members fail; other chunks go on
            chunk_errors = [exc] * len(chunk)
        for (i, *_), error in zip(chunk, chunk_errors, strict=True):
            errors[i] = error
        done_steps += sum(m[1].train.steps for m in chunk)
        if on_progress is not None:
            on_progress(done_steps, total)
    return errors


def _load(cfg: FinetuneConfig, store, device: torch.device):
    parent_dir, _ = resolve_parent(cfg, store)
    return ckpt.load_checkpoint(parent_dir / "ckpt" / cfg.checkpoint, device=str(device))


def _model_config(setting: Setting):
    return build_hf_config(setting.parent.model, vocab_size=256, max_positions=setting.seq_len)


def _train_stacked(
    chunk, setting: Setting, started: float, device: torch.device
) -> list[BaseException | None]:
    """Train the members of `chunk` as one stacked computation; log each member's records."""
    cfgs = [m[1] for m in chunk]
    runs = [m[2] for m in chunk]
    tc = cfgs[0].train
    sizes, applied_models = [], []
    for cfg, run in zip(cfgs, runs, strict=True):
        model, _, _ = _load(cfg, run.store, torch.device("cpu"))
        n_params = count_params(model)
        seed_everything(cfg.seed)  # the adapter's initialisation, as the run alone draws it
        applied = cfg.method.apply(model)
        sizes.append((n_params, sum(p.numel() for p in applied.parameters() if p.requires_grad)))
        applied_models.append(applied)
    lora = cfgs[0].method.name == "lora"
    group = GroupedLlama.from_models(applied_models, trainable="lora" if lora else "all")
    if device.type != "cpu":
        group = _to(group, device)
    lrs = torch.tensor([c.train.lr for c in cfgs])
    schedules = [lr_schedule(c.train) for c in cfgs]
    optimizer = GroupedAdamW(group.trainable(), lrs, weight_decay=tc.weight_decay, betas=tc.betas, eps=1e-8)
    batch_fns = {c.seed: setting.batch_at(c) for c in cfgs}
    seeds = [c.seed for c in cfgs]

    def batch_at(step: int) -> torch.Tensor:
        if len(batch_fns) == 1:
            return batch_fns[seeds[0]](step).to(device)
        by_seed = {s: f(step) for s, f in batch_fns.items()}
        return torch.stack([by_seed[s] for s in seeds]).to(device)

    def lr_at(step: int) -> torch.Tensor:
        return torch.tensor([sched(step) for sched in schedules], device=device)

    errors: list[BaseException | None] = [None] * len(chunk)
    events, evals = schedule_events(tc)
    tokens_per_step = tc.batch_size * setting.seq_len
    step, after = 0, [{} for _ in chunk]
    for event in events:
        stats = train_group_segment(
            group, optimizer, batch_at, lr_at, step, event, grad_clip=tc.grad_clip or None
        )
        step = event
        evaluated = None
        if step == tc.steps or step in evals:
            evaluated = _evaluate_group(group, setting)
        for k, run in enumerate(runs):
            if errors[k] is not None:
                continue
            member = stats.member(k)
            reason = divergence(member, step - stats.steps, step, "fine-tuning loss")
            if reason is not None:
                bad = member.first_nonfinite_step
                run.set_info(diverged_at_step=step if bad is None else bad)
                errors[k] = RunFailed(reason)
                continue
            record = train_record(step, tokens_per_step, member)
            if evaluated is not None:
                after[k] = evaluated[k]
                record.update(after[k])
            run.log_metrics(record)
            run.progress(step, tc.steps)
    for k, (cfg, run) in enumerate(zip(cfgs, runs, strict=True)):
        if errors[k] is None:
            meta, before = chunk[k][3], chunk[k][4]
            run.log_eval(final_record(cfg, meta, sizes[k], before, after[k], step))
            n_params, trainable = sizes[k]
            run.set_info(
                n_params=n_params,
                trainable_params=trainable,
                wall_s=time.perf_counter() - started,
                stacked_with=len(chunk),
            )
    return errors


def _evaluate_group(group: GroupedLlama, setting: Setting) -> list[dict[str, float]]:
    out: list[dict[str, float]] = [{} for _ in range(group.k)]
    for name, batches in setting.sets.items():
        for k, value in enumerate(grouped_eval_loss(group, [b.to(setting.device) for b in batches])):
            out[k][name] = value
    return out


def _to(group: GroupedLlama, device: torch.device) -> GroupedLlama:
    params = {n: t.detach().to(device).requires_grad_(t.requires_grad) for n, t in group.params.items()}
    moved = GroupedLlama(group.config, params)
    for name, lo in group.lora.items():
        lo.A = lo.A.detach().to(device).requires_grad_(lo.A.requires_grad)
        lo.B = lo.B.detach().to(device).requires_grad_(lo.B.requires_grad)
        moved.lora[name] = lo
    return moved
