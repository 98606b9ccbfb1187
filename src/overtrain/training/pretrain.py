"""Pre-training one model family to a list of token budgets.

One run trains one model (one seed, one preset, one data source) and leaves a checkpoint at the end of
every budget (``ckpt/budget_<T>``) plus Pythia-style log-spaced checkpoints along the longest
trajectory (``ckpt/step_<N>``). Schedules (see `overtrain.training.schedules`):

- ``wsd``: one warmup-stable main line; each budget branches a linear decay off it (cheap).
- ``cosine``: an independent warmup-cosine trajectory per budget from the same initialisation (faithful).
- ``constant``: warmup then a constant rate; budgets are points on the one line (no cool-down).

Metrics (``metrics.jsonl``): ``step`` (optimizer updates done on that line), ``tokens_seen``, tag ``line``
(``main`` or ``budget_<T>``), ``train/loss``, ``train/lr``, ``train/grad_norm``, ``val/loss`` and
``val/entropy_floor`` (nats per token; the floor is the Bayes-optimal loss where the data source knows
it), and ``<name>/loss`` for every extra eval source. ``evals.jsonl`` has one row per (checkpoint, split).

Resume: the trainer state is saved every ``checkpoint.resume_every`` steps and at every branch point; a
restarted run truncates its JSONL files to what that state had seen and continues, so its metrics equal
an uninterrupted run's bit for bit (indexed batches make the data position just the step).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch

from overtrain import distributed
from overtrain.core.evaluate import evaluate_loss
from overtrain.data.base import TokenSource
from overtrain.errors import DataError, RunFailed, UserError
from overtrain.models.presets import build_model, count_params
from overtrain.seed import seed_everything
from overtrain.training import checkpoint as ckpt
from overtrain.training.loop import build_optimizer, divergence, train_segment
from overtrain.training.monitor import (
    Monitor,
    MonitorProbe,
    WeightAverage,
    announce,
    announce_forecast,
)
from overtrain.training.pretrain_config import PretrainConfig
from overtrain.training.schedules import (
    Budget,
    cosine,
    linear_decay,
    log_spaced_steps,
    warmup_stable,
)


def _ppl(loss: float) -> float:
    """exp(loss); infinite (null in JSON) past float range, as for a diverging run's evaluation."""
    return math.inf if loss > 700 else math.exp(loss)


def resolve_device(name: str) -> torch.device:
    """The torch device of a config's ``device`` setting (``auto``: `distributed.auto_device`)."""
    if name == "auto":
        return distributed.device_for(torch.device(distributed.auto_device()))
    try:
        device = torch.device(name)
    except RuntimeError:  # fine-tuning, probe and audit configs take any string
        raise UserError(f"device {name!r}: expected cpu, cuda, cuda:N, mps or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name} requested but no CUDA device is available")
    return distributed.device_for(device)  # a bare cuda is this process's own GPU under a launch


def total_steps(cfg: PretrainConfig) -> int:
    """Optimizer steps the whole run takes (progress bar total)."""
    budgets = cfg.train.budgets()
    if cfg.train.schedule == "wsd":
        return budgets[-1].branch + sum(b.decay for b in budgets)
    if cfg.train.schedule == "cosine":
        return sum(b.steps for b in budgets)
    return budgets[-1].steps


