"""Data-parallel training: two processes launched by ``accelerate launch`` (gloo on CPU) train like one
process with the same global batch, only rank 0 writes the run, and a crashed run resumes in two processes.

The launched tests run the command a user runs,
``accelerate launch --multi_gpu --num_processes 2 -m overtrain.cli.main pretrain|finetune ...``
(``--multi_gpu`` is accelerate's torchrun launcher; it starts the processes on CPU too, and the run's
``device: cpu`` picks gloo). Each launch costs ~10-20 s of process start-up, hence ``slow``.

Tolerance: the two processes compute the same arithmetic as one process except for summation order (two
half-batch mean losses averaged instead of one mean; per-process gradients summed by the all-reduce), an
fp32 rounding difference of ~1e-7 relative per step. Measured over the tiny run's 20 steps (+ branches):
<= 1e-6 nats on every training and validation loss. `TOL` = 1e-4 nats leaves 100x margin for other
machines' kernels and is still far below what a wrong global batch does (each process stepping on its
own half batch: > 1e-2 nats, checked in the test).
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from overtrain import distributed
from overtrain.config import config_hash, validate
from overtrain.errors import UserError
from overtrain.executors.local import run_plan
from overtrain.registry import RUN_KINDS
from overtrain.runs.jsonl import read_jsonl
from overtrain.runs.plan import Plan, PlanItem
from overtrain.runs.store import Store
from overtrain.training.finetune import FinetuneConfig
from overtrain.training.pretrain import _Job
from overtrain.training.pretrain_config import PretrainConfig

TOL = 1e-4
"""Largest allowed |loss(2 processes) - loss(1 process)|, nats (see the module docstring)."""

LOSS_KEYS = ("train/loss", "val/loss", "task/loss", "pretrain/loss", "loss")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path, home, *args: str) -> subprocess.CompletedProcess:
    """``accelerate launch`` of the overtrain CLI on 2 CPU processes, with its own port, home and HF cache."""
    env = {**os.environ, "OVERTRAIN_HOME": str(home), "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.accelerate_cli",
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "overtrain.cli.main",
        *args,
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _max_loss_diff(a: list[dict], b: list[dict], strict: bool = True) -> float:
    """Largest loss difference between two record lists that match record for record (steps, lines and
    token counts too, unless not `strict`)."""
    assert len(a) == len(b) > 0
    worst = 0.0
    for x, y in zip(a, b):
        if strict:
            assert {k: v for k, v in x.items() if not isinstance(v, float)} == {
                k: v for k, v in y.items() if not isinstance(v, float)
            }
        for key in LOSS_KEYS:
            if key in x:
                worst = max(worst, abs(x[key] - y[key]))
    return worst


def _ft(parent_id: str) -> dict:
    return {
        "parent": parent_id,
        "checkpoint": "budget_5120",
        "data": {"name": "hmm", "seed": 1, "states": 4, "vocab_size": 16, "floor_sequences": 64},
        "train": {"steps": 8, "batch_size": 8, "lr": 1e-2, "log_every": 2},
        "eval_batches": 2,
    }


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path, tiny_pretrain):
    (tmp_path / "pretrain.yaml").write_text(yaml.safe_dump(tiny_pretrain))
    cfg = validate(PretrainConfig, tiny_pretrain)
    run_id = config_hash(cfg)
    one = Store(tmp_path / "one" / "runs")
    ref = one.execute(RUN_KINDS.get("pretrain"), cfg)

    _launch(tmp_path, tmp_path / "two", "pretrain", "--config", str(tmp_path / "pretrain.yaml"))
    two = Store(tmp_path / "two" / "runs")
    run_dir = two.run_dir("pretrain", run_id)
    manifest = two.manifest("pretrain", run_id)
    assert manifest["status"] == "success" and manifest["attempts"] == 1  # one writer, one attempt
    diffs = {
        name: _max_loss_diff(read_jsonl(run_dir / name), read_jsonl(ref.dir / name))
        for name in ("metrics.jsonl", "evals.jsonl")
    }
    print(f"pretrain: max |loss diff| {diffs}")
    assert max(diffs.values()) <= TOL
    # ... while the likeliest DDP bug, each process stepping on its own half batch, is far beyond TOL
    half = copy.deepcopy(tiny_pretrain)
    half["train"].update(batch_size=4, tokens=[1280, 2560])  # the same steps on 4 sequences
    wrong = one.execute(RUN_KINDS.get("pretrain"), validate(PretrainConfig, half))
    assert (
        _max_loss_diff(
            read_jsonl(wrong.dir / "metrics.jsonl"), read_jsonl(ref.dir / "metrics.jsonl"), strict=False
        )
        > 100 * TOL
    )
    assert sorted(p.name for p in (run_dir / "ckpt").iterdir()) == sorted(
        p.name for p in (ref.dir / "ckpt").iterdir()
    )

    # fine-tuning the two-process checkpoint in two processes, against one process on the one-process one
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(_ft(run_id)))
    ft_ref = one.execute(RUN_KINDS.get("finetune"), validate(FinetuneConfig, _ft(run_id)))
    _launch(tmp_path, tmp_path / "two", "finetune", "--config", str(tmp_path / "ft.yaml"))
    ft_dir = two.run_dir("finetune", ft_ref.run_id)
    assert two.status("finetune", ft_ref.run_id) == "success"
    diff = _max_loss_diff(read_jsonl(ft_dir / "metrics.jsonl"), read_jsonl(ft_ref.dir / "metrics.jsonl"))
    print(f"finetune: max |loss diff| {diff}")
    assert diff <= TOL


@pytest.mark.slow
def test_a_crashed_run_resumes_in_two_processes(tmp_path, tiny_pretrain, monkeypatch):
    cfg = validate(PretrainConfig, tiny_pretrain)
    ref = Store(tmp_path / "one" / "runs").execute(RUN_KINDS.get("pretrain"), cfg)
    original, saves = _Job.save_resume, []

    def crash_after_second_save(self, *args):
        original(self, *args)
        saves.append(args)
        if len(saves) == 2:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(_Job, "save_resume", crash_after_second_save)
    crashed = Store(tmp_path / "two" / "runs")
    with pytest.raises(RuntimeError, match="simulated crash"):
        crashed.execute(RUN_KINDS.get("pretrain"), cfg)
    assert crashed.status("pretrain", ref.run_id) == "failed"

    (tmp_path / "pretrain.yaml").write_text(yaml.safe_dump(tiny_pretrain))
    _launch(tmp_path, tmp_path / "two", "pretrain", "--config", str(tmp_path / "pretrain.yaml"))
    manifest = crashed.manifest("pretrain", ref.run_id)
    assert manifest["status"] == "success" and manifest["attempts"] == 2
    run_dir = crashed.run_dir("pretrain", ref.run_id)
    for name in ("metrics.jsonl", "evals.jsonl"):  # the first attempt's records were kept up to its state
        assert _max_loss_diff(read_jsonl(run_dir / name), read_jsonl(ref.dir / name)) <= TOL


# --- no launch: the helpers are no-ops, and what may not run data-parallel is refused -----------------


def test_outside_a_launch_everything_is_single_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.world() == distributed.World(0, 1, 0) and not distributed.launched()
    assert not distributed.active()
    x = torch.arange(12).reshape(6, 2)
    model = torch.nn.Linear(2, 2)
    assert distributed.shard(x) is x and distributed.wrap(model) is model
    value = torch.tensor(1.5)
    assert distributed.all_mean(value) is value and distributed.broadcast({"a": 1}) == {"a": 1}
    assert distributed.device_for(torch.device("cuda")) == torch.device("cuda")


def test_under_a_launch_only_data_parallel_kinds_run(home, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert distributed.launched() and distributed.world().rank == 1
    assert RUN_KINDS.get("pretrain").data_parallel and RUN_KINDS.get("finetune").data_parallel
    theory = RUN_KINDS.get("linear_theory")
    with pytest.raises(UserError, match="does not run data-parallel over 2 processes"):
        Store().execute(theory, theory.config_cls())  # refused before any process group is needed
    plan = Plan([PlanItem.from_config(theory, theory.config_cls())])
    with pytest.raises(UserError, match="does not execute under accelerate launch"):
        run_plan(plan, Store(), progress=False)
