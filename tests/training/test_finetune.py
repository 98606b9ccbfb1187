"""Fine-tuning a pre-training checkpoint: task loss falls, forgetting is measured, LoRA trains adapters only."""

from __future__ import annotations

import json

import pytest

from overtrain.config import validate
from overtrain.errors import CheckpointError, ConfigError, UserError
from overtrain.registry import RUN_KINDS
from overtrain.runs.store import Store, read_jsonl
from overtrain.training.finetune import FinetuneConfig
from overtrain.training.pretrain import PretrainConfig


@pytest.fixture
def parent(home, tiny_pretrain):
    store = Store()
    out = store.execute(RUN_KINDS.get("pretrain"), validate(PretrainConfig, tiny_pretrain))
    return store, out


def _ft(parent_id, **kw):
    cfg = {
        "parent": parent_id, "checkpoint": "budget_5120",
        "data": {"name": "hmm", "seed": 1, "states": 4, "vocab_size": 16, "floor_sequences": 64},
        "train": {"steps": 12, "batch_size": 8, "lr": 1e-2, "log_every": 4},
        "eval_batches": 2,
    }
    cfg.update(kw)
    return validate(FinetuneConfig, cfg)


@pytest.mark.parametrize("method", [{"name": "full"}, {"name": "lora", "rank": 2, "alpha": 4}])
def test_finetune_learns_the_task_and_records_forgetting(parent, method):
    store, pre = parent
    out = store.execute(RUN_KINDS.get("finetune"), _ft(pre.run_id, method=method))
    row = read_jsonl(out.dir / "evals.jsonl")[0]
    assert row["task_loss"] < row["base_task_loss"]
    assert row["forgetting"] == pytest.approx(row["pretrain_loss"] - row["base_pretrain_loss"])
    # the base pre-training loss is the parent's own evaluation of that checkpoint (same batches)
    parent_eval = next(r for r in read_jsonl(pre.dir / "evals.jsonl") if r["checkpoint"] == "budget_5120")
    assert row["base_pretrain_loss"] == pytest.approx(parent_eval["loss"], rel=1e-6)
    assert row["budget"] == 5120 and row["tokens_seen"] == 5120
    manifest = json.loads((out.dir / "manifest.json").read_text())
    assert manifest["parents"] == [f"pretrain/{pre.run_id}"]
    if method["name"] == "lora":
        assert 0 < row["trainable_params"] < row["n_params"] / 2
    else:
        assert row["trainable_params"] == row["n_params"]


def test_bad_parent_and_checkpoint(parent):
    store, pre = parent
    with pytest.raises(ConfigError, match="12 hex digits"):
        validate(FinetuneConfig, {"parent": "xyz", "checkpoint": "a", "data": "hmm"})
    with pytest.raises(UserError, match="parent run pretrain/0123456789ab not found"):
        store.execute(RUN_KINDS.get("finetune"), _ft("0123456789ab"))
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        store.execute(RUN_KINDS.get("finetune"), _ft(pre.run_id, checkpoint="budget_1"))