class _Job:
    """The state of one pre-training run while it executes."""

    def __init__(self, cfg: PretrainConfig, run) -> None:
        self.cfg, self.run = cfg, run
        tc = cfg.train
        self.device = resolve_device(cfg.device)
        self.autocast = torch.bfloat16 if cfg.dtype == "bfloat16" else None
        self.source: TokenSource = cfg.data.build()
        self.tokenizer = self.source.tokenizer()
        self.tps = tc.tokens_per_step
        self.budgets = tc.budgets()
        self.min_lr = tc.lr * tc.min_lr_ratio
        self.lr_main = warmup_stable(tc.lr, tc.warmup_steps)
        self.floor = self.source.loss_floor(tc.seq_len)
        eval_bs = cfg.eval.batch_size or tc.batch_size
        self.val = [self.source.batch("val", i, eval_bs, tc.seq_len) for i in range(cfg.eval.batches)]
        self.extra: dict[str, list[torch.Tensor]] = {}
        for key, dcfg in cfg.eval.extra.items():
            src = dcfg.build()
            if src.vocab_size > self.source.vocab_size:
                raise DataError(
                    f"eval.extra.{key}: vocab_size {src.vocab_size} exceeds the training data's "
                    f"{self.source.vocab_size}"
                )
            self.extra[key] = [src.batch("val", i, eval_bs, tc.seq_len) for i in range(cfg.eval.batches)]
        self.model = self.fresh_model()
        self.n_params = count_params(self.model)
        self.monitor: Monitor | None = None
        if cfg.monitor is not None:
            mc = cfg.monitor
            batches = [self.source.batch("val", i, mc.batch_size, tc.seq_len) for i in range(mc.eval_batches)]
            self.monitor = Monitor(mc)
            try:  # the model is still at its init
                self.monitor_probe = MonitorProbe(mc, batches, self.model, tc.seq_len, self.source.vocab_size)
            except ValueError as exc:
                raise DataError(str(exc)) from None
        self.average = self.fresh_average()
        self.optimizer = self.fresh_optimizer(self.model)
        self.train_model = self.trainable(self.model)
        self.done_steps = 0
        self.total_steps = total_steps(cfg)
        self.acc = [0.0, 0]  # training-loss sum and step count since the last log record
        self.done_budgets: set[int] = set()

    # -- building blocks ---------------------------------------------------------------------------

    def fresh_model(self):
        seed_everything(self.cfg.seed)
        return build_model(self.cfg.model, self.source.vocab_size, self.cfg.train.seq_len).to(self.device)

    def fresh_average(self) -> WeightAverage | None:
        """The running weight average the monitor measures on (`MonitorConfig.average`), or None."""
        mc = self.cfg.monitor
        return WeightAverage(self.model, mc.average) if mc is not None and mc.average else None

    def trainable(self, model):
        """The module the loop steps: compiled if asked, in DDP under a multi-process launch."""
        return distributed.wrap(torch.compile(model) if self.cfg.compile else model)

    def fresh_optimizer(self, model):
        tc = self.cfg.train
        return build_optimizer(model, tc.lr, tc.weight_decay, tc.betas, tc.eps)

    def batch_at(self, step: int) -> torch.Tensor:
        return self.source.batch("train", step, self.cfg.train.batch_size, self.cfg.train.seq_len)

    def segment(self, model, optimizer, lr, start: int, stop: int) -> None:
        if stop <= start:
            return
        train_model = self.train_model if model is self.model else self.branch_model
        stats = train_segment(
            train_model,
            optimizer,
            self.batch_at,
            lr,
            start,
            stop,
            grad_clip=self.cfg.train.grad_clip or None,
            autocast_dtype=self.autocast,
            device=self.device,
            after_step=self.average.update if self.average is not None and model is self.model else None,
        )
        reason = divergence(stats, start, stop)
        if reason is not None:  # stop now: the run is marked failed with the reason and the step
            bad = stats.first_nonfinite_step
            self.run.set_info(diverged_at_step=stop if bad is None else bad)
            raise RunFailed(reason)
        self.acc[0] += stats.mean_loss * stats.steps
        self.acc[1] += stats.steps
        self.last = stats
        self.done_steps += stats.steps
        self.run.progress(self.done_steps, self.total_steps)

    def log_train(self, step: int, line: str) -> None:
        if not self.acc[1]:
            return
        self.run.log_metrics(
            {
                "step": step,
                "tokens_seen": step * self.tps,
                "line": line,
                "train/loss": self.acc[0] / self.acc[1],
                "train/lr": self.last.lr,
                "train/grad_norm": self.last.grad_norm,
            }
        )
        self.acc = [0.0, 0]

    def evaluate(self, model) -> dict[str, float]:
        out = {"val/loss": evaluate_loss(model, self.val, autocast_dtype=self.autocast, device=self.device)}
        if self.floor is not None:
            out["val/entropy_floor"] = self.floor
        for key, batches in self.extra.items():
            out[f"{key}/loss"] = evaluate_loss(
                model, batches, autocast_dtype=self.autocast, device=self.device
            )
        return out

    def log_eval(self, model, step: int, line: str) -> dict[str, float]:
        metrics = self.evaluate(model)
        self.run.log_metrics({"step": step, "tokens_seen": step * self.tps, "line": line, **metrics})
        return metrics

    def save(self, model, name: str, step: int, line: str, budget: int | None) -> None:
        """A science checkpoint with its evaluation (metrics + one evals row per split)."""
        metrics = self.log_eval(model, step, line)
        tokens = step * self.tps
        meta = {
            "step": step,
            "tokens_seen": tokens,
            "line": line,
            "budget": budget,
            "n_params": self.n_params,
            "tokens_per_param": tokens / self.n_params,
            "schedule": self.cfg.train.schedule,
            "seed": self.cfg.seed,
        }
        if self.run.writes:  # rank 0 only under a multi-process launch
            ckpt.save_checkpoint(self.run.ckpt_dir(name), model, self.tokenizer, {**meta, **metrics})
        for split_key, loss in metrics.items():
            if not split_key.endswith("/loss"):
                continue
            split = split_key.split("/")[0]
            floor = self.floor if split == "val" else None
            self.run.log_eval(
                {
                    "checkpoint": name,
                    **meta,
                    "split": split,
                    "loss": loss,
                    "ppl": _ppl(loss),
                    "loss_floor": floor,
                    "excess_loss": None if floor is None else loss - floor,
                }
            )

    def save_resume(self, line_index: int, step: int) -> None:
        if not self.run.writes:
            return
        self.run.sync()
        state = {
            "line_index": line_index,
            "step": step,
            "done_steps": self.done_steps,
            "done_budgets": sorted(self.done_budgets),
            "acc": self.acc,
            "lines": {name: self.run.line_count(name) for name in ("metrics", "evals")},
        }
        ckpt.save_trainer_state(
            self.run.ckpt_dir(ckpt.RESUME),
            self.model,
            self.optimizer,
            state,
            self.average.module if self.average else None,
        )

    def load_resume(self) -> dict[str, Any] | None:
        path = self.run.ckpt_dir(ckpt.RESUME)
        if not (path / "trainer_state.json").is_file():
            for name in ("metrics", "evals"):  # records of an attempt that died before its first save
                self.run.truncate(name, 0)
            return None
        state = ckpt.load_trainer_state(
            path, self.model, self.optimizer, self.average.module if self.average else None
        )
        for name, n in state["lines"].items():
            self.run.truncate(name, n)
        if self.monitor is not None:  # its state is a function of its logged checks: replay them
            for r in self.run.records("metrics"):
                if r.get("line") == "monitor":
                    self.monitor.update(
                        r["tokens_seen"], r["monitor/loss"], r["monitor/delta"], r.get("monitor/ft_delta")
                    )
        self.done_steps = state["done_steps"]
        self.done_budgets = set(state["done_budgets"])
        self.acc = list(state["acc"])
        return state

    # -- trajectories ----------------------------------------------------------------------------------

    def checkpoint_steps(self, last: int) -> set[int]:
        cc = self.cfg.checkpoint
        if not cc.log_spaced:
            steps = set(range(cc.every, last + 1, cc.every)) if cc.every else set()
            return steps | ({0} if cc.step_zero else set()) | cc.dense_steps(last)
        return set(log_spaced_steps(last, cc.every, cc.step_zero)) | cc.dense_steps(last)

    def check(self, model, step: int) -> None:
        """One early-warning monitor check (metrics line ``monitor``)."""
        watched = self.average.module if self.average is not None else model
        loss, delta, ft_delta = self.monitor_probe.measure(watched, self.autocast)
        result = self.monitor.update(step * self.tps, loss, delta, ft_delta)
        self.run.log_metrics(
            {"step": step, "tokens_seen": step * self.tps, "line": "monitor", **result.record()}
        )
        if result.forecast_warning and self.run.writes:
            announce_forecast(result, self.monitor.cfg.forecast_horizon)
            self.run.set_info(
                monitor_forecast_warned_at_tokens=result.tokens, monitor_forecast_t_star=result.forecast
            )
        if result.warning and self.run.writes:
            announce(result)
            self.run.set_info(
                monitor_warned_at_tokens=result.tokens, monitor_predicted_min=result.predicted_min
            )

    def line(
        self,
        model,
        optimizer,
        lr,
        start: int,
        end: int,
        *,
        name: str,
        line_index: int,
        checkpoints: set[int],
        budgets_at: dict[int, list[Budget]],
        resumable: bool,
        resumed_at: int | None,
        on_branch=None,
        monitor_at: frozenset[int] = frozenset(),
    ) -> None:
        """Train one trajectory from `start` to `end`, handling the events at each step on the way."""
        log_every = self.cfg.train.log_every
        evals = (
            set(range(self.cfg.eval.every, end + 1, self.cfg.eval.every)) if self.cfg.eval.every else set()
        )
        resumes = set(range(self.cfg.checkpoint.resume_every, end, self.cfg.checkpoint.resume_every))
        events = {s for s in range(start, end + 1) if s % log_every == 0} | {start, end}
        events |= {
            s for s in checkpoints | evals | resumes | set(budgets_at) | monitor_at if start <= s <= end
        }
        step = start
        for event in sorted(events):
            self.segment(model, optimizer, lr, step, event)
            step = event
            if resumed_at == event:
                pass  # everything at this step up to the resume save was done before the restart
            else:
                if event % log_every == 0 or event == end:
                    self.log_train(event, name)
                if event in checkpoints:
                    self.save(model, f"step_{event:08d}", event, name, None)
                elif event in evals:
                    self.log_eval(model, event, name)
                if event in monitor_at:
                    self.check(model, event)
                for b in budgets_at.get(event, []):
                    if b.decay == 0 and b.tokens not in self.done_budgets:  # constant: a point on this line
                        self.save(model, b.name, event, name, b.tokens)
                        self.done_budgets.add(b.tokens)
                pending = [b for b in budgets_at.get(event, []) if b.tokens not in self.done_budgets]
                if resumable and (event in resumes or pending):
                    self.save_resume(line_index, event)
            for b in budgets_at.get(event, []):
                if on_branch is not None and b.tokens not in self.done_budgets:
                    on_branch(b)

    def branch(self, b: Budget) -> None:
        """WSD: decay a copy of the main line from its branch point to the budget's end."""
        model, optimizer = copy.deepcopy((self.model, self.optimizer))
        self.branch_model = distributed.wrap(model)
        lr = linear_decay(self.lr_main, b.branch, b.decay, self.min_lr)
        acc = self.acc
        self.acc = [0.0, 0]
        self.line(
            model,
            optimizer,
            lr,
            b.branch,
            b.steps,
            name=b.name,
            line_index=0,
            checkpoints=set(),
            budgets_at={},
            resumable=False,
            resumed_at=None,
        )
        self.save(model, b.name, b.steps, b.name, b.tokens)
        self.done_budgets.add(b.tokens)
        self.acc = acc
        self.branch_model = None

    def run_wsd_or_constant(self, state: dict[str, Any] | None) -> None:
        last = self.budgets[-1]
        end = last.branch if self.cfg.train.schedule == "wsd" else last.steps
        budgets_at: dict[int, list[Budget]] = {}
        for b in self.budgets:
            budgets_at.setdefault(b.branch, []).append(b)
        start = state["step"] if state else 0
        self.line(
            self.model,
            self.optimizer,
            self.lr_main,
            start,
            end,
            name="main",
            line_index=0,
            checkpoints=self.checkpoint_steps(end),
            budgets_at=budgets_at,
            resumable=True,
            resumed_at=start if state else None,
            on_branch=self.branch if self.cfg.train.schedule == "wsd" else None,
            monitor_at=frozenset(self.cfg.monitor.check_steps(end)) if self.monitor else frozenset(),
        )

    def run_cosine(self, state: dict[str, Any] | None) -> None:
        tc = self.cfg.train
        first = state["line_index"] if state else 0
        for k in range(first, len(self.budgets)):
            b = self.budgets[k]
            resumed = state is not None and k == first
            if not resumed and k > 0:
                self.model = self.fresh_model()
                self.optimizer = self.fresh_optimizer(self.model)
                self.train_model = self.trainable(self.model)
                self.average = self.fresh_average()
            lr = cosine(tc.lr, tc.warmup_steps, b.steps, self.min_lr)
            is_last = k == len(self.budgets) - 1
            start = state["step"] if resumed else 0
            self.line(
                self.model,
                self.optimizer,
                lr,
                start,
                b.steps,
                name=b.name,
                line_index=k,
                checkpoints=self.checkpoint_steps(b.steps) - {b.steps} if is_last else set(),
                budgets_at={},
                resumable=True,
                resumed_at=start if resumed else None,
                monitor_at=frozenset(self.cfg.monitor.check_steps(b.steps))
                if self.monitor and is_last
                else frozenset(),
            )
            self.save(self.model, b.name, b.steps, b.name, b.tokens)
            self.done_budgets.add(b.tokens)


def run_pretrain(cfg: PretrainConfig, run) -> None:
    """Execute one pre-training run inside an open run directory (see module docstring)."""
    started = time.perf_counter()
    job = _Job(cfg, run)
    run.set_info(
        n_params=job.n_params,
        n_params_non_embedding=count_params(job.model, non_embedding=True),
        vocab_size=job.source.vocab_size,
        tokens_per_step=job.tps,
        loss_floor=job.floor,
        hf_class=type(job.model).__name__,
        budgets=[
            {
                "tokens": b.tokens,
                "steps": b.steps,
                "branch": b.branch,
                "decay": b.decay,
                "tokens_seen": b.steps * job.tps,
            }
            for b in job.budgets
        ],
    )
    state = job.load_resume()
    steps_before = job.done_steps
    if cfg.train.schedule == "cosine":
        job.run_cosine(state)
    else:
        job.run_wsd_or_constant(state)
    wall = time.perf_counter() - started
    run.set_info(train_tokens_per_second=(job.done_steps - steps_before) * job.tps / max(wall, 1e-9))
