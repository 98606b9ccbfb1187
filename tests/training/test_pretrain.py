"""Pre-training at many budgets: WSD branches, schedules, resume, and plain-transformers loading."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from overtrain.config import validate
from overtrain.registry import RUN_KINDS
from overtrain.runs.jsonl import read_jsonl
from overtrain.runs.store import Store
from overtrain.training import checkpoint as ckpt
from overtrain.training.pretrain import _Job
from overtrain.training.pretrain_config import PretrainConfig


def _run(cfg_dict, root):
    cfg = validate(PretrainConfig, cfg_dict)
    return Store(root).execute(RUN_KINDS.get("pretrain"), cfg)


def _weights(run_dir, name):
    return load_file(str(run_dir / "ckpt" / name / "model.safetensors"))


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_run_layout_metrics_and_evals(home, tiny_pretrain):
    out = _run(tiny_pretrain, home / "runs")
    names = {m["name"] for m in ckpt.list_checkpoints(out.dir)}
    assert {"budget_2560", "budget_5120", "step_00000000", "step_00000016"} <= names
    metrics = read_jsonl(out.dir / "metrics.jsonl")
    main = [r for r in metrics if r["line"] == "main" and "train/loss" in r]
    assert [r["step"] for r in main] == [2, 4, 6, 8, 10, 12, 14, 16, 18]  # main line ends at P = 18
    assert all(r["tokens_seen"] == 256 * r["step"] for r in metrics)
    evals = [r for r in read_jsonl(out.dir / "evals.jsonl") if r["budget"] is not None]
    assert [(r["budget"], r["step"]) for r in evals] == [(2560, 10), (5120, 20)]
    for r in evals:  # the floor is a lower bound a 20-step model is far from
        assert r["loss"] > r["loss_floor"] > 0 and r["excess_loss"] == pytest.approx(
            r["loss"] - r["loss_floor"]
        )
    # the decayed budget checkpoint ends at lr = min_lr = 0
    last = [r for r in metrics if r["line"] == "budget_5120" and "train/lr" in r][-1]
    assert last["train/lr"] == 0.0
    info = json.loads((out.dir / "manifest.json").read_text())["info"]
    assert info["n_params"] == 8784 and info["tokens_per_step"] == 256


def test_wsd_branch_equals_a_run_with_that_budget_alone(home, tiny_pretrain):
    """Branching must neither disturb the main line nor differ from training that budget on its own."""
    both = _run(tiny_pretrain, home / "a")
    for budget in (2560, 5120):
        alone = copy.deepcopy(tiny_pretrain)
        alone["train"]["tokens"] = [budget]
        single = _run(alone, home / f"b{budget}")
        _assert_same_weights(_weights(both.dir, f"budget_{budget}"), _weights(single.dir, f"budget_{budget}"))


def test_constant_and_cosine_schedules(home, tiny_pretrain):
    const = copy.deepcopy(tiny_pretrain)
    const["train"]["schedule"] = "constant"
    out = _run(const, home / "c")
    lrs = [r["train/lr"] for r in read_jsonl(out.dir / "metrics.jsonl") if "train/lr" in r]
    assert lrs[-1] == const["train"]["lr"] and len(set(lrs[1:])) == 1  # no cool-down anywhere
    # constant: a budget is a point on the one line, so a shorter run ends at the same weights
    alone = copy.deepcopy(const)
    alone["train"]["tokens"] = [2560]
    single = _run(alone, home / "c1")
    _assert_same_weights(_weights(out.dir, "budget_2560"), _weights(single.dir, "budget_2560"))
    cos = copy.deepcopy(tiny_pretrain)
    cos["train"]["schedule"] = "cosine"
    out = _run(cos, home / "d")
    metrics = read_jsonl(out.dir / "metrics.jsonl")
    for budget, steps in ((2560, 10), (5120, 20)):
        lrs = [r["train/lr"] for r in metrics if r["line"] == f"budget_{budget}" and "train/lr" in r]
        assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
        assert max(r["step"] for r in metrics if r["line"] == f"budget_{budget}") == steps
    # each cosine line starts from the same initialisation: the shorter one equals a run of it alone
    alone = copy.deepcopy(cos)
    alone["train"]["tokens"] = [2560]
    single = _run(alone, home / "e")
    _assert_same_weights(_weights(out.dir, "budget_2560"), _weights(single.dir, "budget_2560"))


@pytest.mark.parametrize("schedule", ["wsd", "cosine"])
def test_resume_after_a_crash_equals_an_uninterrupted_run(home, tiny_pretrain, monkeypatch, schedule):
    cfg = copy.deepcopy(tiny_pretrain)
    cfg["train"]["schedule"] = schedule
    ref = _run(cfg, home / "ref")

    calls = {"n": 0}
    original = _Job.save_resume

    def crash_after_third_save(self, *args):
        original(self, *args)
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(_Job, "save_resume", crash_after_third_save)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(cfg, home / "crash")
    store = Store(home / "crash")
    run_id = ref.run_id
    assert store.manifest("pretrain", run_id)["status"] == "failed"
    monkeypatch.setattr(_Job, "save_resume", original)
    resumed = _run(cfg, home / "crash")
    assert resumed.status == "success" and store.manifest("pretrain", run_id)["attempts"] == 2
    for name in ("metrics.jsonl", "evals.jsonl"):
        assert read_jsonl(resumed.dir / name) == read_jsonl(ref.dir / name), name
    for name in ("budget_2560", "budget_5120"):
        _assert_same_weights(_weights(ref.dir, name), _weights(resumed.dir, name))


def test_a_crash_before_the_first_resume_save_restarts_clean(home, tiny_pretrain, monkeypatch):
    ref = _run(tiny_pretrain, home / "ref")
    original = _Job.save

    def crash_at_step_four(self, model, name, step, *args):
        if step == 4:
            raise RuntimeError("simulated crash")
        return original(self, model, name, step, *args)

    monkeypatch.setattr(_Job, "save", crash_at_step_four)
    with pytest.raises(RuntimeError):
        _run(tiny_pretrain, home / "crash")
    monkeypatch.setattr(_Job, "save", original)
    resumed = _run(tiny_pretrain, home / "crash")
    assert read_jsonl(resumed.dir / "metrics.jsonl") == read_jsonl(ref.dir / "metrics.jsonl")
    assert read_jsonl(resumed.dir / "evals.jsonl") == read_jsonl(ref.dir / "evals.jsonl")


def test_checkpoint_loads_with_plain_transformers_in_a_fresh_process(home, tiny_pretrain, tmp_path):
    out = _run(tiny_pretrain, home / "runs")
    job_cfg = validate(PretrainConfig, tiny_pretrain)
    source = job_cfg.data.build()
    batches = torch.stack([source.batch("val", i, 8, 32) for i in range(2)])
    save_file({"batches": batches}, str(tmp_path / "val.safetensors"))
    budget = out.dir / "ckpt" / "budget_5120"
    ours = next(r["loss"] for r in read_jsonl(out.dir / "evals.jsonl") if r["checkpoint"] == "budget_5120")
    script = f"""
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained({str(budget)!r}).eval()
tok = AutoTokenizer.from_pretrained({str(budget)!r})
assert len(tok) == model.config.vocab_size, (len(tok), model.config.vocab_size)
batches = load_file({str(tmp_path / "val.safetensors")!r})["batches"]
with torch.no_grad():
    losses = [model(input_ids=b, labels=b).loss.item() for b in batches]
print(sum(losses) / len(losses))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    theirs = float(result.stdout.strip().splitlines()[-1])
    assert theirs == pytest.approx(ours, abs=1e-5)


def test_dense_checkpoints_add_a_grid_and_leave_old_ids_alone(tiny_pretrain):
    from overtrain.config import ConfigError, identity
    from overtrain.training.pretrain_config import CheckpointConfig

    cc = CheckpointConfig(log_spaced=False, every=250, dense_every=50, dense_until=200)
    assert cc.dense_steps(1500) == {50, 100, 150, 200}
    assert cc.dense_steps(120) == {50, 100}  # never past the run's last step
    assert CheckpointConfig().dense_steps(1500) == set()
    plain = validate(PretrainConfig, tiny_pretrain)
    # unset, the fields are not part of the id: runs saved before they existed keep their ids
    assert not {"dense_every", "dense_until"} & identity(plain)["checkpoint"].keys()
    dense = plain.model_copy(update={"checkpoint": cc})
    assert identity(dense)["checkpoint"]["dense_every"] == 50
    with pytest.raises((ValueError, ConfigError), match="together"):
        validate(CheckpointConfig, {"dense_every": 50})
