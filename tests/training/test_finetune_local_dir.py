"""Fine-tuning a local Hugging Face checkpoint directory (``model_dir``), not a stored run's checkpoint:
the run trains and records, and the directory's weight fingerprint is in the run id (issue 21)."""

from __future__ import annotations

import os

import pytest
import torch

from overtrain.cli.main import main
from overtrain.config import config_hash, validate
from overtrain.data.tokenizer import byte_tokenizer
from overtrain.errors import ConfigError, UserError
from overtrain.models.presets import ModelConfig, build_model
from overtrain.registry import RUN_KINDS
from overtrain.runs.jsonl import read_jsonl
from overtrain.runs.store import Store
from overtrain.training.finetune import FinetuneConfig


@pytest.fixture
def model_dir(home, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "my-ckpt"
    build_model(ModelConfig(preset="llama-nano"), 256, 64).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


def _task(tmp_path):
    text = tmp_path / "task.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 60)
    return {"name": "text", "train": [str(text)], "val": [str(text)], "tokenizer": "parent"}


def _ft(model_dir, tmp_path, **kw):
    cfg = {
        "model_dir": str(model_dir),
        "data": _task(tmp_path),
        "train": {"steps": 6, "batch_size": 4, "seq_len": 32, "lr": 1e-2, "log_every": 2},
        "eval_batches": 2,
        **kw,
    }
    return validate(FinetuneConfig, cfg)


def test_finetune_a_local_directory_writes_metrics_and_evals(model_dir, tmp_path):
    cfg = _ft(model_dir, tmp_path)
    assert cfg.model_dir == model_dir.resolve() and "model.safetensors" in cfg.model_fingerprint
    store = Store()
    out = store.execute(RUN_KINDS.get("finetune"), cfg)
    run_dir = store.run_dir("finetune", out.run_id)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert metrics[0]["step"] == 0 and "pretrain/loss" in metrics[0] and "task/loss" in metrics[0]
    assert [m["step"] for m in metrics if "train/loss" in m] == [2, 4, 6]
    (final,) = read_jsonl(run_dir / "evals.jsonl")
    assert final["parent"] == str(model_dir.resolve()) and final["checkpoint"] == "my-ckpt"
    assert final["task_loss"] < final["base_task_loss"]  # it learned the task
    assert final["forgetting"] == final["pretrain_loss"] - final["base_pretrain_loss"]
    assert store.execute(RUN_KINDS.get("finetune"), cfg).skipped


def test_a_rewritten_directory_is_a_new_run(model_dir, tmp_path):
    before = config_hash(_ft(model_dir, tmp_path))
    weights = model_dir / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = _ft(model_dir, tmp_path)
    assert config_hash(after) != before
    # a config made before the rewrite no longer matches the directory: refused, not trained on new weights
    stale = after.model_copy(update={"model_fingerprint": "old"})
    with pytest.raises(UserError, match="changed since"):
        Store().execute(RUN_KINDS.get("finetune"), stale)


def test_parent_choice_errors(model_dir, tmp_path):
    with pytest.raises(ConfigError, match="exactly one of parent"):
        validate(FinetuneConfig, {"data": "hmm"})
    with pytest.raises(ConfigError, match="exactly one of parent"):
        _ft(model_dir, tmp_path, parent="0123456789ab", checkpoint="budget_1")
    with pytest.raises(ConfigError, match="checkpoint not found"):
        _ft(tmp_path / "missing", tmp_path)
    # a stored parent's run id is unchanged by the new optional fields
    cfg = validate(FinetuneConfig, {"parent": "0123456789ab", "checkpoint": "budget_1000", "data": "hmm"})
    assert config_hash(cfg) == "627b8d4be114"


def test_cli_finetune_model_dir(model_dir, tmp_path, capsys):
    task = tmp_path / "task.txt"
    task.write_text("The quick brown fox jumps over the lazy dog. " * 60)
    args = ["finetune", f"model_dir={model_dir}", "data.name=text", f"data.train=[{task}]"]
    args += [f"data.val=[{task}]", "data.tokenizer=parent", "train.steps=2", "train.batch_size=2"]
    args += ["train.seq_len=16", "eval_batches=1"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0, capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["finetune", f"model_dir={tmp_path / 'nope'}", "data=hmm"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "checkpoint not found" in err
